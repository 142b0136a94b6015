"""
Tests for L{easymesh.errors}: failures classified into proxy errors and the
replies they make.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Type

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

from easymesh import authz, errors
from easymesh.upstream.h1client import asProxyError
from easymesh.errors import (
    CAUSE_TABLE,
    CAUSES,
    ERROR_HEADER,
    BadRequest,
    ClientClosed,
    GrpcStatus,
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


# The table of causes.

#: The gRPC status codes, as grpc's doc/statuscodes.md lists them.
GRPC_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

SOURCES = Path(errors.__file__).resolve().parent


def _proxyErrors() -> List[Type[ProxyError]]:
    found: List[Type[ProxyError]] = []
    pending: List[Type[ProxyError]] = [ProxyError]
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending.extend(kind.__subclasses__())
    return found


def test_tableRows() -> None:
    """
    Every row has a distinct name valid as a header value, an error status
    (or none, for a cause no reply carries), a valid gRPC status, a body
    and words; and every status has a reason phrase.
    """
    names = [c.name for c in CAUSE_TABLE]
    assert len(set(names)) == len(names)
    assert set(CAUSES) == set(names)
    for cause in CAUSE_TABLE:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", cause.name), cause
        assert (cause.status is None) == (cause.answer == errors.ABORT), cause
        assert cause.answer in (errors.REPLY, errors.REPLY_OR_ABORT, errors.ABORT, errors.NOTHING)
        for status in cause.statuses:
            assert 400 <= status < 600, cause
            assert errors.phrase(status) == errors.PHRASES[status]
        assert GRPC_CODES[cause.grpc.name] == cause.grpc.value, cause
        assert cause.message and cause.words and cause.when, cause
        assert "\n" not in cause.when and "|" not in cause.when, cause


def test_grpcCodes() -> None:
    """
    L{GrpcStatus} is gRPC's list of codes, names and numbers.
    """
    assert {s.name: s.value for s in GrpcStatus} == GRPC_CODES


@pytest.mark.parametrize("kind", _proxyErrors(), ids=lambda k: k.__name__)
def test_errorFromTable(kind: Type[ProxyError]) -> None:
    """
    Every L{ProxyError} subclass's status and body are its cause's row's.
    """
    row = CAUSES[kind.cause]
    assert (kind.code, kind.message) == (row.status, row.message)


def test_errorOutsideTableRefused() -> None:
    """
    An error class whose cause is not in the table, or that sets its own
    status, is refused when it is defined.
    """
    with pytest.raises(TypeError):
        type("Unknown", (ProxyError,), {"cause": "no_such_cause"})
    with pytest.raises(TypeError):
        type("NoStatus", (ProxyError,), {"cause": errors.UPSTREAM_RESET_MID_BODY})
    with pytest.raises(TypeError):
        type("OwnCode", (ProxyError,), {"cause": "bad_request", "code": 418})


def test_unauthorizedAlias() -> None:
    """
    L{easymesh.authz.Unauthorized} is the error defined with the others.
    """
    assert authz.Unauthorized is errors.Unauthorized
    assert errors.Unauthorized().reply().code == 403


def test_edgeCauses() -> None:
    """
    Every status the HTTP/1.1 edge refuses with has one cause of the edge.
    """
    source = (SOURCES / "h1server.py").read_text(encoding="utf-8")
    statuses = {
        node.args[0].value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "BadMessage"
        and isinstance(node.args[0], ast.Constant)
    }
    assert statuses >= {400, 408, 413, 414, 431, 501, 505}
    for status in statuses:
        cause = errors.edgeCause(status)
        assert cause.edge and status in cause.statuses
    edge = [s for c in CAUSE_TABLE if c.edge for s in c.statuses]
    assert len(edge) == len(set(edge))


def _emitted(tree: ast.AST) -> Iterator[Tuple[int, str]]:
    """
    The string literals a module gives as a cause: assigned to, passed as,
    or compared with something named C{cause}, or the reason of an abort.
    """

    def named(node: ast.AST) -> bool:
        return getattr(node, "id", getattr(node, "attr", None)) == "cause"

    def strings(node: ast.AST) -> Iterator[Tuple[int, str]]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            for element in node.elts:
                yield from strings(element)
        elif isinstance(node, ast.IfExp):
            yield from strings(node.body)
            yield from strings(node.orelse)
        elif isinstance(node, ast.BoolOp):
            for value in node.values:
                yield from strings(value)

    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(named(t) for t in targets) and node.value is not None:
                yield from strings(node.value)
        elif isinstance(node, ast.keyword) and node.arg == "cause":
            yield from strings(node.value)
        elif isinstance(node, ast.Compare) and any(map(named, [node.left, *node.comparators])):
            for operand in [node.left, *node.comparators]:
                yield from strings(operand)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "_abort":
            if node.args:
                yield from strings(node.args[0])


def test_emittedFound() -> None:
    """
    The scan for causes finds each way a module gives one.
    """
    source = (
        'class E(ProxyError):\n    cause = "a"\n'
        'self.cause = "b" if x else "c"\n'
        'LocalReply(500, b"", h, cause="d")\n'
        'if cause in ("e", "f") or reply.cause == "g": pass\n'
        'self._abort("h", reason)\n'
        'self.cause = value.decode("latin-1")\n'
    )
    assert sorted(v for _, v in _emitted(ast.parse(source))) == list("abcdefgh")


def test_everyEmittedCauseInTable() -> None:
    """
    Every cause a module of easymesh gives as a literal is in the table.
    """
    for path in sorted(SOURCES.rglob("*.py")):
        for line, value in _emitted(ast.parse(path.read_text(encoding="utf-8"))):
            assert value in CAUSES, f"{path.relative_to(SOURCES)}:{line}: cause {value!r} not in CAUSE_TABLE"


#: Literals equal to a cause's name that are something else (settings).
#: Where a cause's name is spelled as something else: the config key
#: C{stream_idle_timeout}.
NOT_CAUSES = {
    ("reload.py", "stream_idle_timeout"),
    ("config/meshfile.py", "stream_idle_timeout"),
    ("config/validate.py", "stream_idle_timeout"),
}


def test_causesNamedOnlyInErrors() -> None:
    """
    No module but L{easymesh.errors} spells a cause's name: others use its
    classes and constants, so that the table is the one place causes live.
    """
    for path in sorted(SOURCES.rglob("*.py")):
        where = path.relative_to(SOURCES).as_posix()
        if where == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in CAUSES:
                assert (where, node.value) in NOT_CAUSES, f"{where}:{node.lineno}: {node.value!r}"
