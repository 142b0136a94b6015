"""
C{python -m easymesh}: tools beside the sidecar.

  check-config FILE   Check a config file completely; exit 0 if valid.
  certs DIR ...       Make a development CA and workload certificates.
"""

from __future__ import annotations

import sys
from typing import List, Optional


def checkConfig(argv: List[str]) -> int:
    """
    Validate a config file as the sidecar would on start or reload,
    certificate files included.
    """
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m easymesh check-config FILE", file=sys.stderr)
        return 2
    from easymesh.config.model import ConfigError
    from easymesh.tap import checkRunnable, loadConfig

    path = argv[0]
    try:
        config = loadConfig(path, {})
        mesh = config.mesh()
        checkRunnable(config)
    except ConfigError as e:
        print(f"{e}", file=sys.stderr)
        return 1
    routes = sum(len(r) for r in mesh.routes.values())
    print(f"{path}: valid ({len(mesh.clusters)} cluster(s), {routes} route(s))")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "check-config":
        return checkConfig(args[1:])
    if args and args[0] == "certs":
        from easymesh.tls.certs import main as certs

        return certs(args[1:])
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
