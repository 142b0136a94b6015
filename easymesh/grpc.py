# -*- test-case-name: tests.test_grpc -*-
"""
gRPC's view of an HTTP exchange (grpc's C{doc/PROTOCOL-HTTP2.md}): which
requests are gRPC calls, their deadline (C{grpc-timeout}), the status of
their response (C{grpc-status}, in the trailers or, for Trailers-Only, in
the head), and the shape of an error the sidecar answers itself.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from easymesh.errors import CAUSES, ERROR_HEADER, GrpcStatus
from easymesh.interfaces import IBodySink
from easymesh.message import LocalReply, Response

CONTENT_TYPE = b"content-type"
GRPC_STATUS = b"grpc-status"
GRPC_MESSAGE = b"grpc-message"
GRPC_TIMEOUT = b"grpc-timeout"

#: What C{grpc-status} values are kept under their own name in logs and
#: metrics: the codes grpc defines; any other value is C{other}.
STATUS_NAMES: Dict[int, str] = {int(s): s.name for s in GrpcStatus}

#: The HTTP status that stands for a gRPC status where a status class
#: counts (outlier detection, error rates), as Envoy maps them.
HTTP_EQUIVALENT: Dict[int, int] = {
    GrpcStatus.OK: 200,
    GrpcStatus.CANCELLED: 499,
    GrpcStatus.UNKNOWN: 500,
    GrpcStatus.INVALID_ARGUMENT: 400,
    GrpcStatus.DEADLINE_EXCEEDED: 504,
    GrpcStatus.NOT_FOUND: 404,
    GrpcStatus.ALREADY_EXISTS: 409,
    GrpcStatus.PERMISSION_DENIED: 403,
    GrpcStatus.RESOURCE_EXHAUSTED: 429,
    GrpcStatus.FAILED_PRECONDITION: 400,
    GrpcStatus.ABORTED: 409,
    GrpcStatus.OUT_OF_RANGE: 400,
    GrpcStatus.UNIMPLEMENTED: 501,
    GrpcStatus.INTERNAL: 500,
    GrpcStatus.UNAVAILABLE: 503,
    GrpcStatus.DATA_LOSS: 500,
    GrpcStatus.UNAUTHENTICATED: 401,
}

#: The gRPC status of an HTTP status that carries none (grpc's
#: C{doc/http-grpc-status-mapping.md}).
FROM_HTTP: Dict[int, GrpcStatus] = {
    400: GrpcStatus.INTERNAL,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    429: GrpcStatus.UNAVAILABLE,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.UNAVAILABLE,
}

_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])\Z")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def isGrpc(headers: Headers) -> bool:
    """
    Whether a message with these headers is gRPC: its content type is
    C{application/grpc}, alone or with a C{+} or C{;} suffix (gRPC-Web,
    which browsers speak over HTTP/1.1, is not).
    """
    types = headers.getRawHeaders(CONTENT_TYPE)
    if not types:
        return False
    value = types[0].lower()
    return value.startswith(b"application/grpc") and value[16:17] in (b"", b"+", b";")


def parseTimeout(value: bytes) -> Optional[float]:
    """
    The seconds a C{grpc-timeout} value allows (1 to 8 digits and a unit),
    or L{None} if it is not one.
    """
    match = _TIMEOUT.match(value.strip())
    if match is None:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


def formatTimeout(seconds: float) -> bytes:
    """
    A C{grpc-timeout} value for C{seconds}, rounded down to the finest unit
    whose 8 digits hold it (never below one microsecond).
    """
    for unit, size in ((b"u", 1e-6), (b"m", 1e-3), (b"S", 1.0), (b"M", 60.0), (b"H", 3600.0)):
        count = int(max(seconds, 0.0) / size)
        if count < 100_000_000:
            return b"%d%s" % (max(count, 1), unit)
    return b"99999999H"


def encodeMessage(text: str) -> bytes:
    """
    A C{grpc-message} value: UTF-8, percent-encoded outside printable
    ASCII and for C{%} itself.
    """
    return b"".join(
        bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in text.encode("utf-8")
    )


def statusOf(headers: Optional[Headers]) -> Optional[int]:
    """
    The C{grpc-status} in C{headers} (trailers, or a Trailers-Only head):
    its number, -1 if it is not one, L{None} if there is none.
    """
    if headers is None:
        return None
    values = headers.getRawHeaders(GRPC_STATUS)
    if not values:
        return None
    value = values[0].strip()
    return int(value) if value.isdigit() and len(value) <= 3 else -1


def statusName(status: Optional[int]) -> str:
    """
    A bounded label for a gRPC status: its name, C{other} for an unknown
    value, C{-} for none.
    """
    if status is None:
        return "-"
    return STATUS_NAMES.get(status, "other")


def httpEquivalent(status: int) -> int:
    """
    The HTTP status that stands for C{status} where status classes count;
    500 for a value grpc does not define.
    """
    return HTTP_EQUIVALENT.get(status, 500)


def grpcReply(reply: LocalReply) -> LocalReply:
    """
    A reply the sidecar made, as a gRPC client can read it: HTTP 200,
    C{application/grpc}, and the status and message of its cause (or of
    its HTTP status, by grpc's mapping) in a Trailers-Only head, which the
    HTTP/2 edge sends as one HEADERS frame ending the stream.  The other
    headers (C{x-easymesh-error} among them) are kept.
    """
    cause = CAUSES.get(reply.cause) if reply.cause is not None else None
    if cause is not None:
        status = cause.grpc
        text = cause.message
    else:
        status = FROM_HTTP.get(reply.code, GrpcStatus.UNKNOWN)
        text = reply.body.decode("utf-8", "replace").strip() or f"HTTP status {reply.code}"
    headers = Headers()
    for name, values in reply.headers.getAllRawHeaders():
        if name.lower() not in (b"content-type", b"content-length"):
            headers.setRawHeaders(name, values)
    headers.setRawHeaders(CONTENT_TYPE, [b"application/grpc"])
    headers.setRawHeaders(GRPC_STATUS, [b"%d" % status])
    headers.setRawHeaders(GRPC_MESSAGE, [encodeMessage(text)])
    return LocalReply(200, b"", headers, cause=reply.cause, detail=reply.detail)


def errorTrailers(status: GrpcStatus, text: str, cause: Optional[str] = None) -> Headers:
    """
    Trailers that end a gRPC response whose head has gone out with
    C{status}.
    """
    trailers = Headers()
    trailers.setRawHeaders(GRPC_STATUS, [b"%d" % status])
    trailers.setRawHeaders(GRPC_MESSAGE, [encodeMessage(text)])
    if cause is not None:
        trailers.setRawHeaders(ERROR_HEADER, [cause.encode("ascii")])
    return trailers


@implementer(IBodySink)
class _StatusSink:
    """
    Passes a response body on, and tells C{onEnd} the gRPC status its
    trailers carry (L{None} for none) and whether the body failed.
    """

    def __init__(self, sink: Any, onEnd: Any) -> None:
        self._sink = sink
        self._onEnd = onEnd

    def bodyStarted(self, producer: Any) -> None:
        self._sink.bodyStarted(producer)

    def bodyData(self, data: bytes) -> None:
        self._sink.bodyData(data)

    def bodyEnded(self, trailers: Optional[Headers]) -> None:
        onEnd, self._onEnd = self._onEnd, None
        if onEnd is not None:
            onEnd(statusOf(trailers), False)
        self._sink.bodyEnded(trailers)

    def bodyFailed(self, reason: Failure) -> None:
        onEnd, self._onEnd = self._onEnd, None
        if onEnd is not None:
            onEnd(None, True)
        self._sink.bodyFailed(reason)


class StatusWatch(Response):
    """
    An upstream's gRPC response whose status comes with its trailers:
    relayed unchanged, and C{onEnd(status, failed)} is called once its body
    ends (with the status of its trailers, or L{None}) or fails; not if
    the response is discarded unread.
    """

    __slots__ = ("_response", "_onEnd")

    def __init__(self, response: Response, onEnd: Any) -> None:
        super().__init__(response.code, response.headers, response.phrase, response.cause, response.detail)
        self._response = response
        self._onEnd = onEnd

    def deliverBody(self, sink: Any) -> None:
        onEnd, self._onEnd = self._onEnd, None
        self._response.deliverBody(_StatusSink(sink, onEnd) if onEnd is not None else sink)

    def discard(self) -> None:
        self._onEnd = None
        self._response.discard()

    def endsWithHead(self) -> bool:
        return self._response.endsWithHead()
