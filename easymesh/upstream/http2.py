# -*- test-case-name: tests.test_h2client -*-
"""
HTTP/2 upstreams (C{h2c://}, C{grpc://}, and C{http://}/C{https://}
endpoints of a cluster with C{protocol: http2}): a multiplexing pool.

Requests share as few connections as the peer's
C{SETTINGS_MAX_CONCURRENT_STREAMS} allows: a request takes a stream on a
connection with room, a new connection is opened only when every one is
full (up to the pool size), and requests wait for room otherwise.  Over
TLS the connection must negotiate C{h2} by ALPN.  A stream the peer never
processed (refused, or above a GOAWAY's last stream) is sent again at once
on another connection.
"""

from __future__ import annotations

from typing import Any, List, Optional

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from easymesh.cluster.breakers import MAX_CONNECTIONS, MAX_PENDING_REQUESTS
from easymesh.config.addresses import UpstreamURL
from easymesh.config.model import PoolSettings
from easymesh.errors import Overflow, UpstreamProtocolError
from easymesh.interfaces import IConnectionTransport, IUpstream
from easymesh.message import Request, Response
from easymesh.upstream.h2client import H2ClientConnection, StreamRefused
from easymesh.upstream.http import Attempt, BodyEndWatch, endpointFor

#: ALPN for an HTTP/2 upstream over TLS.
H2_PROTOCOLS = (b"h2",)
#: ALPN for an upstream with C{protocol: auto}: HTTP/2 preferred.
AUTO_PROTOCOLS = (b"h2", b"http/1.1")


