"""
Tests for L{easymesh.listener}: the HTTP/1.1 edge, driven byte by byte over
a L{StringTransport}, with an upstream whose responses the test controls.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from easymesh.accesslog import AccessLog
from easymesh.config.model import EdgeLimits
from easymesh.config.addresses import UpstreamURL
from easymesh.filters.chain import FilterChain
from easymesh.forwarder import Forwarder
from easymesh.headers import HeaderPolicy
from easymesh.inflight import InFlight
from easymesh.interfaces import IUpstream
from easymesh.listener import ProxyResource, ProxySite
from easymesh.message import ProxyRequest, Response


class FakeProducer:
    """
    The upstream connection behind a response body, as the relay sees it.
    """

    def __init__(self) -> None:
        self.calls: List[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class BodyFeed:
    """
    What a test drives an upstream response body through, in the terms of
    the upstream it stands for: data, then the end of the connection's
    body (C{ResponseDone} or C{PotentialDataLoss}, or a failure).
    """

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def dataReceived(self, data: bytes) -> None:
        self.sink.bodyData(data)

    def connectionLost(self, reason: Failure) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.sink.bodyEnded(None)
        else:
            self.sink.bodyFailed(reason)


class FakeResponse(Response):
    """
    An upstream response; the test feeds its body through C{protocol}.
    """

    def __init__(self, code: int, phrase: bytes, headers: List[Tuple[bytes, bytes]]):
        super().__init__(code, Headers(), phrase)
        for name, value in headers:
            self.headers.addRawHeader(name, value)
        self.protocol: Any = None
        self.producer = FakeProducer()

    def deliverBody(self, sink: Any) -> None:
        self.protocol = BodyFeed(sink)
        sink.bodyStarted(self.producer)

    def discard(self) -> None:
        self.producer.stopProducing()


@implementer(IUpstream)
class FakeUpstream:
    url = UpstreamURL("http", "app.test", 80)

    def __init__(self) -> None:
        self.requests: List[Tuple[ProxyRequest, Deferred[Any]]] = []
        self.cancelled: List[ProxyRequest] = []

    def request(self, request: ProxyRequest) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(lambda d: self.cancelled.append(request))
        self.requests.append((request, d))
        return d

    def close(self) -> Deferred[None]:
        return succeed(None)


class RoutesTo:
    """
    A stand-in for L{easymesh.runtime.MeshRuntime}: every listener's one
    route sends to C{upstream}.
    """

    mesh = None

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.routers = self

    def __getitem__(self, listener: str) -> "RoutesTo":
        return self

    def route(self, request: ProxyRequest) -> Deferred[Any]:
        request.upstreamHost = self.upstream.url.authority
        request.attempts = 1
        return self.upstream.request(request)


class ListenerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeUpstream()
        self.inflight = InFlight()
        self.events: List[dict] = []
        forwarder = Forwarder(
            HeaderPolicy("web-1", "outbound"), FilterChain(), RoutesTo(self.upstream), "outbound"
        )
        self.resource = ProxyResource(
            "outbound", forwarder, self.clock, self.inflight, AccessLog("json")
        )
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        client = IPv4Address("TCP", "10.1.2.3", 5555)
        self.transport = StringTransport(peerAddress=client)
        self.channel = ProxySite(self.resource, reactor=self.clock).buildProtocol(client)
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def respond(self, response: FakeResponse, index: int = -1) -> None:
        self.upstream.requests[index][1].callback(response)

    def head(self) -> bytes:
        return self.transport.value().split(b"\r\n\r\n", 1)[0]

    def test_forwardsRequest(self) -> None:
        """
        Method, target and headers reach the upstream; framing headers do not.
        """
        self.send(
            b"POST /a%2Fb?x=1&y=%20 HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n"
            b"Connection: keep-alive, x-drop\r\nX-Drop: 1\r\nx-easymesh-error: forged\r\n"
            b"\r\nabc"
        )
        [(request, _)] = self.upstream.requests
        self.assertEqual(request.method, b"POST")
        self.assertEqual(request.target, b"/a%2Fb?x=1&y=%20")
        self.assertEqual(request.headers.getRawHeaders(b"host"), [b"svc"])
        self.assertEqual(request.headers.getRawHeaders(b"x-forwarded-for"), [b"10.1.2.3"])
        for name in (b"content-length", b"connection", b"x-drop", b"x-easymesh-error"):
            self.assertFalse(request.headers.hasHeader(name), name)
        self.assertEqual(request.body.length, 3)

    def test_absoluteForm(self) -> None:
        """
        An absolute-form target becomes origin form and its authority the Host.
        """
        self.send(b"GET http://other:81/p?q HTTP/1.1\r\nHost: wrong\r\n\r\n")
        [(request, _)] = self.upstream.requests
        self.assertEqual(request.target, b"/p?q")
        self.assertEqual(request.headers.getRawHeaders(b"host"), [b"other:81"])

    def test_relaysStatusHeadersAndBody(self) -> None:
        """
        Status, reason phrase, repeated headers and the body are relayed; the
        body streams as it arrives.
        """
        self.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        response = FakeResponse(
            418,
            b"Short And Stout",
            [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"transfer-encoding", b"chunked")],
        )
        self.respond(response)
        response.protocol.dataReceived(b"first")
        self.assertIn(b"HTTP/1.1 418 Short And Stout", self.head())
        self.assertIn(b"Set-Cookie: a=1\r\nSet-Cookie: b=2", self.head())
        self.assertIn(b"first", self.transport.value())
        self.assertNotIn(b"0\r\n\r\n", self.transport.value())
        response.protocol.dataReceived(b"second")
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertTrue(self.transport.value().endswith(b"6\r\nsecond\r\n0\r\n\r\n"))
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.inflight.count, 0)

    def test_backPressure(self) -> None:
        """
        A client that cannot keep up pauses the upstream connection.
        """
        self.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        response = FakeResponse(200, b"OK", [])
        self.respond(response)
        # What the transport does when its buffer fills and then drains:
        self.transport.producer.pauseProducing()
        self.transport.producer.resumeProducing()
        self.assertEqual(response.producer.calls, ["pause", "resume"])

    def test_truncatedBody(self) -> None:
        """
        An upstream that fails mid-body aborts the client connection, so the
        client never sees a complete response.
        """
        self.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        response = FakeResponse(200, b"OK", [(b"content-length", b"100")])
        self.respond(response)
        response.protocol.dataReceived(b"x" * 10)
        response.protocol.connectionLost(Failure(ResponseFailed([Failure(ConnectionDone())])))
        self.assertTrue(self.transport.disconnected)

    def test_clientGoneBeforeResponse(self) -> None:
        """
        A client that disconnects cancels its upstream request.
        """
        self.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.upstream.cancelled), 1)
        self.assertEqual(self.inflight.count, 0)

    def test_clientGoneMidBody(self) -> None:
        """
        A client that disconnects mid-body closes the upstream connection
        rather than leaving it half-read.
        """
        self.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        response = FakeResponse(200, b"OK", [])
        self.respond(response)
        response.protocol.dataReceived(b"x")
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertIn("stop", response.producer.calls)

    def test_upstreamFailure(self) -> None:
        """
        A refused upstream connection is a 503 naming the cause.
        """
        self.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        self.upstream.requests[0][1].errback(ConnectionRefusedError())
        self.assertIn(b"HTTP/1.1 503 ", self.head())
        self.assertIn(b"X-Easymesh-Error: upstream_connect_failure", self.head())
        self.assertIn(b"Content-Length: ", self.head())

    def test_headNoBody(self) -> None:
        """
        A response to HEAD carries the upstream's Content-Length and no body.
        """
        self.send(b"HEAD / HTTP/1.1\r\nHost: svc\r\n\r\n")
        response = FakeResponse(200, b"OK", [(b"content-length", b"12")])
        self.respond(response)
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertIn(b"Content-Length: 12", self.head())
        self.assertTrue(self.transport.value().endswith(b"\r\n\r\n"))

    def test_draining(self) -> None:
        """
        While draining, responses close their connection.
        """
        self.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        self.inflight.draining = True
        response = FakeResponse(200, b"OK", [(b"content-length", b"0")])
        self.respond(response)
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertIn(b"Connection: close", self.head())
        self.assertTrue(self.transport.disconnecting)

    def test_loop(self) -> None:
        """
        A request that has already passed this listener is answered 508.
        """
        self.send(b"GET / HTTP/1.1\r\nHost: svc\r\nVia: 1.1 web-1.outbound\r\n\r\n")
        self.assertEqual(self.upstream.requests, [])
        self.assertIn(b"HTTP/1.1 508 ", self.head())

    def test_accessLogNoSecrets(self) -> None:
        """
        The access log has one entry per request and no header values.
        """
        self.send(
            b"GET /p HTTP/1.1\r\nHost: svc\r\nAuthorization: Bearer s3cret\r\n"
            b"Cookie: c=s3cret\r\n\r\n"
        )
        response = FakeResponse(200, b"OK", [(b"set-cookie", b"s3cret")])
        self.respond(response)
        response.protocol.connectionLost(Failure(ResponseDone()))
        access = [e for e in self.events if e.get("log_namespace") == "easymesh.access"]
        self.assertEqual(len(access), 1)
        self.assertEqual(access[0]["status"], 200)
        self.assertEqual(access[0]["path"], "/p")
        self.assertNotIn("s3cret", repr(access))


class ConnectionLimitTests(SynchronousTestCase):
    def test_refusedBeyondLimit(self) -> None:
        """
        Beyond C{maxConnections} open connections, the site refuses new ones
        (L{None} from buildProtocol, so the reactor closes them at once); a
        closed connection frees its place.
        """
        clock = Clock()
        forwarder = Forwarder(
            HeaderPolicy("web-1", "inbound"), FilterChain(), RoutesTo(FakeUpstream()), "inbound"
        )
        site = ProxySite(
            ProxyResource("inbound", forwarder, clock),
            EdgeLimits(maxConnections=2),
            reactor=clock,
        )
        address = IPv4Address("TCP", "10.0.0.1", 1)
        channels = []
        for _ in range(2):
            channel = site.buildProtocol(address)
            channel.makeConnection(StringTransport(peerAddress=address))
            channels.append(channel)
        self.assertIsNone(site.buildProtocol(address))
        channels[0].connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(site.buildProtocol(address))
