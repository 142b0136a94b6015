# -*- test-case-name: tests.test_tunnel -*-
"""
What an exchange becomes once its upstream switched protocols (a C{101}
to a WebSocket upgrade): a byte tunnel between the client's connection and
the upstream's.

Bytes are relayed as they arrive, with back-pressure both ways: a side
whose send buffer fills pauses the reading of the other, so that however
much one side sends while the other does not read, memory grows by no
more than the transports' buffers.  A side that ends its sending (a TCP
half-close) still receives: the end is passed on and the tunnel ends once
both sides have ended, or either connection is gone.  Twisted's TLS cannot
half-close: a close alert received closes the whole connection (after
answering it), so an end of sending that would be passed on to a TLS side
closes the tunnel instead, both sides gracefully.

A tunnel ends when either connection closes, when no byte has moved
either way for its idle timeout, when its maximum lifetime passes, or when
a drain cuts it; its exchange then reports it once, saying how it ended
(L{ENDS}) and the bytes moved each way.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from easymesh.errors import CLIENT_CLOSED, UpstreamReset
from easymesh.interfaces import ITunnelEnd

#: How a tunnel ended (two are the causes of the same names): a
#: side closed its connection, or ended its sending after the other had; a side's connection was reset (or failed); no byte
#: moved for its idle timeout; its maximum lifetime passed; a drain cut it.
UPSTREAM_CLOSED = "upstream_closed"
CLIENT_RESET = "client_reset"
UPSTREAM_RESET = UpstreamReset.cause
IDLE_TIMEOUT = "idle_timeout"
MAX_LIFETIME = "max_lifetime"
DRAINED = "drained"
ENDS = (
    CLIENT_CLOSED,
    UPSTREAM_CLOSED,
    CLIENT_RESET,
    UPSTREAM_RESET,
    IDLE_TIMEOUT,
    MAX_LIFETIME,
    DRAINED,
)

#: Seconds a side closed by the tunnel may take to take what it is owed
#: before its connection is aborted.
CLOSE_TIMEOUT = 5.0


@implementer(ITunnelEnd)
class TransportEnd:
    """
    The tunnel end of a connection whose protocol has switched: its
    protocol hands on what it receives (L{dataReceived},
    L{readConnectionLost}, L{connectionLost}).

    @param transport: The connection's transport; no producer may be
        registered with it.
    @param canHalfClose: Whether the transport can end its sending alone
        (plain TCP, not TLS).
    @param pending: Bytes that arrived after the protocol switch but were
        read with its head.
    """

    def __init__(self, transport: Any, canHalfClose: bool, pending: bytes = b"") -> None:
        self.transport = transport
        self.canHalfClose = canHalfClose
        self._pending = [pending] if pending else []
        self._readEnded = False
        self._lost: Optional[Failure] = None
        #: The tunnel this end belongs to, once started.
        self.tunnel: Any = None
        self._registered = False
        self._paused = True
        self._closing = False
        transport.pauseProducing()

    # From the protocol.

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is None:
            self._pending.append(data)
        else:
            self.tunnel.received(self, data)

    def readConnectionLost(self) -> None:
        if self._closing:
            # Both ways are over now.
            self.transport.loseConnection()
        elif self.tunnel is None:
            self._readEnded = True
        else:
            self.tunnel.readEnded(self)

    def connectionLost(self, reason: Failure) -> None:
        if self.tunnel is None:
            self._lost = reason
        else:
            self.tunnel.lost(self, reason)

    # ITunnelEnd.

    def start(self, tunnel: Any) -> None:
        self.tunnel = tunnel
        pending, self._pending = self._pending, []
        for data in pending:
            tunnel.received(self, data)
        if self._readEnded:
            tunnel.readEnded(self)
        if self._lost is not None:
            tunnel.lost(self, self._lost)
        else:
            self.resumeReading()

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def endWrite(self) -> None:
        self._unregister()
        self.transport.loseWriteConnection()

    def setProducer(self, producer: Optional[IPushProducer]) -> None:
        self._unregister()
        if producer is not None:
            self.transport.registerProducer(producer, True)
            self._registered = True

    def pauseReading(self) -> None:
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def resumeReading(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def close(self) -> None:
        """
        Close without losing what is in flight: what was written is sent,
        then the end of sending (TCP) or a TLS close alert; what the peer
        still sends is read and dropped until it closes too (the tunnel
        aborts it if it takes too long).  Closing at once with unread bytes
        would reset the connection, and a reset may destroy what the peer
        had not read yet.
        """
        if self._closing:
            return
        self._closing = True
        # No transport closes while a producer is registered with it.
        self._unregister()
        self.resumeReading()
        if self.canHalfClose:
            self.transport.loseWriteConnection()
        else:
            # TLS: its close alert, then the peer's awaited.
            self.transport.loseConnection()

    def abort(self) -> None:
        self._unregister()
        self.transport.abortConnection()

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()


@implementer(IPushProducer)
class _Reading:
    """
    The reading of one end, as the producer the other end's transport
    pauses while its send buffer is full.
    """

    def __init__(self, end: Any) -> None:
        self._end = end

    def pauseProducing(self) -> None:
        self._end.pauseReading()

    def resumeProducing(self) -> None:
        self._end.resumeReading()

    def stopProducing(self) -> None:
        self._end.abort()


class Tunnel:
    """
    Relay bytes both ways between a client's connection and an upstream's.

    @param clock: Gives the time (an L{IReactorTime}).
    @param idleTimeout: Seconds with no byte moving either way before the
        tunnel is closed.
    @param maxLifetime: Seconds after which it is closed whatever moves;
        L{None} for no limit.
    @param onEnd: Called once, with how it ended (one of L{ENDS}), when it
        ends.
    @ivar fromClient: Bytes relayed from the client to the upstream.
    @ivar fromUpstream: Bytes relayed from the upstream to the client.
    """

    def __init__(
        self,
        client: ITunnelEnd,
        upstream: ITunnelEnd,
        clock: Any,
        idleTimeout: float,
        maxLifetime: Optional[float],
        onEnd: Callable[[str], None],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.maxLifetime = maxLifetime
        self._onEnd = onEnd
        self.started = self.movedAt = clock.seconds()
        self.fromClient = 0
        self.fromUpstream = 0
        self.how: Optional[str] = None
        #: The ends that ended their sending, in order.
        self._readEnded: List[Any] = []
        self._open = {id(client), id(upstream)}
        self._abortCall: Any = None

    def start(self) -> None:
        """
        Relay from now on, beginning with what either side sent already.
        """
        self.client.setProducer(_Reading(self.upstream))
        self.upstream.setProducer(_Reading(self.client))
        self.upstream.start(self)
        if self.how is None:
            self.client.start(self)

    def _other(self, end: Any) -> Any:
        return self.upstream if end is self.client else self.client

    # From the ends.

    def received(self, end: Any, data: bytes) -> None:
        if self.how is not None:
            return
        self.movedAt = self.clock.seconds()
        if end is self.client:
            self.fromClient += len(data)
        else:
            self.fromUpstream += len(data)
        self._other(end).write(data)

    def readEnded(self, end: Any) -> None:
        if self.how is not None or end in self._readEnded:
            return
        self._readEnded.append(end)
        other = self._other(end)
        first = self._readEnded[0]
        if len(self._readEnded) == 2 or not other.canHalfClose:
            # Both ways are over; or the end cannot be passed on (TLS), and
            # is then taken for the close it most often is (a peer gone),
            # rather than leave the other side waiting for the idle timeout.
            self._end(CLIENT_CLOSED if first is self.client else UPSTREAM_CLOSED)
        else:
            other.endWrite()

    def lost(self, end: Any, reason: Failure) -> None:
        self._open.discard(id(end))
        if not self._open and self._abortCall is not None:
            if self._abortCall.active():
                self._abortCall.cancel()
            self._abortCall = None
        if self.how is not None:
            return
        clean = reason.check(ConnectionDone) is not None
        if end is self.client:
            how = CLIENT_CLOSED if clean else CLIENT_RESET
        else:
            how = UPSTREAM_CLOSED if clean else UPSTREAM_RESET
        self._end(how, abort=not clean)

    # Timeouts and drains.

    @property
    def deadline(self) -> Optional[float]:
        """
        When the tunnel times out, if nothing moves before; L{None} once
        it has ended.
        """
        if self.how is not None:
            return None
        deadline = self.movedAt + self.idleTimeout
        if self.maxLifetime is not None:
            deadline = min(deadline, self.started + self.maxLifetime)
        return deadline

    def timedOut(self) -> None:
        """
        Its deadline passed: close both sides.
        """
        if self.how is not None:
            return
        lifetime = self.maxLifetime
        if lifetime is not None and self.clock.seconds() >= self.started + lifetime:
            self._end(MAX_LIFETIME)
        else:
            self._end(IDLE_TIMEOUT)

    def cut(self, how: str = DRAINED) -> None:
        """
        Close both sides now (once what is written has been sent).
        """
        if self.how is None:
            self._end(how)

    def _end(self, how: str, abort: bool = False) -> None:
        self.how = how
        for end in (self.client, self.upstream):
            if id(end) in self._open:
                if abort:
                    end.abort()
                else:
                    end.close()
        if self._open and not abort:
            self._abortCall = self.clock.callLater(CLOSE_TIMEOUT, self._abortRest)
        self._onEnd(how)

    def _abortRest(self) -> None:
        self._abortCall = None
        for end in (self.client, self.upstream):
            if id(end) in self._open:
                end.abort()
