"""
Tests for L{easymesh.tunnel}, and for the protocol switch at each end of
it: the HTTP/1.1 edge (L{easymesh.h1server}) and the HTTP/1.1 upstream
client (L{easymesh.upstream.h1client}); and for the configuration and
routing of upgrades.
"""

from __future__ import annotations

import textwrap
from typing import Any, List, Optional

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from easymesh.config.files import parseConfigText
from easymesh.config.mesh import MeshConfig
from easymesh.config.model import ConfigError
from easymesh.h1server import DeadlineSweeper, HTTP1Channel
from easymesh.interfaces import ITunnelEnd
from easymesh.routing.router import allowedUpgrade
from easymesh.tunnel import (
    CLIENT_CLOSED,
    CLIENT_RESET,
    CLOSE_TIMEOUT,
    DRAINED,
    IDLE_TIMEOUT,
    MAX_LIFETIME,
    UPSTREAM_CLOSED,
    TransportEnd,
    Tunnel,
)
from easymesh.upstream.h1client import H1Connection, UpstreamRequest
from easymesh.upstream.http import requestHead


class HalfClosingTransport(StringTransport):
    """
    A L{StringTransport} that records an end of sending.
    """

    writeEnded = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.writeEnded = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Ends:
    """
    A tunnel between two L{TransportEnd}s over string transports, on a
    L{Clock}; C{ended} records each call of its C{onEnd}.
    """

    def __init__(
        self,
        clientHalfCloses: bool = True,
        upstreamHalfCloses: bool = True,
        idle: float = 60.0,
        lifetime: Optional[float] = None,
        pending: bytes = b"",
    ) -> None:
        self.clock = Clock()
        self.clientTransport = HalfClosingTransport()
        self.upstreamTransport = HalfClosingTransport()
        self.client = TransportEnd(self.clientTransport, clientHalfCloses, pending)
        self.upstream = TransportEnd(self.upstreamTransport, upstreamHalfCloses)
        self.ended: List[str] = []
        self.tunnel = Tunnel(self.client, self.upstream, self.clock, idle, lifetime, self.ended.append)


def test_endProvidesInterface() -> None:
    verifyObject(ITunnelEnd, TransportEnd(StringTransport(), True))


def test_endPausedUntilStarted() -> None:
    """
    An end reads nothing until its tunnel starts; what arrived before is
    relayed first, then it reads again.
    """
    ends = Ends(pending=b"early ")
    assert ends.clientTransport.producerState == "paused"
    ends.client.dataReceived(b"bytes")
    ends.tunnel.start()
    assert ends.upstreamTransport.value() == b"early bytes"
    assert ends.clientTransport.producerState == "producing"
    assert ends.upstreamTransport.producerState == "producing"
    assert ends.tunnel.fromClient == len(b"early bytes")


def test_relaysBothWaysAndCounts() -> None:
    ends = Ends()
    ends.tunnel.start()
    ends.clock.advance(5)
    ends.client.dataReceived(b"hello")
    ends.upstream.dataReceived(b"world!")
    assert ends.upstreamTransport.value() == b"hello"
    assert ends.clientTransport.value() == b"world!"
    assert (ends.tunnel.fromClient, ends.tunnel.fromUpstream) == (5, 6)
    assert ends.tunnel.movedAt == 5


def test_backPressureBothWays() -> None:
    """
    A side whose send buffer is full pauses the reading of the other, and
    resumes it once drained.
    """
    ends = Ends()
    ends.tunnel.start()
    clientProducer = ends.clientTransport.producer
    upstreamProducer = ends.upstreamTransport.producer
    assert ends.clientTransport.streaming and ends.upstreamTransport.streaming
    clientProducer.pauseProducing()
    assert ends.upstreamTransport.producerState == "paused"
    assert ends.clientTransport.producerState == "producing"
    clientProducer.resumeProducing()
    assert ends.upstreamTransport.producerState == "producing"
    upstreamProducer.pauseProducing()
    assert ends.clientTransport.producerState == "paused"
    upstreamProducer.resumeProducing()
    assert ends.clientTransport.producerState == "producing"


