"""
Tests for L{easymesh.upstream.h2client} and L{easymesh.upstream.http2}:
HTTP/2 to upstreams, against the h2 library's server side over a
L{StringTransport}, with a L{Clock}.
"""

from __future__ import annotations

from typing import Any, List, Optional

import pytest

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from h2.events import (
    DataReceived,
    Event,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from easymesh.config.addresses import UpstreamURL
from easymesh.config.model import PoolSettings
from easymesh.errors import UpstreamReset
from easymesh.h2wire import PREFACE, FrameFilter
from easymesh.message import Request
from easymesh.requestbody import RequestBodyStream
from easymesh.upstream import upstreamFor
from easymesh.upstream.h2client import H2ClientConnection, StreamRefused
from easymesh.upstream.http2 import H2Upstream


class Sink:
    def __init__(self, pause: bool = False) -> None:
        self.data: List[bytes] = []
        self.ended: Any = "no"
        self.failed: Optional[Failure] = None
        self.producer: Any = None
        self.pause = pause

    def bodyStarted(self, producer: Any) -> None:
        self.producer = producer
        if self.pause:
            producer.pauseProducing()

    def bodyData(self, data: bytes) -> None:
        self.data.append(data)

    def bodyEnded(self, trailers: Any) -> None:
        self.ended = trailers

    def bodyFailed(self, reason: Failure) -> None:
        self.failed = reason


class Peer:
    """
    The upstream: the h2 library's server side, wired to one client
    connection.
    """

    def __init__(self, connection: H2ClientConnection, maxStreams: int = 100, takeGoAways: bool = False) -> None:
        self.client = connection
        #: With C{takeGoAways}, the GOAWAY frames the client sent are taken
        #: out (as the edge takes them) and kept here: the h2 library's
        #: server could not answer open streams after one.
        self.goAways: List[Any] = []
        self._filter = FrameFilter(skip=len(PREFACE)) if takeGoAways else None
        self.transport = StringTransport()
        connection.makeConnection(self.transport)
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: maxStreams}
        )
        self.h2.initiate_connection()
        self.events: List[Event] = []
        self.pump()

    def pump(self) -> None:
        for _ in range(50):
            out = self.transport.value()
            self.transport.clear()
            if out and self._filter is not None:
                segments, goAways = self._filter.feed(out)
                out = b"".join(s for s in segments if isinstance(s, bytes))
                self.goAways += goAways
            if out:
                self.events += self.h2.receive_data(out)
            back = self.h2.data_to_send()
            if back:
                self.client.dataReceived(back)
            if not out and not back:
                return
        raise AssertionError("still talking after 50 rounds")

    def of(self, kind: type) -> List[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def answer(self, streamId: int, body: bytes = b"ok", trailers: Any = None, status: bytes = b"200") -> None:
        self.h2.send_headers(streamId, [(b":status", status), (b"x-answer", b"yes")])
        self.h2.send_data(streamId, body, end_stream=trailers is None)
        if trailers is not None:
            self.h2.send_headers(streamId, trailers, end_stream=True)
        self.pump()


def connection(clock: Optional[Clock] = None, keepalive: Optional[float] = None) -> H2ClientConnection:
    return H2ClientConnection(b"upstream.test:81", b"http", clock or Clock(), keepalive)


def request(body: Any = None, headers: Optional[Headers] = None) -> Request:
    headers = headers or Headers({b"host": [b"svc.example"], b"x-a": [b"1", b"2"], b"te": [b"trailers"]})
    return Request(b"POST" if body is not None else b"GET", b"/p?q=1", headers, body)


def results(d: Deferred) -> List[Any]:
    found: List[Any] = []
    d.addBoth(found.append)
    return found


def test_requestAndResponse() -> None:
    """
    A request goes out as HEADERS with its pseudo-header fields (C{Host}
    as C{:authority}), without connection-specific fields; the response's
    head, body and trailers come back through a sink.
    """
    client = connection()
    peer = Peer(client)
    got = results(client.request(request(headers=Headers({
        b"host": [b"svc.example"], b"x-a": [b"1", b"2"], b"te": [b"trailers"], b"connection": [b"close"],
    }))))  # fmt: skip
    peer.pump()
    [received] = peer.of(RequestReceived)
    fields = received.headers
    assert fields[:4] == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"svc.example"),
        (b":path", b"/p?q=1"),
    ]
    assert (b"x-a", b"1") in fields and (b"x-a", b"2") in fields
    assert (b"te", b"trailers") in fields
    assert not [n for n, _ in fields if n in (b"host", b"connection")]
    peer.answer(received.stream_id, b"hello", trailers=[(b"grpc-status", b"0")])
    [response] = got
    assert response.code == 200
    assert response.headers.getRawHeaders(b"x-answer") == [b"yes"]
    sink = Sink()
    response.deliverBody(sink)
    assert b"".join(sink.data) == b"hello"
    assert sink.ended.getRawHeaders(b"grpc-status") == [b"0"]
    assert client.active == 0


