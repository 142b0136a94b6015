"""
Tests for L{easymesh.headers}: hop-by-hop removal and a listener's
L{HeaderPolicy}.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from easymesh.errors import HeaderWithUnderscores, RequestLoop
from easymesh.headers import (
    HOP_BY_HOP,
    MAX_REQUEST_ID,
    PROTECTED,
    HeaderPolicy,
    offendingName,
    removeHopByHop,
    validRequestId,
)


def make(pairs: Dict[bytes, List[bytes]]) -> Headers:
    return Headers({name: list(values) for name, values in pairs.items()})


def names(headers: Headers) -> set:
    return {name.lower() for name, _ in headers.getAllRawHeaders()}


def request(policy: HeaderPolicy, headers: Headers, version: bytes = b"1.1") -> Headers:
    policy.prepareRequest(headers, "10.0.0.7", b"http", version)
    return headers


# removeHopByHop


def test_standardHopByHopRemoved() -> None:
    headers = make(
        {
            b"Connection": [b"keep-alive"],
            b"Keep-Alive": [b"timeout=5"],
            b"Proxy-Connection": [b"keep-alive"],
            b"TE": [b"trailers"],
            b"Trailer": [b"x-checksum"],
            b"Transfer-Encoding": [b"chunked"],
            b"Upgrade": [b"h2c"],
            b"Content-Type": [b"text/plain"],
            b"Accept": [b"*/*"],
        }
    )
    removeHopByHop(headers)
    # Trailer announces end-to-end trailer fields: not hop-by-hop.
    assert names(headers) == {b"content-type", b"accept", b"trailer"}
    assert headers.getRawHeaders(b"content-type") == [b"text/plain"]


def test_connectionNamedRemoved() -> None:
    """
    Fields named in C{Connection} go, whatever their case, with the comma
    list spread over several C{Connection} lines.
    """
    headers = make(
        {
            b"connection": [b"X-Foo , x-BAR", b"close,,  X-Baz"],
            b"x-foo": [b"1"],
            b"X-Bar": [b"2", b"3"],
            b"X-BAZ": [b"4"],
            b"X-Keep": [b"5"],
        }
    )
    removeHopByHop(headers)
    assert names(headers) == {b"x-keep"}


def test_connectionInvalidTokensIgnored() -> None:
    """
    Entries in C{Connection} that are not field names remove nothing else.
    """
    headers = make(
        {
            b"Connection": [b'"x-keep", x/keep, x-keep;q=1'],
            b"X-Keep": [b"1"],
        }
    )
    removeHopByHop(headers)
    assert names(headers) == {b"x-keep"}


def test_alsoRemoved() -> None:
    headers = make({b"Content-Length": [b"3"], b"X-A": [b"1"]})
    removeHopByHop(headers, frozenset((b"content-length",)))
    assert names(headers) == {b"x-a"}


_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_token = st.text(_TCHAR.decode("ascii"), min_size=1, max_size=12).map(str.encode)
_hopName = st.sampled_from(sorted(HOP_BY_HOP)).flatmap(
    lambda name: st.sampled_from([name, name.upper(), name.title()])
)
_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=10).map(
    str.encode
)


_CASES = (bytes.lower, bytes.upper, bytes.title, bytes.swapcase, lambda b: b)


@st.composite
def _headerSets(draw: st.DrawFn) -> tuple:
    """
    Fields (some hop-by-hop) with values, and C{Connection} lines naming
    some of them and some absent fields, in random case, with random
    spacing and empty list items.
    """
    fields = draw(
        st.lists(st.tuples(st.one_of(_token, _hopName), _value), max_size=12)
    )
    fieldNames = [name for name, _ in fields]
    named = draw(st.lists(st.sampled_from(fieldNames), max_size=6)) if fields else []
    named += draw(st.lists(_token, max_size=3))
    spellings = draw(
        st.lists(
            st.tuples(
                st.sampled_from(_CASES),
                st.sampled_from([b",", b", ", b" ,", b",,", b" , \t"]),
                st.booleans(),
            ),
            min_size=len(named),
            max_size=len(named),
        )
    )
    lines: List[bytes] = []
    for token, (case, sep, sameLine) in zip(named, spellings):
        if lines and sameLine:
            lines[-1] += sep + case(token)
        else:
            lines.append(sep.lstrip(b",") + case(token))
    return fields, named, lines


@settings(max_examples=100, deadline=None, database=None)
@given(_headerSets())
def test_neverLeavesHopByHop(headerSet: tuple) -> None:
    """
    Whatever fields arrive and whatever C{Connection} lines name (in any
    case, with any spacing and empty list items, over several lines), no
    hop-by-hop field survives (but a protected one named by C{Connection}
    does), and every other field is kept untouched.
    """
    fields, named, lines = headerSet
    headers = Headers()
    for name, value in fields:
        headers.addRawHeader(name, value)
    for line in lines:
        headers.addRawHeader(b"Connection", line)
    before = {
        name.lower(): list(values) for name, values in headers.getAllRawHeaders()
    }

    # Whatever any Connection field names, including one drawn among the
    # random fields, is hop-by-hop.
    listed = {
        item.strip().lower()
        for line in headers.getRawHeaders(b"connection", [])
        for item in line.split(b",")
    }
    assert {t.lower() for t in named} <= listed

    removeHopByHop(headers)

    hopByHop = set(HOP_BY_HOP) | (listed - PROTECTED)
    after = {name.lower(): list(values) for name, values in headers.getAllRawHeaders()}
    assert not set(after) & hopByHop
    assert after == {k: v for k, v in before.items() if k not in hopByHop}


# HeaderPolicy: requests


def test_requestHopByHopAndFraming() -> None:
    """
    Forwarded requests lose hop-by-hop fields, fields named in C{Connection}
    and C{Content-Length} (easymesh frames the body itself).
    """
    headers = make(
        {
            b"Connection": [b"keep-alive, X-Secret"],
            b"X-Secret": [b"s"],
            b"Transfer-Encoding": [b"chunked"],
            b"Content-Length": [b"12"],
            b"Content-Type": [b"application/json"],
        }
    )
    request(HeaderPolicy("web-1", "outbound"), headers)
    assert not headers.hasHeader(b"connection")
    assert not headers.hasHeader(b"x-secret")
    assert not headers.hasHeader(b"transfer-encoding")
    assert not headers.hasHeader(b"content-length")
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]


def test_requestOwnHeadersRemoved() -> None:
    headers = make(
        {
            b"X-Easymesh-Error": [b"forged"],
            b"x-easymesh-anything": [b"forged"],
            b"X-Easymeshy": [b"kept"],
        }
    )
    request(HeaderPolicy("web-1", "outbound"), headers)
    assert not headers.hasHeader(b"x-easymesh-error")
    assert not headers.hasHeader(b"x-easymesh-anything")
    assert headers.getRawHeaders(b"x-easymeshy") == [b"kept"]


def test_forwardedForSet() -> None:
    headers = request(HeaderPolicy("web-1", "outbound"), Headers())
    assert headers.getRawHeaders(b"x-forwarded-for") == [b"10.0.0.7"]


def test_forwardedForAppended() -> None:
    headers = make({b"X-Forwarded-For": [b"203.0.113.1,198.51.100.2", b"192.0.2.3"]})
    request(HeaderPolicy("web-1", "outbound"), headers)
    assert headers.getRawHeaders(b"x-forwarded-for") == [
        b"203.0.113.1, 198.51.100.2, 192.0.2.3, 10.0.0.7"
    ]


def test_forwardedProto() -> None:
    headers = make({b"X-Forwarded-Proto": [b"ftp"]})
    HeaderPolicy("web-1", "inbound").prepareRequest(headers, "10.0.0.7", b"https", b"1.1")
    assert headers.getRawHeaders(b"x-forwarded-proto") == [b"https"]


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_viaAppended(version: bytes) -> None:
    headers = make({b"Via": [b"1.1 edge, 1.0 lb"]})
    request(HeaderPolicy("web-1", "outbound"), headers, version)
    assert headers.getRawHeaders(b"via") == [b"1.1 edge, 1.0 lb", version + b" web-1.outbound"]


def test_viaAdded() -> None:
    headers = request(HeaderPolicy("web-1", "inbound"), Headers(), b"1.0")
    assert headers.getRawHeaders(b"via") == [b"1.0 web-1.inbound"]


def test_loopDetected() -> None:
    """
    A request whose C{Via} already names this listener is a loop.
    """
    policy = HeaderPolicy("web-1", "outbound")
    for via in [
        [b"1.1 web-1.outbound"],
        [b"1.1 edge", b"1.0 web-1.outbound (easymesh)"],
        [b"1.1 edge,1.1 web-1.outbound, 1.1 web-2.inbound"],
    ]:
        with pytest.raises(RequestLoop):
            policy.prepareRequest(make({b"Via": via}), "10.0.0.7", b"http", b"1.1")


def test_noLoopForOtherListeners() -> None:
    """
    Another listener's pseudonym (even of the same node) is not a loop: the
    normal mesh path goes outbound then inbound.
    """
    policy = HeaderPolicy("web-1", "inbound")
    headers = make({b"Via": [b"1.1 web-1.outbound, 1.1 web-2.inbound, 1.1 web-1.inboundx"]})
    request(policy, headers)
    assert headers.getRawHeaders(b"via")[-1] == b"1.1 web-1.inbound"


def test_roundTripThroughOwnListenerIsLoop() -> None:
    """
    A request forwarded by a listener and arriving back at it is refused.
    """
    policy = HeaderPolicy("web-1", "outbound")
    headers = request(policy, Headers())
    request(HeaderPolicy("web-1", "inbound"), headers)
    with pytest.raises(RequestLoop):
        request(policy, headers)


def test_requestIdGenerated() -> None:
    policy = HeaderPolicy("web-1", "outbound")
    first = request(policy, Headers()).getRawHeaders(b"x-request-id")
    second = request(policy, Headers()).getRawHeaders(b"x-request-id")
    assert len(first) == 1
    text = first[0].decode("ascii")
    assert str(uuid.UUID(text)) == text
    assert uuid.UUID(text).version == 4
    assert first != second


def test_requestIdKept() -> None:
    headers = make({b"X-Request-Id": [b"abc-123"]})
    request(HeaderPolicy("web-1", "outbound"), headers)
    assert headers.getRawHeaders(b"x-request-id") == [b"abc-123"]


# HeaderPolicy: responses


def test_response() -> None:
    """
    Responses lose hop-by-hop fields and gain C{Via}; repeated fields such
    as C{Set-Cookie} keep every value, in order.
    """
    headers = make(
        {
            b"Set-Cookie": [b"a=1; Path=/", b"b=2; HttpOnly"],
            b"Connection": [b"close, X-Internal"],
            b"X-Internal": [b"1"],
            b"Keep-Alive": [b"timeout=5"],
            b"Transfer-Encoding": [b"chunked"],
            b"Content-Length": [b"42"],
            b"Via": [b"1.1 app"],
        }
    )
    HeaderPolicy("web-1", "inbound").prepareResponse(headers, b"1.1")
    assert headers.getRawHeaders(b"set-cookie") == [b"a=1; Path=/", b"b=2; HttpOnly"]
    assert names(headers) == {b"set-cookie", b"content-length", b"via"}
    assert headers.getRawHeaders(b"content-length") == [b"42"]
    assert headers.getRawHeaders(b"via") == [b"1.1 app", b"1.1 web-1.inbound"]


def test_responseVia10() -> None:
    headers = Headers()
    HeaderPolicy("web-1", "outbound").prepareResponse(headers, b"1.0")
    assert headers.getRawHeaders(b"via") == [b"1.0 web-1.outbound"]


# Connection may not name the fields the sidecar relies on


@pytest.mark.parametrize("name", sorted(PROTECTED - HOP_BY_HOP - {b"content-length", b"host"}))
def test_connectionCannotRemoveProtected(name: bytes) -> None:
    """
    A C{Connection} token naming C{Host}, C{Via}, C{X-Forwarded-*},
    C{x-request-id} or the trace context is ignored, in any case: the field
    stays (the rest of C{Connection} still applies).
    """
    headers = make(
        {
            b"Host": [b"svc"],
            b"Connection": [name.upper() + b", x-private", b"host"],
            b"X-Private": [b"1"],
            name: [b"kept-by-client"],
        }
    )
    request(HeaderPolicy("web-1", "inbound"), headers)
    assert headers.getRawHeaders(b"host") == [b"svc"]
    assert headers.hasHeader(name)
    assert not headers.hasHeader(b"x-private")
    assert not headers.hasHeader(b"connection")


def test_connectionCannotRemoveResponseFraming() -> None:
    """
    An upstream's C{Connection: content-length} leaves the response's
    length in place.
    """
    headers = make({b"Connection": [b"Content-Length, Via"], b"Content-Length": [b"2"]})
    HeaderPolicy("web-1", "outbound").prepareResponse(headers, b"1.1")
    assert headers.getRawHeaders(b"content-length") == [b"2"]
    assert headers.getRawHeaders(b"via") == [b"1.1 web-1.outbound"]


# Header names with underscores


def _underscored() -> Headers:
    return make(
        {
            b"Host": [b"svc"],
            b"Transfer_Encoding": [b"chunked"],
            b"X_Real_IP": [b"203.0.113.9"],
            b"x_easymesh_peer_identity": [b"spiffe://example.org/forged"],
            b"X-Dashed": [b"kept"],
        }
    )


def test_underscoresDroppedByDefault() -> None:
    """
    By default (as nginx does), a request header whose name holds an
    underscore is dropped: C{Transfer_Encoding: chunked} never reaches an
    app that would read it as C{Transfer-Encoding}.
    """
    headers = request(HeaderPolicy("web-1", "inbound"), _underscored())
    assert not [name for name, _ in headers.getAllRawHeaders() if b"_" in name]
    assert headers.getRawHeaders(b"x-dashed") == [b"kept"]
    assert headers.getRawHeaders(b"host") == [b"svc"]


def test_underscoresAllowed() -> None:
    """
    With C{allow} they pass, except spellings of the sidecar's own names.
    """
    headers = request(HeaderPolicy("web-1", "inbound", "allow"), _underscored())
    assert headers.getRawHeaders(b"transfer_encoding") == [b"chunked"]
    assert headers.getRawHeaders(b"x_real_ip") == [b"203.0.113.9"]
    assert not headers.hasHeader(b"x_easymesh_peer_identity")


def test_underscoresRejected() -> None:
    """
    With C{reject_request}, such a request is refused: 400 with its own
    cause, naming the header only in the detail.
    """
    policy = HeaderPolicy("web-1", "inbound", "reject_request")
    with pytest.raises(HeaderWithUnderscores) as raised:
        request(policy, _underscored())
    reply = raised.value.reply()
    assert (reply.code, reply.cause) == (400, "header_with_underscores")
    assert b"_" not in reply.body
    assert "transfer_encoding" in raised.value.detail.lower()
    request(policy, make({b"Host": [b"svc"], b"X-Dashed": [b"1"]}))


def test_underscoreActionChecked() -> None:
    with pytest.raises(ValueError):
        HeaderPolicy("web-1", "inbound", "drop")


# x-request-id


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"1\t2026-12-02T16:00:00+0000 [easymesh.access#info] outbound GET /admin 200",
        b"two words",
        b"x" * (MAX_REQUEST_ID + 1),
        b"x" * 65000,
        b"caf\xc3\xa9",
        b"nul\x00",
    ],
)
def test_requestIdReplacedUnlessPrintable(value: bytes) -> None:
    """
    A client's C{x-request-id} that is empty, too long, or holds white space
    or anything but visible ASCII is replaced by a fresh one, which the app
    and the access log then share.
    """
    headers = request(HeaderPolicy("web-1", "outbound"), make({b"X-Request-Id": [value]}))
    [fresh] = headers.getRawHeaders(b"x-request-id")
    assert fresh != value
    assert uuid.UUID(fresh.decode("ascii")).version == 4


def test_requestIdRepeatedReplaced() -> None:
    headers = make({b"X-Request-Id": [b"a", b"b"]})
    request(HeaderPolicy("web-1", "outbound"), headers)
    [fresh] = headers.getRawHeaders(b"x-request-id")
    assert fresh not in (b"a", b"b")


def test_requestIdLongestKept() -> None:
    value = bytes(range(0x21, 0x7F)) + b"z" * (MAX_REQUEST_ID - 94)
    assert validRequestId(value)
    headers = request(HeaderPolicy("web-1", "outbound"), make({b"X-Request-Id": [value]}))
    assert headers.getRawHeaders(b"x-request-id") == [value]


# The sidecar's own response headers


def _forged() -> Headers:
    return make(
        {
            b"X-Easymesh-Error": [b"upstream_connect_failure"],
            b"x-easymesh-peer-identity": [b"spiffe://example.org/x"],
            b"X_Easymesh_Error": [b"overflow"],
            b"X-Easymesh-Attempts": [b"7"],
            b"X-Easymeshy": [b"kept"],
        }
    )


def test_localAppCannotSpeakForTheSidecar() -> None:
    """
    The inbound listener's upstream is the local app: every
    C{x-easymesh-*} field it sends, in any spelling, is removed.
    """
    headers = _forged()
    HeaderPolicy("web-1", "inbound").prepareResponse(headers, b"1.1", attempts=1)
    assert names(headers) == {b"x-easymeshy", b"via"}


def test_ownAttemptsCountKept() -> None:
    """
    What remains of C{x-easymesh-attempts} is this sidecar's own count (a
    retry policy writes it into the response before it is prepared).
    """
    headers = make({b"X-Easymesh-Attempts": [b"3"], b"X-Easymesh-Error": [b"overflow"]})
    HeaderPolicy("web-1", "inbound").prepareResponse(headers, b"1.1", attempts=3)
    assert headers.getRawHeaders(b"x-easymesh-attempts") == [b"3"]
    assert not headers.hasHeader(b"x-easymesh-error")


def test_peerSidecarCauseRelayed() -> None:
    """
    A peer sidecar's cause is relayed by the outbound listener; a value
    that is not a cause is not.
    """
    headers = _forged()
    HeaderPolicy("web-1", "outbound").prepareResponse(headers, b"1.1")
    assert headers.getRawHeaders(b"x-easymesh-error") == [b"upstream_connect_failure"]
    assert headers.getRawHeaders(b"x-easymesh-attempts") == [b"7"]
    for bad in [b"a b", b"error=x\trequest_id=y", b"UPPER", b"x" * 65, b""]:
        headers = make({b"X-Easymesh-Error": [bad]})
        HeaderPolicy("web-1", "outbound").prepareResponse(headers, b"1.1")
        assert not headers.hasHeader(b"x-easymesh-error"), bad


def test_trustIsAPolicyChoice() -> None:
    headers = _forged()
    HeaderPolicy("web-1", "outbound", upstreamIsSidecar=False).prepareResponse(headers, b"1.1")
    assert not headers.hasHeader(b"x-easymesh-error")


# Naming the offending field, never its value


@pytest.mark.parametrize(
    "head, name",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\rInjected: 1", b"X-A"),
        (b"HTTP/1.1 200 OK\r\nSet-Cookie: s=secret\nX: 1", b"Set-Cookie"),
        (b"HTTP/1.1 200 OK\r\nX-Token: t\x00ken", b"X-Token"),
        (b"HTTP/1.1 200 OK\rX\r\nA: b", None),
        (b"HTTP/1.1 200 OK\r\nbad name: v\x01", None),
    ],
)
def test_offendingName(head: bytes, name: object) -> None:
    assert offendingName(head) == name


@pytest.mark.parametrize(
    "te, kept",
    [
        ([b"trailers"], [b"trailers"]),
        ([b"gzip, Trailers"], [b"trailers"]),
        ([b"gzip", b"trailers;q=1"], None),
        ([b"gzip"], None),
        ([b"deflate, chunked"], None),
    ],
)
def test_teTrailersPasses(te: List[bytes], kept: Any) -> None:
    """
    C{TE} is hop-by-hop, but C{trailers} in it passes on as C{te: trailers}
    (the one value HTTP/2 allows, which gRPC needs); nothing else of it.
    """
    headers = request(HeaderPolicy("web-1", "outbound"), make({b"TE": te}))
    assert headers.getRawHeaders(b"te") == kept


def test_teNamedByConnectionStillTrailers() -> None:
    headers = request(
        HeaderPolicy("web-1", "outbound"), make({b"TE": [b"trailers"], b"Connection": [b"TE"]})
    )
    assert headers.getRawHeaders(b"te") == [b"trailers"]


def test_trailerFieldsFiltered() -> None:
    from easymesh.headers import trailerFields

    kept = trailerFields(
        [b"grpc-status: 0", b"Content-Length: 3", b"host: x", b"x-easymesh-error: forged", b"X-Sum: 1"]
    )
    assert kept is not None
    assert sorted(kept.getAllRawHeaders()) == [(b"Grpc-Status", [b"0"]), (b"X-Sum", [b"1"])]
    assert trailerFields([b"Transfer-Encoding: chunked"]) is None
