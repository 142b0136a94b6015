"""
Tests for L{easymesh.grpc} and for gRPC calls through a listener: replies
the sidecar makes in gRPC's terms (Trailers-Only), C{grpc-timeout}
deadlines, responses cut short, and what is counted and logged.

The listener is driven by the h2 library's client over a
L{StringTransport}, with a L{Clock}; C{tests/integration/test_grpc.py}
runs grpcio clients and servers through real sidecars.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset, TrailersReceived
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from easymesh.accesslog import AccessLog
from easymesh.config.mesh import RetryPolicy
from easymesh.errorlog import ErrorLog
from easymesh.errors import ERROR_HEADER, GrpcStatus, UpstreamConnectFailure
from easymesh.filters.chain import FilterChain
from easymesh.forwarder import Forwarder
from easymesh.grpc import (
    StatusWatch,
    encodeMessage,
    formatTimeout,
    grpcReply,
    httpEquivalent,
    isGrpc,
    parseTimeout,
    statusName,
    statusOf,
)
from easymesh.headers import HeaderPolicy
from easymesh.inflight import InFlight
from easymesh.listener import ProxyResource, ProxySite
from easymesh.message import LocalReply, ProxyRequest, Response
from easymesh.ops.metrics import Metrics
from easymesh.ops.telemetry import Telemetry
from easymesh.routing.retry import shouldRetry
from tests.test_listener import FakeResponse, FakeUpstream, RoutesTo


def headers(**fields: str) -> Headers:
    return Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in fields.items()})


@pytest.mark.parametrize(
    "value, expected",
    [
        ("application/grpc", True),
        ("application/grpc+proto", True),
        ("Application/GRPC; charset=x", True),
        ("application/grpc-web", False),
        ("application/grpcx", False),
        ("text/plain", False),
    ],
)
def test_isGrpc(value: str, expected: bool) -> None:
    assert isGrpc(headers(content_type=value)) is expected
    assert isGrpc(Headers()) is False


@pytest.mark.parametrize(
    "value, seconds",
    [(b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"250m", 0.25), (b"7u", 7e-6), (b"99999999n", 0.099999999)],
)
def test_parseTimeout(value: bytes, seconds: float) -> None:
    assert parseTimeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"1", b"S", b"123456789S", b"1s", b"-1S", b"1.5S", b"1 S"])
def test_parseTimeoutInvalid(value: bytes) -> None:
    assert parseTimeout(value) is None


@pytest.mark.parametrize("seconds", [0.0, 1e-7, 0.0005, 0.25, 3.0, 99.9, 5000.0, 2e7, 1e12])
def test_formatTimeout(seconds: float) -> None:
    """
    What is written parses back to no more than was meant (within the
    rounding of its unit), in at most 8 digits, and never as zero.
    """
    value = formatTimeout(seconds)
    parsed = parseTimeout(value)
    assert parsed is not None and parsed > 0
    if seconds >= 1e-6 and seconds < 1e11:
        assert parsed <= seconds * (1 + 1e-9)
        assert parsed >= seconds * 0.99 - 1e-6


def test_encodeMessage() -> None:
    assert encodeMessage("plain text") == b"plain text"
    assert encodeMessage("50% \u00e9\n") == b"50%25 %C3%A9%0A"


def test_statusOf() -> None:
    assert statusOf(headers(grpc_status="14")) == 14
    assert statusOf(headers(grpc_status="x")) == -1
    assert statusOf(Headers()) is None
    assert statusOf(None) is None
    assert statusName(14) == "UNAVAILABLE"
    assert statusName(99) == "other"
    assert statusName(None) == "-"
    assert httpEquivalent(14) == 503
    assert httpEquivalent(4) == 504
    assert httpEquivalent(0) == 200
    assert httpEquivalent(77) == 500


def test_grpcReplyFromCause() -> None:
    """
    A reply for a cause becomes HTTP 200 C{application/grpc} with the
    cause's gRPC status and message in its head and nothing after it; its
    other headers, C{x-easymesh-error} among them, are kept.
    """
    reply = UpstreamConnectFailure("refused").reply()
    reply.headers.setRawHeaders(b"retry-after", [b"1"])
    converted = grpcReply(reply)
    assert converted.code == 200
    assert converted.body == b"" and converted.trailers is None and converted.endsWithHead()
    h = converted.headers
    assert h.getRawHeaders(b"content-type") == [b"application/grpc"]
    assert h.getRawHeaders(b"grpc-status") == [b"%d" % GrpcStatus.UNAVAILABLE]
    assert h.getRawHeaders(b"grpc-message") == [b"upstream connect failure"]
    assert h.getRawHeaders(ERROR_HEADER) == [b"upstream_connect_failure"]
    assert h.getRawHeaders(b"retry-after") == [b"1"]
    assert not h.hasHeader(b"content-length")
    assert converted.cause == "upstream_connect_failure"


@pytest.mark.parametrize("code, status", [(401, 16), (403, 7), (404, 12), (429, 14), (503, 14), (418, 2)])
def test_grpcReplyFromStatus(code: int, status: int) -> None:
    """
    A reply with no cause (a filter's, a direct response) maps its HTTP
    status as grpc's http-grpc-status-mapping says.
    """
    converted = grpcReply(LocalReply(code, b"go away\n"))
    assert statusOf(converted.headers) == status
    assert converted.headers.getRawHeaders(b"grpc-message") == [b"go away"]


class _Sink:
    def __init__(self) -> None:
        self.events: List[Any] = []

    def bodyStarted(self, producer: Any) -> None:
        self.events.append("started")

    def bodyData(self, data: bytes) -> None:
        self.events.append(data)

    def bodyEnded(self, trailers: Any) -> None:
        self.events.append(("ended", trailers))

    def bodyFailed(self, reason: Failure) -> None:
        self.events.append("failed")


def test_statusWatch() -> None:
    """
    The status in the trailers, or the failure of the body, is told once
    the body ends; a discarded response tells nothing.
    """
    told: List[Tuple[Optional[int], bool]] = []
    inner = LocalReply(200, b"abc", headers(content_type="application/grpc"), trailers=headers(grpc_status="13"))
    watch = StatusWatch(inner, lambda status, failed: told.append((status, failed)))
    assert watch.code == 200 and watch.headers is inner.headers and not watch.endsWithHead()
    sink = _Sink()
    watch.deliverBody(sink)
    assert told == [(13, False)]
    assert sink.events[:2] == ["started", b"abc"]

    fed = FakeResponse(200, b"OK", [(b"content-type", b"application/grpc")])
    StatusWatch(fed, lambda status, failed: told.append((status, failed))).deliverBody(_Sink())
    fed.protocol.connectionLost(Failure(ConnectionLost()))
    assert told[-1] == (None, True)

    StatusWatch(LocalReply(200), lambda status, failed: told.append((status, failed))).discard()
    assert len(told) == 2


def test_retryOnGrpcStatus() -> None:
    """
    A Trailers-Only response is retried when the policy names its gRPC
    status as Envoy does; a response whose status is in trailers, or a
    status the policy does not name, is not.
    """
    policy = RetryPolicy(retryOn=("unavailable", "deadline-exceeded"))
    grpc = [(b"content-type", b"application/grpc")]
    assert shouldRetry(policy, FakeResponse(200, b"", grpc + [(b"grpc-status", b"14")]))
    assert shouldRetry(policy, FakeResponse(200, b"", grpc + [(b"grpc-status", b"4")]))
    assert not shouldRetry(policy, FakeResponse(200, b"", grpc + [(b"grpc-status", b"13")]))
    assert not shouldRetry(policy, FakeResponse(200, b"", grpc))
    assert not shouldRetry(RetryPolicy(retryOn=("5xx",)), FakeResponse(200, b"", grpc + [(b"grpc-status", b"14")]))


class _RoutesToApp(RoutesTo):
    def route(self, request: ProxyRequest) -> Deferred[Any]:
        request.cluster = "app"
        request.route = "r"
        return super().route(request)


class Call:
    """
    A listener with an HTTP/2 client (the h2 library's) and a fake
    upstream; the access log lines it writes are kept.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.upstream = FakeUpstream()
        self.metrics = Metrics(processMetrics=False)
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        forwarder = Forwarder(HeaderPolicy("web-1", "inbound"), FilterChain(), _RoutesToApp(self.upstream), "inbound")
        resource = ProxyResource(
            "inbound",
            forwarder,
            self.clock,
            InFlight(),
            AccessLog("json"),
            Telemetry(self.metrics),
            ErrorLog(self.clock),
        )
        peer = IPv4Address("TCP", "10.1.2.3", 5555)
        self.transport = StringTransport(peerAddress=peer)
        self.channel = ProxySite(resource, reactor=self.clock).buildProtocol(peer)
        self.channel.makeConnection(self.transport)
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.received: List[Any] = []
        self.pump()

    def close(self) -> None:
        globalLogPublisher.removeObserver(self.events.append)

    def pump(self) -> None:
        for _ in range(50):
            out = self.h2.data_to_send()
            if out:
                self.channel.dataReceived(out)
            back = self.transport.value()
            self.transport.clear()
            if back:
                self.received += self.h2.receive_data(back)
            if not out and not back:
                return
        raise AssertionError("still talking after 50 rounds")

    def call(self, timeout: Optional[bytes] = None, end: bool = True) -> int:
        streamId = self.h2.get_next_available_stream_id()
        fields = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"svc"),
            (b":path", b"/pkg.Svc/Method"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        if timeout is not None:
            fields.append((b"grpc-timeout", timeout))
        self.h2.send_headers(streamId, fields)
        self.h2.send_data(streamId, b"\x00\x00\x00\x00\x00", end_stream=end)
        self.pump()
        return streamId

    def of(self, kind: type, streamId: int) -> List[Any]:
        return [e for e in self.received if isinstance(e, kind) and e.stream_id == streamId]

    def access(self) -> List[Dict[str, Any]]:
        return [json.loads(e["line"]) for e in self.events if e.get("log_namespace") == "easymesh.access"]


@pytest.fixture
def call() -> Any:
    c = Call()
    yield c
    c.close()


def test_localErrorIsTrailersOnly(call: Call) -> None:
    """
    An error the sidecar answers reaches a gRPC client as one HEADERS
    frame that ends the stream: HTTP 200, the cause's gRPC status and
    message, and C{x-easymesh-error}.
    """
    streamId = call.call()
    call.upstream.requests[0][1].errback(UpstreamConnectFailure("refused"))
    call.pump()
    [head] = call.of(ResponseReceived, streamId)
    fields = dict(head.headers)
    assert fields[b":status"] == b"200"
    assert fields[b"grpc-status"] == b"14"
    assert fields[b"x-easymesh-error"] == b"upstream_connect_failure"
    assert head.stream_ended is not None
    assert not call.of(DataReceived, streamId)
    [line] = call.access()
    assert line["status"] == 200 and line["grpc_status"] == "UNAVAILABLE"
    assert line["error"] == "upstream_connect_failure"
    text = call.metrics.exposition()[0].decode()
    assert 'easymesh_grpc_requests_total{cluster="app",grpc_status="UNAVAILABLE",listener="inbound",route="r"} 1.0' in text
    assert 'easymesh_requests_total{cluster="app",code_class="5xx",listener="inbound",route="r"} 1.0' in text


def test_upstreamTrailersOnlyRelayedAsSuch(call: Call) -> None:
    """
    An upstream's Trailers-Only response is relayed as one HEADERS frame
    ending the stream, and its status counted.
    """
    streamId = call.call()
    response = LocalReply(200, b"", headers(content_type="application/grpc", grpc_status="5", grpc_message="nope"))
    call.upstream.requests[0][1].callback(response)
    call.pump()
    [head] = call.of(ResponseReceived, streamId)
    assert dict(head.headers)[b"grpc-status"] == b"5"
    assert head.stream_ended is not None
    assert call.access()[0]["grpc_status"] == "NOT_FOUND"


def test_statusFromTrailers(call: Call) -> None:
    streamId = call.call()
    response = FakeResponse(200, b"OK", [(b"content-type", b"application/grpc")])
    call.upstream.requests[0][1].callback(response)
    response.protocol.dataReceived(b"\x00\x00\x00\x00\x01x")
    response.protocol.sink.bodyEnded(headers(grpc_status="0"))
    call.pump()
    [trailers] = call.of(TrailersReceived, streamId)
    assert dict(trailers.headers)[b"grpc-status"] == b"0"
    assert call.access()[0]["grpc_status"] == "OK"


def test_deadlinePassedBeforeHead(call: Call) -> None:
    """
    The call's C{grpc-timeout} is passed on reduced by the time spent; when
    it passes before the upstream answers, the upstream request is
    cancelled and the client answered DEADLINE_EXCEEDED, Trailers-Only.
    """
    call.clock.advance(0.5)
    streamId = call.call(timeout=b"250m")
    [(request, _)] = call.upstream.requests
    assert request.deadline == pytest.approx(0.75)
    call.clock.advance(0.1)
    call.clock.advance(0.2)
    call.pump()
    assert call.upstream.cancelled == [request]
    [head] = call.of(ResponseReceived, streamId)
    fields = dict(head.headers)
    assert fields[b"grpc-status"] == b"4" and fields[b"x-easymesh-error"] == b"deadline_exceeded"
    assert head.stream_ended is not None
    line = call.access()[0]
    assert line["error"] == "deadline_exceeded" and line["grpc_status"] == "DEADLINE_EXCEEDED"


def test_deadlinePassedMidResponse(call: Call) -> None:
    """
    A deadline that passes while the response streams stops the upstream
    body and ends the response with DEADLINE_EXCEEDED in its trailers.
    """
    streamId = call.call(timeout=b"1S")
    response = FakeResponse(200, b"OK", [(b"content-type", b"application/grpc")])
    call.upstream.requests[0][1].callback(response)
    response.protocol.dataReceived(b"\x00\x00\x00\x00\x01x")
    call.pump()
    call.clock.advance(1)
    call.pump()
    assert "stop" in response.producer.calls
    [trailers] = call.of(TrailersReceived, streamId)
    assert dict(trailers.headers)[b"grpc-status"] == b"4"
    assert call.of(StreamEnded, streamId)
    assert call.access()[0]["error"] == "deadline_exceeded"


def test_noDeadlineWithoutTimeout(call: Call) -> None:
    call.call(timeout=b"bogus")
    [(request, _)] = call.upstream.requests
    assert request.deadline is None
    assert not [c for c in call.clock.getDelayedCalls() if "deadline" in repr(c.func).lower() and "Sweeper" not in repr(c.func)]


def test_upstreamResetMidResponse(call: Call) -> None:
    """
    An upstream gone in the middle of a gRPC response: the client's stream
    ends with UNAVAILABLE in its trailers (never a clean end, never a
    hang), naming the cause.
    """
    streamId = call.call()
    response = FakeResponse(200, b"OK", [(b"content-type", b"application/grpc")])
    call.upstream.requests[0][1].callback(response)
    response.protocol.dataReceived(b"\x00\x00\x00\x00\x01x")
    response.protocol.connectionLost(Failure(ConnectionLost()))
    call.pump()
    [trailers] = call.of(TrailersReceived, streamId)
    fields = dict(trailers.headers)
    assert fields[b"grpc-status"] == b"14"
    assert fields[b"x-easymesh-error"] == b"upstream_reset_mid_body"
    assert not call.of(StreamReset, streamId)
    assert call.access()[0]["grpc_status"] == "UNAVAILABLE"


def test_clientResetCancelsUpstream(call: Call) -> None:
    """
    A client's RST_STREAM cancels the upstream request.
    """
    streamId = call.call(end=False)
    [(request, _)] = call.upstream.requests
    call.h2.reset_stream(streamId)
    call.pump()
    assert call.upstream.cancelled == [request]


def test_notGrpcUnchanged(call: Call) -> None:
    """
    A request that is not gRPC gets the HTTP reply as ever.
    """
    streamId = call.h2.get_next_available_stream_id()
    call.h2.send_headers(
        streamId, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/")], end_stream=True
    )
    call.pump()
    call.upstream.requests[0][1].errback(UpstreamConnectFailure("refused"))
    call.pump()
    [head] = call.of(ResponseReceived, streamId)
    assert dict(head.headers)[b":status"] == b"503"
    assert call.of(DataReceived, streamId)


def test_responseIsAResponse() -> None:
    assert not Response(200).endsWithHead()
    assert LocalReply(204).endsWithHead()
    assert not LocalReply(200, b"x").endsWithHead()


def _grpcCluster(clock: Clock) -> Any:
    import random

    from easymesh.cluster.cluster import Cluster
    from easymesh.config.addresses import UpstreamURL
    from easymesh.config.mesh import ClusterConfig, OutlierDetection
    from tests.meshfakes import Upstreams

    upstreams = Upstreams()
    endpoints = (UpstreamURL.parse("h2c://a1:80"), UpstreamURL.parse("h2c://a2:80"))
    detection = OutlierDetection(consecutive5xx=0, consecutiveGatewayFailure=2, maxEjectionPercent=50.0)
    config = ClusterConfig("web", endpoints=endpoints, weights=(1, 1), outlierDetection=detection, protocol="http2")
    cluster = Cluster(config, clock, random.Random(2), makeUpstream=upstreams.make)
    cluster.start()
    return cluster, upstreams


def _grpcRequest(timeout: Optional[bytes] = None) -> ProxyRequest:
    from tests.meshfakes import makeRequest

    fields = [(b"content-type", b"application/grpc")]
    if timeout is not None:
        fields.append((b"grpc-timeout", timeout))
    return makeRequest(b"/pkg.Svc/M", b"POST", headers=fields)


def test_deadlinePassedOnReduced() -> None:
    """
    Each try carries what is left of the call's deadline as its
    C{grpc-timeout}.
    """
    clock = Clock()
    clock.advance(10)
    cluster, upstreams = _grpcCluster(clock)
    request = _grpcRequest(b"5S")
    request.deadline = 12.0
    cluster.request(request)
    [sent] = upstreams.allSent()
    assert sent.request.headers.getRawHeaders(b"grpc-timeout") == [b"2000000u"]
    cluster.stop()


@pytest.mark.parametrize("trailersOnly", [True, False], ids=["trailers-only", "in-trailers"])
def test_outlierCountsGrpcStatus(trailersOnly: bool) -> None:
    """
    UNAVAILABLE counts as a gateway failure for outlier detection, as
    Envoy counts it, whether it comes in the head or in the trailers; OK
    does not.
    """
    clock = Clock()
    cluster, upstreams = _grpcCluster(clock)
    for _ in range(8):
        request = _grpcRequest()
        results: List[Any] = []
        cluster.request(request).addBoth(results.append)
        sent = upstreams.allSent()[-1]
        failing = request.upstreamHost == "a1:80"
        status = b"14" if failing else b"0"
        h = Headers({b"content-type": [b"application/grpc"]})
        if trailersOnly:
            h.setRawHeaders(b"grpc-status", [status])
            sent.deferred.callback(LocalReply(200, b"", h))
        else:
            sent.deferred.callback(LocalReply(200, b"msg", h, trailers=Headers({b"grpc-status": [status]})))
            results[0].deliverBody(_Sink())
    a1, a2 = cluster.endpoints
    assert a1.ejected and not a2.ejected
    cluster.stop()
