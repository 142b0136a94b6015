"""
Tests for how L{easymesh.h1server.HTTP1Channel} ends a connection: every
way it closes one (timeouts, C{Connection: close}, HTTP/1.0, a 400, an
early answer, a drain, a stop), each over plaintext and over real TLS (the
mTLS inbound listener's L{MutualTLSFactory} and the sidecar's own contexts,
bytes moved in memory); and the close timeout that aborts a connection
whose client does not take what it is owed.

A L{Wire} stands for the TCP connection: two L{StringTransport}s whose
bytes move only when pumped.  A side's C{loseConnection} completes as a
socket's does, once what that side wrote has been delivered; its
C{abortConnection} at once.  Time is a L{Clock}, behind the site's
L{DeadlineSweeper} and the TLS layer's write aggregation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.http_headers import Headers

from easymesh.h1server import EdgeLimits, HTTP1Channel
from easymesh.listener import MutualTLSFactory, ProxySite
from easymesh.tls.certs import Issued, makeCA, makeWorkload
from easymesh.tls.contexts import ClientTLS, ServerTLS
from easymesh.tls.identity import parsePatterns

PLAIN, TLS = "plain", "tls"
TRANSPORTS = [PLAIN, TLS]

LIMITS = EdgeLimits(idleTimeout=5, headTimeout=4, bodyTimeout=3, closeTimeout=10)
HOST = b"Host: example.test\r\n"
BODY = b"answer body\n"


class PKI:
    """
    A CA, the listener's certificate and a client's.
    """

    def __init__(self, directory: Path) -> None:
        self.ca = makeCA(directory)
        self.server = makeWorkload(self.ca, "spiffe://example.org/ns/default/sa/orders", directory, "orders")
        self.client = makeWorkload(self.ca, "spiffe://example.org/ns/default/sa/web", directory, "web")

    def serverTLS(self, clock: Clock) -> ServerTLS:
        return ServerTLS(self.server.certPath, self.server.keyPath, self.ca.certPath, clock)

    def clientTLS(self, clock: Clock, issued: Issued) -> ClientTLS:
        return ClientTLS(issued.certPath, issued.keyPath, self.ca.certPath, ["*"], None, clock)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("h1close-pki"))


class Held:
    """
    A request the L{App} keeps unanswered, and how the test answers it.
    """

    def __init__(self, request: Any, responder: Any) -> None:
        self.request = request
        self.responder = responder

    def respond(self, code: int, body: bytes, closeAfter: bool = False) -> None:
        if closeAfter:
            self.responder.closeAfterResponse()
        headers = Headers({b"content-length": [b"%d" % len(body)]})
        self.responder.sendHead(code, b"", headers)
        self.responder.sendData(body)
        self.responder.finish(None)


class _AppExchange:
    def __init__(self, app: "App", request: Any, responder: Any) -> None:
        self.app = app
        self.request = request
        self.responder = responder
        self.ended: Optional[Failure] = None

    def start(self) -> None:
        request = self.request
        path = request.target
        if path == b"/deny":
            Held(request, self.responder).respond(403, b"denied\n")
        elif path == b"/hold" or request.method == b"POST":
            self.app.held.append(Held(request, self.responder))
        else:
            size = path[len(b"/size/") :] if path.startswith(b"/size/") else None
            Held(request, self.responder).respond(200, b"x" * int(size) if size else BODY)

    def done(self, reason: Optional[Failure] = None) -> None:
        self.ended = reason


class App(Resource):
    """
    C{/hold} (and any POST): kept unanswered in C{held}; C{/deny}: 403 at
    once, before any body; C{/size/N}: 200 with N bytes; anything else:
    200 with L{BODY}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: List[Held] = []

    def handle(self, request: Any, responder: Any, target: bytes) -> _AppExchange:
        return _AppExchange(self, request, responder)


