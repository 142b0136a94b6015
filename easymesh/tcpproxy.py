# -*- test-case-name: tests.test_tcpproxy -*-
"""
A C{tcp} listener: each accepted connection is joined to a connection to
one endpoint of its cluster, and bytes pass both ways unread.

The endpoint is picked (by the cluster's balancer; C{ring_hash} hashes the
client's address) as soon as the connection is accepted, or once its TLS
handshake has admitted the caller on an mTLS listener: many protocols let
the server speak first.  The cluster's circuit breakers count the
connections, and a failed connect counts for outlier detection and closes
the client's connection.

Once connected, the two connections are the ends of a
L{easymesh.tunnel.Tunnel}, as a WebSocket's are: bytes pass both ways with
back-pressure (memory grows by no more than the transports' buffers) and
half-close where the transports allow it (not TLS).  A pair with no byte
moving either way for the idle timeout is closed; so is every pair, after
C{--drain}, when the sidecar stops.
"""

from __future__ import annotations

from typing import Any, List, Optional, Set

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from easymesh.cluster.breakers import MAX_CONNECTIONS
from easymesh.edge import admitCaller, peerAddress
from easymesh.errors import NoHealthyUpstream, Overflow, UpstreamConnectFailure
from easymesh.h1server import closeWithoutWaiting
from easymesh.tunnel import CLIENT_CLOSED, DRAINED, IDLE_TIMEOUT, TransportEnd, Tunnel
from easymesh.interfaces import IConnectionTransport

_log = Logger()

#: How a pair ended, for the access log and metrics: as a tunnel ends
#: (L{easymesh.tunnel.ENDS}), or before it began (the errors' causes
#: where one applies).
REFUSED = "caller_refused"
CONNECT_FAILURE = UpstreamConnectFailure.cause
NO_HEALTHY_UPSTREAM = NoHealthyUpstream.cause
OVERFLOW = Overflow.cause

#: The idle timeout of a C{tcp} listener unless it says otherwise: an
#: hour, as Envoy's C{tcp_proxy} (database pools keep idle connections).
TCP_IDLE_TIMEOUT = 3600.0


