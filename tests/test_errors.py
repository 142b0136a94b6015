"""
Tests for L{easymesh.errors}: failures classified into proxy errors and the
replies they make.
"""

from __future__ import annotations

from typing import Optional, Type

import pytest
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.web._newclient import (
    ParseError,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)

from easymesh import errors
from easymesh.upstream.h1client import asProxyError
from easymesh.errors import (
    ERROR_HEADER,
    BadRequest,
    ClientClosed,
    ProxyError,
    RequestLoop,
    TooManyRequests,
    UpstreamConnectFailure,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
    classify,
    replyFor,
)
from easymesh.message import LocalReply


def failureOf(exc: BaseException) -> Failure:
    """
    The failure the request path sees for C{exc}: the HTTP/1.1 client's
    own exceptions are turned into easymesh's by its upstream.
    """
    return asProxyError(_failureOf(exc))


def _failureOf(exc: BaseException) -> Failure:
    return Failure(exc)


CASES = [
    (ierror.ConnectionRefusedError(), UpstreamConnectFailure, 503, "upstream_connect_failure"),
    (ierror.TimeoutError(), UpstreamConnectFailure, 503, "upstream_connect_failure"),
    (ierror.DNSLookupError("nope.invalid"), UpstreamConnectFailure, 503, "upstream_connect_failure"),
    (ierror.NoRouteError(), UpstreamConnectFailure, 503, "upstream_connect_failure"),
    (UpstreamTimeout("no response headers within 15s"), UpstreamTimeout, 504, "upstream_timeout"),
    (
        ResponseNeverReceived([Failure(ierror.ConnectionDone())]),
        UpstreamReset,
        502,
        "upstream_reset",
    ),
    (
        ResponseNeverReceived([Failure(ierror.ConnectionLost())]),
        UpstreamReset,
        502,
        "upstream_reset",
    ),
    (
        ResponseFailed([Failure(ParseError("wrong number of parts", b"HTTP/1.1"))]),
        UpstreamProtocolError,
        502,
        "upstream_protocol_error",
    ),
    (
        ResponseNeverReceived([Failure(ParseError("bad status", b"garbage"))]),
        UpstreamProtocolError,
        502,
        "upstream_protocol_error",
    ),
    (
        RequestTransmissionFailed([Failure(ierror.ConnectionLost())]),
        UpstreamReset,
        502,
        "upstream_reset",
    ),
    (RequestGenerationFailed([Failure(ValueError("bad"))]), BadRequest, 400, "bad_request"),
    (TooManyRequests(2.2), TooManyRequests, 429, "rate_limited"),
    (RequestLoop(), RequestLoop, 508, "loop_detected"),
    (CancelledError(), ClientClosed, 499, "client_closed"),
    (ierror.ConnectingCancelledError(None), ClientClosed, 499, "client_closed"),
    (ResponseNeverReceived([Failure(CancelledError())]), ClientClosed, 499, "client_closed"),
]


@pytest.mark.parametrize("exc, kind, code, cause", CASES)
def test_classify(exc: BaseException, kind: Type[ProxyError], code: int, cause: str) -> None:
    error = classify(failureOf(exc))
    assert type(error) is kind
    assert (error.code, error.cause) == (code, cause)


@pytest.mark.parametrize("exc, kind, code, cause", CASES)
def test_reply(exc: BaseException, kind: Type[ProxyError], code: int, cause: str) -> None:
    """
    Every reply names its cause in C{x-easymesh-error} and has a short text
    body.
    """
    reply = replyFor(failureOf(exc))
    assert isinstance(reply, LocalReply)
    assert reply.code == code
    assert reply.cause == cause
    assert reply.headers.getRawHeaders(ERROR_HEADER) == [cause.encode("ascii")]
    assert reply.headers.getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]
    assert reply.body.endswith(b"\n")
    assert 0 < len(reply.body) <= 100
    assert reply.body.decode("utf-8") == kind.message + "\n"


def test_proxyErrorPassesThrough() -> None:
    error = UpstreamTimeout("slow")
    assert classify(Failure(error)) is error
    assert error.detail == "slow"


def test_connectDetail() -> None:
    error = classify(Failure(ierror.DNSLookupError("nope.invalid")))
    assert "nope.invalid" in error.detail


