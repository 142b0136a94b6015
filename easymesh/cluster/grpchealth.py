# -*- test-case-name: tests.test_grpchealth -*-
"""
gRPC health checks (C{grpc.health.v1.Health/Check}, grpc's
C{doc/health-checking.md}) over a cluster's HTTP/2 upstream.

The request and response messages are tiny, so they are encoded and
decoded here by hand rather than with a protobuf library:
C{HealthCheckRequest{string service = 1}} and
C{HealthCheckResponse{ServingStatus status = 1}}.  An endpoint passes when
the call ends with C{grpc-status: 0} and the status is C{SERVING}.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from zope.interface import implementer

from easymesh.cluster.endpoint import Endpoint
from easymesh.config.mesh import HealthCheck
from easymesh.interfaces import IBodySink
from easymesh.message import ProxyRequest, Response
from easymesh.requestbody import RequestBodyStream

PATH = b"/grpc.health.v1.Health/Check"

#: C{HealthCheckResponse.ServingStatus}.
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1

#: The most of a response read: a health answer is a few bytes.
BODY_LIMIT = 4096


class NotServing(Exception):
    """
    The endpoint answered, but not that it is serving.
    """


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encodeRequest(service: str) -> bytes:
    """
    A length-prefixed, uncompressed gRPC message holding
    C{HealthCheckRequest{service}}.
    """
    name = service.encode("utf-8")
    message = (b"\x0a" + _varint(len(name)) + name) if name else b""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _readVarint(data: bytes, offset: int) -> "tuple[int, int]":
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset


def decodeStatus(body: bytes) -> int:
    """
    The C{status} of the one C{HealthCheckResponse} gRPC message that is
    C{body} (0, C{UNKNOWN}, if the field is absent).

    @raise ValueError: C{body} is not one uncompressed gRPC message holding
        a well-formed protobuf message.
    """
    if len(body) < 5:
        raise ValueError("no gRPC message")
    if body[0] != 0:
        raise ValueError("compressed gRPC message")
    length = int.from_bytes(body[1:5], "big")
    if len(body) != 5 + length:
        raise ValueError("not one whole gRPC message")
    message, offset, status = body[5:], 0, 0
    while offset < len(message):
        key, offset = _readVarint(message, offset)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, offset = _readVarint(message, offset)
            if field == 1:
                status = value
        elif wire == 2:
            size, offset = _readVarint(message, offset)
            offset += size
        elif wire == 1:
            offset += 8
        elif wire == 5:
            offset += 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        if offset > len(message):
            raise ValueError("truncated protobuf field")
    return status


def _field(headers: Optional[Headers], name: bytes) -> Optional[bytes]:
    if headers is None:
        return None
    values = headers.getRawHeaders(name)
    return values[-1] if values else None


@implementer(IBodySink)
class _Answer:
    """
    Read a health answer; C{done} fires with 200 when it says SERVING, or
    fails with L{NotServing} saying what it said instead.  Cancelling it
    (the check's timeout) resets the stream.
    """

    def __init__(self, response: Response) -> None:
        self.response = response
        self.chunks: List[bytes] = []
        self.size = 0
        self.producer: Any = None
        self.done: Deferred[int] = Deferred(self._cancel)

    def bodyStarted(self, producer: Any) -> None:
        self.producer = producer

    def bodyData(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > BODY_LIMIT:
            self.producer.stopProducing()
            self._fail(f"answer longer than {BODY_LIMIT} bytes")
            return
        self.chunks.append(data)

    def bodyEnded(self, trailers: Optional[Headers]) -> None:
        if self.done.called:
            return
        response = self.response
        if response.code != 200:
            self._fail(f"HTTP status {response.code}")
            return
        # A Trailers-Only answer has its status in the headers.
        status = _field(trailers, b"grpc-status") or _field(response.headers, b"grpc-status")
        if status is None:
            self._fail("no grpc-status")
            return
        if status != b"0":
            message = _field(trailers, b"grpc-message") or _field(response.headers, b"grpc-message") or b""
            self._fail(f"grpc-status {status.decode('ascii', 'replace')} {message.decode('ascii', 'replace')}".rstrip())
            return
        try:
            serving = decodeStatus(b"".join(self.chunks))
        except ValueError as e:
            self._fail(f"bad HealthCheckResponse: {e}")
            return
        if serving != SERVING:
            self._fail(SERVING_STATUS.get(serving, f"serving status {serving}"))
            return
        self.done.callback(200)

    def bodyFailed(self, reason: Any) -> None:
        if not self.done.called:
            self.done.errback(reason)

    def _fail(self, why: str) -> None:
        if not self.done.called:
            self.done.errback(NotServing(why))

    def _cancel(self, d: Deferred[int]) -> None:
        if self.producer is not None:
            self.producer.stopProducing()


def grpcProbe(endpoint: Endpoint, check: HealthCheck) -> Deferred[int]:
    """
    Ask C{endpoint} whether C{check.grpc.service} is serving; fires with
    200 if it is, else fails (L{NotServing}, or the request's failure).
    """
    assert check.grpc is not None
    message = encodeRequest(check.grpc.service)
    headers = Headers()
    headers.setRawHeaders(b"host", [(check.host or endpoint.url.authority).encode("ascii")])
    headers.setRawHeaders(b"content-type", [b"application/grpc"])
    headers.setRawHeaders(b"te", [b"trailers"])
    headers.setRawHeaders(b"user-agent", [b"easymesh-health-check"])
    body = RequestBodyStream(len(message), lambda: None, lambda: None)
    body.write(message)
    body.finish()
    probe = ProxyRequest(b"POST", PATH, headers, body, listener="health")

    def read(response: Response) -> Deferred[int]:
        answer = _Answer(response)
        response.deliverBody(answer)
        return answer.done

    return endpoint.upstream.request(probe, check.timeout).addCallback(read)