def test_requestBodyAndTrailers() -> None:
    client = connection()
    peer = Peer(client)
    body = RequestBodyStream(None, lambda: None, lambda: None)
    client.request(request(body), body)
    body.write(b"abc")
    body.write(b"def")
    body.finish(Headers({b"x-sum": [b"9"]}))
    peer.pump()
    [received] = peer.of(RequestReceived)
    assert b"".join(e.data for e in peer.of(DataReceived)) == b"abcdef"
    [trailers] = peer.of(TrailersReceived)
    assert trailers.headers == [(b"x-sum", b"9")]
    assert peer.of(StreamEnded)


def test_requestBodyWithinPeerWindow() -> None:
    """
    A request body goes out within the peer's windows; the rest waits, and
    the body's source is paused, until the peer reads.
    """
    client = connection()
    peer = Peer(client)
    paused: List[str] = []
    body = RequestBodyStream(UNKNOWN_LENGTH, lambda: paused.append("pause"), lambda: paused.append("resume"))
    client.request(request(body), body)
    for _ in range(10):
        body.write(b"z" * 16384)
    peer.pump()
    received = sum(len(e.data) for e in peer.of(DataReceived))
    assert received == 65535
    assert "pause" in paused
    [streamEvent] = peer.of(RequestReceived)
    for _ in range(20):
        acked = sum(e.flow_controlled_length for e in peer.of(DataReceived))
        if acked >= 10 * 16384:
            break
        peer.h2.acknowledge_received_data(16384, streamEvent.stream_id)
        peer.pump()
    assert sum(len(e.data) for e in peer.of(DataReceived)) == 10 * 16384
    assert paused[-1] == "resume"


def test_responseBodyBackPressure() -> None:
    """
    While the reader is paused, DATA is not acknowledged: the peer's window
    closes; it reopens when the reader resumes.
    """
    client = connection()
    peer = Peer(client)
    got = results(client.request(request()))
    peer.pump()
    [received] = peer.of(RequestReceived)
    streamId = received.stream_id
    peer.h2.send_headers(streamId, [(b":status", b"200")])
    peer.pump()
    [response] = got
    sink = Sink(pause=True)
    response.deliverBody(sink)
    window = peer.h2.local_flow_control_window(streamId)
    for offset in range(0, window, 16384):
        peer.h2.send_data(streamId, b"d" * min(16384, window - offset))
    peer.pump()
    assert peer.h2.local_flow_control_window(streamId) == 0
    sink.producer.resumeProducing()
    peer.pump()
    assert peer.h2.local_flow_control_window(streamId) == window
    assert len(b"".join(sink.data)) == window


@pytest.mark.parametrize("end", ["reader-abandons", "upstream-resets"])
def test_unreadBodyOfEndedStreamFreesConnectionWindow(end: str) -> None:
    """
    DATA held unacknowledged for a paused reader is given back to the
    connection's window when its stream ends early (the reader abandons
    it, or the upstream resets it), so that a stream that ends so with a
    full window unread does not starve the connection's other streams.
    """
    client = connection()
    peer = Peer(client)
    connectionWindow = peer.h2.outbound_flow_control_window
    for _ in range(2):
        got = results(client.request(request()))
        peer.pump()
        streamId = peer.of(RequestReceived)[-1].stream_id
        peer.h2.send_headers(streamId, [(b":status", b"200")])
        peer.pump()
        [response] = got
        sink = Sink(pause=True)
        response.deliverBody(sink)
        window = peer.h2.local_flow_control_window(streamId)
        assert window == connectionWindow
        for offset in range(0, window, 16384):
            peer.h2.send_data(streamId, b"d" * min(16384, window - offset))
        peer.pump()
        if end == "reader-abandons":
            sink.producer.stopProducing()
        else:
            peer.h2.reset_stream(streamId, ErrorCodes.INTERNAL_ERROR)
        peer.pump()
    assert peer.h2.outbound_flow_control_window == connectionWindow