class TCPListener(Factory):
    """
    A C{tcp} listener's factory, and what a drain sees of it (as of a
    L{easymesh.listener.ProxySite}: C{sweeper.closeIdle()} and
    C{sweeper.closeAll()}).

    @param runtime: The L{easymesh.runtime.MeshRuntime}, whose C{clusters}
        are looked up at each connection (a reload's endpoints are used).
    @param allowed: Identity patterns an mTLS caller must match, or
        L{None} on a plaintext listener.
    """

    noisy = False

    def __init__(
        self,
        name: str,
        runtime: Any,
        cluster: str,
        clock: Any,
        inflight: Any,
        idleTimeout: float = TCP_IDLE_TIMEOUT,
        accessLog: Any = None,
        telemetry: Any = None,
        allowed: Any = None,
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.cluster = cluster
        self.clock = clock
        self.inflight = inflight
        self.idleTimeout = idleTimeout
        self.accessLog = accessLog
        self.telemetry = telemetry
        self.allowed = allowed
        self.pairs: Set["_Downstream"] = set()
        self._whenEmpty: List[Deferred[None]] = []
        self.sweeper = self

    def buildProtocol(self, addr: Any) -> "_Downstream":
        return _Downstream(self, addr)

    # What a drain sees.

    def closeIdle(self) -> None:
        """
        Nothing: a pair is never idle in the sense of an HTTP connection
        between requests; a drain closes pairs with L{closeAll}, once
        C{--drain} has passed.
        """

    def closeAll(self) -> "Deferred[None]":
        """
        Close every pair.

        @return: A L{Deferred} that fires once all are closed.
        """
        for pair in list(self.pairs):
            pair.close(DRAINED)
        if not self.pairs:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._whenEmpty.append(d)
        return d

    def _ended(self, pair: "_Downstream") -> None:
        self.pairs.discard(pair)
        if not self.pairs and self._whenEmpty:
            waiting, self._whenEmpty = self._whenEmpty, []
            for d in waiting:
                d.callback(None)


def _close(transport: Any) -> None:
    """
    Close C{transport} after what it was given; a TLS one without waiting
    for the peer's close alert.
    """
    if ISSLTransport.providedBy(transport):
        closeWithoutWaiting(transport)
    transport.loseConnection()


def _end(transport: Any) -> TransportEnd:
    """
    The tunnel end of a connection: plain TCP can half-close, TLS cannot.
    """
    return TransportEnd(transport, not ISSLTransport.providedBy(transport))


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class _Downstream(Protocol, TimeoutMixin):
    """
    The client's side of a pair; once the upstream is connected, the two
    are the ends of a L{Tunnel}.
    """

    transport: IConnectionTransport

    def __init__(self, listener: TCPListener, addr: Any) -> None:
        self.listener = listener
        self.addr = addr
        self.callLater = listener.clock.callLater  # type: ignore[method-assign]  # TimeoutMixin's clock
        self.end: Optional[TransportEnd] = None
        self.tunnel: Optional[Tunnel] = None
        self.endpoint: Any = None
        self.clusterObject: Any = None
        self.connecting: Optional[Deferred[Any]] = None
        self.connectStarted = 0.0
        self.connectTime = 0.0
        self.started = listener.clock.seconds()
        self.ended: Optional[str] = None
        self.closed = False

    def connectionMade(self) -> None:
        listener = self.listener
        listener.pairs.add(self)
        listener.inflight.enter()
        if listener.telemetry is not None:
            listener.telemetry.connectionOpened(listener.name)
        self.setTimeout(listener.idleTimeout)
        if listener.allowed is None:
            self._connect()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done: connect if the caller is admitted,
        else close its connection (there is no status to refuse it with).
        """
        if self.listener.allowed is None or self.closed:
            return
        if admitCaller(self.transport, self.listener.allowed, self.addr) is None:
            self.ended = REFUSED
            self.transport.abortConnection()
            return
        self._connect()

    def _connect(self) -> None:
        # Nothing more is read until the upstream is connected.
        self.end = _end(self.transport)
        listener = self.listener
        cluster = self.clusterObject = listener.runtime.clusters.get(listener.cluster)
        try:
            if cluster is None:
                raise NoHealthyUpstream(f"no cluster {listener.cluster!r}")
            self.endpoint = endpoint = cluster.pick(getattr(self.addr, "host", "").encode("latin-1"))
        except NoHealthyUpstream:
            self.close(NO_HEALTHY_UPSTREAM)
            return
        if not cluster.breakers.canConnect():
            cluster.breakers.overflowed(MAX_CONNECTIONS)
            self.close(OVERFLOW)
            return
        self.connectStarted = cluster.tcpConnecting(endpoint)
        self.connecting = d = endpoint.upstream.connect(_UpstreamFactory(self))
        d.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, upstream: "_Upstream") -> None:
        self.connecting = None
        self.connectTime = self.listener.clock.seconds() - self.connectStarted
        self.clusterObject.tcpConnected(self.endpoint, self.connectStarted)
        if self.closed:
            upstream.end.abort()
            return
        assert self.end is not None
        self.tunnel = Tunnel(self.end, upstream.end, self.listener.clock, self.listener.idleTimeout, None, self._ended)
        self.tunnel.start()

    def _connectFailed(self, reason: Failure) -> None:
        self.connecting = None
        if reason.check(CancelledError, ConnectingCancelledError) is not None:
            # Abandoned: the client went away first.
            self.endpoint.finished(self.listener.clock.seconds(), None)
            return
        self.clusterObject.tcpConnectFailed(self.endpoint)
        if self.closed:
            return
        _log.info(
            "{listener}: could not connect {client} to {endpoint}: {why}",
            listener=self.listener.name,
            client=peerAddress(self.addr),
            endpoint=self.endpoint.key,
            why=reason.getErrorMessage(),
        )
        self.close(CONNECT_FAILURE)

    def _ended(self, how: str) -> None:
        if self.ended is None:
            self.ended = how

    # What the connection delivers: to the tunnel end once there is one.

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if self.end is not None:
            self.end.dataReceived(data)

    def readConnectionLost(self) -> None:
        if self.end is not None:
            self.end.readConnectionLost()
        else:
            self.close(CLIENT_CLOSED)

    def writeConnectionLost(self) -> None:
        pass

    def timeoutConnection(self) -> None:
        if self.tunnel is not None:
            self.tunnel.timedOut()
        else:
            self.close(IDLE_TIMEOUT)

    def close(self, why: str) -> None:
        """
        End the pair: both connections close, after what they were sent.
        """
        if self.tunnel is not None:
            self.tunnel.cut(why)
            return
        if self.ended is None:
            self.ended = why
        if self.connecting is not None:
            connecting, self.connecting = self.connecting, None
            connecting.cancel()
        _close(self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.closed:
            return
        self.closed = True
        self.setTimeout(None)
        if self.connecting is not None:
            connecting, self.connecting = self.connecting, None
            connecting.cancel()
        if self.end is not None:
            self.end.connectionLost(reason)
        self._report()

    def _report(self) -> None:
        listener = self.listener
        listener.inflight.leave()
        listener._ended(self)
        duration = listener.clock.seconds() - self.started
        ended = self.ended or CLIENT_CLOSED
        tunnel = self.tunnel
        bytesIn = tunnel.fromClient if tunnel is not None else 0
        bytesOut = tunnel.fromUpstream if tunnel is not None else 0
        endpoint = self.endpoint.key if self.endpoint is not None else None
        telemetry = listener.telemetry
        if telemetry is not None:
            telemetry.connectionClosed(listener.name)
            failure = ended if tunnel is None else None
            connectTime = self.connectTime if tunnel is not None else None
            telemetry.tcpConnectionDone(
                listener.name, listener.cluster, ended, bytesIn, bytesOut, connectTime, failure
            )
        if listener.accessLog is not None:
            listener.accessLog.recordConnection(
                listener.name,
                peerAddress(self.addr),
                listener.cluster,
                endpoint,
                bytesIn,
                bytesOut,
                duration,
                ended,
                self.started,
            )


@implementer(IHalfCloseableProtocol)
class _Upstream(Protocol):
    """
    The upstream's side of a pair: the other end of its tunnel.
    """

    transport: IConnectionTransport

    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream
        self.breakers = downstream.clusterObject.breakers

    def connectionMade(self) -> None:
        self.breakers.connectionOpened()
        self.end = _end(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.downstream.resetTimeout()
        self.end.dataReceived(data)

    def readConnectionLost(self) -> None:
        self.end.readConnectionLost()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.breakers.connectionClosed()
        self.end.connectionLost(reason)


class _UpstreamFactory(Factory):
    noisy = False

    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def buildProtocol(self, addr: Any) -> _Upstream:
        return _Upstream(self.downstream)
