# -*- test-case-name: tests.test_listener -*-
"""
A listener's HTTP/1.1 side: a twisted.web L{Site} of strict
L{HTTP1Channel}s and its one resource, which holds what the listener's
exchanges share (its L{Forwarder}, in-flight count, logs, telemetry and
stream timer) and starts an L{easymesh.edge.Exchange} for each request.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import server
from twisted.web.resource import Resource

from easymesh.accesslog import AccessLog
from easymesh.config.model import EdgeLimits
from easymesh.edge import Exchange
from easymesh.forwarder import Forwarder
from easymesh.h1server import DeadlineSweeper, HTTP1Channel
from easymesh.inflight import InFlight
from easymesh.message import Request

_log = Logger()


class ProxyResource(Resource):
    """
    Proxy every request of a listener through its L{Forwarder}: the parts
    of the listener its exchanges share.
    """

    isLeaf = True

    def __init__(
        self,
        name: str,
        forwarder: Forwarder,
        clock: Any,
        inflight: Optional[InFlight] = None,
        accessLog: Optional[AccessLog] = None,
        telemetry: Any = None,
        errorLog: Any = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.forwarder = forwarder
        self.clock = clock
        self.inflight = inflight if inflight is not None else InFlight()
        self.accessLog = accessLog
        #: An L{easymesh.ops.telemetry.Telemetry} told of every request and
        #: connection, or L{None}.
        self.telemetry = telemetry
        #: An L{easymesh.errorlog.ErrorLog} for the errors this listener
        #: answers with, or L{None}.
        self.errorLog = errorLog
        #: Times out the exchanges whose bodies stream and have stopped
        #: moving (see L{Exchange}).
        self.streams = DeadlineSweeper(clock)

    def handle(self, request: Request, responder: Any, target: bytes) -> Exchange:
        """
        The exchange for a request that has arrived (not started yet).

        @param responder: The edge's L{easymesh.interfaces.IResponder}.
        @param target: The request target as received, for the logs.
        """
        request.listener = self.name
        return Exchange(self, request, responder, target)


class ProxySite(server.Site):
    """
    A L{server.Site} for a proxy listener: strict L{HTTP1Channel}s within
    its limits, no per-request logging of its own (the access log is
    easymesh's).
    """

    displayTracebacks = False
    noisy = False
    #: Over mTLS, the caller identity patterns accepted (see
    #: L{easymesh.tls.identity}); L{None} without TLS.
    allowedIdentities: Optional[Any] = None
    # Twisted types this as an HTTPChannel; the site builds easymesh's own.
    protocol = HTTP1Channel  # type: ignore[assignment]
    #: Whether connections are reported to the resource's telemetry.
    countsConnections = True

    def __init__(self, resource: Any, limits: EdgeLimits = EdgeLimits(), **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.limits = limits
        self.sweeper = DeadlineSweeper(self.reactor)
        self._overflowing = False

    def buildProtocol(self, addr: Any) -> Any:
        if self.sweeper.open >= self.limits.maxConnections:
            # Refused: Twisted closes the accepted socket at once.
            if not self._overflowing:
                self._overflowing = True
                _log.warn(
                    "{site} has {count} connections open, its limit: refusing more",
                    site=self,
                    count=self.sweeper.open,
                )
            return None
        self._overflowing = False
        channel = super().buildProtocol(addr)
        channel.limits = self.limits
        channel.sweeper = self.sweeper
        telemetry = getattr(self.resource, "telemetry", None) if self.countsConnections else None
        if telemetry is not None:
            name = self.resource.name
            telemetry.connectionOpened(name)
            channel.onClose = lambda: telemetry.connectionClosed(name)
        return channel

    def stopFactory(self) -> None:
        self.sweeper.stop()
        super().stopFactory()

    def handle(self, request: Request, responder: Any, target: bytes) -> Any:
        """
        The exchange for a request on one of this site's channels.
        """
        return self.resource.handle(request, responder, target)


class MutualTLSFactory(TLSMemoryBIOFactory):
    """
    TLS in front of a L{ProxySite}: connections the site refuses (over its
    connection limit) are closed at once rather than wrapped.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)