def test_goAwayRefusesUnprocessedStreams() -> None:
    client = connection()
    peer = Peer(client)
    first = results(client.request(request()))
    second = results(client.request(request()))
    peer.pump()
    firstId, secondId = [e.stream_id for e in peer.of(RequestReceived)]
    peer.h2.close_connection(last_stream_id=firstId)
    peer.pump()
    [refused] = second
    assert isinstance(refused, Failure) and refused.check(StreamRefused)
    assert first == []
    assert client.capacity == 0
    assert not peer.transport.disconnecting


def test_closeLetsOpenStreamsFinish() -> None:
    """
    Closing a connection with a stream open (a retired cluster's, on a
    reload) sends GOAWAY and opens no more streams; the open stream's
    answer still arrives whole, and the connection closes after it.
    """
    client = connection()
    peer = Peer(client, takeGoAways=True)
    got = results(client.request(request()))
    peer.pump()
    [received] = peer.of(RequestReceived)
    client.close()
    peer.pump()
    assert [(g.lastStreamId, g.errorCode) for g in peer.goAways] == [(0, ErrorCodes.NO_ERROR)]
    assert client.capacity == 0
    assert not peer.transport.disconnecting
    peer.answer(received.stream_id, b"after the GOAWAY")
    [response] = got
    assert response.code == 200
    sink = Sink()
    response.deliverBody(sink)
    assert b"".join(sink.data) == b"after the GOAWAY"
    assert sink.ended is None and sink.failed is None
    assert peer.transport.disconnecting


def test_refusedStream() -> None:
    client = connection()
    peer = Peer(client)
    got = results(client.request(request()))
    peer.pump()
    [received] = peer.of(RequestReceived)
    peer.h2.reset_stream(received.stream_id, ErrorCodes.REFUSED_STREAM)
    peer.pump()
    [failure] = got
    assert failure.check(StreamRefused)


def test_resetMidBody() -> None:
    client = connection()
    peer = Peer(client)
    got = results(client.request(request()))
    peer.pump()
    [received] = peer.of(RequestReceived)
    peer.h2.send_headers(received.stream_id, [(b":status", b"200")])
    peer.h2.send_data(received.stream_id, b"part")
    peer.pump()
    sink = Sink()
    got[0].deliverBody(sink)
    peer.h2.reset_stream(received.stream_id, ErrorCodes.INTERNAL_ERROR)
    peer.pump()
    assert sink.failed is not None and sink.failed.check(UpstreamReset)
    assert not sink.failed.check(StreamRefused)


def test_cancelResetsStream() -> None:
    client = connection()
    peer = Peer(client)
    d = client.request(request())
    got = results(d)
    peer.pump()
    d.cancel()
    peer.pump()
    [reset] = peer.of(StreamReset)
    assert reset.error_code == ErrorCodes.CANCEL
    assert len(got) == 1 and isinstance(got[0], Failure)


def test_capacityFollowsPeerSettings() -> None:
    client = connection()
    freed: List[Any] = []
    client.onCapacity = freed.append
    peer = Peer(client, maxStreams=1)
    assert client.capacity == 1
    client.request(request())
    assert client.capacity == 0
    peer.pump()
    [received] = peer.of(RequestReceived)
    peer.answer(received.stream_id)
    assert client.capacity == 1
    assert client in freed


def test_keepalivePingFindsDeadPeer() -> None:
    """
    After the keepalive interval without a frame from the peer, a PING;
    an answered one keeps the connection, an unanswered one closes it.
    """
    clock = Clock()
    client = connection(clock, keepalive=30.0)
    peer = Peer(client)
    clock.advance(30)
    assert peer.transport.value()[3:4] == b"\x06"  # a PING
    peer.pump()  # the peer answers it
    clock.advance(30)
    assert peer.transport.value()[3:4] == b"\x06"
    assert not peer.transport.disconnecting
    clock.advance(30)  # that one is never answered
    assert peer.transport.disconnecting


# The pool.


