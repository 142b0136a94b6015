"""
The reference tables of the docs that are made from the code, each between
C{<!-- NAME:begin -->} and C{<!-- NAME:end -->} comments:

  - C{causes}: the error causes (L{easymesh.errors.causesMarkdown});
  - C{metrics}: the Prometheus metrics (L{easymesh.ops.metrics.markdownTable});
  - C{settings}: every flag and top-level config key
    (L{easymesh.config.settings.settingsMarkdown}).

C{python -m easymesh.doctables FILE...} rewrites the tables a file has;
with C{--check} it only says which differ, and exits 1 if any does.
"""

from __future__ import annotations

import sys
from typing import Callable, Dict, List, Optional


def _causes() -> str:
    from easymesh.errors import causesMarkdown

    return causesMarkdown()


def _metrics() -> str:
    from easymesh.ops.metrics import markdownTable

    return markdownTable()


def _settings() -> str:
    from easymesh.config.settings import settingsMarkdown

    return settingsMarkdown()


#: Each table's name and what makes it.
TABLES: Dict[str, Callable[[], str]] = {
    "causes": _causes,
    "metrics": _metrics,
    "settings": _settings,
}


def markers(name: str) -> "tuple[str, str]":
    """
    The comments that open and close the table C{name}.
    """
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def shownTable(text: str, name: str) -> Optional[str]:
    """
    What C{text} has between the comments of the table C{name}, or L{None}
    if it lacks them.
    """
    begin, end = markers(name)
    _, found, rest = text.partition(begin + "\n")
    shown, ended, _ = rest.partition(end)
    return shown if found and ended else None


def withTable(text: str, name: str, table: str) -> str:
    """
    C{text} with what lies between the comments of the table C{name}
    replaced by C{table}.

    @raise ValueError: C{text} lacks the comments.
    """
    begin, end = markers(name)
    head, found, rest = text.partition(begin + "\n")
    _, ended, tail = rest.partition(end)
    if not (found and ended):
        raise ValueError(f"no {begin} ... {end} in the text")
    return head + begin + "\n" + table + end + tail


def withTables(text: str) -> str:
    """
    C{text} with every generated table it has made afresh.
    """
    for name, make in TABLES.items():
        if shownTable(text, name) is not None:
            text = withTable(text, name, make())
    return text


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = args[:1] == ["--check"]
    paths = args[1:] if check else args
    if not paths or any(p.startswith("-") for p in paths):
        print("usage: python -m easymesh.doctables [--check] FILE...", file=sys.stderr)
        return 2
    stale = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        updated = withTables(text)
        if updated == text:
            continue
        if check:
            print(f"{path}: a generated table differs from the code", file=sys.stderr)
            stale += 1
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(updated)
            print(f"{path}: tables updated")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
