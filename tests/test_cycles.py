"""
Requests leave no reference cycles behind: once a keep-alive request has
been answered, everything it made is freed by reference counting alone,
and the cyclic garbage collector (whose pauses are a proxy's latency
tail) finds nothing of it.

The sidecar is the one C{twistd easymesh} builds, on a
L{MemoryReactorClock}; its listeners, the client and the app talk over
in-memory connections (L{twisted.test.iosim}), HTTP/1.1 or HTTP/2 (the
h2 library plays the client and the h2c app).
"""

from __future__ import annotations

import gc
from collections import Counter
from typing import Any, Callable, Dict, List, Tuple

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import FakeTransport, IOPump, connect

from easymesh.tap import Options, makeService

OUTBOUND, INBOUND, APP = 15001, 15002, 15003
BODY = b"hello"
#: Requests sent on each connection before counting: what a connection
#: sets up once (pools filled, h2 state) is not counted.
WARM_UP = 5
COUNTED = 20


class H1App(Protocol):
    """
    An HTTP/1.1 app: answers each request, once its body (of a declared
    length, or chunked) has arrived, with C{BODY}.
    """

    def __init__(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
            if fields.get(b"transfer-encoding") == b"chunked":
                # The last chunk, without trailers, ends the body.
                if b"\r\n0\r\n\r\n" not in b"\r\n" + rest:
                    return
                length = (b"\r\n" + rest).index(b"\r\n0\r\n\r\n") + len(b"0\r\n\r\n")
            else:
                length = int(fields.get(b"content-length", b"0"))
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
            )


