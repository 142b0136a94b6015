"""
C{python -m easymesh}: tools beside the sidecar.

  check-config FILE   Check a config file completely; exit 0 if valid.
  certs DIR ...       Make a development CA and workload certificates.
  causes [--update README.md]
                      Print the error causes as the README's Markdown
                      table, or rewrite the table in the README.
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


def causes(argv: List[str]) -> int:
    """
    Print L{easymesh.errors.CAUSE_TABLE} as Markdown, or with C{--update
    FILE} rewrite the table between FILE's C{causes} comments.
    """
    from easymesh.errors import causesMarkdown, withCausesMarkdown

    if not argv:
        sys.stdout.write(causesMarkdown())
        return 0
    if len(argv) != 2 or argv[0] != "--update":
        print("usage: python -m easymesh causes [--update README.md]", file=sys.stderr)
        return 2
    path = argv[1]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        updated = withCausesMarkdown(text)
    except ValueError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    if updated != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(updated)
        print(f"{path}: error table updated")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "check-config":
        return checkConfig(args[1:])
    if args and args[0] == "causes":
        return causes(args[1:])
    if args and args[0] == "certs":
        from easymesh.tls.certs import main as certs

        return certs(args[1:])
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
