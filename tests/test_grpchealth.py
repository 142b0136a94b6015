"""
Tests for L{easymesh.cluster.grpchealth}: gRPC health checks, encoded by
hand, sent by a L{HealthChecker} over an HTTP/2 upstream connection to the
h2 library's server side, with a L{Clock}.
"""

from __future__ import annotations

import random
from typing import Any, List, Optional, Tuple

import pytest
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from easymesh.cluster.endpoint import Endpoint
from easymesh.cluster.grpchealth import decodeStatus, encodeRequest, grpcProbe
from easymesh.cluster.health import HealthChecker
from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import GrpcHealthCheck, HealthCheck
from easymesh.message import Request, Response
from tests.test_h2client import Peer, connection

SERVING, NOT_SERVING = 1, 2


def frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def test_encodeRequest() -> None:
    """
    The request is one uncompressed gRPC message: an empty one for the
    server as a whole, else field 1 with the service name, as protobuf
    encodes C{HealthCheckRequest}.
    """
    from grpc_health.v1 import health_pb2

    assert encodeRequest("") == b"\x00\x00\x00\x00\x00"
    assert encodeRequest("orders") == b"\x00\x00\x00\x00\x08\x0a\x06orders"
    for service in ("grpc.testing.TestService", "s" * 300, "é"):
        expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
        assert encodeRequest(service) == frame(expected)


def test_decodeStatus() -> None:
    from grpc_health.v1 import health_pb2

    Response_ = health_pb2.HealthCheckResponse
    for status in (Response_.UNKNOWN, Response_.SERVING, Response_.NOT_SERVING, Response_.SERVICE_UNKNOWN):
        assert decodeStatus(frame(Response_(status=status).SerializeToString())) == status
    # Unknown fields of every wire type are skipped.
    extra = b"\x10\x96\x01" + b"\x1a\x03abc" + b"\x21" + bytes(8) + b"\x2d" + bytes(4)
    assert decodeStatus(frame(extra + b"\x08\x01")) == SERVING


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00\x00\x00", b"\x01\x00\x00\x00\x02\x08\x01", b"\x00\x00\x00\x00\x03\x08\x01", b"\x00\x00\x00\x00\x01\x08",
     frame(b"\x0a\x05ab"), frame(b"\x0b")],
    ids=["empty", "short-prefix", "compressed", "length-disagrees", "truncated-varint", "truncated-field", "wire-type-3"],
)  # fmt: skip
def test_decodeStatusRefusesMalformed(body: bytes) -> None:
    with pytest.raises(ValueError):
        decodeStatus(body)


class Upstream:
    """
    An endpoint's upstream that is one HTTP/2 connection.
    """

    def __init__(self) -> None:
        self.client = connection()
        self.peer = Peer(self.client)
        self.timeouts: List[Optional[float]] = []

    def request(self, request: Request, timeout: Optional[float] = None) -> "Deferred[Response]":
        self.timeouts.append(timeout)
        return self.client.request(request, request.body)


class Checked:
    """
    One endpoint health-checked with gRPC every 5 s (1 s timeout), one
    pass or failure enough to change its health.
    """

    def __init__(self, service: str = "orders") -> None:
        self.clock = Clock()
        self.upstream = Upstream()
        self.endpoint = Endpoint(UpstreamURL.parse("grpc://backend.internal:50051"), self.upstream)
        check = HealthCheck(
            grpc=GrpcHealthCheck(service), interval=5.0, timeout=1.0, healthyThreshold=1, unhealthyThreshold=1
        )
        self.checker = HealthChecker(
            check, self.clock, "orders", lambda: [self.endpoint], grpcProbe, rng=random.Random(0)
        )
        self.checker.start()

    def nextProbe(self) -> Tuple[int, Any]:
        """
        Run the clock to the next probe; its stream and request.
        """
        peer = self.upstream.peer
        seen = len(peer.of(RequestReceived))
        for _ in range(60):
            self.clock.advance(0.1)
            peer.pump()
            if len(peer.of(RequestReceived)) > seen:
                received = peer.of(RequestReceived)[-1]
                return received.stream_id, received
        raise AssertionError("no probe within 6 s")

    def answer(self, streamId: int, status: Optional[int], grpcStatus: bytes = b"0", trailersOnly: bool = False) -> None:
        h2 = self.upstream.peer.h2
        head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
        if trailersOnly:
            h2.send_headers(streamId, head + [(b"grpc-status", grpcStatus), (b"grpc-message", b"nope")], end_stream=True)
        else:
            h2.send_headers(streamId, head)
            if status is not None:
                h2.send_data(streamId, frame(b"\x08" + bytes([status])))
            h2.send_headers(streamId, [(b"grpc-status", grpcStatus)], end_stream=True)
        self.upstream.peer.pump()


def test_probeRequest() -> None:
    """
    A probe is C{POST /grpc.health.v1.Health/Check} with gRPC's headers
    and the encoded request as its whole body, within the check's timeout.
    """
    checked = Checked("orders")
    streamId, received = checked.nextProbe()
    fields = dict(received.headers)
    assert fields[b":method"] == b"POST"
    assert fields[b":path"] == b"/grpc.health.v1.Health/Check"
    assert fields[b":authority"] == b"backend.internal:50051"
    assert fields[b"content-type"] == b"application/grpc"
    assert fields[b"te"] == b"trailers"
    peer = checked.upstream.peer
    assert b"".join(e.data for e in peer.of(DataReceived) if e.stream_id == streamId) == encodeRequest("orders")
    assert [e.stream_id for e in peer.of(StreamEnded)] == [streamId]
    assert checked.upstream.timeouts == [1.0]


def test_servingAndNotServing() -> None:
    """
    NOT_SERVING makes the endpoint unhealthy; SERVING healthy again.
    """
    checked = Checked()
    streamId, _ = checked.nextProbe()
    checked.answer(streamId, SERVING)
    assert checked.endpoint.healthy
    streamId, _ = checked.nextProbe()
    checked.answer(streamId, NOT_SERVING)
    assert not checked.endpoint.healthy
    streamId, _ = checked.nextProbe()
    checked.answer(streamId, SERVING)
    assert checked.endpoint.healthy


@pytest.mark.parametrize(
    "answer",
    [
        {"status": SERVING, "grpcStatus": b"14"},
        {"status": None, "grpcStatus": b"5", "trailersOnly": True},
        {"status": None},
        {"status": 3},
    ],
    ids=["serving-but-grpc-status-14", "trailers-only-not-found", "no-message", "service-unknown"],
)
def test_failures(answer: Any) -> None:
    """
    A gRPC status other than 0 fails, whatever the message said; so does
    an answer without a message, or with any status but SERVING.
    """
    checked = Checked()
    streamId, _ = checked.nextProbe()
    checked.answer(streamId, **answer)
    assert not checked.endpoint.healthy


def test_httpStatusOtherThan200Fails() -> None:
    checked = Checked()
    streamId, _ = checked.nextProbe()
    h2 = checked.upstream.peer.h2
    h2.send_headers(streamId, [(b":status", b"503")], end_stream=True)
    checked.upstream.peer.pump()
    assert not checked.endpoint.healthy


def test_timeoutResetsStream() -> None:
    """
    No answer within the timeout: the check fails and its stream is reset.
    """
    checked = Checked()
    streamId, _ = checked.nextProbe()
    checked.clock.advance(1.0)
    checked.upstream.peer.pump()
    assert not checked.endpoint.healthy
    [reset] = checked.upstream.peer.of(StreamReset)
    assert (reset.stream_id, reset.error_code) == (streamId, ErrorCodes.CANCEL)