class Endpoint:
    """
    Connects each new connection to a fresh L{Peer}.
    """

    def __init__(self, maxStreams: int = 100) -> None:
        self.peers: List[Peer] = []
        self.maxStreams = maxStreams

    def connect(self, factory: Any) -> Deferred:
        protocol = factory.buildProtocol(None)
        self.peers.append(Peer(protocol, self.maxStreams))
        return succeed(protocol)


def upstream(endpoint: Endpoint, size: int = 8) -> H2Upstream:
    settings = PoolSettings(size=size, protocol="http2")
    made = upstreamFor(UpstreamURL("http", "127.0.0.1", 8083), settings, Clock())
    assert isinstance(made, H2Upstream)
    made._endpoint = endpoint
    return made


def test_schemesAndProtocolPickHTTP2() -> None:
    for scheme in ("h2c", "grpc"):
        made = upstreamFor(UpstreamURL(scheme, "127.0.0.1", 50051), PoolSettings(), Clock())
        assert isinstance(made, H2Upstream)
    assert not isinstance(upstreamFor(UpstreamURL("http", "127.0.0.1", 80), PoolSettings(), Clock()), H2Upstream)


def test_poolSharesOneConnection() -> None:
    endpoint = Endpoint()
    pool = upstream(endpoint)
    for _ in range(5):
        pool.request(request())
    assert len(endpoint.peers) == 1
    endpoint.peers[0].pump()
    assert len(endpoint.peers[0].of(RequestReceived)) == 5


def test_poolOpensAnotherWhenFull() -> None:
    endpoint = Endpoint(maxStreams=2)
    pool = upstream(endpoint)
    got = [results(pool.request(request())) for _ in range(5)]
    assert len(endpoint.peers) == 3
    for peer in endpoint.peers:
        peer.pump()
        for event in peer.of(RequestReceived):
            peer.answer(event.stream_id)
    assert all(len(g) == 1 and g[0].code == 200 for g in got)


def test_poolRetriesRefusedStreamElsewhere() -> None:
    endpoint = Endpoint()
    pool = upstream(endpoint)
    first = endpoint
    got = results(pool.request(request()))
    peer = first.peers[0]
    peer.pump()
    [received] = peer.of(RequestReceived)
    peer.h2.close_connection(last_stream_id=0)
    peer.pump()
    assert len(endpoint.peers) == 2
    second = endpoint.peers[1]
    second.pump()
    [again] = second.of(RequestReceived)
    second.answer(again.stream_id)
    assert len(got) == 1 and got[0].code == 200
    assert received.stream_id == again.stream_id == 1


def test_requestRecordsProtocol() -> None:
    endpoint = Endpoint()
    pool = upstream(endpoint)
    sent = request()
    pool.request(sent)
    assert sent.upstreamProtocol == "HTTP/2"


def test_answerToCancelledStreamIgnored() -> None:
    """
    An answer that crosses the client's cancellation on the wire is
    dropped; the connection goes on.
    """
    client = connection()
    peer = Peer(client)
    d = client.request(request())
    results(d)
    peer.pump()
    [received] = peer.of(RequestReceived)
    d.cancel()  # the RST_STREAM is written, not yet read by the peer
    # Another request: the client library forgets the reset stream.
    got = results(client.request(request()))
    peer.h2.send_headers(received.stream_id, [(b":status", b"200")])
    peer.h2.send_data(received.stream_id, b"late", end_stream=True)
    client.dataReceived(peer.h2.data_to_send())
    assert not peer.transport.disconnecting
    peer.pump()
    second = peer.of(RequestReceived)[-1]
    peer.answer(second.stream_id)
    assert len(got) == 1 and got[0].code == 200


def test_atMostHundredStreamsBeforePeerSettings() -> None:
    """
    Until the peer's SETTINGS arrive, at most 100 streams are opened (a
    peer allowing fewer would otherwise close the connection); then its
    own limit counts.
    """
    client = connection()
    client.makeConnection(StringTransport())
    assert client.capacity == 100
    peer = Peer(connection(), maxStreams=250)
    assert peer.client.capacity == 250


class ProbeEndpoint:
    """
    Connects the ALPN probe to a transport that negotiated C{protocol}.
    """

    def __init__(self, protocol: Optional[bytes]) -> None:
        self.protocol = protocol
        self.probes: List[Any] = []

    def connect(self, factory: Any) -> Deferred:
        probe = factory.buildProtocol(None)
        transport = StringTransport()
        transport.negotiatedProtocol = self.protocol  # type: ignore[attr-defined]
        probe.makeConnection(transport)
        self.probes.append((probe, transport))
        return succeed(probe)