def test_resetDetail() -> None:
    error = classify(failureOf(ResponseNeverReceived([Failure(ierror.ConnectionDone())])))
    assert "Connection was closed cleanly" in error.detail


def test_retryAfter() -> None:
    reply = TooManyRequests(2.2).reply()
    assert reply.code == 429
    assert reply.headers.getRawHeaders(b"retry-after") == [b"3"]
    assert reply.headers.getRawHeaders(ERROR_HEADER) == [b"rate_limited"]
    assert reply.body == b"rate limited\n"


@pytest.mark.parametrize("wait, header", [(0.0, b"1"), (0.01, b"1"), (1.0, b"1"), (59.5, b"60")])
def test_retryAfterRounding(wait: float, header: bytes) -> None:
    """
    C{Retry-After} is whole seconds, rounded up, at least one.
    """
    reply = TooManyRequests(wait).reply()
    assert reply.headers.getRawHeaders(b"retry-after") == [header]


@pytest.mark.parametrize(
    "exc", [ZeroDivisionError(), KeyError("x"), RuntimeError("boom"), ValueError()]
)
def test_unknown(exc: BaseException) -> None:
    """
    A failure a proxy does not expect is not classified, and its reply is a
    plain 500.
    """
    assert classify(Failure(exc)) is None
    reply = replyFor(Failure(exc))
    assert reply.code == 500
    assert reply.cause == "internal_error"
    assert reply.headers.getRawHeaders(ERROR_HEADER) == [b"internal_error"]
    assert reply.body == b"internal proxy error\n"


def test_unknownDetailNotLeaked() -> None:
    """
    The 500 body does not carry the exception text.
    """
    reply = replyFor(Failure(RuntimeError("secret database password")))
    assert b"secret" not in reply.body
    assert not any(b"secret" in v for _, vs in reply.headers.getAllRawHeaders() for v in vs)


def test_everyErrorHasOwnCause() -> None:
    """
    Every L{ProxyError} subclass has a distinct cause, valid as a header
    value, and an error status.
    """
    kinds = [ProxyError] + [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, ProxyError) and obj is not ProxyError
    ]
    causes = [k.cause for k in kinds]
    assert len(set(causes)) == len(causes)
    for kind in kinds:
        assert kind.cause.isascii() and kind.cause.replace("_", "").isalpha()
        assert 400 <= kind.code < 600
        error: Optional[ProxyError] = (
            kind(1.0) if kind is TooManyRequests else kind()  # type: ignore[call-arg]
        )
        assert error is not None
        assert error.reply().headers.getRawHeaders(ERROR_HEADER) == [kind.cause.encode()]


def _weightedChoice() -> str:
    weights = [("a", 0), ("b", 0)]
    return next(name for name, w in weights if w > 0)


def test_unexpectedDetailSaysWhatAndWhere() -> None:
    """
    The detail of a bug's reply (for the error log, never sent) names the
    exception, its message and the frames it was raised in, innermost
    first, on one line.
    """
    try:
        _weightedChoice()
    except StopIteration:
        failure = Failure()
    reply = replyFor(failure)
    assert (reply.code, reply.cause) == (500, "internal_error")
    assert reply.detail.startswith("unexpected StopIteration at test_errors.py:")
    assert "_weightedChoice < test_errors.py:" in reply.detail
    assert "\n" not in reply.detail
    try:
        {}["missing"]
    except KeyError:
        reply = replyFor(Failure())
    assert reply.detail.startswith("unexpected KeyError: 'missing' at test_errors.py:")


def test_unexpectedDetailBounded() -> None:
    """
    An exception with a huge or unprintable message does not make a huge
    detail, nor break the reply.
    """

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert len(replyFor(Failure(RuntimeError("x" * 100000))).detail) < 300
    assert replyFor(Failure(Unprintable())).code == 500


def test_underscoresCause() -> None:
    reply = errors.HeaderWithUnderscores("header name 'X_A' holds an underscore").reply()
    assert (reply.code, reply.cause) == (400, "header_with_underscores")
    assert reply.headers.getRawHeaders(ERROR_HEADER) == [b"header_with_underscores"]
