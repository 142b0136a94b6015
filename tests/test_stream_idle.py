"""
Tests for the stream idle timeout: L{easymesh.listener}'s exchanges time
out once no body byte has moved either way for their cluster's
C{streamIdleTimeout}; the cause, its metric and its configuration
(C{--stream-idle-timeout}, a cluster's C{stream_idle_timeout}).

The listener is driven over a L{StringTransport} with a L{Clock}; the
integration tests (C{tests/integration/test_stream_idle.py}) run the same
over real sockets, plaintext and mTLS.
"""

from __future__ import annotations

import textwrap
from typing import Any, List

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseDone

from easymesh.accesslog import AccessLog
from easymesh.config.addresses import UpstreamURL
from easymesh.config.files import parseConfigText
from easymesh.config.mesh import ClusterConfig, MeshConfig, Route
from easymesh.config.model import ConfigError, EdgeLimits, SidecarConfig
from easymesh.config.settings import buildConfig
from easymesh.errorlog import ErrorLog
from easymesh.errors import ERROR_HEADER, StreamIdleTimeout
from easymesh.filters.chain import FilterChain
from easymesh.forwarder import Forwarder
from easymesh.headers import HeaderPolicy
from easymesh.inflight import InFlight
from easymesh.listener import ProxyResource, ProxySite
from easymesh.message import ProxyRequest
from easymesh.ops.metrics import Metrics
from easymesh.ops.telemetry import Telemetry
from easymesh.requestbody import RequestBodyStream
from tests.test_listener import FakeResponse, FakeUpstream, RoutesTo
from tests.test_routing import RouterCase
from tests.meshfakes import makeRequest

#: The stream idle timeout of the cluster in these tests.
IDLE = 5.0


class RoutesToCluster(RoutesTo):
    """
    L{RoutesTo}, as if through a cluster named C{app} whose stream idle
    timeout is C{timeout}.
    """

    def __init__(self, upstream: FakeUpstream, timeout: float) -> None:
        super().__init__(upstream)
        self.timeout = timeout

    def route(self, request: ProxyRequest) -> Deferred[Any]:
        request.cluster = "app"
        request.streamIdleTimeout = self.timeout
        return super().route(request)


class StreamIdleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeUpstream()
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.inflight = InFlight()
        self.metrics = Metrics()
        self.channel = self.connect(EdgeLimits())

    def connect(self, limits: EdgeLimits) -> Any:
        forwarder = Forwarder(
            HeaderPolicy("web-1", "outbound"),
            FilterChain(),
            RoutesToCluster(self.upstream, IDLE),
            "outbound",
        )
        self.resource = ProxyResource(
            "outbound",
            forwarder,
            self.clock,
            self.inflight,
            AccessLog("json"),
            Telemetry(self.metrics),
            ErrorLog(self.clock),
        )
        client = IPv4Address("TCP", "10.1.2.3", 5555)
        self.transport = StringTransport(peerAddress=client)
        channel = ProxySite(self.resource, limits, reactor=self.clock).buildProtocol(client)
        channel.makeConnection(self.transport)
        return channel

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def respond(self, response: FakeResponse) -> None:
        self.upstream.requests[-1][1].callback(response)

    def head(self) -> bytes:
        return self.transport.value().split(b"\r\n\r\n", 1)[0]

    def advance(self, seconds: float) -> None:
        """
        Let C{seconds} pass, a second at a time (the sweeps' interval).
        """
        whole = int(seconds)
        for _ in range(whole):
            self.clock.advance(1)
        if seconds > whole:
            self.clock.advance(seconds - whole)

    def lose(self) -> None:
        """
        What the reactor does once an aborted connection is gone.
        """
        self.channel.connectionLost(Failure(ConnectionAborted()))

    def logged(self, namespace: str) -> List[dict]:
        return [e for e in self.events if e.get("log_namespace") == namespace]

    def timeoutsCounted(self) -> float:
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "easymesh_timeouts_total" and sample.labels == {"cluster": "app"}:
                    return sample.value
        return 0.0

    # The upstream's side.

    def test_upstreamSilentMidBody(self) -> None:
        """
        An upstream that stops in the middle of its body: after the idle
        timeout from its last byte, the client connection is aborted (its
        response is never presented as complete), the upstream connection
        is closed, and the cause is logged and counted.
        """
        self.send(b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n")
        response = FakeResponse(200, b"OK", [(b"content-length", b"100")])
        self.respond(response)
        response.protocol.dataReceived(b"a" * 10)
        self.advance(IDLE - 1)
        response.protocol.dataReceived(b"b" * 10)
        self.advance(IDLE - 1)
        self.assertFalse(self.transport.disconnected)
        self.assertNotIn("stop", response.producer.calls)
        self.advance(2)
        self.assertTrue(self.transport.disconnected)
        self.assertIn("stop", response.producer.calls)
        self.assertIn(b"HTTP/1.1 200 OK", self.head())
        self.lose()
        # The upstream connection's end, as the stopped body reports it.
        response.protocol.connectionLost(Failure(ConnectionAborted()))
        [access] = self.logged("easymesh.access")
        self.assertEqual(access["error"], "stream_idle_timeout")
        self.assertEqual(access["bytes_out"], 20)
        [error] = self.logged("easymesh.errors")
        self.assertEqual(error["cause"], "stream_idle_timeout")
        self.assertIn("5s", error["detail"])
        self.assertEqual(self.timeoutsCounted(), 1.0)
        self.assertEqual(self.inflight.count, 0)
        self.assertEqual(self.resource.streams.open, 0)

    def test_headThenSilence(self) -> None:
        """
        An upstream that sends its head and no body byte: the head has been
        relayed as it arrived (a stream's head is news), so the client is
        dropped, and the cause logged.
        """
        self.send(b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n")
        response = FakeResponse(200, b"OK", [(b"content-length", b"100")])
        self.respond(response)
        self.assertIn(b"HTTP/1.1 200 OK", self.head())
        self.advance(IDLE + 1)
        self.assertIn("stop", response.producer.calls)
        self.assertTrue(self.transport.disconnected)
        self.lose()
        [access] = self.logged("easymesh.access")
        self.assertEqual((access["status"], access["error"]), (200, "stream_idle_timeout"))
        self.assertEqual(self.resource.streams.open, 0)

    def test_clientNotReading(self) -> None:
        """
        A client that reads nothing pauses the upstream: no byte moves, so
        the exchange times out as well (as in Envoy).
        """
        self.send(b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n")
        response = FakeResponse(200, b"OK", [])
        self.respond(response)
        response.protocol.dataReceived(b"a" * 10)
        self.transport.producer.pauseProducing()
        self.advance(IDLE + 1)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(response.producer.calls, ["pause", "stop"])

    def test_completedResponseNotTimed(self) -> None:
        """
        Once a response has ended, its exchange is no longer timed.
        """
        self.send(b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n")
        response = FakeResponse(200, b"OK", [(b"content-length", b"1")])
        self.respond(response)
        response.protocol.dataReceived(b"a")
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.resource.streams.open, 0)
        self.advance(IDLE * 3)
        self.assertFalse(self.transport.disconnected)
        self.assertEqual(self.logged("easymesh.errors"), [])

    # The client's side.

    def test_clientStallsRequestBody(self) -> None:
        """
        A client that stops in the middle of its request body, before any
        response: 504 with the cause, the connection closed after it (the
        rest of the body will never be read), and the upstream request
        cancelled, which closes its connection.
        """
        self.send(b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
        self.advance(IDLE - 1)
        self.send(b"b" * 10)
        self.advance(IDLE - 1)
        self.assertEqual(self.transport.value(), b"")
        self.advance(2)
        self.assertIn(b"HTTP/1.1 504 ", self.head())
        self.assertIn(ERROR_HEADER + b": stream_idle_timeout", self.head().lower())
        self.assertIn(b"connection: close", self.head().lower())
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.upstream.cancelled), 1)
        [access] = self.logged("easymesh.access")
        self.assertEqual((access["status"], access["error"]), (504, "stream_idle_timeout"))
        self.assertEqual(access["bytes_in"], 20)
        self.assertEqual(len(self.logged("easymesh.errors")), 1)
        self.assertEqual(self.timeoutsCounted(), 1.0)

    def test_completeRequestAwaitingHeadNotTimed(self) -> None:
        """
        Between the end of the request body and the response head nothing
        streams: that wait is the response timeout's, not this one's.
        """
        self.send(b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc")
        self.advance(IDLE * 3)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.upstream.cancelled, [])

    def test_eitherDirectionKeepsItAlive(self) -> None:
        """
        With both bodies streaming (a response that began before the
        request body ended), a byte either way keeps the exchange alive;
        only silence both ways for the timeout ends it.
        """
        self.send(b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
        response = FakeResponse(200, b"OK", [])
        self.respond(response)
        for _ in range(3):
            self.advance(IDLE - 1)
            response.protocol.dataReceived(b"down")
            self.advance(IDLE - 1)
            self.send(b"up")
        self.assertFalse(self.transport.disconnected)
        self.advance(IDLE + 1)
        self.assertTrue(self.transport.disconnected)
        self.assertIn("stop", response.producer.calls)

    def test_shorterBodyTimeoutFirst(self) -> None:
        """
        The listener's body timeout watches the client alone; when it is
        the shorter, a client silent mid-body gets its 408 first.
        """
        self.channel = self.connect(EdgeLimits(bodyTimeout=2))
        self.send(b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\nabc")
        self.advance(3)
        self.assertIn(b"HTTP/1.1 408 ", self.head())
        self.assertIn(b"request_timeout", self.head())


class FromConfigTests(SynchronousTestCase):
    """
    Where a request's stream idle timeout comes from.
    """

    def test_reply(self) -> None:
        reply = StreamIdleTimeout("quiet").reply()
        self.assertEqual((reply.code, reply.cause), (504, "stream_idle_timeout"))
        self.assertEqual(reply.headers.getRawHeaders(ERROR_HEADER), [b"stream_idle_timeout"])

    def test_bodyStreamReportsEachPiece(self) -> None:
        pieces: List[None] = []
        stream = RequestBodyStream(10, lambda: None, lambda: None)
        stream.onData = lambda: pieces.append(None)
        stream.write(b"ab")
        stream.write(b"cd")
        self.assertEqual(len(pieces), 2)

    def test_defaults(self) -> None:
        self.assertEqual(ClusterConfig("a").streamIdleTimeout, 300.0)
        self.assertEqual(SidecarConfig().stream_idle_timeout, 300.0)
        mesh = SidecarConfig().mesh()
        self.assertEqual(mesh.clusters["peer"].streamIdleTimeout, 300.0)

    def test_flagSetsTheFlagsClusters(self) -> None:
        mesh = SidecarConfig(stream_idle_timeout=7.5).mesh()
        self.assertEqual(mesh.clusters["peer"].streamIdleTimeout, 7.5)
        self.assertEqual(mesh.clusters["local"].streamIdleTimeout, 7.5)


class RouterSetsTimeoutTests(RouterCase):
    def test_clusterTimeoutOnRequest(self) -> None:
        """
        The cluster a request is routed to gives it its stream idle timeout.
        """
        clusters = [
            ClusterConfig("a", endpoints=(UpstreamURL("http", "a.internal", 8080),), streamIdleTimeout=2.5),
        ]
        router = self.router([Route("r", cluster="a")], clusters)
        request = makeRequest(b"/")
        self.assertIsNone(request.streamIdleTimeout)
        self.successResultOf(router.route(request))
        self.assertEqual(request.streamIdleTimeout, 2.5)


def _mesh(text: str) -> MeshConfig:
    values = parseConfigText(textwrap.dedent(text), "mesh.yaml")
    return MeshConfig(**values.mesh)


def test_fileCluster() -> None:
    mesh = _mesh(
        """\
        clusters:
          a: {endpoints: [http://a], stream_idle_timeout: 1500ms}
          b: {endpoints: [http://b], stream_idle_timeout: 2m}
          c: {endpoints: [http://c]}
        """
    )
    assert mesh.clusters["a"].streamIdleTimeout == 1.5
    assert mesh.clusters["b"].streamIdleTimeout == 120.0
    assert mesh.clusters["c"].streamIdleTimeout == 300.0


def test_fileClusterKeepsItsOwnOverTheFlag() -> None:
    """
    As with C{timeout}, the flag is for the clusters the flags make; a
    file's cluster has its own.
    """
    values = parseConfigText(
        "stream-idle-timeout: 9\nclusters:\n  a: {endpoints: [http://a]}\n", "mesh.yaml"
    )
    config = buildConfig(values, "mesh.yaml")
    assert config.stream_idle_timeout == 9
    mesh = config.mesh()
    assert mesh.clusters["peer"].streamIdleTimeout == 9
    assert mesh.clusters["a"].streamIdleTimeout == 300.0


@pytest.mark.parametrize(
    "value, reason",
    [
        ("0s", "must be above zero"),
        ("0", "must be above zero"),
        ("-1", "must not be negative, not -1"),
        ("soon", "must be a duration such as 250ms, 2s or 1m, not 'soon'"),
        ("true", "must be a duration"),
    ],
)
def test_fileClusterRefused(value: str, reason: str) -> None:
    text = f"clusters:\n  web:\n    endpoints: [http://10.0.0.1:8080]\n    stream_idle_timeout: {value}\n"
    with pytest.raises(ConfigError) as info:
        parseConfigText(text, "mesh.yaml")
    message = str(info.value)
    assert message.startswith(f"mesh.yaml:4: clusters.web.stream_idle_timeout: {reason}"), message


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_flagRefused(value: str) -> None:
    from twisted.python.usage import UsageError

    from easymesh.tap import Options

    with pytest.raises(UsageError, match="stream-idle-timeout"):
        Options().parseOptions(["--stream-idle-timeout", value])


def test_telemetryCountsItAsATimeout() -> None:
    metrics = Metrics()
    telemetry = Telemetry(metrics)
    request = makeRequest(b"/")
    request.cluster = "orders"
    telemetry.requestDone("outbound", request, 200, 1.0, "stream_idle_timeout", b"GET", b"/")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        for s in family.samples
    }
    assert samples[("easymesh_timeouts_total", (("cluster", "orders"),))] == 1.0


class ReloadTests(SynchronousTestCase):
    def test_reloadedWithTheFlagClusters(self) -> None:
        """
        C{stream-idle-timeout} belongs to the flag-made clusters: a reload
        applies it, with no word of a restart.
        """
        from easymesh.reload import _needsRestart

        old = SidecarConfig()
        new = SidecarConfig(stream_idle_timeout=12.0)
        self.assertEqual(_needsRestart(old, new), [])
