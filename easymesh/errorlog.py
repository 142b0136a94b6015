# -*- test-case-name: tests.test_errorlog -*-
"""
The log of failed requests: each error the sidecar answers with (5xx) is
logged once, where the request ends, with what a human can act on: the
listener, route, cluster and endpoint, the cause and its detail.  A burst
of the same error is one line, then one line saying how many more there
were.  A detail is kept to one line of bounded length, and never quotes a
header value (see L{easymesh.upstream.h1client.ResponseParseError}).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from twisted.logger import Logger

#: Seconds during which the same error (listener, cluster, cause) is
#: counted rather than logged again.
QUIET = 10.0

#: The most characters of an error's detail logged.
MAX_DETAIL = 500

_log = Logger(namespace="easymesh.errors")


class ErrorLog:
    """
    @param clock: Gives the time, for bursts.
    """

    def __init__(self, clock: Any, quiet: float = QUIET) -> None:
        self._clock = clock
        self._quiet = quiet
        self._last: Dict[Tuple[str, Optional[str], str], Tuple[float, int]] = {}

    def report(
        self, listener: str, status: int, cause: str, detail: str, proxied: Any
    ) -> None:
        """
        A request on C{listener} was answered C{status} by the sidecar for
        C{cause} (or lost for it, status 0).
        """
        cluster = getattr(proxied, "cluster", None)
        key = (listener, cluster, cause)
        now = self._clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._quiet:
            self._last[key] = (last[0], last[1] + 1)
            return
        if last is not None and last[1]:
            _log.warn(
                "{listener}: {count} more {cause} error(s) in the last {seconds:.0f}s",
                listener=listener,
                count=last[1],
                cause=cause,
                seconds=now - last[0],
            )
        self._last[key] = (now, 0)
        _log.warn(
            "{listener} {method} {path}: {status} {cause}{where}{detail}",
            listener=listener,
            method=getattr(proxied, "method", b"-").decode("latin-1"),
            # The path only: a query string may carry credentials.
            path=getattr(proxied, "target", b"-").split(b"?", 1)[0].decode("latin-1")[:200],
            status=status or "no response",
            cause=cause,
            where=_where(proxied),
            detail=f": {_oneLine(detail)}" if detail else "",
        )


def _oneLine(detail: str) -> str:
    """
    C{detail} on one line, at most L{MAX_DETAIL} characters: line breaks and
    other control characters escaped, so that it cannot pass for another
    log line.
    """
    if len(detail) > MAX_DETAIL:
        detail = detail[:MAX_DETAIL] + "..."
    if detail.isprintable():
        return detail
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in detail)


def _where(proxied: Any) -> str:
    parts = []
    route = getattr(proxied, "route", None)
    if route is not None:
        parts.append(f"route {route}")
    cluster = getattr(proxied, "cluster", None)
    if cluster is not None:
        host = getattr(proxied, "upstreamHost", None)
        parts.append(f"cluster {cluster}" + (f" ({host})" if host else ""))
    attempts = getattr(proxied, "attempts", 0)
    if attempts > 1:
        parts.append(f"after {attempts} tries")
    return f" [{', '.join(parts)}]" if parts else ""
