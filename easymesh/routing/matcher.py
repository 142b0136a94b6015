# -*- test-case-name: tests.test_routing -*-
"""
Route matching: each route's conditions compiled once into a predicate on
a request's method, normalised path, host and headers; first match wins.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from twisted.web.http_headers import Headers

from easymesh.config.mesh import HeaderMatch, Route, RouteMatch
from easymesh.patterns import compilePattern

Predicate = Callable[[bytes, str, str, Headers], bool]


def requestHost(headers: Headers) -> str:
    """
    The C{Host} header's host, lower-cased, without a port.
    """
    values = headers.getRawHeaders(b"host")
    if not values:
        return ""
    host = values[0].decode("latin-1").lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.split(":", 1)[0]


def _hostPredicate(pattern: str) -> Callable[[str], bool]:
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return lambda host: host.endswith(suffix) and len(host) > len(suffix)
    return lambda host: host == pattern


def _onHeaders(
    predicate: Callable[[Headers], bool]
) -> Callable[[bytes, str, str, Headers], bool]:
    """
    A route check that looks only at the headers, with C{predicate}.
    """
    return lambda m, p, h, hd: predicate(hd)


def _headerPredicate(match: HeaderMatch) -> Callable[[Headers], bool]:
    name = match.name.encode("ascii")
    if match.present is not None:
        present = match.present
        return lambda headers: headers.hasHeader(name) == present
    if match.exact is not None:
        exact = match.exact.encode("latin-1")
        return lambda headers: exact in (headers.getRawHeaders(name) or ())
    if match.prefix is not None:
        prefix = match.prefix.encode("latin-1")
        return lambda headers: any(v.startswith(prefix) for v in headers.getRawHeaders(name) or ())
    assert match.regex is not None
    pattern = compilePattern(match.regex.encode("latin-1"))
    return lambda headers: any(pattern.fullmatch(v) for v in headers.getRawHeaders(name) or ())


def compileMatch(match: RouteMatch) -> Predicate:
    """
    A predicate on C{(method, path, host, headers)} true when every
    condition of C{match} holds.
    """
    checks: List[Callable[[bytes, str, str, Headers], bool]] = []
    if match.path is not None:
        exact = match.path
        checks.append(lambda m, p, h, hd: p == exact)
    elif match.regex is not None:
        regex = compilePattern(match.regex)
        checks.append(lambda m, p, h, hd: regex.fullmatch(p) is not None)
    elif match.prefix is not None and match.prefix != "/":
        prefix = match.prefix
        checks.append(lambda m, p, h, hd: p.startswith(prefix))
    if match.methods:
        methods = frozenset(x.encode("ascii") for x in match.methods)
        checks.append(lambda m, p, h, hd: m in methods)
    if match.host is not None:
        host = _hostPredicate(match.host)
        checks.append(lambda m, p, h, hd: host(h))
    for header in match.headers:
        checks.append(_onHeaders(_headerPredicate(header)))
    if not checks:
        return lambda m, p, h, hd: True
    if len(checks) == 1:
        return checks[0]
    return lambda m, p, h, hd: all(check(m, p, h, hd) for check in checks)


class RouteTable:
    """
    A listener's routes in order, with their compiled matches.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self._compiled = [(compileMatch(r.match), r) for r in self.routes]
        self._needsHost = any(r.match.host is not None for r in self.routes)

    def match(self, method: bytes, path: str, headers: Headers) -> Optional[Route]:
        """
        The first route that matches, or L{None}.
        """
        host = requestHost(headers) if self._needsHost else ""
        for predicate, route in self._compiled:
            if predicate(method, path, host, headers):
                return route
        return None