def test_halfCloseKept() -> None:
    """
    A client that ends its sending still receives: the end is passed on,
    and the tunnel ends once the upstream ends too.
    """
    ends = Ends()
    ends.tunnel.start()
    ends.client.readConnectionLost()
    assert ends.upstreamTransport.writeEnded
    assert ends.upstreamTransport.producer is None
    assert ends.ended == []
    ends.upstream.dataReceived(b"the answer")
    assert ends.clientTransport.value() == b"the answer"
    ends.upstream.readConnectionLost()
    assert ends.ended == [CLIENT_CLOSED]
    # Both are closed: the client's sending had ended, so it is closed for good
    # once the upstream's is too.
    assert ends.clientTransport.writeEnded
    ends.client.readConnectionLost()
    assert ends.clientTransport.disconnecting


def test_halfCloseTowardsTLSEndsTunnel() -> None:
    """
    An end of sending cannot be passed on to a TLS side: the tunnel ends,
    both sides closed gracefully (the TLS one with its close alert).
    """
    ends = Ends(upstreamHalfCloses=False)
    ends.tunnel.start()
    ends.client.readConnectionLost()
    assert ends.ended == [CLIENT_CLOSED]
    assert not ends.upstreamTransport.writeEnded
    assert ends.upstreamTransport.disconnecting
    assert not ends.upstreamTransport.aborted
    # The TCP client end lingers, reading what its peer still sends.
    assert ends.clientTransport.writeEnded
    assert ends.clientTransport.producerState == "producing"


def test_cleanCloseClosesOtherGracefully() -> None:
    ends = Ends()
    ends.tunnel.start()
    ends.upstream.connectionLost(Failure(ConnectionDone()))
    assert ends.ended == [UPSTREAM_CLOSED]
    assert ends.clientTransport.writeEnded and not ends.clientTransport.aborted
    # Lingering: once the client ends too, its connection is closed.
    ends.client.readConnectionLost()
    assert ends.clientTransport.disconnecting
    ends.client.connectionLost(Failure(ConnectionDone()))
    assert ends.ended == [UPSTREAM_CLOSED]
    assert ends.clock.getDelayedCalls() == []


def test_resetAbortsOther() -> None:
    ends = Ends()
    ends.tunnel.start()
    ends.client.connectionLost(Failure(ConnectionLost()))
    assert ends.ended == [CLIENT_RESET]
    assert ends.upstreamTransport.aborted


def test_lingerBounded() -> None:
    """
    A side that never finishes closing is aborted after the close timeout.
    """
    ends = Ends()
    ends.tunnel.start()
    ends.upstream.connectionLost(Failure(ConnectionDone()))
    ends.clock.advance(CLOSE_TIMEOUT - 0.1)
    assert not ends.clientTransport.aborted
    ends.clock.advance(0.1)
    assert ends.clientTransport.aborted


def test_idleTimeout() -> None:
    ends = Ends(idle=30)
    ends.tunnel.start()
    assert ends.tunnel.deadline == 30
    ends.clock.advance(20)
    ends.upstream.dataReceived(b"x")
    assert ends.tunnel.deadline == 50
    ends.clock.advance(30)
    ends.tunnel.timedOut()
    assert ends.ended == [IDLE_TIMEOUT]
    assert ends.tunnel.deadline is None
    assert ends.clientTransport.writeEnded and ends.upstreamTransport.writeEnded


def test_maxLifetime() -> None:
    ends = Ends(idle=30, lifetime=45)
    ends.tunnel.start()
    for _ in range(4):
        ends.clock.advance(10)
        ends.client.dataReceived(b"busy")
    assert ends.tunnel.deadline == 45
    ends.clock.advance(5)
    ends.tunnel.timedOut()
    assert ends.ended == [MAX_LIFETIME]


def test_cutByDrain() -> None:
    ends = Ends()
    ends.tunnel.start()
    ends.tunnel.cut()
    ends.tunnel.cut()
    ends.client.connectionLost(Failure(ConnectionLost()))
    assert ends.ended == [DRAINED]


