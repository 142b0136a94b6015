# -*- test-case-name: tests.test_filters -*-
"""
A listener's filter chain: request hooks in order, response hooks in
reverse; any hook may pause the chain by returning a L{Deferred}.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from easymesh.config.model import ConfigError, FilterSpec
from easymesh.interfaces import IFilter, IFilterContext, IFilterFactory
from easymesh.message import LocalReply, ProxyRequest


@implementer(IFilterContext)
@attrs.frozen
class FilterContext:
    listener: str
    reactor: Any


class FilterChain:
    """
    Filters run for every request on one listener.
    """

    def __init__(self, filters: Sequence[IFilter] = ()) -> None:
        self.filters: Tuple[IFilter, ...] = tuple(filters)
        self._reversed = tuple(reversed(self.filters))

    def __bool__(self) -> bool:
        return bool(self.filters)

    def requestReceived(self, request: ProxyRequest) -> Deferred[Optional[LocalReply]]:
        """
        Run the request hooks until one answers.

        @return: A L{Deferred} firing with a L{LocalReply} if a filter
            answered, else L{None}.
        """
        return self._requestFrom(0, request)

    def _requestFrom(
        self, start: int, request: ProxyRequest
    ) -> Deferred[Optional[LocalReply]]:
        filters = self.filters
        for index in range(start, len(filters)):
            try:
                result = filters[index].requestReceived(request)
            except BaseException as e:
                return fail(e)
            if isinstance(result, Deferred):
                return result.addCallback(self._continueRequest, index + 1, request)
            if result is not None:
                return succeed(result)
        return succeed(None)

    def _continueRequest(
        self, result: Optional[LocalReply], next: int, request: ProxyRequest
    ) -> Any:
        if result is not None:
            return result
        return self._requestFrom(next, request)

    def responseReceived(self, request: ProxyRequest, response: Any) -> Deferred[Any]:
        """
        Run the response hooks, last filter first.

        @return: A L{Deferred} firing with C{response}.
        """
        return self._responseFrom(0, request, response)

    def _responseFrom(
        self, start: int, request: ProxyRequest, response: Any
    ) -> Deferred[Any]:
        filters = self._reversed
        for index in range(start, len(filters)):
            try:
                result = filters[index].responseReceived(request, response)
            except BaseException as e:
                return fail(e)
            if isinstance(result, Deferred):
                return result.addCallback(
                    lambda _, i: self._responseFrom(i + 1, request, response), index
                )
        return succeed(response)


def buildChain(
    specs: Sequence[FilterSpec],
    context: IFilterContext,
    available: Dict[str, IFilterFactory],
) -> FilterChain:
    """
    Build a listener's chain from its filter specs.

    @raise ConfigError: A filter is unknown or refuses its arguments.
    """
    filters = []
    for spec in specs:
        where = f"{context.listener} filter {spec.name!r}"
        factory = available.get(spec.name)
        if factory is None:
            known = ", ".join(sorted(available)) or "none"
            raise ConfigError(where, f"no such filter plugin (installed: {known})")
        try:
            filters.append(factory.build(spec.args, context))
        except ValueError as e:
            raise ConfigError(where, str(e)) from None
    return FilterChain(filters)
