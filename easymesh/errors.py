# -*- test-case-name: tests.test_errors -*-
"""
The one place where failures become responses.

Every failure on the request path is classified into a L{ProxyError}; its
L{ProxyError.reply} is the response the client sees: a status, a short text
body and an C{x-easymesh-error} header naming the cause.

L{CAUSE_TABLE} is the one list of causes, with each one's status, gRPC
status, body and words for people: the errors here, the HTTP/1.1 edge's
refusals, the error table of docs/troubleshooting.md and the dashboard all take them from it.
"""

from __future__ import annotations

import enum
import math
from http import HTTPStatus
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Type

import attrs

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.python.reflect import safe_str
from twisted.web.http_headers import Headers

from easymesh.message import LocalReply

ERROR_HEADER = b"x-easymesh-error"


class GrpcStatus(enum.IntEnum):
    """
    The gRPC status codes (grpc's C{doc/statuscodes.md}).
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: How a cause reaches the client: a reply with its status; that, or the
#: connection aborted if the response had begun; only the connection
#: aborted (the response had begun); nothing (the client is gone).
REPLY, REPLY_OR_ABORT, ABORT, NOTHING = "reply", "reply_or_abort", "abort", "nothing"


@attrs.frozen
class Cause:
    """
    One cause of an error the sidecar makes: a value of C{x-easymesh-error}.

    @ivar name: The value of C{x-easymesh-error}, the access log's C{error}.
    @ivar status: The HTTP status of its reply; L{None} if it never has a
        reply of its own.
    @ivar grpc: The gRPC status that says what happened.
    @ivar message: The reply's body (the HTTP/1.1 edge's refusals send the
        precise reason instead).
    @ivar words: What happened, in plain words (the dashboard's).
    @ivar when: What happened, in Markdown (the docs' error table).
    @ivar answer: How it reaches the client: L{REPLY}, L{REPLY_OR_ABORT},
        L{ABORT} or L{NOTHING}.
    @ivar alsoStatuses: Other statuses the HTTP/1.1 edge refuses with it.
    @ivar edge: Whether the HTTP/1.1 edge refuses unreadable requests with
        it (by status: see L{edgeCause}).
    """

    name: str
    status: Optional[int]
    grpc: GrpcStatus
    message: str
    words: str
    when: str
    answer: str = REPLY
    alsoStatuses: Tuple[int, ...] = ()
    edge: bool = False

    @property
    def statuses(self) -> Tuple[int, ...]:
        """
        Every status its reply may have.
        """
        return () if self.status is None else (self.status,) + self.alsoStatuses


#: Every cause of an error the sidecar makes; users match on the names, so
#: a name is never changed.  The gRPC status follows grpc's
#: C{doc/http-grpc-status-mapping.md} where that says what happened, and
#: else, as Envoy does, names it: timeouts are C{DEADLINE_EXCEEDED}, limits
#: on size C{RESOURCE_EXHAUSTED}, a client gone C{CANCELLED}.  A rate limit
#: is C{UNAVAILABLE}, as the mapping has 429 and as Envoy sends by default:
#: it is worth retrying later, and gRPC retry policies commonly retry
#: C{UNAVAILABLE} but not C{RESOURCE_EXHAUSTED}.
CAUSE_TABLE: Tuple[Cause, ...] = (
    Cause(
        "bad_request",
        400,
        GrpcStatus.INTERNAL,
        message="bad request",
        words="malformed request",
        when="a malformed request (refused while its head or body is read, the connection then "
        "closes), or a target or path the sidecar does not forward (see "
        "[Routes and clusters](configuration.md#routes-and-clusters))",
        edge=True,
    ),
    Cause(
        "header_with_underscores",
        400,
        GrpcStatus.INTERNAL,
        message="bad request: header names with underscores are refused",
        words="a request header name holds an underscore, which this listener refuses",
        when="a request header name holds an underscore, with "
        "`--headers-with-underscores-action reject_request`",
    ),
    Cause(
        "unauthorized",
        403,
        GrpcStatus.PERMISSION_DENIED,
        message="the caller is not authorized for this request",
        words="the caller's identity is not allowed",
        when="an authorization rule refuses the caller's identity (see "
        "[mTLS](mtls.md#authorization-rules))",
    ),
    Cause(
        "no_route",
        404,
        GrpcStatus.UNIMPLEMENTED,
        message="no route matches this request",
        words="no route of the listener matches the request",
        when="no route of the listener matches the request (see "
        "[Routes and clusters](configuration.md#routes-and-clusters))",
    ),
    Cause(
        "request_timeout",
        408,
        GrpcStatus.DEADLINE_EXCEEDED,
        message="request timeout",
        words="the client sent its request too slowly",
        when="the request head or body came too slowly (then the connection closes)",
        edge=True,
    ),
    Cause(
        "request_too_large",
        413,
        GrpcStatus.RESOURCE_EXHAUSTED,
        message="request too large",
        words="request line, headers or body over the limit",
        when="a request line, head or body over its limit (then the connection closes)",
        alsoStatuses=(414, 431),
        edge=True,
    ),
    Cause(
        "rate_limited",
        429,
        GrpcStatus.UNAVAILABLE,
        message="rate limited",
        words="over the rate limit",
        when="no token within `--max-wait`, or a route's per-key limit is spent "
        "(with `Retry-After`)",
    ),
    Cause(
        "client_closed",
        499,
        GrpcStatus.CANCELLED,
        message="client closed the request",
        words="the client went away before the answer",
        when="the client went away before the answer, and its upstream request was "
        "cancelled; only the access log and the dashboard show it",
        answer=NOTHING,
    ),
    Cause(
        "internal_error",
        500,
        GrpcStatus.INTERNAL,
        message="internal proxy error",
        words="a fault in the sidecar itself (a bug)",
        when="a fault in the sidecar itself (a bug); logged in the error log with the "
        "exception and where it was raised",
        answer=REPLY_OR_ABORT,
        edge=True,
    ),
    Cause(
        "unsupported_transfer_coding",
        501,
        GrpcStatus.UNIMPLEMENTED,
        message="unsupported transfer coding",
        words="the request's body is in a transfer coding the sidecar does not decode",
        when="a `Transfer-Encoding` with a coding before `chunked` (such as "
        "`gzip, chunked`), which the sidecar does not decode (then the connection closes)",
        edge=True,
    ),
    Cause(
        "upstream_protocol_error",
        502,
        GrpcStatus.UNAVAILABLE,
        message="upstream sent a malformed response",
        words="the upstream's answer was not valid HTTP",
        when="the upstream's response is malformed",
    ),
    Cause(
        "upstream_reset",
        502,
        GrpcStatus.UNAVAILABLE,
        message="upstream closed the connection before responding",
        words="the upstream closed the connection without answering",
        when="the upstream closed without responding",
    ),
    Cause(
        "upstream_reset_mid_body",
        None,
        GrpcStatus.UNAVAILABLE,
        message="upstream closed the connection in the middle of its response",
        words="the upstream closed the connection in the middle of its answer",
        when="the upstream closed in the middle of its response body, which had begun to "
        "reach the client; a gRPC call over HTTP/2 is ended with `grpc-status` `UNAVAILABLE` "
        "instead",
        answer=ABORT,
    ),
    Cause(
        "upstream_connect_failure",
        503,
        GrpcStatus.UNAVAILABLE,
        message="upstream connect failure",
        words="could not connect to the upstream",
        when="connection refused, unreachable, or `--connect-timeout`",
    ),
    Cause(
        "upstream_tls_failure",
        503,
        GrpcStatus.UNAVAILABLE,
        message="upstream TLS handshake failed",
        words="the upstream's certificate did not verify, or its identity is not the expected one",
        when="the upstream's certificate did not verify, or its identity is not the expected one",
    ),
    Cause(
        "overflow",
        503,
        GrpcStatus.UNAVAILABLE,
        message="upstream overflow: too many requests to this cluster",
        words="a circuit breaker of the cluster is full",
        when="a cluster's circuit breaker is full: the request is refused at once",
    ),
    Cause(
        "no_healthy_upstream",
        503,
        GrpcStatus.UNAVAILABLE,
        message="no upstream endpoint is available",
        words="the cluster has no endpoint to send to",
        when="the cluster has no endpoints (a DNS name that never resolved)",
    ),
    Cause(
        "upstream_timeout",
        504,
        GrpcStatus.DEADLINE_EXCEEDED,
        message="upstream request timeout",
        words="the upstream did not answer in time",
        when="no response headers within the cluster's (or `--timeout`) per-try timeout, "
        "or a route's `timeout` passed",
    ),
    Cause(
        "deadline_exceeded",
        504,
        GrpcStatus.DEADLINE_EXCEEDED,
        message="deadline exceeded",
        words="the gRPC call's deadline passed",
        when="a gRPC call's `grpc-timeout` (or its route's `timeout`, if shorter) passed before "
        "its response ended; the upstream stream is reset, and a response under way ends with "
        "`grpc-status` `DEADLINE_EXCEEDED`",
        answer=REPLY_OR_ABORT,
    ),
    Cause(
        "stream_idle_timeout",
        504,
        GrpcStatus.DEADLINE_EXCEEDED,
        message="stream idle timeout: no body bytes moved for too long",
        words="the request or response body stopped moving for too long",
        when="a request or response body streamed with no byte moving either way for the "
        "cluster's `stream_idle_timeout` (or `--stream-idle-timeout`)",
        answer=REPLY_OR_ABORT,
    ),
    Cause(
        "unsupported_http_version",
        505,
        GrpcStatus.UNIMPLEMENTED,
        message="HTTP version not supported",
        words="the request is in an HTTP version other than 1.0 and 1.1",
        when="a request in an HTTP version other than 1.0 and 1.1 (then the connection "
        "closes)",
        edge=True,
    ),
    Cause(
        "loop_detected",
        508,
        GrpcStatus.INTERNAL,
        message="request loop detected: this sidecar has already forwarded it",
        words="the request came back to this listener (a routing loop)",
        when="the request has been through this listener already",
    ),
)

#: The rows of L{CAUSE_TABLE} by name.
CAUSES: Dict[str, Cause] = {c.name: c for c in CAUSE_TABLE}

#: The reason phrases of the statuses in L{CAUSE_TABLE}.
PHRASES: Dict[int, bytes] = {
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    499: b"Client Closed Request",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    508: b"Loop Detected",
}

#: The edge's refusals by status.
_EDGE: Dict[int, Cause] = {s: c for c in CAUSE_TABLE if c.edge for s in c.statuses}


def edgeCause(status: int) -> Cause:
    """
    The cause with which the HTTP/1.1 edge refuses an unreadable request
    with C{status}.

    @raise KeyError: No cause of the edge has that status.
    """
    return _EDGE[status]


def phrase(status: int) -> bytes:
    """
    The reason phrase of a status: RFC 9110's for those in
    L{CAUSE_TABLE}, else the standard library's, else C{Unknown}.
    """
    found = PHRASES.get(status)
    if found is None:
        try:
            found = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            found = b"Unknown"
    return found


#: The comments around the docs' error table (see L{easymesh.doctables}).
MARKDOWN_BEGIN = "<!-- causes:begin -->"
MARKDOWN_END = "<!-- causes:end -->"


def _statusCell(cause: Cause) -> str:
    if cause.answer == NOTHING:
        return "none: the client is gone"
    if cause.answer == ABORT:
        return "none: the connection is aborted"
    text = ", ".join(str(s) for s in cause.statuses)
    if cause.answer == REPLY_OR_ABORT:
        text += ", or the connection aborted if the response had begun"
    return text


def causesMarkdown() -> str:
    """
    L{CAUSE_TABLE} as the docs' Markdown table, without the comments
    around it.
    """
    lines = ["| status | `x-easymesh-error` | when |", "|---|---|---|"]
    for cause in CAUSE_TABLE:
        lines.append(f"| {_statusCell(cause)} | `{cause.name}` | {cause.when} |")
    return "\n".join(lines) + "\n"


def withCausesMarkdown(text: str) -> str:
    """
    C{text} (a page of the docs) with what lies between L{MARKDOWN_BEGIN} and
    L{MARKDOWN_END} replaced by L{causesMarkdown}.

    @raise ValueError: C{text} lacks the comments.
    """
    from easymesh.doctables import withTable

    return withTable(text, "causes", causesMarkdown())


def causesJSON() -> Dict[str, Dict[str, Any]]:
    """
    L{CAUSE_TABLE} as JSON-ready data, by name (the admin's C{GET /causes}).
    """
    return {
        c.name: {
            "status": c.status,
            "statuses": list(c.statuses),
            "grpc_status": c.grpc.name,
            "grpc_code": int(c.grpc),
            "message": c.message,
            "words": c.words,
            "answer": c.answer,
        }
        for c in CAUSE_TABLE
    }


class ProxyError(Exception):
    """
    A request could not be proxied.  Subclasses fix C{cause}, a name in
    L{CAUSES}, whose row gives C{code} and C{message}.
    """

    cause = "internal_error"
    code: int
    message: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _fromTable(cls)

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.message)
        self.detail = detail

    def extraHeaders(self) -> Sequence[Tuple[bytes, bytes]]:
        return ()

    def reply(self) -> LocalReply:
        """
        The response to send for this error.
        """
        headers = Headers()
        headers.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        headers.setRawHeaders(ERROR_HEADER, [self.cause.encode("ascii")])
        for name, value in self.extraHeaders():
            headers.setRawHeaders(name, [value])
        body = f"{self.message}\n".encode("utf-8")
        return LocalReply(self.code, body, headers, cause=self.cause, detail=self.detail)


def _fromTable(kind: Type[ProxyError]) -> None:
    """
    Give an error class the status and message of its cause's row.

    @raise TypeError: Its cause is not in L{CAUSES}, has no status, or the
        class sets its own C{code} or C{message}.
    """
    row = CAUSES.get(kind.cause)
    if row is None or row.status is None:
        raise TypeError(f"{kind.__name__}: cause {kind.cause!r} has no status in CAUSE_TABLE")
    if "code" in vars(kind) or "message" in vars(kind):
        raise TypeError(f"{kind.__name__}: code and message come from CAUSE_TABLE")
    kind.code = row.status
    kind.message = row.message


_fromTable(ProxyError)


class BadRequest(ProxyError):
    cause = "bad_request"


class HeaderWithUnderscores(BadRequest):
    """
    A request header name holds an underscore, and the listener refuses
    such requests (C{headers-with-underscores-action: reject_request}).
    """

    cause = "header_with_underscores"


class RequestLoop(ProxyError):
    cause = "loop_detected"


class TooManyRequests(ProxyError):
    cause = "rate_limited"

    def __init__(self, retryAfter: float) -> None:
        super().__init__()
        self.retryAfter = retryAfter

    def extraHeaders(self) -> Sequence[Tuple[bytes, bytes]]:
        seconds = max(1, math.ceil(self.retryAfter))
        return ((b"retry-after", b"%d" % (seconds,)),)


class ClientClosed(ProxyError):
    """
    The client went away and its request was abandoned; nobody sees this
    reply, but the access log records it.
    """

    cause = "client_closed"


class UpstreamConnectFailure(ProxyError):
    cause = "upstream_connect_failure"


class UpstreamTLSFailure(UpstreamConnectFailure):
    """
    The TLS handshake with the upstream failed: its certificate did not
    verify, or its identity is not the one expected.  A kind of connect
    failure (for retries and outlier detection), with its own cause.
    """

    cause = "upstream_tls_failure"


#: The failures of a TLS handshake, by qualified name (so that OpenSSL need
#: not be imported here).
_TLS_FAILURES = ("OpenSSL.SSL.Error", "easymesh.tls.identity.IdentityMismatch")


def isTLSFailure(reason: Failure) -> bool:
    """
    Whether C{reason} is a failed TLS handshake (a certificate that did not
    verify, or an identity not the one expected).
    """
    return reason.check(*_TLS_FAILURES) is not None


class UpstreamTimeout(ProxyError):
    cause = "upstream_timeout"


class DeadlineExceeded(ProxyError):
    """
    A gRPC call's deadline passed before its response ended.
    """

    cause = "deadline_exceeded"


class StreamIdleTimeout(ProxyError):
    """
    No body byte moved either way for the cluster's stream idle timeout
    while a request or response body was streaming.  Answered with this
    reply if no response head was sent yet; else the client connection is
    aborted.  Never retried: the body was under way.
    """

    cause = "stream_idle_timeout"


class UpstreamProtocolError(ProxyError):
    cause = "upstream_protocol_error"


class UpstreamReset(ProxyError):
    cause = "upstream_reset"


class Overflow(ProxyError):
    """
    A cluster's circuit breaker is open: the request fails at once instead
    of queueing.  C{breaker} names the limit reached.
    """

    cause = "overflow"

    def __init__(self, breaker: str = "") -> None:
        super().__init__(f"{self.message} ({breaker})" if breaker else "")
        self.breaker = breaker


class NoRoute(ProxyError):
    cause = "no_route"


class NoHealthyUpstream(ProxyError):
    cause = "no_healthy_upstream"


class Unauthorized(ProxyError):
    """
    An authorization rule refuses the caller's identity.
    """

    cause = "unauthorized"


#: Causes named where no L{ProxyError} is at hand.
INTERNAL_ERROR: str = ProxyError.cause
CLIENT_CLOSED: str = ClientClosed.cause
UPSTREAM_RESET_MID_BODY: str = CAUSES["upstream_reset_mid_body"].name


_CONNECT_ERRORS: Tuple[Type[BaseException], ...] = (
    ierror.ConnectError,
    ierror.DNSLookupError,
    ierror.NoRouteError,
    ierror.TimeoutError,
)


def _reasons(exc: Optional[BaseException]) -> Sequence[Failure]:
    return getattr(exc, "reasons", None) or ()


def classify(failure: Failure) -> Optional[ProxyError]:
    """
    The L{ProxyError} a failure stands for, or L{None} if it is not one of the
    failures a proxy expects (a bug, to be logged).
    """
    exc = failure.value
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, (CancelledError, ierror.ConnectingCancelledError)) or any(
        r.check(CancelledError) for r in _reasons(exc)
    ):
        return ClientClosed()
    if isinstance(exc, _CONNECT_ERRORS):
        return UpstreamConnectFailure(str(exc))
    return None


def replyFor(failure: Failure) -> LocalReply:
    """
    The response for any failure: a classified L{ProxyError}'s reply, or a
    500 C{internal_error} for anything unexpected, whose detail (for the
    error log, never sent) names the exception and where it was raised.
    """
    error = classify(failure)
    if error is None:
        error = ProxyError(_unexpected(failure))
    return error.reply()


def _unexpected(failure: Failure) -> str:
    """
    What the error log says of an unexpected failure (a bug), on one line:
    the exception and where it was raised (the innermost frames first).
    """
    exc = failure.value
    text = f"unexpected {type(exc).__name__}"
    message = safe_str(exc)
    if message:
        text += f": {message[:200]}"
    frames = failure.frames[-3:]
    if frames:
        text += " at " + " < ".join(
            f"{os.path.basename(fileName)}:{line} {function}"
            for function, fileName, line, *_ in reversed(frames)
        )
    return text