# The HTTP/1.1 edge.


class Exchange:
    def __init__(self, request: Any) -> None:
        self.request = request
        self.doneWith: List[Any] = []

    def start(self) -> None:
        pass

    def done(self, reason: Any = None) -> None:
        self.doneWith.append(reason)


class Site:
    def __init__(self) -> None:
        self.exchanges: List[Exchange] = []

    def handle(self, request: Any, responder: Any, target: bytes) -> Exchange:
        exchange = Exchange(request)
        self.exchanges.append(exchange)
        return exchange


def channel() -> Any:
    ch = HTTP1Channel()
    ch.sweeper = DeadlineSweeper(Clock())
    ch.site = Site()
    transport = HalfClosingTransport()
    ch.makeConnection(transport)
    return ch, transport


UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n"
)


@pytest.mark.parametrize(
    "head, expected",
    [
        (UPGRADE, b"websocket"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c, WebSocket\r\n\r\n", b"h2c, WebSocket"),
        # Not asked for: no Connection token, HTTP/1.0, a body, CONNECT.
        (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", None),
        (b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", None),
        (b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 1\r\n\r\nx", None),
        (b"CONNECT / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", None),
    ],
)
def test_edgeReadsUpgrade(head: bytes, expected: Optional[bytes]) -> None:
    ch, _ = channel()
    ch.dataReceived(head)
    assert ch.site.exchanges[0].request.upgrade == expected


def test_edgeSwitches() -> None:
    """
    A 101 is written with the upgrade's own fields; the client's bytes
    after the request, and all that follow, are the tunnel's; the exchange
    is no longer the channel's.
    """
    ch, transport = channel()
    ch.dataReceived(UPGRADE + b"early")
    headers = Headers({b"Sec-WebSocket-Accept": [b"abc"]})
    end = ch.switchProtocols(b"", headers, b"websocket")
    head = transport.value()
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"sec-websocket-accept: abc\r\n" in head.lower()
    assert head.endswith(b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert IHalfCloseableProtocol.providedBy(ch)
    other = TransportEnd(HalfClosingTransport(), True)
    tunnel = Tunnel(end, other, Clock(), 60, None, lambda how: None)
    tunnel.start()
    ch.dataReceived(b" and late")
    assert other.transport.value() == b"early and late"
    ch.readConnectionLost()
    assert other.transport.writeEnded
    ch.connectionLost(Failure(ConnectionDone()))
    assert ch.site.exchanges[0].doneWith == []


def test_edgeFailedUpgradeStaysHTTP() -> None:
    """
    Answered with anything but a 101, an upgrade request is an ordinary
    one: what the client sent after it is read as the next request.
    """
    ch, transport = channel()
    smuggled = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    ch.dataReceived(UPGRADE + smuggled)
    assert len(ch.site.exchanges) == 1
    ch.sendHead(403, b"Forbidden", Headers({b"content-length": [b"0"]}))
    ch.finish(None)
    assert [e.request.target for e in ch.site.exchanges] == [b"/chat", b"/admin"]
    assert ch.site.exchanges[1].request.upgrade is None
    assert not IHalfCloseableProtocol.providedBy(ch)


# The HTTP/1.1 upstream client.


def connection() -> Any:
    quiescent: List[Any] = []
    conn = H1Connection(quiescent.append)
    transport = HalfClosingTransport()
    conn.makeConnection(transport)
    return conn, transport, quiescent


def test_upstreamRequestHeadCarriesUpgrade() -> None:
    head = requestHead(b"GET", b"/chat", Headers({b"Host": [b"a"]}), b"a", b"websocket")
    assert head.endswith(b"Connection: upgrade\r\nUpgrade: websocket\r\n")
    assert b"Upgrade" not in requestHead(b"GET", b"/", Headers({b"Host": [b"a"]}), b"a")


def test_upstreamSwitchLeavesPool() -> None:
    conn, transport, quiescent = connection()
    d = conn.request(UpstreamRequest(b"GET", b"GET / HTTP/1.1\r\nHost: a\r\n", None, b"websocket"))
    responses: List[Any] = []
    d.addCallback(responses.append)
    conn.dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\nhi"
    )
    (response,) = responses
    assert response.code == 101
    assert response.upgrade == b"WebSocket"
    end = response.tunnelEnd()
    assert end is conn.tunnelEnd
    assert conn.state == "SWITCHED"
    assert quiescent == []
    other = TransportEnd(HalfClosingTransport(), True)
    Tunnel(other, end, Clock(), 60, None, lambda how: None).start()
    conn.dataReceived(b" there")
    assert other.transport.value() == b"hi there"
    conn.connectionLost(Failure(ConnectionDone()))
    assert quiescent == []


@pytest.mark.parametrize(
    "upgrade, response",
    [
        (None, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
        (b"websocket", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"),
        (b"websocket", b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
    ],
)
def test_upstreamSwitchNotAskedFor(upgrade: Optional[bytes], response: bytes) -> None:
    conn, transport, quiescent = connection()
    d = conn.request(UpstreamRequest(b"GET", b"GET / HTTP/1.1\r\nHost: a\r\n", None, upgrade))
    failures: List[Failure] = []
    d.addErrback(failures.append)
    conn.dataReceived(response)
    assert len(failures) == 1
    assert transport.aborted
    assert conn.tunnelEnd is None


def test_upstreamRefusedUpgradeStaysPooled() -> None:
    conn, transport, quiescent = connection()
    d = conn.request(UpstreamRequest(b"GET", b"GET / HTTP/1.1\r\nHost: a\r\n", None, b"websocket"))
    responses: List[Any] = []
    d.addCallback(responses.append)
    conn.dataReceived(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
    assert responses[0].code == 426
    assert quiescent == [conn]
    assert conn.tunnelEnd is None


# Configuration and routing.


def test_allowedUpgrade() -> None:
    assert allowedUpgrade(b"websocket", ("websocket",)) == b"websocket"
    assert allowedUpgrade(b"WebSocket", ("websocket",)) == b"WebSocket"
    assert allowedUpgrade(b"h2c, websocket/13", ("websocket",)) == b"websocket/13"
    assert allowedUpgrade(b"h2c", ("websocket",)) is None
    assert allowedUpgrade(b"websocket", ()) is None


def _mesh(text: str) -> MeshConfig:
    values = parseConfigText(textwrap.dedent(text), "mesh.yaml")
    return MeshConfig(**values.mesh)


def test_routeUpgradeSettings() -> None:
    mesh = _mesh(
        """\
        routes:
          inbound:
            - match: {prefix: /ws}
              cluster: local
              upgrade_types: [websocket, CONNECT-UDP]
              tunnel_idle_timeout: 90s
              tunnel_max_lifetime: 1h
            - cluster: local
        """
    )
    ws, default = mesh.routes["inbound"]
    assert ws.upgradeTypes == ("websocket", "connect-udp")
    assert (ws.tunnelIdleTimeout, ws.tunnelMaxLifetime) == (90, 3600)
    assert default.upgradeTypes == ("websocket",)
    assert default.tunnelIdleTimeout is None and default.tunnelMaxLifetime is None


@pytest.mark.parametrize(
    "entry, says",
    [
        ("upgrade_types: [web socket]", "upgrade_types"),
        ("upgrade_types: [websocket, websocket]", "names a protocol twice"),
        ("tunnel_idle_timeout: 0s", "tunnel_idle_timeout"),
        ("tunnel_max_lifetime: -1", "tunnel_max_lifetime"),
    ],
)
def test_routeUpgradeSettingsRefused(entry: str, says: str) -> None:
    text = f"routes:\n  inbound:\n    - cluster: local\n      {entry}\n"
    with pytest.raises(ConfigError) as info:
        parseConfigText(text, "mesh.yaml")
    message = str(info.value)
    assert says in message
    assert message.startswith("mesh.yaml:4: ")
