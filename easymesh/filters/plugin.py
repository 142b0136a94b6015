# -*- test-case-name: tests.test_filters -*-
"""
Filter plugins: a lazy factory for plugin drop-ins, discovery through
C{twisted.plugin.getPlugins}, and the parser for C{key=value,...} arguments.

This module is imported when plugins are scanned: it must stay light and
must not import the reactor.
"""

from __future__ import annotations

from typing import Any, Dict

from twisted.plugin import IPlugin
from zope.interface import implementer

from easymesh.interfaces import IFilterFactory


@implementer(IPlugin, IFilterFactory)
class FilterPlugin:
    """
    A filter factory for a plugin drop-in that imports the filter's module
    only when a filter is built.

    @param module: A module with a C{build(args, context)} function.
    """

    def __init__(self, name: str, module: str, description: str) -> None:
        self.name = name
        self.module = module
        self.description = description

    def build(self, args: str, context: Any) -> Any:
        from twisted.python.reflect import namedModule

        return namedModule(self.module).build(args, context)

    def __repr__(self) -> str:
        return f"<FilterPlugin {self.name} from {self.module}>"


def availableFilters() -> Dict[str, IFilterFactory]:
    """
    Every filter factory installed as a plugin, by name.
    """
    from twisted import plugins
    from twisted.plugin import getPlugins

    found: Dict[str, IFilterFactory] = {}
    for factory in getPlugins(IFilterFactory, plugins):
        found.setdefault(factory.name, factory)
    return found


def parseArgs(args: str, known: Dict[str, Any]) -> Dict[str, Any]:
    """
    Parse C{key=value,key=value} filter arguments.

    @param known: Each allowed key and the function that converts its text
        (raising L{ValueError}).
    @raise ValueError: An unknown key, a missing C{=}, or a bad value.
    """
    values: Dict[str, Any] = {}
    if not args:
        return values
    for item in args.split(","):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"expected key=value, got {item!r}")
        if key not in known:
            raise ValueError(
                f"unknown argument {key!r} (known: {', '.join(sorted(known))})"
            )
        try:
            values[key] = known[key](text.strip())
        except ValueError as e:
            raise ValueError(f"argument {key!r}: {e}") from None
    return values
