"""
C{python -m easymesh}: tools beside the sidecar (L{USAGE}).
"""

from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """\
usage: python -m easymesh COMMAND [ARGS]
       python -m easymesh --help | --version

Tools beside the sidecar (the sidecar itself runs as: twistd -n easymesh).

commands:
  check-config FILE   Check a config file completely; exit 0 if valid.
  certs DIR ...       Make a development CA and workload certificates
                      (python -m easymesh certs --help for its options).
  causes [--update docs/troubleshooting.md]
                      Print the error causes as the README's Markdown
                      table, or rewrite the table in the README.

options:
  -h, --help          Show this help and exit.
  --version           Show easymesh's version and exit.
"""

CHECK_CONFIG_USAGE = "usage: python -m easymesh check-config FILE"
CAUSES_USAGE = "usage: python -m easymesh causes [--update docs/troubleshooting.md]"


def checkConfig(argv: List[str]) -> int:
    """
    Validate a config file as the sidecar would on start or reload,
    certificate files included.
    """
    if argv in (["-h"], ["--help"]):
        print(CHECK_CONFIG_USAGE)
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(CHECK_CONFIG_USAGE, file=sys.stderr)
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
    if argv in (["-h"], ["--help"]):
        print(CAUSES_USAGE)
        return 0
    if len(argv) != 2 or argv[0] != "--update":
        print(CAUSES_USAGE, file=sys.stderr)
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
    """
    Run the command C{argv} (default: the process's arguments) names.

    @return: The exit status: 0 done, 1 refused (an invalid config), 2 a
        usage error.
    """
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    if args == ["--version"]:
        from easymesh import installedVersion

        print(f"easymesh {installedVersion()}")
        return 0
    if args and args[0] == "check-config":
        return checkConfig(args[1:])
    if args and args[0] == "causes":
        return causes(args[1:])
    if args and args[0] == "certs":
        from easymesh.tls.certs import main as certs

        return certs(args[1:])
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main())