class H2App(Protocol):
    """
    An h2c app: answers each request, once its stream has ended, with
    C{BODY}.
    """

    def connectionMade(self) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, StreamEnded):
                self.h2.send_headers(
                    event.stream_id, [(b":status", b"200"), (b"content-length", b"%d" % len(BODY))]
                )
                self.h2.send_data(event.stream_id, BODY, end_stream=True)
            elif isinstance(event, DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.transport.write(self.h2.data_to_send())


class H1Client(Protocol):
    """
    An HTTP/1.1 client on one keep-alive connection.
    """

    def __init__(self) -> None:
        self.received = b""
        self.body = b""

    def send(self, body: bytes) -> Callable[[], bool]:
        """
        Send a request's head (a POST's if there is a C{body}, which
        L{sendBody} sends); the returned check says whether its response
        has arrived whole.
        """
        answered = self.received.count(b"\r\n\r\n" + BODY)
        self.body = body
        if body:
            self.transport.write(
                b"POST /p HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
        else:
            self.transport.write(b"GET /p HTTP/1.1\r\nHost: app\r\n\r\n")
        return lambda: self.received.count(b"\r\n\r\n" + BODY) == answered + 1

    def sendBody(self) -> None:
        self.transport.write(self.body)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class H2Client(Protocol):
    """
    An HTTP/2 client (prior knowledge) on one connection, one stream after
    another.
    """

    def __init__(self) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.statuses: Dict[int, bytes] = {}
        self.ended: List[int] = []
        self.body: Tuple[int, bytes] = (0, b"")

    def connectionMade(self) -> None:
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def send(self, body: bytes) -> Callable[[], bool]:
        stream = self.h2.get_next_available_stream_id()
        fields = [
            (b":method", b"POST" if body else b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"app"),
            (b":path", b"/p"),
        ]
        if body:
            fields.append((b"content-length", b"%d" % len(body)))
        self.h2.send_headers(stream, fields, end_stream=not body)
        self.transport.write(self.h2.data_to_send())
        self.body = (stream, body)
        return lambda: stream in self.ended and self.statuses.get(stream) == b"200"

    def sendBody(self) -> None:
        stream, body = self.body
        self.h2.send_data(stream, body, end_stream=True)
        self.transport.write(self.h2.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, ResponseReceived):
                self.statuses[event.stream_id] = dict(event.headers)[b":status"]
            elif isinstance(event, StreamEnded):
                self.ended.append(event.stream_id)
            elif isinstance(event, DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.transport.write(self.h2.data_to_send())


def _address(port: int) -> IPv4Address:
    return IPv4Address("TCP", "127.0.0.1", port)


class Mesh:
    """
    A sidecar as C{twistd easymesh} builds it, on a memory reactor, with
    an app behind it: connections it opens are completed in memory, to
    its own inbound listener or to the app.
    """

    def __init__(self, app: Callable[[], Protocol], *args: str) -> None:
        self.reactor = MemoryReactorClock()
        options = Options()
        options.parseOptions(
            [
                "--outbound", f"tcp:{OUTBOUND}", "--inbound", f"tcp:{INBOUND}",
                "--admin", "tcp:15004", "--peer", f"http://127.0.0.1:{INBOUND}",
                *args,
            ]
        )  # fmt: skip
        service = makeService(options, self.reactor)
        self.sites = {site.resource.name: site for site in service.sites}
        for site in self.sites.values():
            site.doStart()
        self.servers: Dict[int, Any] = {
            INBOUND: self.sites["inbound"],
            APP: Factory.forProtocol(app),
        }
        self.pumps: List[IOPump] = []
        self.nextPort = 40000

    def close(self) -> None:
        for site in self.sites.values():
            site.doStop()

    def connect(self, factory: Any, port: int, client: Protocol) -> None:
        """
        Connect C{client} to a protocol of C{factory}'s, listening on C{port}.
        """
        self.nextPort += 1
        server = factory.buildProtocol(_address(self.nextPort))
        serverIO = FakeTransport(server, True, _address(port), _address(self.nextPort))
        clientIO = FakeTransport(client, False, _address(self.nextPort), _address(port))
        pump = connect(server, serverIO, client, clientIO, greet=False, clock=self.reactor)
        self.pumps.append(pump)

    def settle(self) -> None:
        """
        Complete the connections the sidecar opened, and move bytes until
        none moves.
        """
        for _ in range(200):
            while self.reactor.tcpClients:
                host, port, factory, timeout, bind = self.reactor.tcpClients.pop(0)
                self.reactor.connectors.pop(0)
                self.connect(self.servers[port], port, factory.buildProtocol(_address(port)))
            if not any([pump.flush() for pump in self.pumps]) and not self.reactor.tcpClients:
                return
        raise AssertionError("the traffic did not settle")


def _request(mesh: Mesh, client: Any, body: bytes) -> None:
    """
    One request, answered: a body, if any, is sent once the head has gone
    through, so that it streams.
    """
    answered = client.send(body)
    mesh.settle()
    if body:
        client.sendBody()
        mesh.settle()
    assert answered()


def _cyclicGarbage(call: Callable[[], None]) -> "Counter[str]":
    """
    What the cyclic collector finds of what C{call} leaves behind, counted
    by type.
    """
    flags = gc.get_debug()
    gc.collect()
    gc.set_debug(flags | gc.DEBUG_SAVEALL)
    try:
        call()
        gc.collect()
        return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()


H1_APP = ("--upstream", f"http://127.0.0.1:{APP}")
H2C_APP = ("--upstream", f"h2c://127.0.0.1:{APP}")
PATHS = [
    pytest.param(H1Client, "inbound", H1_APP, H1App, id="h1 to an h1 app"),
    pytest.param(H2Client, "inbound", H1_APP, H1App, id="h2c to an h1 app"),
    pytest.param(H1Client, "inbound", H2C_APP, H2App, id="h1 to an h2c app"),
    pytest.param(H2Client, "inbound", H2C_APP, H2App, id="h2c to an h2c app"),
    pytest.param(H1Client, "outbound", H1_APP, H1App, id="two hops"),
    pytest.param(
        H2Client,
        "outbound",
        H1_APP + ("--peer-protocol", "http2"),
        H1App,
        id="two hops, h2c between the sidecars",
    ),
]


@pytest.mark.parametrize("body", [b"", b"x" * 1000], ids=["GET", "POST"])
@pytest.mark.parametrize("client, listener, flags, app", PATHS)
def test_noCyclesPerRequest(
    client: Callable[[], Any],
    listener: str,
    flags: Tuple[str, ...],
    app: Callable[[], Protocol],
    body: bytes,
) -> None:
    """
    Requests on a keep-alive connection (HTTP/1.1 or HTTP/2) through one or
    two listeners, to an HTTP/1.1 or h2c app, with or without a streamed
    request body, leave nothing for the cyclic collector once answered.
    """
    mesh = Mesh(app, *flags)
    try:
        peer = client()
        mesh.connect(mesh.sites[listener], OUTBOUND if listener == "outbound" else INBOUND, peer)
        for _ in range(WARM_UP):
            _request(mesh, peer, body)

        def requests() -> None:
            for _ in range(COUNTED):
                _request(mesh, peer, body)

        assert _cyclicGarbage(requests) == Counter()
    finally:
        mesh.close()