@pytest.mark.parametrize("negotiated, kind", [(b"h2", "H2Upstream"), (b"http/1.1", "HTTPUpstream"), (None, "HTTPUpstream")])
def test_autoChoosesByALPN(negotiated: Optional[bytes], kind: str) -> None:
    """
    C{protocol: auto} over TLS: the first connection offers C{h2} and
    C{http/1.1}; what the upstream picks is what its requests are sent
    with from then on; requests that arrived meanwhile wait for it.
    """
    from twisted.internet.testing import MemoryReactorClock

    from easymesh.upstream.http2 import AutoUpstream

    reactor = MemoryReactorClock()
    made = upstreamFor(UpstreamURL("https", "127.0.0.1", 8443), PoolSettings(protocol="auto"), reactor)
    assert isinstance(made, AutoUpstream)
    endpoint = ProbeEndpoint(negotiated)
    made._endpoint = endpoint
    first = results(made.request(request()))
    second = results(made.request(request()))
    [(probe, transport)] = endpoint.probes
    assert made.chosen is None
    probe.handshakeCompleted()
    assert type(made.chosen).__name__ == kind
    assert transport.disconnecting
    assert first == [] and second == []  # sent on, waiting for the upstream
    assert len(reactor.tcpClients) >= 1


def test_autoProbeFailureTriedAgain() -> None:
    from twisted.internet.error import ConnectionRefusedError
    from twisted.internet.testing import MemoryReactorClock

    from easymesh.upstream.http2 import AutoUpstream

    made = upstreamFor(UpstreamURL("https", "127.0.0.1", 8443), PoolSettings(protocol="auto"), MemoryReactorClock())
    assert isinstance(made, AutoUpstream)
    endpoint = ProbeEndpoint(b"h2")
    made._endpoint = endpoint
    got = results(made.request(request()))
    [(probe, _)] = endpoint.probes
    probe.connectionLost(Failure(ConnectionRefusedError()))
    assert len(got) == 1 and got[0].check(ConnectionRefusedError)
    assert made.chosen is None
    made.request(request())
    assert len(endpoint.probes) == 2


def test_autoWaitingCountsAsPending() -> None:
    """
    Requests waiting for the first connection of a C{protocol: auto}
    endpoint count against the circuit breakers' pending limit.
    """
    from twisted.internet.testing import MemoryReactorClock

    from easymesh.cluster.breakers import Breakers
    from easymesh.config.mesh import CircuitBreakers
    from easymesh.errors import Overflow
    from easymesh.upstream.http2 import AutoUpstream

    breakers = Breakers(CircuitBreakers(maxPendingRequests=2), "c", None)
    made = upstreamFor(
        UpstreamURL("https", "127.0.0.1", 8443), PoolSettings(protocol="auto"), MemoryReactorClock(), breakers
    )
    assert isinstance(made, AutoUpstream)
    made._endpoint = ProbeEndpoint(b"h2")
    first, second = results(made.request(request())), results(made.request(request()))
    [third] = results(made.request(request()))
    assert third.check(Overflow)
    assert first == [] and second == []


@pytest.mark.parametrize("body", [b"abc", b"abcdefgh"], ids=["fewer", "more"])
def test_responseContentLengthDisagrees(body: bytes) -> None:
    """
    A response whose DATA disagrees with its C{content-length} is
    malformed: its stream alone is reset and its body fails, while another stream on the same connection completes.
    """
    client = connection()
    peer = Peer(client)
    bad = results(client.request(request()))
    good = results(client.request(request()))
    peer.pump()
    first, second = (e.stream_id for e in peer.of(RequestReceived))
    peer.h2.send_headers(first, [(b":status", b"200"), (b"content-length", b"5")])
    peer.h2.send_data(first, body, end_stream=True)
    peer.pump()
    [response] = bad
    sink = Sink()
    response.deliverBody(sink)
    assert sink.failed is not None and "content-length" in sink.failed.getErrorMessage()
    assert len(b"".join(sink.data)) <= 5
    peer.answer(second, b"fine")
    [answer] = good
    sink = Sink()
    answer.deliverBody(sink)
    assert b"".join(sink.data) == b"fine" and sink.ended is None
    assert not client.closed