@implementer(IUpstream)
class H2Upstream:
    """
    An HTTP/2 upstream: multiplexed connections, opened as streams fill.
    """

    def __init__(
        self,
        url: UpstreamURL,
        settings: PoolSettings,
        reactor: Any,
        breakers: Any = None,
        tls: Any = None,
    ) -> None:
        self.url = url
        self._reactor = reactor
        self._breakers = breakers
        self._timeout = settings.responseTimeout
        self._maxConnections = settings.size
        secure = url.scheme == "https"
        self._endpoint = endpointFor(url, reactor, settings, tls, H2_PROTOCOLS if secure else None)
        self._secure = secure
        self._scheme = b"https" if secure else b"http"
        self._authority = url.authority.encode("ascii")
        self._connections: List[H2ClientConnection] = []
        self._connecting = 0
        self._waiting: List[Deferred[H2ClientConnection]] = []
        self._closed = False
        self._settings = settings
        self._tls = tls
        #: HTTP/1.1 connections to the same endpoint, for upgrades.
        self._http1: Optional[Any] = None

    def request(self, request: Request, timeout: Optional[float] = None) -> Deferred[Response]:
        """
        Send C{request} on a stream; see L{IUpstream.request}.  A request
        that asks to upgrade (a WebSocket) is sent over HTTP/1.1 to the
        same endpoint instead: an HTTP/2 stream cannot switch protocols
        (RFC 8441's extended CONNECT is not spoken).
        """
        if request.upgrade is not None and request.body is None:
            return self._upgrades().request(request, timeout)
        request.upstreamProtocol = "HTTP/2"
        attempt = Attempt(self._reactor, timeout if timeout is not None else self._timeout)
        body = request.body
        if body is not None:
            body = BodyEndWatch(body, attempt.endBody)
        d = self._send(request, body, retry=True)
        attempt.deferred = d
        if body is None:
            attempt.startTimer()
        return d.addBoth(attempt.finished)

    def _send(self, request: Request, body: Any, retry: bool) -> Deferred[Response]:
        d = self._connection()

        def send(connection: H2ClientConnection) -> Deferred[Response]:
            return connection.request(request, body)

        def refused(failure: Failure) -> Any:
            # Never processed by the peer: once more, on another connection.
            if retry and failure.check(StreamRefused) and body is None:
                return self._send(request, body, retry=False)
            return failure

        return d.addCallback(send).addErrback(refused)

    def _connection(self) -> Deferred[H2ClientConnection]:
        for connection in self._connections:
            if connection.capacity > 0:
                return succeed(connection)
        breakers = self._breakers
        connect = len(self._connections) < self._maxConnections and not self._connecting
        if connect and breakers is not None and not breakers.canConnect():
            breakers.overflowed(MAX_CONNECTIONS)
            return fail(Overflow(MAX_CONNECTIONS))
        if breakers is not None and not breakers.tryPending():
            return fail(Overflow(MAX_PENDING_REQUESTS))
        d: Deferred[H2ClientConnection] = Deferred(self._waiting.remove)
        self._waiting.append(d)
        if breakers is not None:
            d.addBoth(_pendingDone, breakers)
        if connect:
            self._connect()
        return d

    def _connect(self) -> None:
        self._connecting += 1
        connection = H2ClientConnection(self._authority, self._scheme, self._reactor)
        connection.observer = self._breakers
        connection.onCapacity = self._serveWaiting
        connection.onClose = self._lost
        d = connectProtocol(self._endpoint, connection)
        d.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, connection: H2ClientConnection) -> None:
        self._connecting -= 1
        if self._secure:
            negotiated = getattr(connection.transport, "negotiatedProtocol", None)
            if negotiated is not None and negotiated != b"h2":
                connection.transport.abortConnection()
                self._failWaiting(Failure(UpstreamProtocolError("upstream did not negotiate h2")))
                return
        if self._closed:
            connection.close()
            return
        self._connections.append(connection)
        self._serveWaiting(connection)

    def _connectFailed(self, reason: Failure) -> None:
        self._connecting -= 1
        self._failWaiting(reason)

    def _failWaiting(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(reason)

    def _serveWaiting(self, connection: H2ClientConnection) -> None:
        while self._waiting and connection.capacity > 0:
            d = self._waiting.pop(0)
            d.callback(connection)
        if self._waiting and not self._connecting:
            # Still more waiting than this connection can take: open another.
            if len(self._connections) < self._maxConnections and not self._closed:
                if self._breakers is None or self._breakers.canConnect():
                    self._connect()

    def _lost(self, connection: H2ClientConnection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)
        if self._waiting and not self._connecting and not self._closed:
            self._connect()

    def _upgrades(self) -> Any:
        """
        The HTTP/1.1 upstream for the same endpoint (offering no ALPN
        protocol over TLS, so that the peer speaks HTTP/1.1), made when
        first needed.
        """
        if self._http1 is None:
            from easymesh.upstream.http import HTTPUpstream

            self._http1 = HTTPUpstream(
                self.url,
                attrs.evolve(self._settings, protocol="http1"),
                self._reactor,
                self._breakers,
                self._tls,
            )
        return self._http1

    def idleConnections(self) -> int:
        """
        Connections open with no stream on them.
        """
        idle = sum(1 for c in self._connections if not c.active)
        return idle + (self._http1.idleConnections() if self._http1 is not None else 0)

    def close(self) -> Deferred[None]:
        """
        Close every connection once its streams end; none is opened again.
        """
        self._closed = True
        for connection in list(self._connections):
            connection.close()
        if self._http1 is not None:
            return self._http1.close()
        return succeed(None)


def _pendingDone(result: Any, breakers: Any) -> Any:
    breakers.pendingDone()
    return result


@implementer(IHandshakeListener)
class _ALPNProbe(Protocol):
    """
    A connection made only to learn what the upstream picks by ALPN.
    """

    transport: IConnectionTransport

    def __init__(self) -> None:
        self.negotiated: Deferred[Optional[bytes]] = Deferred()

    def handshakeCompleted(self) -> None:
        protocol = getattr(self.transport, "negotiatedProtocol", None)
        self.transport.loseConnection()
        if not self.negotiated.called:
            self.negotiated.callback(protocol)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.negotiated.called:
            self.negotiated.errback(reason)


@implementer(IUpstream)
class AutoUpstream:
    """
    An C{https://} upstream of a cluster with C{protocol: auto}: the first
    connection offers C{h2} and C{http/1.1} by ALPN, and what the upstream
    picks decides what this endpoint is spoken to with from then on (an
    HTTP/2 pool, or HTTP/1.1 connections).  A failed first connection is
    tried again with the next request.
    """

    def __init__(
        self,
        url: UpstreamURL,
        settings: PoolSettings,
        reactor: Any,
        breakers: Any = None,
        tls: Any = None,
    ) -> None:
        self.url = url
        self._settings = settings
        self._reactor = reactor
        self._breakers = breakers
        self._tls = tls
        self._endpoint = endpointFor(url, reactor, settings, tls, AUTO_PROTOCOLS)
        self.chosen: Optional[Any] = None
        self._waiting: List[Deferred[Any]] = []

    def request(self, request: Request, timeout: Optional[float] = None) -> Deferred[Response]:
        if self.chosen is not None:
            return self.chosen.request(request, timeout)
        breakers = self._breakers
        if breakers is not None and not breakers.tryPending():
            # Waiting for the first connection counts as pending.
            return fail(Overflow(MAX_PENDING_REQUESTS))
        d: Deferred[Any] = Deferred(self._waiting.remove)
        if breakers is not None:
            d.addBoth(_pendingDone, breakers)
        self._waiting.append(d)
        if len(self._waiting) == 1:
            probe = _ALPNProbe()
            connectProtocol(self._endpoint, probe).addErrback(self._probed)
            probe.negotiated.addBoth(self._probed)
        return d.addCallback(lambda upstream: upstream.request(request, timeout))

    def _probed(self, result: Any) -> None:
        if self.chosen is None and not isinstance(result, Failure):
            from easymesh.upstream.http import HTTPUpstream

            if result == b"h2":
                self.chosen = H2Upstream(
                    self.url, attrs.evolve(self._settings, protocol="http2"),
                    self._reactor, self._breakers, self._tls,
                )  # fmt: skip
            else:
                self.chosen = HTTPUpstream(
                    self.url, self._settings, self._reactor, self._breakers, self._tls
                )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if self.chosen is not None:
                d.callback(self.chosen)
            else:
                d.errback(result)

    def idleConnections(self) -> int:
        return self.chosen.idleConnections() if self.chosen is not None else 0

    def close(self) -> Deferred[None]:
        return self.chosen.close() if self.chosen is not None else succeed(None)
