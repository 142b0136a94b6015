"""
Tests for L{easymesh.upstream.h1client}.

L{H1Connection} is driven directly over a L{StringTransport} (raw response
bytes fed whole, byte by byte and cut at points Hypothesis chooses), and
through a real L{HTTPConnectionPool} whose endpoint connects over a
L{MemoryReactorClock}, the way L{easymesh.upstream.http} uses it.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import (
    ParseError,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.client import HTTPConnectionPool
from twisted.web.http import PotentialDataLoss, _ChunkedTransferDecoder
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer
from zope.interface.verify import verifyObject

from easymesh.upstream.h1client import (
    MAX_CHUNK_LINE,
    MAX_HEAD,
    MAX_HEADERS,
    H1Connection,
    H1ConnectionFactory,
    UpstreamRequest,
)

HEAD = b"GET /path?q=1 HTTP/1.1\r\nHost: upstream.example\r\nAccept: */*\r\n"
POST_HEAD = b"POST /upload HTTP/1.1\r\nHost: upstream.example\r\n"

# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


class RecordingTransport(StringTransport):
    """
    A L{StringTransport} that also records each write separately and
    whether the connection was aborted or closed gracefully.
    """

    def __init__(self, lenient: bool = False) -> None:
        super().__init__(lenient=lenient)
        self.writes: List[bytes] = []
        self.aborted = False
        self.closes = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, seq: Sequence[bytes]) -> None:
        data = b"".join(seq)
        self.writes.append(data)
        super().write(data)

    def loseConnection(self) -> None:
        self.closes += 1
        super().loseConnection()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Harness:
    """
    One L{H1Connection} over a L{RecordingTransport}, recording what it
    hands to its quiescent callback.
    """

    def __init__(self, lenient: bool = False) -> None:
        self.quiescent: List[H1Connection] = []
        self.connection = H1Connection(self.quiescent.append)
        self.transport = RecordingTransport(lenient)
        self.connection.makeConnection(self.transport)

    def request(
        self, method: bytes = b"GET", body: Optional[IBodyProducer] = None, head: Optional[bytes] = None
    ) -> "Deferred[IResponse]":
        if head is None:
            head = POST_HEAD if method == b"POST" else method + HEAD[3:]
        return self.connection.request(UpstreamRequest(method, head, body))

    def receive(self, pieces: Sequence[bytes]) -> None:
        for piece in pieces:
            if self.transport.aborted:
                # A real transport reads nothing more once aborted.
                break
            self.connection.dataReceived(piece)

    def lose(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connection.connectionLost(reason or Failure(ConnectionDone()))


class Body(Protocol):
    """
    A response body protocol that records what it is given.
    """

    def __init__(self) -> None:
        self.chunks: List[bytes] = []
        self.reasons: List[Failure] = []
        self.made = 0

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        assert not self.reasons, "data after connectionLost"
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reasons.append(reason)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def reason(self) -> Failure:
        assert len(self.reasons) == 1, self.reasons
        return self.reasons[0]


@implementer(IBodyProducer)
class Producer:
    """
    A request body producer the test drives by hand.
    """

    def __init__(self, length: Any, done: Optional["Deferred[None]"] = None) -> None:
        self.length = length
        self.consumer: Any = None
        self.done: Deferred[None] = Deferred() if done is None else done
        self.started = 0
        self.paused = 0
        self.resumed = 0
        self.stopped = 0

    def startProducing(self, consumer: Any) -> "Deferred[None]":
        self.started += 1
        self.consumer = consumer
        return self.done

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        self.stopped += 1


def result(d: "Deferred[Any]") -> Any:
    """
    The result a fired Deferred has, raising its failure.
    """
    box: List[Any] = []
    d.addBoth(box.append)
    assert box, "Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def failure(d: "Deferred[Any]", *types: type) -> Failure:
    """
    The failure a fired Deferred has; it must be one of C{types}.
    """
    box: List[Any] = []
    d.addBoth(box.append)
    assert box, "Deferred has not fired"
    assert isinstance(box[0], Failure), f"Deferred succeeded with {box[0]!r}"
    assert box[0].check(*types), box[0]
    return box[0]


def noResult(d: "Deferred[Any]") -> None:
    box: List[Any] = []

    def record(r: Any) -> Any:
        box.append(r)
        return r

    d.addBoth(record)
    assert not box, f"Deferred fired with {box[0]!r}"


def assertParseFailure(reason: Failure) -> ParseError:
    assert reason.check(ResponseFailed), reason
    parseErrors = [r for r in reason.value.reasons if r.check(ParseError)]
    assert parseErrors, reason.value.reasons
    return parseErrors[0].value


def cut(raw: bytes, points: Any) -> List[bytes]:
    edges = [0] + sorted(points) + [len(raw)]
    return [raw[a:b] for a, b in zip(edges, edges[1:]) if b > a]


#: How to split bytes: whole, byte by byte, or at chosen points.
SPLITS = st.one_of(
    st.just("whole"),
    st.just("bytewise"),
    st.lists(st.integers(min_value=1, max_value=1 << 16), max_size=16),
)


def split(raw: bytes, how: Union[str, List[int]], limit: Optional[int] = None) -> List[bytes]:
    """
    C{raw} in pieces.  With C{limit}, no cut falls at or after it: the
    bytes from C{limit - 1} on arrive in one piece.
    """
    top = len(raw) if limit is None else limit
    if how == "whole" or top < 2:
        return [raw]
    if how == "bytewise":
        return cut(raw, range(1, top))
    return cut(raw, {p % top for p in how if p % top})  # type: ignore[union-attr]


def splits(f: Any) -> Any:
    """
    Run C{f} with its C{how} argument whole, byte by byte, and cut at
    points Hypothesis chooses.
    """
    f = settings(max_examples=40, deadline=None)(f)
    f = given(how=SPLITS)(f)
    f = example(how="bytewise")(f)
    f = example(how="whole")(f)
    return f


def respond(raw: bytes, how: Union[str, List[int]] = "whole", method: bytes = b"GET", deliver: bool = True) -> Any:
    """
    Send a request on a fresh connection, feed it C{raw} and return the
    harness, the response (or None) and its body protocol.
    """
    h = Harness()
    d = h.request(method)
    body = Body()
    responses: List[Any] = []

    def got(response: Any) -> Any:
        responses.append(response)
        if deliver:
            response.deliverBody(body)
        return response

    d.addCallback(got)
    h.receive(split(raw, how))
    return h, d, (responses[0] if responses else None), body


# ---------------------------------------------------------------------------
# Writing requests.
# ---------------------------------------------------------------------------


def test_requestWithoutBodyIsOneWrite() -> None:
    """
    Without a body the head and the blank line go in one write, with no
    framing header, and nothing is registered as a producer.
    """
    h = Harness()
    d = h.request()
    assert h.transport.writes == [HEAD + b"\r\n"]
    assert h.transport.producer is None
    assert h.connection.state == "BUSY"
    noResult(d)


def test_requestWithKnownLength() -> None:
    """
    A producer with a known length gets a C{Content-Length} header; what it
    produces follows the head as is; the transport is its consumer.
    """
    h = Harness()
    producer = Producer(11)
    d = h.request(b"POST", producer)
    assert h.transport.writes == [POST_HEAD + b"Content-Length: 11\r\n\r\n"]
    assert producer.started == 1
    assert h.transport.producer is producer
    assert h.transport.streaming is True
    producer.consumer.write(b"hello ")
    producer.consumer.write(b"world")
    producer.done.callback(None)
    assert h.transport.value() == POST_HEAD + b"Content-Length: 11\r\n\r\nhello world"
    assert h.transport.producer is None
    noResult(d)
    h.receive([b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"])
    assert result(d).code == 201
    assert h.quiescent == [h.connection]


def test_requestWithUnknownLengthIsChunked() -> None:
    """
    A producer of unknown length gets C{Transfer-Encoding: chunked}; each
    write becomes one chunk (empty writes none), and a zero chunk ends it.
    """
    h = Harness()
    producer = Producer(UNKNOWN_LENGTH)
    d = h.request(b"POST", producer)
    assert h.transport.writes == [POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"]
    assert h.transport.producer is producer
    producer.consumer.write(b"hello")
    producer.consumer.write(b"")
    producer.consumer.write(b"x" * 20)
    assert h.transport.producer is producer
    producer.done.callback(None)
    body = h.transport.value()[len(POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n") :]
    assert body == b"5\r\nhello\r\n14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n"
    assert h.transport.producer is None
    # What was written decodes as a chunked body.
    decoded: List[bytes] = []
    finished: List[bytes] = []
    decoder = _ChunkedTransferDecoder(decoded.append, finished.append)
    decoder.dataReceived(body)
    assert b"".join(decoded) == b"hello" + b"x" * 20
    assert finished == [b""]
    noResult(d)


def test_chunkedConsumerPassesProducerRegistration() -> None:
    """
    The chunked consumer a producer writes to passes producer registration
    on to the transport.
    """
    h = Harness()
    producer = Producer(UNKNOWN_LENGTH)
    h.request(b"POST", producer)
    consumer = producer.consumer
    assert consumer is not h.transport
    consumer.unregisterProducer()
    assert h.transport.producer is None
    other = Producer(UNKNOWN_LENGTH)
    consumer.registerProducer(other, True)
    assert h.transport.producer is other


def test_requestWithEmptyBody() -> None:
    """
    A producer of length 0 gets C{Content-Length: 0} and no body bytes, and
    the request counts as sent: the connection is reused.
    """
    h = Harness()
    producer = Producer(0, done=succeed(None))
    d = h.request(b"POST", producer)
    assert h.transport.writes == [POST_HEAD + b"Content-Length: 0\r\n\r\n"]
    assert h.transport.producer is None
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    assert result(d).code == 200
    assert h.transport.value() == POST_HEAD + b"Content-Length: 0\r\n\r\n"
    assert h.quiescent == [h.connection]


def test_requestWithEmptyBodyStartsProducer() -> None:
    """
    Like Twisted's own client, the connection starts even an empty body's
    producer, so a wrapper watching for the end of the body learns it.
    """
    h = Harness()
    producer = Producer(0, done=succeed(None))
    h.request(b"POST", producer)
    assert producer.started == 1


def test_synchronousProducer() -> None:
    """
    A producer that writes everything and finishes within
    C{startProducing} works.
    """

    @implementer(IBodyProducer)
    class Immediate:
        length = 3

        def startProducing(self, consumer: Any) -> "Deferred[None]":
            consumer.write(b"abc")
            return succeed(None)

        def stopProducing(self) -> None:
            raise AssertionError("stopped")

        pauseProducing = resumeProducing = stopProducing

    h = Harness()
    d = h.request(b"POST", Immediate())
    assert h.transport.value() == POST_HEAD + b"Content-Length: 3\r\n\r\nabc"
    assert h.transport.producer is None
    h.receive([b"HTTP/1.1 204 No Content\r\n\r\n"])
    assert result(d).code == 204
    assert h.quiescent == [h.connection]


def test_producerFailureFailsRequest() -> None:
    """
    A body producer failing fails the request with
    L{RequestTransmissionFailed} and aborts the connection.
    """
    h = Harness()
    producer = Producer(10)
    d = h.request(b"POST", producer)
    producer.consumer.write(b"abc")
    producer.done.errback(ValueError("client went away"))
    f = failure(d, RequestTransmissionFailed)
    assert f.value.reasons[0].check(ValueError)
    assert h.transport.aborted
    assert h.transport.producer is None
    h.lose(Failure(ConnectionAborted()))
    assert h.connection.state == "CLOSED"
    assert h.quiescent == []


def test_producerFailingAtOnce() -> None:
    """
    A producer whose C{startProducing} fails at once fails the request.
    """
    h = Harness()
    producer = Producer(UNKNOWN_LENGTH, done=fail(ValueError("nope")))
    d = h.request(b"POST", producer)
    f = failure(d, RequestTransmissionFailed)
    assert f.value.reasons[0].check(ValueError)
    assert h.transport.aborted


# ---------------------------------------------------------------------------
# Parsing responses.
# ---------------------------------------------------------------------------

FULL = (
    b"HTTP/1.1 201 Created Just Now\r\n"
    b"Set-Cookie: a=1; Path=/\r\n"
    b"x-other:   spaced value \t\r\n"
    b"set-cookie: b=2\r\n"
    b"X-Empty:\r\n"
    b"CONTENT-LENGTH: 5\r\n"
    b"\r\n"
    b"hello"
)


@splits
def test_statusAndHeaders(how: Any) -> None:
    """
    The status code, reason phrase and headers are parsed; repeated
    headers keep their order; names are looked up case-insensitively;
    values lose surrounding whitespace.
    """
    h, d, response, body = respond(FULL, how)
    assert response is not None
    assert verifyObject(IResponse, response)
    assert response.code == 201
    assert response.phrase == b"Created Just Now"
    assert response.length == 5
    headers = response.headers
    assert headers.getRawHeaders(b"set-cookie") == [b"a=1; Path=/", b"b=2"]
    assert headers.getRawHeaders(b"SET-COOKIE") == [b"a=1; Path=/", b"b=2"]
    assert headers.getRawHeaders("Set-Cookie") == ["a=1; Path=/", "b=2"]
    assert headers.getRawHeaders(b"X-Other") == [b"spaced value"]
    assert headers.getRawHeaders(b"x-empty") == [b""]
    assert headers.getRawHeaders(b"content-length") == [b"5"]
    assert headers.hasHeader(b"Content-Length")
    assert not headers.hasHeader(b"Transfer-Encoding")
    assert body.data == b"hello"
    assert body.reason.check(ResponseDone)
    assert h.quiescent == [h.connection]


def test_setPreviousResponse() -> None:
    h, d, response, body = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert response.previousResponse is None
    other = object()
    response.setPreviousResponse(other)
    assert response.previousResponse is other


@pytest.mark.parametrize(
    "status, code, phrase",
    [
        (b"HTTP/1.1 200 OK", 200, b"OK"),
        (b"HTTP/1.1 200 ", 200, b""),
        (b"HTTP/1.1 200", 200, b""),
        (b"HTTP/1.1 404 Not  Found", 404, b"Not  Found"),
        (b"HTTP/1.1 599 With\ttab", 599, b"With\ttab"),
        (b"HTTP/1.0 503 Busy", 503, b"Busy"),
    ],
)
def test_statusLines(status: bytes, code: int, phrase: bytes) -> None:
    h, d, response, body = respond(status + b"\r\nContent-Length: 0\r\n\r\n", "bytewise")
    assert (response.code, response.phrase) == (code, phrase)
    assert body.reason.check(ResponseDone)


@splits
def test_contentLengthBody(how: Any) -> None:
    """
    A C{Content-Length} body is delivered in order and ends with
    L{ResponseDone}; the connection is then reused.
    """
    payload = bytes(range(256)) * 3
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
    h, d, response, body = respond(raw, how)
    assert response.length == len(payload)
    assert body.data == payload
    assert all(body.chunks)
    assert body.reason.check(ResponseDone)
    assert h.quiescent == [h.connection]
    assert h.connection.state == "QUIESCENT"
    assert not h.transport.disconnecting


CHUNKED = (
    b"HTTP/1.1 200 OK\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
    b"5;name=value;other\r\n"
    b"hello\r\n"
    b"6 ; ext=\"quoted;semicolon\"\r\n"
    b" world\r\n"
    b"A\r\n"
    b"0123456789\r\n"
    b"0;last=1\r\n"
    b"Trailer-A: 1\r\n"
    b"Trailer-B: two\r\n"
    b"\r\n"
)


@splits
def test_chunkedBody(how: Any) -> None:
    """
    A chunked body is decoded, chunk extensions ignored and trailers kept
    apart from the headers; the end of the trailer section ends the body.
    """
    h, d, response, body = respond(CHUNKED, how)
    assert response.length is UNKNOWN_LENGTH
    assert body.data == b"hello world0123456789"
    assert body.reason.check(ResponseDone)
    assert not response.headers.hasHeader(b"Trailer-A")
    assert response.trailers.getRawHeaders(b"trailer-a") == [b"1"]
    assert response.trailers.getRawHeaders(b"trailer-b") == [b"two"]
    assert h.quiescent == [h.connection]
    assert h.connection.state == "QUIESCENT"


def test_trailersNotRelayedDropped() -> None:
    """
    Trailer fields that may not be trailers (framing, routing, the
    sidecar's own) are dropped; a section left empty gives no trailers.
    """
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
        b"Content-Length: 5\r\nHost: evil\r\nX-Easymesh-Error: forged\r\n\r\n"
    )
    h, d, response, body = respond(raw)
    assert body.data == b"a"
    assert response.trailers is None
    _, _, kept, _ = respond(raw.replace(b"Host: evil", b"Grpc-Status: 0"))
    assert list(kept.trailers.getAllRawHeaders()) == [(b"Grpc-Status", [b"0"])]


@pytest.mark.parametrize(
    "section",
    [b"no colon here\r\n", b"Bad Name: x\r\n", b"X: a\x00b\r\n", b"X: y\r\n" * (MAX_HEADERS + 1)],
)
def test_badTrailersRefused(section: bytes) -> None:
    """
    A malformed trailer section, or too many fields, fails the body as a
    malformed response; the connection is not reused.
    """
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n" + section + b"\r\n"
    h, d, response, body = respond(raw)
    assert body.reason.check(ResponseFailed)
    assert h.quiescent == []


def test_requestTrailersWritten() -> None:
    """
    A chunked request body's trailers (its producer's C{trailers}, read once
    the body has ended) follow the last chunk.
    """
    h = Harness()
    producer = Producer(UNKNOWN_LENGTH)
    h.request(b"POST", producer)
    producer.consumer.write(b"hello")
    producer.trailers = Headers({b"grpc-status": [b"0"], b"x-sum": [b"1", b"2"]})
    producer.done.callback(None)
    body = h.transport.value()[len(POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n") :]
    assert body == b"5\r\nhello\r\n0\r\nGrpc-Status: 0\r\nX-Sum: 1\r\nX-Sum: 2\r\n\r\n"


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b"gzip, chunked"])
def test_chunkedCodings(coding: bytes) -> None:
    """
    C{chunked} is recognised in any case, and as the last of several
    codings.
    """
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    h, d, response, body = respond(raw, "bytewise")
    assert body.data == b"abc"
    assert body.reason.check(ResponseDone)


@splits
def test_closeDelimitedBody(how: Any) -> None:
    """
    Without C{Content-Length} or C{Transfer-Encoding} the body runs until
    the connection closes, which ends it with L{PotentialDataLoss}; such a
    connection is never reused.
    """
    h, d, response, body = respond(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this", how)
    assert response.length is UNKNOWN_LENGTH
    assert body.data == b"all of this"
    assert body.reasons == []
    h.lose()
    assert body.reason.check(PotentialDataLoss)
    assert h.quiescent == []
    assert h.connection.state == "CLOSED"


@splits
def test_headResponseHasNoBody(how: Any) -> None:
    """
    The response to C{HEAD} has no body whatever its framing headers say:
    it ends at once and the connection is reused.
    """
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    h, d, response, body = respond(raw, how, method=b"HEAD")
    assert h.transport.writes == [b"HEAD" + HEAD[3:] + b"\r\n"]
    assert response.code == 200
    assert response.length == 0
    assert response.headers.getRawHeaders(b"content-length") == [b"1234"]
    assert body.data == b""
    assert body.reason.check(ResponseDone)
    assert h.quiescent == [h.connection]
    assert h.connection.state == "QUIESCENT"


def test_headResponseChunkedHeader() -> None:
    h, d, response, body = respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", method=b"HEAD")
    assert body.reason.check(ResponseDone)
    assert h.quiescent == [h.connection]


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_noBodyStatuses(raw: bytes, how: str) -> None:
    """
    204 and 304 responses have no body: they end at once and the
    connection is reused.
    """
    h, d, response, body = respond(raw, how)
    assert response.code in (204, 304)
    assert response.length == 0
    assert body.data == b""
    assert body.reason.check(ResponseDone)
    assert h.quiescent == [h.connection]


@splits
def test_informationalResponsesSkipped(how: Any) -> None:
    """
    100 and 103 responses are dropped, headers and all; the final
    response is delivered.
    """
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"
    )
    h, d, response, body = respond(raw, how)
    assert response.code == 200
    assert response.phrase == b"OK"
    assert not response.headers.hasHeader(b"link")
    assert body.data == b"done"
    assert body.reason.check(ResponseDone)
    assert h.quiescent == [h.connection]


def test_informationalOnlyWaitsForFinal() -> None:
    """
    After a 1xx response alone the request is still waiting.
    """
    h = Harness()
    d = h.request()
    h.receive([b"HTTP/1.1 100 Continue\r\n\r\n"])
    noResult(d)
    assert not h.transport.disconnecting
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert result(d).code == 200


@splits
def test_switchingProtocolsRefused(how: Any) -> None:
    """
    A 101 response (never asked for) is a parse error.
    """
    h, d, response, body = respond(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", how)
    assertParseFailure(failure(d, ResponseFailed))
    assert h.transport.aborted
    assert h.quiescent == []


# ---------------------------------------------------------------------------
# Malformed responses.
# ---------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\n"

MALFORMED_HEADS = {
    "garbage status line": b"garbage\r\n\r\n",
    "lowercase http": b"http/1.1 200 OK\r\n\r\n",
    "HTTP/2.0": b"HTTP/2.0 200 OK\r\n\r\n",
    "HTTP/0.9": b"HTTP/0.9 200 OK\r\n\r\n",
    "non-digit code": b"HTTP/1.1 2x0 OK\r\n\r\n",
    "short code": b"HTTP/1.1 20 OK\r\n\r\n",
    "long code": b"HTTP/1.1 2000 OK\r\n\r\n",
    "code below 100": b"HTTP/1.1 099 Low\r\n\r\n",
    "control in phrase": b"HTTP/1.1 200 O\x00K\r\n\r\n",
    "header without colon": OK + b"NoColon\r\n\r\n",
    "empty header name": OK + b": value\r\n\r\n",
    "space before colon": OK + b"Content-Length : 5\r\n\r\nhello",
    "obsolete line folding": OK + b"X-A: 1\r\n folded\r\n\r\n",
    "NUL in value": OK + b"X-A: a\x00b\r\n\r\n",
    "bare CR in value": OK + b"X-A: a\rb\r\n\r\n",
    "bare LF in value": OK + b"X-A: a\nb\r\n\r\n",
    "DEL in value": OK + b"X-A: a\x7fb\r\n\r\n",
    "both framings": OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "Content-Length 5, 6": OK + b"Content-Length: 5, 6\r\n\r\nhello!",
    "two Content-Lengths": OK + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "non-numeric Content-Length": OK + b"Content-Length: five\r\n\r\nhello",
    "plus Content-Length": OK + b"Content-Length: +5\r\n\r\nhello",
    "negative Content-Length": OK + b"Content-Length: -5\r\n\r\nhello",
    "hex Content-Length": OK + b"Content-Length: 0x5\r\n\r\nhello",
    "empty Content-Length": OK + b"Content-Length:\r\n\r\nhello",
    "huge Content-Length": OK + b"Content-Length: 99999999999999999999\r\n\r\n",
    "Transfer-Encoding gzip": OK + b"Transfer-Encoding: gzip\r\n\r\nxyz",
    "Transfer-Encoding chunked, gzip": OK + b"Transfer-Encoding: chunked, gzip\r\n\r\n3\r\nxyz\r\n0\r\n\r\n",
    "Transfer-Encoding chunked twice": OK + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "Transfer-Encoding empty": OK + b"Transfer-Encoding:\r\n\r\n",
    "101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    "too many headers": OK + b"X-H: v\r\n" * (MAX_HEADERS + 1) + b"\r\n",
}


@pytest.mark.parametrize("raw", list(MALFORMED_HEADS.values()), ids=list(MALFORMED_HEADS))
@splits
def test_malformedHead(raw: bytes, how: Any) -> None:
    """
    A malformed response head fails the request with L{ResponseFailed}
    carrying a L{ParseError}, aborts the connection, and never hands it
    back to the pool.
    """
    h, d, response, body = respond(raw, how)
    assert response is None
    assertParseFailure(failure(d, ResponseFailed))
    assert h.transport.aborted
    assert h.transport.disconnecting
    assert h.quiescent == []
    assert h.connection.state != "QUIESCENT"
    h.lose(Failure(ConnectionAborted()))
    assert h.connection.state == "CLOSED"
    assert h.quiescent == []


def test_manyHeadersAccepted() -> None:
    raw = OK + b"X-H: v\r\n" * (MAX_HEADERS - 1) + b"Content-Length: 0\r\n\r\n"
    h, d, response, body = respond(raw)
    assert len(response.headers.getRawHeaders(b"x-h")) == MAX_HEADERS - 1
    assert h.quiescent == [h.connection]


@pytest.mark.parametrize("piece", [1024, 4096, 65536 + 100])
def test_headOverMaxHead(piece: int) -> None:
    """
    A response head larger than C{MAX_HEAD} fails with a L{ParseError}
    whether or not its end has arrived.
    """
    raw = OK + b"X-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n"
    h = Harness()
    d = h.request()
    pieces = [raw[i : i + piece] for i in range(0, len(raw), piece)]
    h.receive(pieces)
    assertParseFailure(failure(d, ResponseFailed))
    assert h.transport.aborted
    assert h.quiescent == []


def test_headOverMaxHeadWithoutEnd() -> None:
    """
    Bytes past C{MAX_HEAD} without the end of the head fail at once.
    """
    h = Harness()
    d = h.request()
    h.receive([OK + b"X-Big: " + b"a" * 4096] + [b"a" * 4096] * 16)
    assertParseFailure(failure(d, ResponseFailed))
    assert h.transport.aborted


def _headOfSize(size: int) -> bytes:
    """
    A head whose status line and headers are C{size} bytes, then the blank
    line.
    """
    start = OK + b"Content-Length: 0\r\nX-Pad: "
    return start + b"p" * (size - len(start)) + b"\r\n\r\n"


def test_headOfMaxHeadAcceptedWhole() -> None:
    raw = _headOfSize(MAX_HEAD)
    h, d, response, body = respond(raw)
    assert response.code == 200
    h, d, response, body = respond(_headOfSize(MAX_HEAD + 1))
    assertParseFailure(failure(d, ResponseFailed))


def test_headOfMaxHeadAcceptedSplit() -> None:
    raw = _headOfSize(MAX_HEAD)
    h, d, response, body = respond(raw, [len(raw) - 1])
    d.addErrback(lambda f: None)
    assert response is not None and response.code == 200


MALFORMED_CHUNKED = {
    "non-hex size": b"zz\r\nhello\r\n0\r\n\r\n",
    "negative size": b"-5\r\nhello\r\n0\r\n\r\n",
    "0x prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "empty size": b"\r\nhello\r\n0\r\n\r\n",
    "size too long": b"1" + b"0" * 15 + b"\r\nhello\r\n0\r\n\r\n",
    "data longer than declared": b"3\r\nhello\r\n0\r\n\r\n",
    "data without CRLF": b"5\r\nhelloXX0\r\n\r\n",
    "endless size line": b"5" + b";e" * MAX_CHUNK_LINE,
    "endless trailer": b"0\r\nX-T: " + b"t" * (MAX_CHUNK_LINE + 10) + b"\r\n\r\n",
}


@pytest.mark.parametrize("chunked", list(MALFORMED_CHUNKED.values()), ids=list(MALFORMED_CHUNKED))
@pytest.mark.parametrize("deliver", [True, False], ids=["delivered", "buffered"])
@splits
def test_malformedChunkedBody(chunked: bytes, deliver: bool, how: Any) -> None:
    """
    A malformed chunked body fails the body (the response head was fine)
    with L{ResponseFailed} carrying a L{ParseError}, aborts the connection
    and never hands it back to the pool.
    """
    raw = OK + b"Transfer-Encoding: chunked\r\n\r\n" + chunked
    h, d, response, body = respond(raw, how, deliver=deliver)
    assert response is not None and response.code == 200
    if not deliver:
        response.deliverBody(body)
    assertParseFailure(body.reason)
    assert b"\r\n" not in body.data
    assert h.transport.aborted
    assert h.quiescent == []
    h.lose(Failure(ConnectionAborted()))
    assert len(body.reasons) == 1
    assert h.quiescent == []


def test_longestChunkSizeAccepted() -> None:
    h, d, response, body = respond(OK + b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 14 + b"3\r\nabc\r\n0\r\n\r\n")
    assert body.data == b"abc"
    assert body.reason.check(ResponseDone)


@pytest.mark.parametrize("how", ["bytewise", "whole"])
def test_longChunkLineRefusedHoweverSplit(how: str) -> None:
    """
    A chunk-size line longer than C{MAX_CHUNK_LINE} is refused, however
    the bytes arrive.
    """
    raw = OK + b"Transfer-Encoding: chunked\r\n\r\n3;" + b"e" * (MAX_CHUNK_LINE + 10) + b"\r\nabc\r\n0\r\n\r\n"
    h, d, response, body = respond(raw, how)
    assertParseFailure(body.reason)


# ---------------------------------------------------------------------------
# Delivering bodies.
# ---------------------------------------------------------------------------


def test_deliverBodyBeforeData() -> None:
    """
    Delivered before any body arrives, the protocol gets each piece as it
    comes, then L{ResponseDone}.
    """
    h = Harness()
    d = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"])
    response = result(d)
    body = Body()
    response.deliverBody(body)
    assert body.made == 1
    assert body.chunks == []
    assert h.transport.producerState == "producing"
    h.receive([b"abc"])
    assert body.chunks == [b"abc"]
    h.receive([b"defg", b"hij"])
    assert body.chunks == [b"abc", b"defg", b"hij"]
    assert body.reason.check(ResponseDone)
    assert h.quiescent == [h.connection]


def test_deliverBodyAfterData() -> None:
    """
    Body bytes that arrive before anybody reads them are kept, and the
    connection paused; on delivery they come first, in order, and reading
    resumes.
    """
    h = Harness()
    d = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", b"cd"])
    response = result(d)
    assert h.transport.producerState == "paused"
    body = Body()
    response.deliverBody(body)
    assert body.data == b"abcd"
    assert body.reasons == []
    assert h.transport.producerState == "producing"
    h.receive([b"efghij"])
    assert body.data == b"abcdefghij"
    assert body.reason.check(ResponseDone)
    assert h.quiescent == [h.connection]


@splits
def test_deliverBodyAfterWholeBody(how: Any) -> None:
    """
    A body that has fully arrived before delivery is delivered whole and in
    order, then L{ResponseDone}; the connection was reused meanwhile.
    """
    payload = b"0123456789" * 20
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n" + payload
    h, d, response, body = respond(raw, how, deliver=False)
    assert h.quiescent == [h.connection]
    assert h.transport.producerState == "producing"
    response.deliverBody(body)
    assert body.data == payload
    assert body.reason.check(ResponseDone)


def test_deliverBodyTwice() -> None:
    h, d, response, body = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    with pytest.raises(RuntimeError):
        response.deliverBody(Body())
    assert body.data == b"x"


@settings(max_examples=40, deadline=None)
@given(how=SPLITS, extra=st.binary(min_size=1, max_size=50))
@example(how="whole", extra=b"HTTP/1.1 200 OK\r\n\r\n")
@example(how="bytewise", extra=b"X")
def test_moreThanContentLength(how: Any, extra: bytes) -> None:
    """
    Bytes past the declared length that arrive with the body are never
    delivered, and the connection is closed rather than reused.
    """
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    raw = head + b"hello" + extra
    h = Harness()
    d = h.request()
    body = Body()
    d.addCallback(lambda r: r.deliverBody(body))
    # Cut anywhere before the last byte of the body: the extra bytes come
    # in the same read as the end of the body.
    h.receive(split(raw, how, limit=len(head) + 5))
    assert body.data == b"hello"
    assert body.reason.check(ResponseDone)
    assert h.quiescent == []
    assert h.transport.disconnecting
    assert h.connection.state != "QUIESCENT"


def test_bytesAfterIdle() -> None:
    """
    Bytes arriving on an idle connection (after a complete response) are
    never delivered: the connection is aborted.
    """
    h, d, response, body = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert h.quiescent == [h.connection]
    h.receive([b"surprise"])
    assert body.data == b"ok"
    assert h.transport.aborted


@pytest.mark.parametrize(
    "raw, method",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", b"GET"),
        (b"HTTP/1.1 204 No Content\r\n\r\nextra", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", b"HEAD"),
    ],
    ids=["Content-Length 0", "204", "HEAD"],
)
def test_extraAfterBodylessResponse(raw: bytes, method: bytes) -> None:
    """
    As with bytes past a C{Content-Length} body, bytes that arrive in the
    same read as a bodyless response keep the connection out of the pool.
    """
    h, d, response, body = respond(raw, method=method)
    assert body.reason.check(ResponseDone)
    assert h.transport.disconnecting
    assert h.quiescent == []


def test_chunkedExtraBytes() -> None:
    """
    Bytes after the end of a chunked body in the same read close the
    connection rather than reuse it.
    """
    h, d, response, body = respond(OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\njunk")
    assert body.data == b"ok"
    assert body.reason.check(ResponseDone)
    assert h.quiescent == []
    assert h.transport.disconnecting


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel",
        OK + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n",
    ],
    ids=["cl-partial", "cl-none", "chunked-between", "chunked-inside", "chunked-trailers"],
)
@pytest.mark.parametrize("reason", [ConnectionDone, ConnectionLost])
@pytest.mark.parametrize("deliver", [True, False], ids=["delivered", "buffered"])
def test_closedMidBody(raw: bytes, reason: type, deliver: bool) -> None:
    """
    The upstream closing before a framed body is complete fails the body
    with L{ResponseFailed}, never L{ResponseDone} or L{PotentialDataLoss}.
    """
    h, d, response, body = respond(raw, "bytewise", deliver=deliver)
    assert response.code == 200
    h.lose(Failure(reason()))
    if not deliver:
        response.deliverBody(body)
    f = body.reason
    assert f.check(ResponseFailed)
    assert not f.check(ResponseDone, PotentialDataLoss)
    assert f.value.reasons[0].check(reason)
    assert h.quiescent == []
    assert h.connection.state == "CLOSED"


# ---------------------------------------------------------------------------
# Back-pressure.
# ---------------------------------------------------------------------------


def test_pauseAndResumeReachTransport() -> None:
    h = Harness()
    d = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"])
    body = Body()
    result(d).deliverBody(body)
    body.transport.pauseProducing()
    assert h.transport.producerState == "paused"
    h.receive([b"abc"])
    body.transport.resumeProducing()
    assert h.transport.producerState == "producing"
    body.transport.pauseProducing()
    h.receive([b"def"])
    # The end of the response resumes reading for the next one.
    assert body.data == b"abcdef"
    assert body.reason.check(ResponseDone)
    assert h.transport.producerState == "producing"
    assert h.quiescent == [h.connection]


def test_stopProducingAbortsConnection() -> None:
    h = Harness()
    d = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc"])
    body = Body()
    result(d).deliverBody(body)
    body.transport.stopProducing()
    assert h.transport.aborted
    assert body.reasons == []
    h.lose(Failure(ConnectionAborted()))
    assert body.reason.check(ResponseFailed)
    assert h.quiescent == []
    # Stopping again does nothing more.
    body.transport.stopProducing()


def test_bodyTransportDetachedAfterEnd() -> None:
    """
    Once its body has ended, a protocol's transport no longer touches the
    connection, which may be serving another request.
    """
    h = Harness()
    d = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"])
    body = Body()
    result(d).deliverBody(body)
    h.receive([b"ok"])
    assert body.reason.check(ResponseDone)
    assert h.quiescent == [h.connection]
    body.transport.pauseProducing()
    assert h.transport.producerState == "producing"
    body.transport.stopProducing()
    assert not h.transport.disconnecting
    assert h.connection.state == "QUIESCENT"


class PausingBody(Body):
    """
    A body protocol that cannot keep up: it pauses its transport on every
    piece of data.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.pauseProducing()


