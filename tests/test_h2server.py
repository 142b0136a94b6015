"""
Tests for L{easymesh.h2server}: the HTTP/2 edge, driven by the h2
library's client over a L{StringTransport}, through a listener's HTTP/1.1
channel (which hands the connection over on the preface, or on ALPN
C{h2}), with the recording exchanges of L{tests.test_h1server}.  Time is a
L{Clock} behind the channel's sweeper.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Type

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame
from twisted.web.http_headers import Headers

from easymesh.config.model import EdgeLimits
from easymesh.h2server import HIGH_WATER, MAX_EARLY_RESETS, PREFACE, H2Edge
from tests.test_h1server import Conn
from tests.test_listener import FakeProducer

AUTHORITY = b"example.test"


class Client:
    """
    An HTTP/2 client (the h2 library's) talking to a listener's channel.
    """

    def __init__(self, limits: EdgeLimits = EdgeLimits(), preface: bool = True) -> None:
        self.server = Conn(limits)
        config = H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = H2Connection(config)
        self.events: List[Event] = []
        if preface:
            self.h2.initiate_connection()
            self.pump()

    @property
    def requests(self) -> List[Any]:
        return self.server.requests

    @property
    def edge(self) -> H2Edge:
        edge = self.server.channel._h2
        assert edge is not None
        return edge

    def pump(self) -> None:
        """
        Move bytes both ways until neither side has more (a bounded number
        of rounds).
        """
        for _ in range(50):
            out = self.h2.data_to_send()
            if out:
                self.server.feed(out)
            back = self.server.transport.value()
            self.server.transport.clear()
            if back:
                self.events += self.h2.receive_data(back)
            if not out and not back:
                return
        raise AssertionError("still talking after 50 rounds")

    def request(
        self,
        path: bytes = b"/",
        method: bytes = b"GET",
        headers: Sequence[Tuple[bytes, bytes]] = (),
        end: bool = True,
        pseudo: Optional[List[Tuple[bytes, bytes]]] = None,
    ) -> int:
        streamId = self.h2.get_next_available_stream_id()
        if pseudo is None:
            pseudo = [
                (b":method", method),
                (b":scheme", b"http"),
                (b":authority", AUTHORITY),
                (b":path", path),
            ]
        self.h2.send_headers(streamId, pseudo + list(headers), end_stream=end)
        self.pump()
        return streamId

    def of(self, kind: Type[Event], streamId: Optional[int] = None) -> List[Any]:
        return [
            e
            for e in self.events
            if isinstance(e, kind) and (streamId is None or getattr(e, "stream_id", None) == streamId)
        ]

    def response(self, streamId: int) -> Tuple[dict, bytes, Optional[dict], bool]:
        [head] = self.of(ResponseReceived, streamId)
        body = b"".join(e.data for e in self.of(DataReceived, streamId))
        trailers = self.of(TrailersReceived, streamId)
        ended = bool(self.of(StreamEnded, streamId))
        return dict(head.headers), body, (dict(trailers[0].headers) if trailers else None), ended

    def resetCode(self, streamId: int) -> Optional[int]:
        resets = self.of(StreamReset, streamId)
        return resets[0].error_code if resets else None

    def goAway(self) -> Optional[ConnectionTerminated]:
        found = self.of(ConnectionTerminated)
        return found[-1] if found else None


def frames(data: bytes) -> List[Frame]:
    """
    The frames in C{data}, read without a connection's state.
    """
    found = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        found.append(frame)
        data = data[9 + length :]
    return found


def respond(request: Any, code: int = 200, body: bytes = b"ok", headers: Iterable[Tuple[bytes, bytes]] = ()) -> None:
    request.channel.sendHead(code, b"", Headers({name: [value] for name, value in headers}))
    if body:
        request.channel.sendData(body)
    request.channel.finish(None)


# The switch to HTTP/2.


def test_prefaceHandsOverToHTTP2() -> None:
    client = Client()
    assert isinstance(client.server.channel._h2, H2Edge)
    streamId = client.request(b"/p/a%2Fb?x=1", headers=[(b"x-a", b"1"), (b"x-a", b"2")])
    [request] = client.requests
    assert request.method == b"GET"
    assert request.uri == b"/p/a%2Fb?x=1"
    assert request.request.authority == AUTHORITY
    assert request.request.version == b"2"
    assert request.requestHeaders.getRawHeaders(b"x-a") == [b"1", b"2"]
    assert request.received is not None
    respond(request, body=b"hello", headers=[(b"content-length", b"5"), (b"X-Out", b"v")])
    client.pump()
    head, body, trailers, ended = client.response(streamId)
    assert head[b":status"] == b"200"
    assert head[b"x-out"] == b"v"
    assert (body, trailers, ended) == (b"hello", None, True)
    # The sweeper now times the HTTP/2 connection, not the channel.
    assert client.edge in client.server.sweeper._channels
    assert client.server.channel not in client.server.sweeper._channels


def test_prefaceSplitAcrossReads() -> None:
    client = Client(preface=False)
    client.h2.initiate_connection()
    data = client.h2.data_to_send()
    assert data.startswith(PREFACE)
    for i in range(0, len(data), 5):
        client.server.feed(data[i : i + 5])
    assert client.server.channel._h2 is not None
    client.pump()
    streamId = client.request()
    respond(client.requests[0])
    client.pump()
    assert client.response(streamId)[3]


def test_notAfterHTTP11Request() -> None:
    """
    The preface counts only as a connection's first bytes: after an
    HTTP/1.1 request it is a malformed request line.
    """
    conn = Conn()
    conn.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.requests[0].respond()
    conn.feed(PREFACE)
    assert conn.channel._h2 is None
    assert b"505 " in conn.output() or b"400 " in conn.output()


def test_alpnHandsOverToHTTP2() -> None:
    """
    Over TLS, a client that negotiated C{h2} is handed over at the end of
    the handshake.
    """
    conn = Conn()
    conn.transport.negotiatedProtocol = b"h2"  # type: ignore[attr-defined]
    conn.channel.handshakeCompleted()
    assert conn.channel._h2 is not None
    settings = conn.output()
    assert settings[3:4] == b"\x04"  # the server's SETTINGS frame


# Bodies, trailers, flow control.


def test_bodyAndTrailersBothWays() -> None:
    client = Client()
    streamId = client.request(b"/upload", b"POST", end=False, headers=[(b"te", b"trailers")])
    [request] = client.requests
    assert request.request.body.length is not None
    client.h2.send_data(streamId, b"abc")
    client.h2.send_data(streamId, b"def")
    client.h2.send_headers(streamId, [(b"x-sum", b"42"), (b"host", b"forged")], end_stream=True)
    client.pump()
    assert request.body == b"abcdef"
    assert request.received is not None
    assert list(request.trailers.getAllRawHeaders()) == [(b"X-Sum", [b"42"])]
    assert request.requestHeaders.getRawHeaders(b"te") == [b"trailers"]
    request.channel.sendHead(200, b"", Headers({b"content-type": [b"text/plain"]}))
    request.channel.sendData(b"hello")
    request.channel.finish(Headers({b"grpc-status": [b"0"], b"Connection": [b"drop-me"]}))
    client.pump()
    head, body, trailers, ended = client.response(streamId)
    assert (body, trailers, ended) == (b"hello", {b"grpc-status": b"0"}, True)


def test_contentLengthBody() -> None:
    client = Client()
    streamId = client.request(b"/u", b"POST", end=False, headers=[(b"content-length", b"4")])
    [request] = client.requests
    assert request.request.body.length == 4
    client.h2.send_data(streamId, b"abcd", end_stream=True)
    client.pump()
    assert request.body == b"abcd" and request.received is not None


def test_responseFollowsClientWindow() -> None:
    """
    A response body goes out as the client's window allows; its producer
    is paused while more than the high-water mark waits, and resumed as
    the client reads.
    """
    client = Client()
    streamId = client.request()
    [request] = client.requests
    producer = FakeProducer()
    request.channel.sendHead(200, b"", Headers())
    request.channel.setProducer(producer)
    for _ in range(10):
        request.channel.sendData(b"x" * 16384)
    client.pump()
    received = sum(len(e.data) for e in client.of(DataReceived, streamId))
    assert received == 65535  # the client's initial window
    assert producer.calls == ["pause"]
    for _ in range(10):
        client.h2.acknowledge_received_data(16384, streamId)
        client.pump()
    received = sum(len(e.data) for e in client.of(DataReceived, streamId))
    assert received == 10 * 16384
    assert producer.calls == ["pause", "resume"]
    request.channel.setProducer(None)
    request.channel.finish(None)
    client.pump()
    assert client.response(streamId)[3]


def test_requestBodyWindowFollowsUpstream() -> None:
    """
    While the upstream takes no more of a request body, its DATA is not
    acknowledged: the client's window closes, bounding what is held.
    """
    client = Client()
    client.server.recorder.onBodyStarts = lambda request: request.request.body.pauseProducing()
    streamId = client.request(b"/u", b"POST", end=False)
    [request] = client.requests
    body = request.request.body
    sent = 0
    for _ in range(10):
        window = client.h2.local_flow_control_window(streamId)
        if not window:
            break
        client.h2.send_data(streamId, b"y" * min(window, 16384))
        sent += min(window, 16384)
        client.pump()
    assert client.h2.local_flow_control_window(streamId) == 0
    assert body.received == sent <= 2 * 65535
    body.resumeProducing()
    client.pump()
    assert client.h2.local_flow_control_window(streamId) > 0
    assert client.of(WindowUpdated, streamId)


# Malformed requests and limits.

MALFORMED = {
    "upper-case name": [(b"X-Upper", b"1")],
    "connection-specific": [(b"connection", b"keep-alive")],
    "transfer-encoding": [(b"transfer-encoding", b"chunked")],
    "te other than trailers": [(b"te", b"gzip")],
    "leading white space": [(b"x-a", b" v")],
    "trailing white space": [(b"x-a", b"v\t")],
    "NUL in value": [(b"x-a", b"a\x00b")],
    "pseudo after regular": [(b"x-a", b"1"), (b":status", b"200")],
}


@pytest.mark.parametrize("fields", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformedReset(fields: List[Tuple[bytes, bytes]]) -> None:
    """
    A malformed request is reset with C{PROTOCOL_ERROR} and never reaches
    the core; the connection goes on.
    """
    client = Client()
    bad = client.request(headers=fields)
    assert client.resetCode(bad) == ErrorCodes.PROTOCOL_ERROR
    assert client.requests == []
    good = client.request()
    respond(client.requests[0])
    client.pump()
    assert client.response(good)[3]
    assert client.goAway() is None


PSEUDO = {
    "missing :path": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", AUTHORITY)],
    "missing :method": [(b":scheme", b"http"), (b":path", b"/")],
    "unknown pseudo": [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":protocol", b"x")],
    "repeated pseudo": [(b":method", b"GET"), (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],
}


@pytest.mark.parametrize("pseudo", list(PSEUDO.values()), ids=list(PSEUDO))
def test_badPseudoHeaders(pseudo: List[Tuple[bytes, bytes]]) -> None:
    client = Client()
    streamId = client.request(pseudo=pseudo)
    assert client.resetCode(streamId) == ErrorCodes.PROTOCOL_ERROR
    assert client.requests == []


#: DATA frames (data, padding) that disagree with a content-length of 5.
LENGTH_MISMATCHES: Dict[str, List[Tuple[bytes, Optional[int]]]] = {
    "fewer": [(b"abc", None)],
    "more": [(b"abcdefgh", None)],
    "more over two frames": [(b"abc", None), (b"defgh", None)],
    "more, padded": [(b"abcdef", 3)],
}


@pytest.mark.parametrize("sends", list(LENGTH_MISMATCHES.values()), ids=list(LENGTH_MISMATCHES))
def test_contentLengthDisagrees(sends: List[Tuple[bytes, Optional[int]]]) -> None:
    """
    DATA that disagrees with C{content-length} (more, or fewer by the end
    of the stream) makes the request malformed: its stream is reset with
    C{PROTOCOL_ERROR} (RFC 9113 section 8.1.1), its body fails, no byte
    beyond the declared length is delivered, and the connection goes on.
    """
    client = Client()
    streamId = client.request(b"/u", b"POST", end=False, headers=[(b"content-length", b"5")])
    [request] = client.requests
    for i, (data, padding) in enumerate(sends):
        client.h2.send_data(streamId, data, end_stream=i == len(sends) - 1, pad_length=padding)
    client.pump()
    assert client.resetCode(streamId) == ErrorCodes.PROTOCOL_ERROR
    assert request.lost is not None
    assert request.received is None
    assert len(request.body) <= 5
    good = client.request()
    respond(client.requests[1])
    client.pump()
    assert client.response(good)[3]
    assert client.goAway() is None


def test_contentLengthDisagreesInOneRead() -> None:
    """
    The check holds when the HEADERS and the DATA arrive in one read.
    """
    client = Client()
    streamId = client.h2.get_next_available_stream_id()
    client.h2.send_headers(
        streamId,
        [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", AUTHORITY), (b":path", b"/u"), (b"content-length", b"2")],
    )
    client.h2.send_data(streamId, b"abc", end_stream=True)
    client.pump()
    assert client.resetCode(streamId) == ErrorCodes.PROTOCOL_ERROR
    assert client.goAway() is None
    [request] = client.requests
    assert request.received is None and len(request.body) <= 2


def test_contentLengthShortBeforeTrailers() -> None:
    """
    Trailers that end a stream short of its C{content-length} make it
    malformed too.
    """
    client = Client()
    streamId = client.request(b"/u", b"POST", end=False, headers=[(b"content-length", b"5"), (b"te", b"trailers")])
    [request] = client.requests
    client.h2.send_data(streamId, b"abc")
    client.h2.send_headers(streamId, [(b"x-sum", b"1")], end_stream=True)
    client.pump()
    assert client.resetCode(streamId) == ErrorCodes.PROTOCOL_ERROR
    assert request.received is None
    assert client.goAway() is None


def test_contentLengthAgrees() -> None:
    """
    A body that matches its C{content-length}, in padded frames, arrives.
    """
    client = Client()
    streamId = client.request(b"/u", b"POST", end=False, headers=[(b"content-length", b"5")])
    [request] = client.requests
    client.h2.send_data(streamId, b"ab", pad_length=7)
    client.h2.send_data(streamId, b"cde", end_stream=True)
    client.pump()
    assert client.resetCode(streamId) is None
    assert request.body == b"abcde" and request.received is not None


def test_invalidContentLength() -> None:
    client = Client()
    client.request(b"/u", b"POST", end=False, headers=[(b"content-length", b"1x")])
    goAway = client.goAway()
    assert goAway is not None and goAway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert client.requests == []


def test_authorityAndHost() -> None:
    client = Client()
    differs = client.request(headers=[(b"host", b"other.test")])
    head, body, _, _ = client.response(differs)
    assert head[b":status"] == b"400"
    noAuthority = client.request(
        pseudo=[(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/h")],
        headers=[(b"host", b"only-host.test")],
    )
    [request] = client.requests
    assert request.request.authority == b"only-host.test"
    respond(request)
    client.pump()
    assert client.response(noAuthority)[3]


def test_cookiesJoined() -> None:
    client = Client()
    client.request(headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
    assert client.requests[0].requestHeaders.getRawHeaders(b"cookie") == [b"a=1; b=2"]


def test_headerListOverLimit() -> None:
    """
    A header list over the listener's limit is answered 431 with its cause;
    a far larger one (an HPACK bomb) closes the connection.
    """
    client = Client(EdgeLimits(maxHeadSize=4096))
    streamId = client.request(headers=[(b"x-big", b"v" * 5000)])
    head, body, _, ended = client.response(streamId)
    assert head[b":status"] == b"431"
    assert head[b"x-easymesh-error"] == b"request_too_large"
    assert client.requests == []
    client.request(headers=[(b"x-big-%d" % i, b"v" * 4000) for i in range(4)])
    goAway = client.goAway()
    assert goAway is not None and goAway.error_code != ErrorCodes.NO_ERROR
    assert client.server.transport.disconnecting


def test_hpackTableBomb() -> None:
    """
    One large entry in the HPACK table referenced over and over: the
    decoder refuses the list before it is built; the connection closes.
    """
    client = Client(EdgeLimits(maxHeadSize=8192))
    streamId = client.request(headers=[(b"x-bomb", b"b" * 3000)])
    respond(client.requests[0])
    client.pump()
    assert client.response(streamId)[3]
    # The entry is now in both tables; 100 references cost a few bytes each.
    client.request(headers=[(b"x-bomb", b"b" * 3000)] * 100)
    goAway = client.goAway()
    assert goAway is not None and goAway.error_code != ErrorCodes.NO_ERROR
    assert len(client.requests) == 1


def test_bodyOverLimit() -> None:
    client = Client(EdgeLimits(maxBody=10))
    announced = client.request(b"/u", b"POST", end=False, headers=[(b"content-length", b"11")])
    assert client.response(announced)[0][b":status"] == b"413"
    streamed = client.request(b"/u", b"POST", end=False)
    client.h2.send_data(streamed, b"z" * 11)
    client.pump()
    assert client.response(streamed)[0][b":status"] == b"413"
    assert client.requests[-1].lost is not None


def test_concurrentStreamsAdvertised() -> None:
    client = Client(EdgeLimits(maxConcurrentStreams=7))
    assert client.h2.remote_settings.max_concurrent_streams == 7
    assert client.h2.remote_settings.enable_push == 0


# Resets, drains, timeouts.


def test_clientResetEndsExchange() -> None:
    client = Client()
    streamId = client.request()
    [request] = client.requests
    client.h2.reset_stream(streamId, ErrorCodes.CANCEL)
    client.pump()
    assert request.lost is not None
    assert client.edge.idle


def test_abortResetsStreamOnly() -> None:
    client = Client()
    first = client.request()
    second = client.request()
    one, two = client.requests
    one.channel.sendHead(200, b"", Headers())
    one.channel.abort()
    client.pump()
    assert client.resetCode(first) == ErrorCodes.INTERNAL_ERROR
    respond(two)
    client.pump()
    assert client.response(second)[3]
    assert not client.server.transport.disconnecting


def test_drainSendsGoAwayAndLetsStreamsFinish() -> None:
    """
    A drain sends the graceful GOAWAY: first one that refuses nothing, with
    a PING; once the client answers it, one naming the last stream taken.
    Open streams finish; a stream opened after the final GOAWAY is
    refused; the connection closes once none is left.
    """
    client = Client()
    streamId = client.request()
    [request] = client.requests
    client.server.transport.clear()
    client.server.sweeper.closeIdle()
    first = frames(client.server.transport.value())
    assert [(type(f), getattr(f, "last_stream_id", None)) for f in first] == [
        (GoAwayFrame, 2**31 - 1),
        (PingFrame, None),
    ]
    assert first[0].error_code == ErrorCodes.NO_ERROR
    client.server.transport.clear()
    # The client answers the PING: it has seen the first GOAWAY.
    ack = PingFrame(0, flags=["ACK"])
    ack.opaque_data = first[1].opaque_data
    client.server.feed(ack.serialize())
    [final] = frames(client.server.transport.value())
    assert isinstance(final, GoAwayFrame)
    assert (final.last_stream_id, final.error_code) == (streamId, ErrorCodes.NO_ERROR)
    client.server.transport.clear()
    assert not client.server.transport.disconnecting
    # A stream the client opens anyway (the client library refuses to).
    late = HeadersFrame(streamId + 2, flags=["END_HEADERS", "END_STREAM"])
    late.data = client.h2.encoder.encode(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", AUTHORITY), (b":path", b"/late")]
    )
    client.server.feed(late.serialize())
    [refused] = frames(client.server.transport.value())
    assert (refused.type, refused.stream_id) == (0x03, streamId + 2)  # RST_STREAM
    assert len(client.requests) == 1
    client.server.transport.clear()
    # The open stream is answered whole, then the connection closes.
    respond(request, body=b"done")
    raw = client.server.transport.value()
    assert b"done" in raw
    assert client.server.transport.disconnecting


def test_idleTimeout() -> None:
    client = Client(EdgeLimits(idleTimeout=5))
    client.server.tick(4)
    assert not client.server.transport.disconnecting
    client.server.tick(2)
    sent = frames(client.server.transport.value())
    assert [type(f) for f in sent] == [GoAwayFrame, PingFrame, GoAwayFrame]
    assert sent[-1].last_stream_id == 0
    assert client.server.transport.disconnecting


# Floods.


def test_rapidReset() -> None:
    """
    Streams opened and reset before any answer, faster than the limit
    allows: GOAWAY C{ENHANCE_YOUR_CALM} and the connection closes
    (CVE-2023-44487); every exchange started is ended.
    """
    client = Client()
    for _ in range(MAX_EARLY_RESETS + 5):
        if client.server.transport.disconnecting:
            break
        streamId = client.request()
        client.h2.reset_stream(streamId, ErrorCodes.CANCEL)
        client.pump()
    goAway = client.goAway()
    assert goAway is not None and goAway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert client.server.transport.disconnecting
    assert all(r.lost is not None for r in client.requests)


def test_resetsAfterAnswersAreFine() -> None:
    client = Client()
    for _ in range(MAX_EARLY_RESETS + 5):
        streamId = client.request()
        client.requests[-1].channel.sendHead(200, b"", Headers())
        client.pump()
        client.h2.reset_stream(streamId, ErrorCodes.CANCEL)
        client.pump()
    assert client.goAway() is None


def test_pingFlood() -> None:
    client = Client()
    for i in range(5):
        if client.goAway() is not None:
            break
        client.h2.ping(b"%08d" % i)
        client.pump()
    goAway = client.goAway()
    assert goAway is not None and goAway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_keepalivePingsAreFine() -> None:
    client = Client()
    for i in range(10):
        client.h2.ping(b"%08d" % i)
        client.pump()
        client.server.tick(3)
    assert client.goAway() is None


def test_pingsWhileReadingAreFine() -> None:
    """
    A client that pings each time it reads DATA (grpc's clients measure
    bandwidth so) is not flooding, however fast: DATA sent in between
    forgives its pings, as grpc's servers do.
    """
    client = Client()
    streamId = client.request()
    client.requests[0].channel.sendHead(200, b"", Headers())
    client.pump()
    for i in range(20):
        client.requests[0].channel.sendData(b"message %d" % i)
        client.pump()
        client.h2.ping(b"%08d" % i)
        client.pump()
    assert client.goAway() is None
    assert client.resetCode(streamId) is None


def test_settingsFlood() -> None:
    client = Client()
    for i in range(30):
        if client.goAway() is not None:
            break
        client.h2.update_settings({4: 65535 + i})
        client.pump()
    goAway = client.goAway()
    assert goAway is not None and goAway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_emptyDataFlood() -> None:
    client = Client()
    streamId = client.request(b"/u", b"POST", end=False)
    for _ in range(150):
        client.h2.send_data(streamId, b"")
    client.pump()
    goAway = client.goAway()
    assert goAway is not None and goAway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_continuationFlood() -> None:
    """
    A HEADERS frame followed by CONTINUATION frames without end
    (CVE-2024-27316): refused once the backlog is full, the connection
    closed, nothing decoded or kept.
    """
    client = Client()
    headers = HeadersFrame(1)
    headers.data = client.h2.encoder.encode(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", AUTHORITY), (b":path", b"/")]
    )
    client.server.feed(headers.serialize())
    for _ in range(100):
        if client.server.transport.disconnecting:
            break
        continuation = ContinuationFrame(1)
        continuation.data = b"\x40\x01a\x01b"  # one more literal field
        client.server.feed(continuation.serialize())
    assert client.server.transport.disconnecting
    assert client.requests == []


def test_otherConnectionsUnaffected() -> None:
    noisy = Client()
    quiet = Client()
    for i in range(5):
        if noisy.goAway() is not None:
            break
        noisy.h2.ping(b"%08d" % i)
        noisy.pump()
    assert noisy.server.transport.disconnecting
    streamId = quiet.request()
    respond(quiet.requests[0])
    quiet.pump()
    assert quiet.response(streamId)[3]


def test_highWaterIsBounded() -> None:
    assert HIGH_WATER <= 1024 * 1024


def test_announcedTrailersMakeBodyChunked() -> None:
    """
    A request that announces trailers is forwarded with a body of unknown
    length (chunked on HTTP/1.1), the one framing that carries them, even
    if it gave a content-length; that length is still checked.
    """
    client = Client()
    streamId = client.request(
        b"/u", b"POST", end=False, headers=[(b"content-length", b"3"), (b"trailer", b"x-sum")]
    )
    [request] = client.requests
    from twisted.web.iweb import UNKNOWN_LENGTH

    assert request.request.body.length is UNKNOWN_LENGTH
    client.h2.send_data(streamId, b"abc")
    client.h2.send_headers(streamId, [(b"x-sum", b"1")], end_stream=True)
    client.pump()
    assert request.body == b"abc"
    assert request.trailers.getRawHeaders(b"x-sum") == [b"1"]


def test_concurrentStreamsFromSettings() -> None:
    from easymesh.config.files import parseConfigText
    from easymesh.config.settings import buildConfig

    config = buildConfig(parseConfigText("max-concurrent-streams: 7\n", "x.yaml"), "x.yaml")
    assert config.edgeLimits.maxConcurrentStreams == 7
    client = Client(config.edgeLimits)
    assert client.h2.remote_settings.max_concurrent_streams == 7
