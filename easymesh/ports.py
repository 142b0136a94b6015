# -*- test-case-name: tests.test_ports -*-
"""
Listening services for the sidecar's listeners: Twisted endpoint strings,
a deep listen backlog unless one is named, and quiet logging when the
process runs out of file descriptors.

Twisted's TCP port sheds connections it cannot accept for want of a
descriptor (EMFILE), and logs three lines for each.  Under a flood that
would be a flood of logs too: here the first of a burst is logged, and the
rest are counted and reported when the burst is over.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from zope.interface import implementer

from easymesh.config.addresses import withBacklog
from easymesh.twistedprivate import portLogger, setPortLogger

#: A burst ends after this many seconds without an EMFILE event.
BURST_QUIET = 5.0


@implementer(ILogObserver)
class BurstLogFilter:
    """
    Pass a port's log events on, except EMFILE events after the first of a
    burst, which are counted and summed up once the burst is over.
    """

    def __init__(self, observer: Any, clock: Any, quiet: float = BURST_QUIET) -> None:
        self._observer = observer
        self._clock = clock
        self._quiet = quiet
        self._last = float("-inf")
        self._dropped = 0
        self._summary: Any = None

    def __call__(self, event: Dict[str, Any]) -> None:
        if "EMFILE" not in event.get("log_format", ""):
            self._observer(event)
            return
        now = self._clock.seconds()
        inBurst = now - self._last < self._quiet
        self._last = now
        if inBurst:
            self._dropped += 1
            return
        self._observer(event)
        if self._summary is None:
            self._summary = self._clock.callLater(self._quiet, self._report)

    def _report(self) -> None:
        self._summary = None
        if self._clock.seconds() - self._last < self._quiet:
            # Still bursting: report when it is over.
            self._summary = self._clock.callLater(self._quiet, self._report)
            return
        if self._dropped:
            _log.warn(
                "Out of file descriptors: {count} more connections were shed "
                "in that burst",
                count=self._dropped,
            )
            self._dropped = 0


_log = Logger()


class _QuietPortEndpoint:
    """
    A server endpoint whose listening port logs EMFILE once per burst.
    """

    def __init__(self, endpoint: Any, reactor: Any) -> None:
        self._endpoint = endpoint
        self._reactor = reactor
        self.port: Any = None
        self._waiting: List[Deferred[Any]] = []

    def listen(self, factory: Any) -> Deferred[Any]:
        return self._endpoint.listen(factory).addCallback(self._quieten)

    def whenBound(self) -> Deferred[Any]:
        """
        A L{Deferred} firing with the listening port once it is bound.
        """
        if self.port is not None:
            return succeed(self.port)
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        return d

    def _quieten(self, port: Any) -> Any:
        self.port = port
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)
        logger = portLogger(port)
        if isinstance(logger, Logger):
            setPortLogger(
                port,
                Logger(
                    namespace=logger.namespace,
                    observer=BurstLogFilter(globalLogPublisher, self._reactor),
                ),
            )
        return port


def whenBound(service: StreamServerEndpointService) -> Deferred[Any]:
    """
    A L{Deferred} firing with a L{listeningService}'s port once it is bound.
    """
    return service.endpoint.whenBound()


def listeningService(description: str, factory: Any, reactor: Any) -> StreamServerEndpointService:
    """
    A service that listens on the endpoint C{description} with C{factory}.
    """
    endpoint = serverFromString(reactor, withBacklog(description))
    return StreamServerEndpointService(_QuietPortEndpoint(endpoint, reactor), factory)