class Client(Protocol):
    """
    What the client application receives, and how its connection ended.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = reason


class TCP(StringTransport):
    """
    A L{StringTransport} for a TCP connection.
    """

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class Wire:
    """
    One client connection to a L{ProxySite}, plaintext or through TLS.

    @ivar server: The server's protocol on the TCP connection (the channel,
        or the TLS layer in front of it).
    @ivar clientEnd: The client's protocol on the TCP connection.
    """

    def __init__(
        self,
        transport: str,
        pki: PKI,
        limits: EdgeLimits = LIMITS,
        allowed: Optional[List[str]] = None,
        handshake: bool = True,
    ) -> None:
        self.clock = Clock()
        self.app = App()
        self.site = ProxySite(self.app, limits=limits, reactor=self.clock)
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        self.client = Client()
        if transport == TLS:
            if allowed is not None:
                self.site.allowedIdentities = parsePatterns(allowed)
            server = MutualTLSFactory(pki.serverTLS(self.clock), False, self.site, clock=self.clock)
            self.server: Any = server.buildProtocol(address)
            client = TLSMemoryBIOFactory(
                pki.clientTLS(self.clock, pki.client),
                True,
                Factory.forProtocol(lambda: self.client),
                clock=self.clock,
            )
            self.clientEnd: Any = client.buildProtocol(address)
        else:
            self.server = self.site.buildProtocol(address)
            self.clientEnd = self.client
        self.serverTCP = TCP(peerAddress=IPv4Address("TCP", "192.0.2.7", 50000))
        self.clientTCP = TCP()
        self.serverGone: Optional[Failure] = None
        self.clientGone = not handshake  # a client that never starts
        self.server.makeConnection(self.serverTCP)
        if handshake:
            self.clientEnd.makeConnection(self.clientTCP)
            self.pump()

    @property
    def channel(self) -> HTTP1Channel:
        return getattr(self.server, "wrappedProtocol", self.server)

    def send(self, data: bytes) -> None:
        self.client.transport.write(data)
        self.pump()

    def pump(self, clientReads: bool = True) -> None:
        """
        Move bytes both ways (the server's to the client only if it reads)
        until none move, then complete the closes that are due.
        """
        for _ in range(100):
            self.clock.advance(0)
            moved = False
            data = self.clientTCP.value()
            if data and self.serverGone is None:
                self.clientTCP.clear()
                self.server.dataReceived(data)
                moved = True
            data = self.serverTCP.value()
            if data and clientReads and not self.clientGone:
                self.serverTCP.clear()
                self.clientEnd.dataReceived(data)
                moved = True
            if not moved and not self._closes():
                return
        raise AssertionError("bytes still moving after 100 rounds")

    def _closes(self) -> bool:
        if self.serverGone is not None:
            return False
        if self.serverTCP.disconnected:  # StringTransport's mark of an abort
            self._lost(Failure(ConnectionAborted()), Failure(ConnectionLost()))
        elif self.serverTCP.disconnecting and not self.serverTCP.value():
            self._lost(Failure(ConnectionDone()), Failure(ConnectionDone()))
        elif self.clientTCP.disconnecting and not self.clientTCP.value():
            self._lost(Failure(ConnectionDone()), Failure(ConnectionDone()))
        else:
            return False
        return True

    def _lost(self, server: Failure, client: Failure) -> None:
        self.serverGone = server
        self.server.connectionLost(server)
        if not self.clientGone:
            self.clientGone = True
            self.clientEnd.connectionLost(client)

    def tick(self, seconds: float, clientReads: bool = True) -> None:
        """
        Let C{seconds} pass, a second at a time (the sweeper's pace).
        """
        for _ in range(int(seconds)):
            self.clock.advance(1)
            self.pump(clientReads)

    # What the test checks.

    def assertClosedCleanly(self) -> None:
        """
        The server closed the connection after delivering everything, TLS
        close alert included, without an abort; the client saw an orderly
        end; the site counts no connection.
        """
        assert self.serverGone is not None, "the connection is still open"
        assert self.serverTCP.disconnecting, "the server did not close the connection"
        assert not self.serverTCP.disconnected, "the server aborted the connection"
        assert self.serverGone.check(ConnectionDone), self.serverGone
        assert self.client.lost is not None and self.client.lost.check(ConnectionDone), self.client.lost
        assert self.site.sweeper.open == 0

    def status(self) -> bytes:
        return self.client.data.split(b"\r\n", 1)[0]


def get(target: bytes = b"/", headers: bytes = HOST, version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + target + b" " + version + b"\r\n" + headers + b"\r\n"


# Every way a connection ends gracefully.


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_idleTimeoutClosesNewConnection(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    wire.tick(LIMITS.idleTimeout - 1)
    assert wire.serverGone is None
    wire.tick(2)
    assert wire.client.data == b""
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_idleTimeoutClosesKeptAliveConnection(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    wire.send(get(b"/first"))
    assert wire.client.data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert wire.client.data.endswith(BODY)
    assert wire.serverGone is None
    wire.tick(LIMITS.idleTimeout + 1)
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_headTimeout408ThenClose(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    wire.send(b"GET /slow HTTP/1.1\r\n" + HOST)
    wire.tick(LIMITS.headTimeout + 1)
    assert wire.status() == b"HTTP/1.1 408 Request Timeout"
    assert b"\r\nConnection: close\r\n" in wire.client.data
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bodyTimeout408ThenClose(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    wire.send(b"POST /upload HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\nabc")
    assert len(wire.app.held) == 1
    wire.tick(LIMITS.bodyTimeout + 1)
    assert wire.status() == b"HTTP/1.1 408 Request Timeout"
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connectionCloseResponseThenClose(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    wire.send(get(b"/a", HOST + b"Connection: close\r\n"))
    assert wire.status() == b"HTTP/1.1 200 OK"
    assert wire.client.data.endswith(b"\r\n\r\n" + BODY)
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_http10ResponseThenClose(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    wire.send(get(b"/old", b"", b"HTTP/1.0"))
    assert wire.status() == b"HTTP/1.0 200 OK"
    assert wire.client.data.endswith(BODY)
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_framingError400ThenClose(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    wire.send(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert wire.status() == b"HTTP/1.1 400 Bad Request"
    assert wire.app.held == []
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_earlyAnswerThenClose(transport: str, pki: PKI) -> None:
    """
    A response complete before the request body: the rest of the body is
    not read, and the connection closes after the response.
    """
    wire = Wire(transport, pki)
    wire.send(b"PUT /deny HTTP/1.1\r\n" + HOST + b"Content-Length: 100\r\n\r\nabc")
    assert wire.status() == b"HTTP/1.1 403 Forbidden"
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_drainClosesIdleConnections(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    wire.send(get(b"/first"))
    wire.site.sweeper.closeIdle()
    wire.pump()
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_drainClosesAfterTheResponseInFlight(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    wire.send(get(b"/hold"))
    [held] = wire.app.held
    wire.site.sweeper.closeIdle()
    wire.pump()
    assert wire.serverGone is None
    # As the exchange does while draining.
    held.respond(200, b"ok", closeAfter=True)
    wire.pump()
    assert wire.client.data.endswith(b"\r\n\r\nok")
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stopClosesIdleConnections(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    wire.send(get(b"/first"))
    closed: List[Any] = []
    wire.site.sweeper.closeAll().addBoth(closed.append)
    wire.pump()
    wire.assertClosedCleanly()
    assert closed == [None]


# What TLS adds.


def test_tlsCloseDoesNotWaitForTheClientsAlert(pki: PKI) -> None:
    """
    The server sends its close alert and closes the TCP connection at once:
    a client that never answers with its own alert (most HTTP clients) does
    not keep the connection open.
    """
    wire = Wire(TLS, pki)
    wire.channel.loseConnection()
    assert wire.serverTCP.disconnecting
    assert not wire.serverTCP.disconnected
    assert wire.serverTCP.value()  # the close alert, still to be delivered


def test_tlsHandshakeRefusalAborts(pki: PKI) -> None:
    """
    A client whose identity is not allowed is dropped once its handshake
    completes.
    """
    wire = Wire(TLS, pki, allowed=["spiffe://example.org/ns/default/sa/nobody"])
    assert wire.serverGone is not None and wire.serverGone.check(ConnectionAborted)
    assert wire.site.sweeper.open == 0


def test_tlsSilentClientAbortedAtIdleTimeout(pki: PKI) -> None:
    """
    A TCP connection that never starts its TLS handshake is dropped at the
    idle timeout.
    """
    wire = Wire(TLS, pki, handshake=False)
    wire.tick(LIMITS.idleTimeout + 1)
    assert wire.serverGone is not None and wire.serverGone.check(ConnectionAborted)
    assert wire.site.sweeper.open == 0


# The close timeout.


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_clientThatNeverReadsIsAbortedAfterCloseTimeout(transport: str, pki: PKI) -> None:
    """
    A response the client does not read keeps a closing connection open
    for the close timeout at most; then it is aborted.
    """
    wire = Wire(transport, pki)
    wire.client.transport.write(get(b"/size/300000", HOST + b"Connection: close\r\n"))
    wire.pump(clientReads=False)
    assert wire.channel.closing
    assert wire.serverTCP.value()  # the response, undelivered
    wire.tick(LIMITS.closeTimeout - 1, clientReads=False)
    assert wire.serverGone is None
    assert not wire.serverTCP.disconnected
    wire.tick(2, clientReads=False)
    assert wire.serverTCP.disconnected  # aborted
    assert wire.serverGone is not None and wire.serverGone.check(ConnectionAborted)
    assert wire.site.sweeper.open == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_closeDeadlineIsNotPushedBack(transport: str, pki: PKI) -> None:
    """
    Closing a connection that is already closing (a drain or stop meeting
    a timed-out one) leaves its close deadline where it was.
    """
    wire = Wire(transport, pki)
    wire.client.transport.write(get(b"/size/300000", HOST + b"Connection: close\r\n"))
    wire.pump(clientReads=False)
    deadline = wire.channel.deadline
    assert deadline is not None
    wire.tick(LIMITS.closeTimeout - 2, clientReads=False)
    wire.channel.loseConnection()
    wire.site.sweeper.closeAll()
    assert wire.channel.deadline == deadline
    wire.tick(3, clientReads=False)
    assert wire.serverGone is not None and wire.serverGone.check(ConnectionAborted)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_slowClientWithinCloseTimeoutGetsEverything(transport: str, pki: PKI) -> None:
    """
    A client that takes what it is owed within the close timeout gets it
    all, and an orderly close.
    """
    wire = Wire(transport, pki)
    wire.client.transport.write(get(b"/size/300000", HOST + b"Connection: close\r\n"))
    wire.tick(LIMITS.closeTimeout - 1, clientReads=False)
    assert wire.serverGone is None
    wire.pump()
    assert wire.client.data.endswith(b"\r\n\r\n" + b"x" * 300000)
    wire.assertClosedCleanly()


# The same closes on an HTTP/2 connection (prior-knowledge h2c, or h2 over
# TLS), through the listener that handed it over.


class H2Client:
    """
    The h2 library's client side of one wire.
    """

    def __init__(self, wire: Wire) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection

        self.wire = wire
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.wire.send(self.h2.data_to_send())

    def get(self, path: bytes) -> int:
        streamId = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            streamId,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.test"), (b":path", path)],
            end_stream=True,
        )
        self.flush()
        return streamId


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_h2IdleConnectionClosed(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    H2Client(wire)
    assert wire.channel._h2 is not None
    wire.tick(LIMITS.idleTimeout - 1)
    assert wire.serverGone is None
    wire.tick(2)
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_h2DrainLetsStreamFinish(transport: str, pki: PKI) -> None:
    """
    A drain: GOAWAY, the open stream is answered whole, then the
    connection closes cleanly (TLS close alert included).
    """
    from easymesh.h2wire import FrameFilter

    wire = Wire(transport, pki)
    client = H2Client(wire)
    streamId = client.get(b"/hold")
    [held] = wire.app.held
    wire.site.sweeper.closeIdle()
    wire.pump()
    assert wire.serverGone is None
    held.respond(200, b"ok")
    wire.pump()
    wire.assertClosedCleanly()
    _, goAways = FrameFilter().feed(wire.client.data)
    # The first refuses nothing; the last names the stream taken.
    assert [g.lastStreamId for g in goAways] == [2**31 - 1, streamId]
    assert b"ok" in wire.client.data


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_h2FloodClosesConnection(transport: str, pki: PKI) -> None:
    wire = Wire(transport, pki)
    client = H2Client(wire)
    for i in range(5):
        if wire.serverGone is not None:
            break
        client.h2.ping(b"%08d" % i)
        client.flush()
    wire.assertClosedCleanly()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_h2StopClosesBusyConnection(transport: str, pki: PKI) -> None:
    """
    A stop closes an HTTP/2 connection with a stream still open at once,
    and the connection count goes back to zero.
    """
    wire = Wire(transport, pki)
    client = H2Client(wire)
    client.get(b"/hold")
    closed = wire.site.sweeper.closeAll()
    wire.pump()
    assert wire.serverGone is not None
    assert closed.called
    assert wire.site.sweeper.open == 0
