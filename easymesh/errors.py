# -*- test-case-name: tests.test_errors -*-
"""
The one place where failures become responses.

Every failure on the request path is classified into a L{ProxyError}; its
L{ProxyError.reply} is the response the client sees: a status, a short text
body and an C{x-easymesh-error} header naming the cause.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple, Type

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.python.reflect import safe_str
from twisted.web.http_headers import Headers

from easymesh.message import LocalReply

ERROR_HEADER = b"x-easymesh-error"


class ProxyError(Exception):
    """
    A request could not be proxied.  Subclasses fix C{code} and C{cause}.
    """

    code = 500
    cause = "internal_error"
    message = "internal proxy error"

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


class BadRequest(ProxyError):
    code = 400
    cause = "bad_request"
    message = "bad request"


class HeaderWithUnderscores(BadRequest):
    """
    A request header name holds an underscore, and the listener refuses
    such requests (C{headers-with-underscores-action: reject_request}).
    """

    cause = "header_with_underscores"
    message = "bad request: header names with underscores are refused"


class RequestLoop(ProxyError):
    code = 508
    cause = "loop_detected"
    message = "request loop detected: this sidecar has already forwarded it"


class TooManyRequests(ProxyError):
    code = 429
    cause = "rate_limited"
    message = "rate limited"

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

    code = 499
    cause = "client_closed"
    message = "client closed the request"


class UpstreamConnectFailure(ProxyError):
    code = 503
    cause = "upstream_connect_failure"
    message = "upstream connect failure"


class UpstreamTLSFailure(UpstreamConnectFailure):
    """
    The TLS handshake with the upstream failed: its certificate did not
    verify, or its identity is not the one expected.  A kind of connect
    failure (for retries and outlier detection), with its own cause.
    """

    cause = "upstream_tls_failure"
    message = "upstream TLS handshake failed"


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
    code = 504
    cause = "upstream_timeout"
    message = "upstream request timeout"


class StreamIdleTimeout(ProxyError):
    """
    No body byte moved either way for the cluster's stream idle timeout
    while a request or response body was streaming.  Answered with this
    reply if no response head was sent yet; else the client connection is
    aborted.  Never retried: the body was under way.
    """

    code = 504
    cause = "stream_idle_timeout"
    message = "stream idle timeout: no body bytes moved for too long"


class UpstreamProtocolError(ProxyError):
    code = 502
    cause = "upstream_protocol_error"
    message = "upstream sent a malformed response"


class UpstreamReset(ProxyError):
    code = 502
    cause = "upstream_reset"
    message = "upstream closed the connection before responding"


class Overflow(ProxyError):
    """
    A cluster's circuit breaker is open: the request fails at once instead
    of queueing.  C{breaker} names the limit reached.
    """

    code = 503
    cause = "overflow"
    message = "upstream overflow: too many requests to this cluster"

    def __init__(self, breaker: str = "") -> None:
        super().__init__(f"{self.message} ({breaker})" if breaker else "")
        self.breaker = breaker


class NoRoute(ProxyError):
    code = 404
    cause = "no_route"
    message = "no route matches this request"


class NoHealthyUpstream(ProxyError):
    code = 503
    cause = "no_healthy_upstream"
    message = "no upstream endpoint is available"


_CONNECT_ERRORS: Tuple[Type[BaseException], ...] = (
    ierror.ConnectError,
    ierror.DNSLookupError,
    ierror.NoRouteError,
    ierror.TimeoutError,
)


def _reasons(exc: BaseException) -> Sequence[Failure]:
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