class StoppingBody(Body):
    """
    A body protocol that wants none of the body (like the listener's
    C{_Discard}).
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.stopProducing()


def test_pauseDuringBufferedDeliveryHolds() -> None:
    h = Harness()
    d = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])
    body = PausingBody()
    result(d).deliverBody(body)
    assert body.data == b"abc"
    assert h.transport.producerState == "paused"


def test_pauseAfterEndLeavesPooledConnectionAlone() -> None:
    h, d, response, body = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", deliver=False)
    assert h.quiescent == [h.connection]
    body = PausingBody()
    response.deliverBody(body)
    assert body.data == b"ok"
    assert body.reason.check(ResponseDone)
    assert h.transport.producerState == "producing"


def test_stopAfterEndLeavesPooledConnectionAlone() -> None:
    h, d, response, body = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", deliver=False)
    assert h.quiescent == [h.connection]
    second = h.request()
    response.deliverBody(StoppingBody())
    assert not h.transport.disconnecting
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert result(second).code == 200


def test_stopInConnectionMadeThenNoResume() -> None:
    h = Harness()
    d = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])
    response = result(d)
    resumes: List[int] = []
    h.transport.resumeProducing = lambda: resumes.append(1)  # type: ignore[method-assign]
    body = StoppingBody()
    response.deliverBody(body)
    assert h.transport.aborted
    assert resumes == []


def test_stopInConnectionMadeAborts() -> None:
    """
    A body protocol stopping its transport as soon as it is connected (the
    listener's C{_Discard}) aborts the connection; it then gets
    L{ResponseFailed}.
    """
    # A real transport tolerates resuming after an abort.
    h = Harness(lenient=True)
    d = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"])
    response = result(d)
    body = StoppingBody()
    response.deliverBody(body)
    assert h.transport.aborted
    h.lose(Failure(ConnectionAborted()))
    assert body.reason.check(ResponseFailed)
    assert h.quiescent == []


# ---------------------------------------------------------------------------
# Keep-alive.
# ---------------------------------------------------------------------------


def test_keepAliveSecondRequest() -> None:
    """
    After a complete response the connection goes to the quiescent
    callback in state C{QUIESCENT}, and takes another request.
    """
    h = Harness()
    states: List[str] = []
    h.connection._quiescentCallback = lambda c: (h.quiescent.append(c), states.append(c.state))
    d = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"])
    body1 = Body()
    result(d).deliverBody(body1)
    assert body1.data == b"one"
    assert h.quiescent == [h.connection]
    assert states == ["QUIESCENT"]
    assert h.connection.state == "QUIESCENT"

    h.transport.clear()
    h.transport.writes.clear()
    d2 = h.request(b"POST", Producer(4))
    assert h.connection.state == "BUSY"
    assert h.transport.writes == [POST_HEAD + b"Content-Length: 4\r\n\r\n"]
    producer = h.transport.producer
    producer.consumer.write(b"data")
    producer.done.callback(None)
    h.receive(split(CHUNKED, "bytewise"))
    body2 = Body()
    response2 = result(d2)
    response2.deliverBody(body2)
    assert body2.data == b"hello world0123456789"
    assert body2.reason.check(ResponseDone)
    assert h.quiescent == [h.connection, h.connection]
    assert states == ["QUIESCENT", "QUIESCENT"]
    assert not h.transport.disconnecting


def test_quiescentBeforeBodyConsumed() -> None:
    """
    The connection is reusable once the response has fully arrived, even
    before its body was delivered.
    """
    h, d, response, body = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", deliver=False)
    assert h.quiescent == [h.connection]
    d2 = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz"])
    response.deliverBody(body)
    body2 = Body()
    result(d2).deliverBody(body2)
    assert (body.data, body2.data) == (b"abc", b"xyz")


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, CLOSE\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ],
)
@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_notReused(raw: bytes, how: str) -> None:
    """
    A response saying C{Connection: close}, or an HTTP/1.0 one, completes
    normally but its connection is closed gracefully, never reused.
    """
    h, d, response, body = respond(raw, how)
    assert body.reason.check(ResponseDone)
    assert h.quiescent == []
    assert h.transport.disconnecting
    assert not h.transport.aborted
    assert h.connection.state != "QUIESCENT"
    failure(h.request(), RequestNotSent)


def test_responseVersion() -> None:
    h, d, response, body = respond(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert response.version == (b"HTTP", 1, 0)


# ---------------------------------------------------------------------------
# Cancellation and closing.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("before", [b"", b"HTTP/1.1 2", b"HTTP/1.1 200 OK\r\nContent-Le"])
def test_cancelBeforeResponse(before: bytes) -> None:
    """
    Cancelling the request before its response head fails it with
    L{ResponseNeverReceived} holding a L{CancelledError} and aborts the
    connection.
    """
    h = Harness()
    d = h.request()
    h.receive([before] if before else [])
    d.cancel()
    f = failure(d, ResponseNeverReceived)
    assert [r.type for r in f.value.reasons] == [CancelledError]
    assert h.transport.aborted
    h.lose(Failure(ConnectionAborted()))
    assert h.connection.state == "CLOSED"
    assert h.quiescent == []


def test_cancelAfterResponseDoesNothing() -> None:
    h = Harness()
    d = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"])
    d.cancel()
    assert result(d).code == 200
    assert not h.transport.disconnecting


def test_cancelWithBodyInFlight() -> None:
    h = Harness()
    producer = Producer(10)
    d = h.request(b"POST", producer)
    producer.consumer.write(b"abc")
    d.cancel()
    f = failure(d, ResponseNeverReceived)
    assert f.value.reasons[0].check(CancelledError)
    assert h.transport.aborted


@pytest.mark.parametrize("reason", [ConnectionDone, ConnectionLost])
def test_closedBeforeAnyByte(reason: type) -> None:
    """
    The connection closing before any response byte fails the request with
    L{ResponseNeverReceived}, which the pool retries.
    """
    h = Harness()
    d = h.request()
    h.lose(Failure(reason()))
    f = failure(d, ResponseNeverReceived)
    assert f.value.reasons[0].check(reason)
    assert h.connection.state == "CLOSED"
    failure(h.request(), RequestNotSent)


@pytest.mark.parametrize("before", [b"H", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n\r\n"])
def test_closedAfterSomeBytes(before: bytes) -> None:
    """
    The connection closing after part of a response fails the request with
    L{ResponseFailed}: not retried.
    """
    h = Harness()
    d = h.request()
    h.receive([before])
    h.lose(Failure(ConnectionLost()))
    f = failure(d, ResponseFailed)
    assert not f.check(ResponseNeverReceived)
    assert f.value.reasons[0].check(ConnectionLost)


def test_abort() -> None:
    """
    C{abort} aborts the transport and fires once the connection is lost;
    on a closed connection it fires at once.
    """
    h = Harness()
    d = h.connection.abort()
    noResult(d)
    assert h.transport.aborted
    h.lose(Failure(ConnectionAborted()))
    assert result(d) is None
    assert result(h.connection.abort()) is None


# ---------------------------------------------------------------------------
# Response before the request body.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [10, UNKNOWN_LENGTH], ids=["content-length", "chunked"])
def test_responseBeforeRequestBody(length: Any) -> None:
    """
    A response that ends before the request body has been produced stops
    the producer, and the connection is closed, not reused.
    """
    h = Harness()
    producer = Producer(length)
    d = h.request(b"POST", producer)
    producer.consumer.write(b"abc")
    h.receive([b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"])
    response = result(d)
    assert response.code == 413
    assert producer.stopped == 1
    assert h.transport.producer is None
    assert h.transport.disconnecting
    assert h.quiescent == []
    body = Body()
    response.deliverBody(body)
    assert body.reason.check(ResponseDone)
    h.lose()
    # Finishing late, after the connection is gone, is harmless.
    producer.done.callback(None)
    assert h.quiescent == []


def test_responseBodyOutlastsRequestBody() -> None:
    """
    A response whose head arrives while the request body is still being
    sent stops nothing until it ends; if the body finishes first the
    connection is reused.
    """
    h = Harness()
    producer = Producer(6)
    d = h.request(b"POST", producer)
    producer.consumer.write(b"abc")
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"])
    body = Body()
    result(d).deliverBody(body)
    assert producer.stopped == 0
    producer.consumer.write(b"def")
    producer.done.callback(None)
    assert h.quiescent == []
    h.receive([b"cd"])
    assert body.data == b"abcd"
    assert body.reason.check(ResponseDone)
    assert producer.stopped == 0
    assert h.quiescent == [h.connection]


def test_responseEndsMidRequestBody() -> None:
    """
    The response's end (not its head) stops an unfinished request body.
    """
    h = Harness()
    producer = Producer(100)
    d = h.request(b"POST", producer)
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"])
    assert producer.stopped == 0
    body = Body()
    result(d).deliverBody(body)
    h.receive([b"cd"])
    assert body.reason.check(ResponseDone)
    assert producer.stopped == 1
    assert h.quiescent == []
    assert h.transport.disconnecting


# ---------------------------------------------------------------------------
# One request at a time.
# ---------------------------------------------------------------------------


def test_requestWhileBusy() -> None:
    h = Harness()
    d = h.request()
    d2 = h.request(b"DELETE")
    failure(d2, RequestNotSent)
    assert h.transport.writes == [HEAD + b"\r\n"]
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert result(d).code == 200


def test_requestWhileBodyUndelivered() -> None:
    """
    While the response body is still arriving the connection is busy.
    """
    h = Harness()
    d = h.request()
    h.receive([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"])
    result(d)
    failure(h.request(), RequestNotSent)


# ---------------------------------------------------------------------------
# Through HTTPConnectionPool.
# ---------------------------------------------------------------------------


class PoolHarness:
    """
    An L{HTTPConnectionPool} using L{H1ConnectionFactory}, connecting over
    a L{MemoryReactorClock} whose connections the test completes.
    """

    key = ("http", "10.0.0.1", 8080)

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = HTTPConnectionPool(self.reactor, persistent=True)
        self.pool.maxPersistentPerHost = 2
        self.pool.cachedConnectionTimeout = 30
        self.pool.retryAutomatically = True
        self.pool._factory = H1ConnectionFactory
        self.endpoint = TCP4ClientEndpoint(self.reactor, "10.0.0.1", 8080, timeout=5)
        self.wires: List[Any] = []
        self.transports: List[RecordingTransport] = []

    def getConnection(self) -> "Deferred[Any]":
        return self.pool.getConnection(self.key, self.endpoint)

    def connect(self) -> None:
        """
        Complete the newest connection attempt.
        """
        assert len(self.reactor.tcpClients) == len(self.wires) + 1
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[-1]
        assert (host, port) == ("10.0.0.1", 8080)
        wire = factory.buildProtocol(None)
        transport = RecordingTransport()
        wire.makeConnection(transport)
        self.wires.append(wire)
        self.transports.append(transport)

    def request(self, connection: Any, method: bytes = b"GET", body: Any = None) -> "Deferred[IResponse]":
        return connection.request(UpstreamRequest(method, method + HEAD[3:], body))


def readBody(response: Any) -> Body:
    body = Body()
    response.deliverBody(body)
    return body


def test_poolReusesConnection() -> None:
    p = PoolHarness()
    d = p.getConnection()
    noResult(d)
    p.connect()
    connection = result(d)
    assert isinstance(connection, H1Connection)
    assert connection.transport is p.transports[0]
    rd = p.request(connection)
    assert p.transports[0].value() == HEAD + b"\r\n"
    p.wires[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
    assert readBody(result(rd)).data == b"one"
    assert p.pool._connections[p.key] == [connection]
    assert len(p.reactor.getDelayedCalls()) == 1

    # The second request goes over the same connection.
    again = result(p.getConnection())
    assert len(p.reactor.tcpClients) == 1
    assert p.pool._connections[p.key] == []
    p.transports[0].clear()
    rd2 = p.request(again, b"HEAD")
    assert p.transports[0].value() == b"HEAD" + HEAD[3:] + b"\r\n"
    p.wires[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
    body = readBody(result(rd2))
    assert body.data == b""
    assert body.reason.check(ResponseDone)
    assert p.pool._connections[p.key] == [connection]


def test_poolRetriesStaleConnection() -> None:
    """
    A pooled connection that turns out to be closed before any response
    byte fails with L{ResponseNeverReceived}; the pool retries the request
    once on a new connection.
    """
    p = PoolHarness()
    d = p.getConnection()
    p.connect()
    rd = p.request(result(d))
    p.wires[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    result(rd)

    stale = result(p.getConnection())
    rd = p.request(stale)
    p.wires[0].connectionLost(Failure(ConnectionDone()))
    noResult(rd)
    assert len(p.reactor.tcpClients) == 2
    p.connect()
    assert p.transports[1].value() == HEAD + b"\r\n"
    p.wires[1].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
    assert readBody(result(rd)).data == b"fresh"


@pytest.mark.parametrize("before", [b"HTTP/1.1 200 OK\r\n", None])
def test_poolDoesNotRetry(before: Optional[bytes]) -> None:
    """
    No retry after part of a response arrived, nor for a request with a
    body.
    """
    p = PoolHarness()
    d = p.getConnection()
    p.connect()
    rd = p.request(result(d))
    p.wires[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    result(rd)
    stale = result(p.getConnection())
    if before is None:
        producer = Producer(3)
        rd = p.request(stale, b"POST", producer)
        p.wires[0].connectionLost(Failure(ConnectionDone()))
        failure(rd, ResponseNeverReceived)
    else:
        rd = p.request(stale)
        p.wires[0].dataReceived(before)
        p.wires[0].connectionLost(Failure(ConnectionDone()))
        failure(rd, ResponseFailed)
    assert len(p.reactor.tcpClients) == 1


def test_poolSkipsClosingConnections() -> None:
    """
    A connection whose response said C{Connection: close} never enters the
    pool; the next request opens a new connection.
    """
    p = PoolHarness()
    d = p.getConnection()
    p.connect()
    rd = p.request(result(d))
    p.wires[0].dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert readBody(result(rd)).data == b"ok"
    assert p.pool._connections.get(p.key, []) == []
    assert p.transports[0].disconnecting
    p.getConnection()
    assert len(p.reactor.tcpClients) == 2


def test_poolMalformedResponseNotPooled() -> None:
    p = PoolHarness()
    d = p.getConnection()
    p.connect()
    rd = p.request(result(d))
    p.wires[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n")
    assertParseFailure(failure(rd, ResponseFailed))
    assert p.pool._connections.get(p.key, []) == []
    assert p.transports[0].aborted


def test_poolIdleTimeoutAndClose() -> None:
    """
    An idle pooled connection is closed after C{cachedConnectionTimeout};
    C{closeCachedConnections} aborts the others and fires once they are
    lost.
    """
    p = PoolHarness()
    connections = []
    for i in range(2):
        d = p.getConnection()
        p.connect()
        connections.append(result(d))
    for i, connection in enumerate(connections):
        rd = p.request(connection)
        p.wires[i].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        result(rd)
    assert p.pool._connections[p.key] == connections

    p.reactor.advance(29)
    assert not p.transports[0].disconnecting
    closed = p.pool.closeCachedConnections()
    noResult(closed)
    assert p.transports[0].aborted and p.transports[1].aborted
    p.wires[0].connectionLost(Failure(ConnectionAborted()))
    noResult(closed)
    p.wires[1].connectionLost(Failure(ConnectionAborted()))
    assert result(closed) is None
    assert p.reactor.getDelayedCalls() == []


def test_poolIdleTimeout() -> None:
    p = PoolHarness()
    d = p.getConnection()
    p.connect()
    rd = p.request(result(d))
    p.wires[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    result(rd)
    p.reactor.advance(30)
    assert p.transports[0].disconnecting
    assert p.pool._connections[p.key] == []


def test_factory() -> None:
    calls: List[Any] = []
    factory = H1ConnectionFactory(calls.append, "metadata")
    assert factory.noisy is False
    connection = factory.buildProtocol(None)
    assert isinstance(connection, H1Connection)
    assert connection.state == "QUIESCENT"
    connection.makeConnection(StringTransport())
    d = connection.request(UpstreamRequest(b"GET", HEAD, None))
    connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    result(d)
    assert calls == [connection]
