"""
Tests for L{easymesh.h1server}: the strict HTTP/1.1 server channel.

Most tests drive an L{HTTP1Channel} over a L{StringTransport} with a fake
request factory that records what the channel hands it and lets the test
answer whenever it wants; a few run through a real L{ProxySite} with its
L{StreamingRequest}.  Time is a L{Clock} behind a L{DeadlineSweeper}.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource

from easymesh.errors import CAUSE_TABLE, PHRASES as TABLE_PHRASES
from easymesh.h1server import BadMessage, DeadlineSweeper, EdgeLimits, HTTP1Channel
from easymesh.headers import TOKEN
from easymesh.listener import ProxySite
from easymesh.message import Request
from easymesh.requestbody import RequestBodyStream

PHRASES = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
}

HOST = b"Host: example.test\r\n"


# A fake request and connection.


class FakeRequest:
    """
    The exchange the channel starts for a request, recording what the
    channel hands it (the head, the body as it streams, the end, a lost
    connection); the test answers through L{respond}.
    """

    startedWriting = 0

    def __init__(self, request: Request, responder: HTTP1Channel, target: bytes, recorder: "Recorder") -> None:
        self.channel = responder
        self.recorder = recorder
        self.request = request
        self.events: List[Any] = []
        self.chunks: List[bytes] = []
        body = request.body
        if isinstance(body, RequestBodyStream):
            self.length: Any = None if body.length is UNKNOWN_LENGTH else body.length
        else:
            self.length = 0
        self.events.append(("length", self.length))
        self.received: Optional[Tuple[bytes, bytes, bytes]] = None
        self.lost: Optional[Failure] = None
        self.finished = False
        self.requestHeaders = request.headers
        self.method = request.method
        self.uri = target
        self.clientproto = b"HTTP/" + request.version
        self.path = target.split(b"?", 1)[0]

    # What the channel calls.

    def start(self) -> None:
        body = self.request.body
        if isinstance(body, RequestBodyStream):
            self.events.append("bodyStarts")
            if self.recorder.onBodyStarts is not None:
                self.recorder.onBodyStarts(self)
            body.startProducing(self).addCallbacks(self._received, lambda f: None)
        else:
            self._received(None)

    def write(self, data: bytes) -> None:
        assert self.received is None, "body after its end"
        self.chunks.append(data)
        self.events.append(("chunk", data))

    def _received(self, _: Any) -> None:
        assert self.received is None, "received twice"
        self.received = (self.method, self.uri, self.clientproto)
        self.events.append("received")
        if self.recorder.autoRespond:
            self.respond(body=b"auto " + self.uri)

    def done(self, reason: Optional[Failure] = None) -> None:
        self.channelAtDone = (getattr(self.channel, "closing", None), getattr(self.channel, "idle", None))
        if reason is not None:
            self.lost = reason
            self.events.append("lost")

    # What the test calls.

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def trailers(self) -> Optional[Headers]:
        return self.request.trailers

    def respond(
        self,
        code: int = 200,
        body: bytes = b"ok",
        headers: Optional[List[Tuple[bytes, bytes]]] = None,
        finish: bool = True,
    ) -> None:
        self.startedWriting = 1
        h = Headers()
        h.setRawHeaders(b"content-length", [b"%d" % len(body)])
        for name, value in headers or ():
            h.addRawHeader(name, value)
        self.channel.sendHead(code, b"OK", h)
        if body:
            self.channel.sendData(body)
        if finish:
            self.finish()

    def finish(self) -> None:
        self.finished = True
        self.channel.finish(None)


class Recorder:
    """
    The site: every request the channel started an exchange for, in order.
    """

    def __init__(self, autoRespond: bool = False) -> None:
        self.requests: List[FakeRequest] = []
        self.autoRespond = autoRespond
        self.onBodyStarts: Any = None

    def handle(self, request: Request, responder: HTTP1Channel, target: bytes) -> FakeRequest:
        exchange = FakeRequest(request, responder, target, self)
        self.requests.append(exchange)
        return exchange


class Conn:
    """
    A channel over a L{StringTransport}, with a L{Clock} for its deadlines.
    """

    def __init__(self, limits: EdgeLimits = EdgeLimits(), autoRespond: bool = False) -> None:
        self.clock = Clock()
        self.sweeper = DeadlineSweeper(self.clock)
        self.recorder = Recorder(autoRespond)
        self.channel = HTTP1Channel()
        self.channel.limits = limits
        self.channel.sweeper = self.sweeper
        self.channel.site = self.recorder
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    @property
    def requests(self) -> List[FakeRequest]:
        return self.recorder.requests

    def feed(self, data: bytes, step: Optional[int] = None) -> None:
        if step is None:
            self.channel.dataReceived(data)
        else:
            for i in range(0, len(data), step):
                self.channel.dataReceived(data[i : i + step])

    def tick(self, seconds: int) -> None:
        for _ in range(seconds):
            self.clock.advance(1)

    def output(self) -> bytes:
        return self.transport.value()


def get(target: bytes = b"/", version: bytes = b"HTTP/1.1", headers: bytes = HOST) -> bytes:
    return b"GET " + target + b" " + version + b"\r\n" + headers + b"\r\n"


def post(body: bytes, headers: bytes = b"", target: bytes = b"/upload") -> bytes:
    return (
        b"POST " + target + b" HTTP/1.1\r\n" + HOST + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def chunkedPost(body: bytes, target: bytes = b"/upload", headers: bytes = b"") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\n" + HOST + headers + b"Transfer-Encoding: chunked\r\n\r\n" + body


def split(response: bytes) -> Tuple[bytes, List[bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    return lines[0], lines[1:], body


def assertRefused(conn: Conn, code: int) -> None:
    """
    The connection got exactly one error response with C{code}, is closing,
    and no request was handed out.
    """
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 %d %s" % (code, PHRASES[code])
    assert b"Connection: close" in headers
    assert b"Content-Length: %d" % len(body) in headers
    assert body.endswith(b"\n")
    assert conn.transport.disconnecting
    assert conn.requests == []


# A valid request head.


def test_requestHeadHandedOut() -> None:
    conn = Conn()
    conn.feed(
        b"GET /a%2Fb/c?x=1&y=%20 HTTP/1.1\r\n"
        b"Host: example.test:8080\r\n"
        b"X-Multi: one\r\n"
        b"Accept: */*\r\n"
        b"x-multi: two\r\n"
        b"X-MULTI:three \t\r\n"
        b"X-Empty:\r\n"
        b"X-Text: \x80caf\xe9 with\tinner  space\r\n"
        b"\r\n"
    )
    [request] = conn.requests
    assert request.method == b"GET"
    assert request.uri == b"/a%2Fb/c?x=1&y=%20"
    assert request.path == b"/a%2Fb/c"
    assert request.clientproto == b"HTTP/1.1"
    headers = request.requestHeaders
    assert isinstance(headers, Headers)
    assert headers.getRawHeaders(b"x-multi") == [b"one", b"two", b"three"]
    assert headers.getRawHeaders(b"X-Multi") == [b"one", b"two", b"three"]
    assert headers.getRawHeaders(b"HOST") == [b"example.test:8080"]
    assert headers.getRawHeaders(b"x-empty") == [b""]
    assert headers.getRawHeaders(b"x-text") == [b"\x80caf\xe9 with\tinner  space"]
    assert headers.getRawHeaders(b"accept") == [b"*/*"]
    assert request.events == [("length", 0), "received"]
    assert request.received == (b"GET", b"/a%2Fb/c?x=1&y=%20", b"HTTP/1.1")
    assert conn.output() == b""
    assert not conn.transport.disconnecting


def test_asteriskFormRefused() -> None:
    """
    C{OPTIONS *} asks about the proxy itself, which answers no such
    question: 400 at the edge, nothing forwarded.
    """
    conn = Conn()
    conn.feed(b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n")
    assertRefused(conn, 400)


@pytest.mark.parametrize(
    "target, path",
    [
        (b"http://upstream.test:81/p/a%2Fth?q=1", b"http://upstream.test:81/p/a%2Fth"),
        (b"/", b"/"),
        (b"/?", b"/"),
        (b"/%00%FF", b"/%00%FF"),
    ],
)
def test_targetByteExact(target: bytes, path: bytes) -> None:
    conn = Conn()
    conn.feed(b"OPTIONS " + target + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    [request] = conn.requests
    assert request.method == b"OPTIONS"
    assert request.uri == target
    assert request.path == path
    assert request.received == (b"OPTIONS", target, b"HTTP/1.1")


@pytest.mark.parametrize("method", [b"GET", b"PURGE", b"M-SEARCH", b"x!#$%&'*+.^_`|~1"])
def test_methodTokens(method: bytes) -> None:
    conn = Conn()
    conn.feed(method + b" / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert conn.requests[0].method == method


@pytest.mark.parametrize("empty", [b"\r\n", b"\r\n\r\n"])
def test_emptyLinesBeforeRequestTolerated(empty: bytes) -> None:
    conn = Conn()
    conn.feed(empty + get(b"/first"))
    [request] = conn.requests
    assert request.uri == b"/first"
    request.respond()
    conn.feed(empty + get(b"/second"))
    assert [r.uri for r in conn.requests] == [b"/first", b"/second"]


def test_manyEmptyLinesRefused() -> None:
    conn = Conn()
    conn.feed(b"\r\n" * 5 + get())
    assertRefused(conn, 400)


def test_emptyLinesDrippedSeparatelyAreBounded() -> None:
    conn = Conn(EdgeLimits(headTimeout=10, idleTimeout=60))
    for _ in range(40):
        conn.feed(b"\r\n")
        conn.tick(5)
        if conn.transport.disconnecting:
            break
    assert conn.transport.disconnecting


def test_bareCRBeforeRequestLineRefused() -> None:
    conn = Conn()
    conn.feed(b"\r" + get())
    assertRefused(conn, 400)


def test_http10WithoutHostAccepted() -> None:
    conn = Conn()
    conn.feed(b"GET /old HTTP/1.0\r\nUser-Agent: x\r\n\r\n")
    [request] = conn.requests
    assert request.clientproto == b"HTTP/1.0"
    assert request.requestHeaders.getRawHeaders(b"host") is None
    assert request.received == (b"GET", b"/old", b"HTTP/1.0")


@pytest.mark.parametrize(
    "host",
    [b"example.test", b"example.test:8080", b"[::1]:8080", b"10.0.0.1", b"", b"a-b_c~d", b"x:"],
)
def test_validHostAccepted(host: bytes) -> None:
    conn = Conn()
    conn.feed(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert conn.requests[0].requestHeaders.getRawHeaders(b"host") == [host]


# Rejections.


def test_errorResponseExactBytes() -> None:
    conn = Conn()
    conn.feed(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")
    assert conn.output() == (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Connection: close\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"x-easymesh-error: bad_request\r\n"
        b"Content-Length: 13\r\n\r\n"
        b"missing Host\n"
    )
    assert conn.transport.disconnecting
    assert conn.requests == []



@pytest.mark.parametrize(
    "head, cause",
    [
        (b"GET / HTTP/1.1\r\n" + HOST + b"Host: b\r\n\r\n", b"bad_request"),
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n", b"request_too_large"),
        (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", b"unsupported_transfer_coding"),
        (b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", b"unsupported_http_version"),
    ],
)
def test_refusalCause(head: bytes, cause: bytes) -> None:
    """
    Each refusal names the cause the cause table gives its status.
    """
    conn = Conn()
    conn.feed(head)
    _, headers, _ = split(conn.output())
    assert b"x-easymesh-error: " + cause in headers


def test_versionRefusalExactBytes() -> None:
    conn = Conn()
    conn.feed(b"GET / HTTP/1.2\r\n" + HOST + b"\r\n")
    assert conn.output() == (
        b"HTTP/1.1 505 HTTP Version Not Supported\r\n"
        b"Connection: close\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"x-easymesh-error: unsupported_http_version\r\n"
        b"Content-Length: 27\r\n\r\n"
        b"HTTP version not supported\n"
    )


REJECTED = [
    # Framing.
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: \r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: abc\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: +5\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: -5\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 0x5\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5 5\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5.0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: \r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: \xd9\xa5\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: " + b"9" * 20 + b"\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5, 6\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5,\r\n\r\n", 400),
    # Header syntax.
    (b"GET / HTTP/1.1\r\nHost : example.test\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A\t: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: 1\r\n continued\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: 1\r\n\tcontinued\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b" " + HOST + b"\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: ab\r\r\n\r\n", 400),
    (b"GET / HTTP/1.1\rHost: example.test\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: example.test\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: example.test\nX-A: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: example.test\r\n\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-\x00A: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x01b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x1bb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x7fb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x0cb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X A: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X(A): 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X@A: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"X\xe9: 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b": 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + HOST + b"NoColon\r\n\r\n", 400),
    # Host.
    (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a.test\r\nhost: b.test\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    # A Host that is not host[:port] (one check for Host and authority).
    (b"GET / HTTP/1.1\r\nHost: admin.example.org,\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: admin.example.org;\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: u@admin.example.org\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: %61dmin.example.org\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: [x]\r\n\r\n", 400),
    # Absolute-form targets: no userinfo, a valid authority.
    (b"GET http://u@admin.example.org/x HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET http://u:p@admin.example.org/x HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET HTTP://u@admin.example.org HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET http://admin.example.org,/x HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET http://admin.example.org;/x HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET http:///x HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET http://[x/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    # A fragment, and bytes outside the URI grammar, in the target.
    (b"GET /public#/../admin HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET /a?b#c HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET /\x80 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET /a\\b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET /a\"b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET /a<b> HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET /a{b}|c^d`e HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a.test/path\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a.test\xff\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n", 400),
    # Request line and version.
    (b"GET / HTTP/1.2\r\n" + HOST + b"\r\n", 505),
    (b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", 505),
    (b"GET / HTTP/0.9\r\n" + HOST + b"\r\n", 505),
    (b"GET / HTTP/1\r\n" + HOST + b"\r\n", 400),
    (b"GET / http/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET / HTTPS/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET / HTTP/1.1x\r\n" + HOST + b"\r\n", 400),
    (b"GET / garbage\r\n" + HOST + b"\r\n", 400),
    (b"GET /\r\n" + HOST + b"\r\n", 400),
    (b"GET  / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET / HTTP/1.1 \r\n" + HOST + b"\r\n", 400),
    (b"GET /a b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET /a\tb HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"G(T / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b" / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
]


@pytest.mark.parametrize("head, code", REJECTED)
def test_rejected(head: bytes, code: int) -> None:
    conn = Conn()
    # A valid request after the bad one is never read.
    conn.feed(head + get(b"/after"))
    assertRefused(conn, code)
    before = conn.output()
    conn.feed(get(b"/later"))
    assert conn.output() == before
    assert conn.requests == []


@pytest.mark.parametrize("head, code", REJECTED)
def test_rejectedByteByByte(head: bytes, code: int) -> None:
    conn = Conn()
    conn.feed(head + get(b"/after"), step=1)
    assertRefused(conn, code)


def test_chunkedTwiceRefused() -> None:
    conn = Conn()
    conn.feed(b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n")
    # Both 400 (chunked applied twice, RFC 9112 6.1) and 501 (a coding stack
    # it cannot decode) are correct; what matters is that it is refused.
    status = conn.output().split(b"\r\n", 1)[0]
    assert status in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 501 Not Implemented")
    assert conn.transport.disconnecting
    assert conn.requests == []


@pytest.mark.parametrize(
    "lengths, expected",
    [
        (b"Content-Length: 5\r\nContent-Length: 5\r\n", 5),
        (b"Content-Length: 5, 5\r\n", 5),
        (b"content-length: 005\r\n", 5),
        (b"Content-Length:  5 \t\r\n", 5),
        (b"Content-Length: " + b"0" * 18 + b"\r\n", 0),
    ],
)
def test_equalContentLengthsAccepted(lengths: bytes, expected: int) -> None:
    conn = Conn()
    conn.feed(b"POST / HTTP/1.1\r\n" + HOST + lengths + b"\r\n" + b"hello" + get(b"/next"))
    [request] = conn.requests
    assert request.length == expected
    if expected:
        assert request.body == b"hello"
        assert request.received is not None
    request.respond()
    if expected:
        assert [r.uri for r in conn.requests] == [b"/", b"/next"]


def test_transferEncodingCaseInsensitive() -> None:
    conn = Conn()
    conn.feed(b"POST / HTTP/1.1\r\n" + HOST + b"transfer-ENCODING: Chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    [request] = conn.requests
    assert request.length is None
    assert request.body == b"abc"
    assert request.received == (b"POST", b"/", b"HTTP/1.1")


def test_requestLineTooLong() -> None:
    limits = EdgeLimits(maxRequestLine=100)
    target = b"/" + b"a" * 100
    conn = Conn(limits)
    conn.feed(get(target))
    assertRefused(conn, 414)
    assert b"x-easymesh-error: request_too_large" in conn.output()


def test_requestLineTooLongBeforeItsEnd() -> None:
    """
    A request line longer than the limit is refused before its end arrives.
    """
    conn = Conn(EdgeLimits(maxRequestLine=100))
    conn.feed(b"GET /" + b"a" * 200)
    assertRefused(conn, 414)


def test_requestLineAtLimitAccepted() -> None:
    limits = EdgeLimits(maxRequestLine=100)
    line = b"GET /" + b"a" * (100 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == 100
    conn = Conn(limits)
    conn.feed(line + b"\r\n" + HOST + b"\r\n")
    assert len(conn.requests) == 1


def test_requestLineAtLimitAcceptedInPieces() -> None:
    limits = EdgeLimits(maxRequestLine=100)
    line = b"GET /" + b"a" * (100 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    conn = Conn(limits)
    conn.feed(line + b"\r\n")
    conn.feed(HOST + b"\r\n")
    assert conn.output() == b""
    assert len(conn.requests) == 1


def test_headTooLarge() -> None:
    conn = Conn(EdgeLimits(maxHeadSize=200))
    conn.feed(b"GET / HTTP/1.1\r\n" + HOST + b"X-Pad: " + b"p" * 200 + b"\r\n\r\n")
    assertRefused(conn, 431)
    assert b"x-easymesh-error: request_too_large" in conn.output()


def test_headTooLargeBeforeItsEnd() -> None:
    conn = Conn(EdgeLimits(maxHeadSize=200))
    conn.feed(b"GET / HTTP/1.1\r\n" + HOST)
    for _ in range(30):
        conn.feed(b"X-Pad: " + b"p" * 20 + b"\r\n")
        if conn.transport.disconnecting:
            break
    assertRefused(conn, 431)


def _headOfSize(size: int) -> bytes:
    start = b"GET / HTTP/1.1\r\n" + HOST + b"X-Pad: "
    head = start + b"p" * (size - len(start))
    assert len(head) == size
    return head + b"\r\n\r\n"


def test_headAtLimitAccepted() -> None:
    conn = Conn(EdgeLimits(maxHeadSize=200))
    conn.feed(_headOfSize(200))
    assert len(conn.requests) == 1
    conn = Conn(EdgeLimits(maxHeadSize=200))
    conn.feed(_headOfSize(201))
    assertRefused(conn, 431)


def test_headAtLimitAcceptedInPieces() -> None:
    conn = Conn(EdgeLimits(maxHeadSize=200))
    conn.feed(_headOfSize(200), step=1)
    assert conn.output() == b""
    assert len(conn.requests) == 1


def test_tooManyHeaderFields() -> None:
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(4))
    conn = Conn(EdgeLimits(maxHeaders=5))
    conn.feed(b"GET / HTTP/1.1\r\n" + HOST + fields + b"\r\n")
    assert len(conn.requests) == 1  # five fields: at the limit
    conn = Conn(EdgeLimits(maxHeaders=5))
    conn.feed(b"GET / HTTP/1.1\r\n" + HOST + fields + b"X-F9: v\r\n\r\n")
    assertRefused(conn, 431)


def test_declaredBodyTooLarge() -> None:
    conn = Conn(EdgeLimits(maxBody=100))
    conn.feed(post(b"x" * 101))
    assertRefused(conn, 413)
    assert b"x-easymesh-error: request_too_large" in conn.output()
    conn = Conn(EdgeLimits(maxBody=100))
    conn.feed(post(b"x" * 100))
    [request] = conn.requests
    assert request.body == b"x" * 100


def test_chunkedBodyOverMaxBodyRefused() -> None:
    conn = Conn(EdgeLimits(maxBody=10))
    conn.feed(chunkedPost(b"6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n"))
    assert conn.output().startswith(b"HTTP/1.1 413 ")
    assert conn.transport.disconnecting
    assert conn.requests[0].received is None


# Chunked bodies.


def test_chunkedBody() -> None:
    conn = Conn()
    conn.feed(
        chunkedPost(
            b"5;name=value\r\nhello\r\n"
            b"A;a=b;c=\"q; x\\\"y\"\r\n0123456789\r\n"
            b"1b\r\n" + b"z" * 27 + b"\r\n"
            b"0;last\r\n"
            b"X-Trailer: dropped\r\n"
            b"Other: also dropped\r\n"
            b"\r\n"
        )
        + get(b"/next")
    )
    [request] = conn.requests
    assert request.length is None
    assert request.body == b"hello0123456789" + b"z" * 27
    assert request.received == (b"POST", b"/upload", b"HTTP/1.1")
    assert request.events[:2] == [("length", None), "bodyStarts"]
    assert request.events[-1] == "received"
    assert request.requestHeaders.getRawHeaders(b"x-trailer") is None
    assert request.requestHeaders.getRawHeaders(b"other") is None
    request.respond()
    assert [r.uri for r in conn.requests] == [b"/upload", b"/next"]


def test_chunkedBodyByteByByte() -> None:
    body = b"3;x=y\r\nabc\r\n10\r\n" + b"0123456789abcdef" + b"\r\n0\r\nT: 1\r\n\r\n"
    conn = Conn()
    conn.feed(chunkedPost(body) + get(b"/next"), step=1)
    [request] = conn.requests
    assert request.body == b"abc0123456789abcdef"
    assert request.received is not None
    request.respond()
    assert [r.uri for r in conn.requests] == [b"/upload", b"/next"]


@st.composite
def chunkedBodies(draw: Any) -> Tuple[bytes, bytes]:
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=6))
    wire = []
    for chunk in chunks:
        size = b"%x" % len(chunk)
        if draw(st.booleans()):
            size = size.upper()
        size = b"0" * draw(st.integers(0, 3)) + size
        extension = draw(st.sampled_from([b"", b";a", b";a=b", b';a="x;y";c', b";k=v;l"]))
        wire.append(size + extension + b"\r\n" + chunk + b"\r\n")
    wire.append(b"0" + draw(st.sampled_from([b"", b";end"])) + b"\r\n")
    trailers = draw(st.lists(st.sampled_from([b"X-T: 1", b"Expires: never", b"A:"]), max_size=3))
    for trailer in trailers:
        wire.append(trailer + b"\r\n")
    wire.append(b"\r\n")
    return b"".join(chunks), b"".join(wire)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=chunkedBodies(), data=st.data())
def test_chunkedBodySplitAnywhere(body: Tuple[bytes, bytes], data: Any) -> None:
    expected, wire = body
    message = chunkedPost(wire) + get(b"/next")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(message) - 1), max_size=len(message))))
    conn = Conn()
    start = 0
    for cut in cuts + [len(message)]:
        conn.feed(message[start:cut])
        start = cut
    [request] = conn.requests
    assert request.body == expected
    assert request.received == (b"POST", b"/upload", b"HTTP/1.1")
    assert request.requestHeaders.getRawHeaders(b"x-t") is None
    assert conn.output() == b""
    request.respond()
    assert [r.uri for r in conn.requests] == [b"/upload", b"/next"]


BAD_CHUNKED = [
    b"g\r\nabc\r\n0\r\n\r\n",  # not hex
    b"\r\nabc\r\n0\r\n\r\n",  # no size
    b" 3\r\nabc\r\n0\r\n\r\n",  # leading space
    b"-3\r\nabc\r\n0\r\n\r\n",
    b"+3\r\nabc\r\n0\r\n\r\n",
    b"0x3\r\nabc\r\n0\r\n\r\n",
    b"1" * 16 + b"\r\n",  # overflowing size
    b"3\nabc\r\n0\r\n\r\n",  # bare LF after size
    b"3\r\r\nabc\r\n0\r\n\r\n",  # bare CR in size line
    b"3;a\rb\r\nabc\r\n0\r\n\r\n",  # bare CR in extension
    b"3;a\x00b\r\nabc\r\n0\r\n\r\n",  # control character in extension
    b"3\r\nabc\n0\r\n\r\n",  # bare LF after data
    b"3\r\nabc\r0\r\n\r\n",  # bare CR after data
    b"3\r\nabcd\r\n0\r\n\r\n",  # data longer than declared
    b"3\r\nabc\r\n0\r\n\n",  # bare LF ending the body
    b"3\r\nabc\r\n0\r\n continued: x\r\n\r\n",  # folded trailer
    b"3\r\nabc\r\n0\r\nno-colon\r\n\r\n",
    b"3;" + b"e" * 5000 + b"\r\nabc\r\n0\r\n\r\n",  # overlong chunk line
    b"3;\r\nabc\r\n0\r\n\r\n",  # a bare ;
    b"3;a;\r\nabc\r\n0\r\n\r\n",  # a bare ; after an extension
    b"3;=b\r\nabc\r\n0\r\n\r\n",  # no name
    b"3;a=\r\nabc\r\n0\r\n\r\n",  # no value
    b'3;a="b\r\nabc\r\n0\r\n\r\n',  # an unclosed quoted value
    b'3;a="b\\"\r\nabc\r\n0\r\n\r\n',  # closed only by a quoted pair
    b"3;a=b c\r\nabc\r\n0\r\n\r\n",  # white space in a value
    b"3 \r\nabc\r\n0\r\n\r\n",  # white space after the size
    b"3\t\r\nabc\r\n0\r\n\r\n",
    b"3 ;a=b\r\nabc\r\n0\r\n\r\n",  # white space before an extension
    b"3\t;a=b\r\nabc\r\n0\r\n\r\n",
    b"3; a=b\r\nabc\r\n0\r\n\r\n",  # white space inside one
    b"3;a =b\r\nabc\r\n0\r\n\r\n",
    b"3;a@b\r\nabc\r\n0\r\n\r\n",  # not a token
]


@pytest.mark.parametrize("body", BAD_CHUNKED)
@pytest.mark.parametrize("step", [None, 1])
def test_badChunkedBody(body: bytes, step: Optional[int]) -> None:
    conn = Conn()
    conn.feed(chunkedPost(body) + get(b"/smuggled"), step=step)
    [request] = conn.requests  # the head was fine; nothing after the error is read
    assert request.length is None
    assert request.received is None
    assert request.lost is not None and request.lost.check(BadMessage)
    assert request.lost.value.code == 400
    status, headers, _ = split(conn.output())
    assert status == b"HTTP/1.1 400 Bad Request"
    assert b"Connection: close" in headers
    assert conn.transport.disconnecting
    assert b"smuggled" not in request.body
    conn.feed(get(b"/later"))
    assert len(conn.requests) == 1


def test_overlongChunkLineBeforeItsEnd() -> None:
    conn = Conn(EdgeLimits(maxChunkLine=64))
    conn.feed(chunkedPost(b"3;" + b"e" * 100))
    assert conn.output().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert conn.transport.disconnecting


def test_chunkLineAtLimitAccepted() -> None:
    line = b"3;" + b"e" * 62
    assert len(line) == 64
    conn = Conn(EdgeLimits(maxChunkLine=64))
    conn.feed(chunkedPost(line + b"\r\nabc\r\n0\r\n\r\n"))
    assert conn.requests[0].body == b"abc"
    assert conn.output() == b""


def test_chunkLineAtLimitAcceptedInPieces() -> None:
    line = b"3;" + b"e" * 62
    conn = Conn(EdgeLimits(maxChunkLine=64))
    conn.feed(chunkedPost(line + b"\r"))
    conn.feed(b"\nabc\r\n0\r\n\r\n")
    assert conn.output() == b""
    assert conn.requests[0].body == b"abc"


def test_tooManyTrailers() -> None:
    conn = Conn(EdgeLimits(maxHeaders=3))
    conn.feed(chunkedPost(b"0\r\n" + b"T: 1\r\n" * 4 + b"\r\n"))
    [request] = conn.requests
    assert request.received is None
    assert conn.output().startswith(b"HTTP/1.1 431 ")
    assert conn.transport.disconnecting


def test_identityBodyThenPipelined() -> None:
    conn = Conn()
    conn.feed(post(b"0123456789") + get(b"/next"), step=3)
    [request] = conn.requests
    assert request.body == b"0123456789"
    assert request.events[:2] == [("length", 10), "bodyStarts"]
    assert request.received == (b"POST", b"/upload", b"HTTP/1.1")
    request.respond()
    assert [r.uri for r in conn.requests] == [b"/upload", b"/next"]


# Pipelining.


def test_pipelinedInOrder() -> None:
    conn = Conn()
    conn.feed(get(b"/one") + get(b"/two") + get(b"/three"))
    assert [r.uri for r in conn.requests] == [b"/one"]
    first = conn.requests[0]
    first.respond(body=b"first")
    assert [r.uri for r in conn.requests] == [b"/one", b"/two"]
    conn.requests[1].respond(body=b"second")
    conn.requests[2].respond(body=b"third")
    assert conn.output() == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthird"
    )
    assert not conn.transport.disconnecting


def test_slowFirstResponseNotOvertaken() -> None:
    conn = Conn()
    conn.feed(get(b"/slow") + get(b"/fast"))
    first = conn.requests[0]
    first.respond(body=b"part", finish=False)
    conn.feed(get(b"/third"))
    conn.tick(100)
    assert [r.uri for r in conn.requests] == [b"/slow"]
    conn.channel.sendData(b"more")
    assert conn.output().endswith(b"partmore")
    first.finish()
    assert [r.uri for r in conn.requests] == [b"/slow", b"/fast"]
    conn.requests[1].respond(body=b"fast")
    assert conn.output().endswith(b"partmoreHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast")


def test_synchronousAnswersDrainPipeline() -> None:
    conn = Conn(autoRespond=True)
    conn.feed(b"".join(get(b"/%d" % i) for i in range(20)))
    assert [r.uri for r in conn.requests] == [b"/%d" % i for i in range(20)]
    assert conn.output().count(b"HTTP/1.1 200 OK") == 20
    assert not conn.transport.disconnecting


@pytest.mark.parametrize("connection", [b"close", b"Close", b"keep-alive, close", b"upgrade,  CLOSE"])
def test_connectionCloseStopsReading(connection: bytes) -> None:
    conn = Conn()
    conn.feed(get(b"/one", headers=HOST + b"Connection: " + connection + b"\r\n") + get(b"/two"))
    [request] = conn.requests
    request.respond()
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 200 OK"
    assert headers == [b"Content-Length: 2", b"Connection: close"]
    assert conn.transport.disconnecting
    conn.feed(get(b"/three"))
    assert len(conn.requests) == 1


def test_pipelinedBurstPausesReading() -> None:
    conn = Conn(EdgeLimits(maxHeadSize=1024))
    conn.feed(get(b"/first"))
    burst = b"".join(get(b"/%d" % i, headers=HOST + b"X-Pad: " + b"p" * 150 + b"\r\n") for i in range(12))
    assert len(burst) > 2 * 1024
    conn.feed(burst[:500])
    assert conn.transport.producerState == "producing"
    conn.feed(burst[500:], step=500)
    assert conn.transport.producerState == "paused"
    assert [r.uri for r in conn.requests] == [b"/first"]
    conn.requests[0].respond()
    assert conn.transport.producerState == "producing"
    assert [r.uri for r in conn.requests] == [b"/first", b"/0"]
    for i in range(12):
        conn.requests[-1].respond()
    assert [r.uri for r in conn.requests] == [b"/first"] + [b"/%d" % i for i in range(12)]
    assert conn.output().count(b"HTTP/1.1 200 OK") == 13


# Expect: 100-continue.


def test_expectContinue() -> None:
    conn = Conn()
    conn.feed(b"PUT /x HTTP/1.1\r\n" + HOST + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    [request] = conn.requests
    assert conn.output() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert request.events == [("length", 5), "bodyStarts"]
    conn.feed(b"hello")
    assert request.body == b"hello"
    assert request.received is not None
    request.respond()
    assert conn.output().count(b"100 Continue") == 1


def test_expectContinueCaseInsensitive() -> None:
    conn = Conn()
    conn.feed(chunkedPost(b"", headers=b"expect: 100-Continue\r\n"))
    assert conn.output() == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_expectContinueNotForHTTP10() -> None:
    conn = Conn()
    conn.feed(b"PUT /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert conn.output() == b""
    conn.feed(b"hello")
    assert conn.requests[0].body == b"hello"


def test_expectContinueNotWithoutBody() -> None:
    conn = Conn()
    conn.feed(get(headers=HOST + b"Expect: 100-continue\r\n"))
    assert len(conn.requests) == 1
    assert conn.output() == b""


# HTTP/1.0.


def test_http10ResponseThenClose() -> None:
    conn = Conn()
    conn.feed(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + b"GET /b HTTP/1.0\r\n\r\n")
    [request] = conn.requests
    assert conn.channel.persistent is False
    request.respond(body=b"old")
    assert conn.output().startswith(b"HTTP/1.0 200 OK\r\n")
    assert conn.output().endswith(b"\r\n\r\nold")
    assert conn.transport.disconnecting
    assert len(conn.requests) == 1


# Early responses.


def test_earlyResponseDiscardsBody() -> None:
    conn = Conn()
    conn.feed(b"POST /up HTTP/1.1\r\n" + HOST + b"Content-Length: 20\r\n\r\n0123")
    [request] = conn.requests
    assert request.body == b"0123"
    conn.channel.discardBody()
    request.respond(code=413, body=b"no")
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 413 OK"
    assert b"Connection: close" in headers
    assert body == b"no"
    assert conn.transport.disconnecting
    # The rest of the body, looking like a request, is neither delivered nor parsed.
    conn.feed(b"4567" + get(b"/smuggled") + b"89")
    assert request.body == b"0123"
    assert request.received is None
    assert len(conn.requests) == 1


def test_earlyResponseWithoutDiscardStillCloses() -> None:
    conn = Conn()
    conn.feed(chunkedPost(b"3\r\nabc\r\n"))
    [request] = conn.requests
    request.respond()
    assert conn.transport.disconnecting
    conn.feed(b"0\r\n\r\n" + get(b"/smuggled"))
    assert len(conn.requests) == 1
    assert request.received is None


def test_earlyResponseFromBodyStarts() -> None:
    """
    A request answered at once when its body starts (as a resource may do
    from within C{bodyStarts}) leaves the buffered body unread.
    """
    conn = Conn()

    def answer(request: FakeRequest) -> None:
        request.channel.discardBody()
        request.respond(code=403, body=b"")

    conn.recorder.onBodyStarts = answer
    conn.feed(post(b"x" * 10 + get(b"/inside")) + get(b"/after"))
    [request] = conn.requests
    assert request.chunks == []
    assert request.received is None
    assert conn.output().startswith(b"HTTP/1.1 403 OK\r\n")
    assert conn.transport.disconnecting


# Timeouts.


def test_headTimeoutFromFirstByte() -> None:
    conn = Conn(EdgeLimits(headTimeout=10, idleTimeout=60))
    conn.tick(30)
    assert not conn.transport.disconnecting
    conn.feed(b"GET / HT")
    conn.tick(5)
    conn.feed(b"TP/1.1\r\n")
    conn.tick(4)
    conn.feed(b"Host: x\r\n")
    assert not conn.transport.disconnecting
    conn.tick(1)
    assertRefused(conn, 408)
    assert b"x-easymesh-error: request_timeout" in conn.output()


def test_headTimeoutOfPipelinedRemainder() -> None:
    conn = Conn(EdgeLimits(headTimeout=10, idleTimeout=60))
    conn.feed(get(b"/one") + b"GET /two HT")
    conn.tick(50)  # waiting for the response: no timeout
    assert not conn.transport.disconnecting
    conn.requests[0].respond()
    conn.tick(9)
    assert not conn.transport.disconnecting
    conn.tick(1)
    assert conn.output().endswith(b"request head not received in time\n")
    assert b"HTTP/1.1 408 Request Timeout\r\n" in conn.output()
    assert conn.transport.disconnecting


def test_bodyStallBeforeResponse() -> None:
    conn = Conn(EdgeLimits(bodyTimeout=5))
    conn.feed(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\n")
    [request] = conn.requests
    for _ in range(5):
        conn.tick(4)
        conn.feed(b"x")
    assert request.body == b"xxxxx"
    conn.tick(4)
    assert not conn.transport.disconnecting
    conn.tick(1)
    status, headers, body = split(conn.output())
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert body == b"request body stalled\n"
    assert conn.transport.disconnecting
    assert not conn.transport.disconnected  # a clean close, not an abort
    assert request.lost is not None and request.lost.value.code == 408
    assert request.received is None


def test_bodyStallAfterResponseStarted() -> None:
    conn = Conn(EdgeLimits(bodyTimeout=5))
    conn.feed(chunkedPost(b"3\r\nabc\r\n"))
    [request] = conn.requests
    request.respond(body=b"partial", finish=False)
    sent = conn.output()
    conn.tick(5)
    assert conn.transport.disconnected  # aborted
    assert conn.output() == sent  # no 408 inside the response
    assert request.lost is not None and request.lost.check(BadMessage)


def test_idleKeepAliveClosed() -> None:
    conn = Conn(EdgeLimits(idleTimeout=60))
    conn.feed(get())
    conn.tick(100)
    assert not conn.transport.disconnecting
    conn.requests[0].respond()
    sent = conn.output()
    conn.tick(59)
    assert not conn.transport.disconnecting
    conn.tick(1)
    assert conn.transport.disconnecting
    assert conn.output() == sent


def test_idleNewConnectionClosed() -> None:
    conn = Conn(EdgeLimits(idleTimeout=60))
    conn.tick(60)
    assert conn.transport.disconnecting
    assert conn.output() == b""


def test_waitingForResponseNotTimedOut() -> None:
    conn = Conn(EdgeLimits(headTimeout=1, bodyTimeout=1, idleTimeout=1))
    conn.feed(post(b"body"))
    [request] = conn.requests
    assert request.received is not None
    conn.tick(300)
    assert not conn.transport.disconnecting
    assert request.lost is None
    assert conn.channel.deadline is None
    request.respond()
    assert conn.output().startswith(b"HTTP/1.1 200 OK")


def test_sweeperStopsWithoutChannels() -> None:
    conn = Conn()
    assert len(conn.clock.getDelayedCalls()) == 1
    conn.channel.connectionLost(Failure(ConnectionDone()))
    conn.tick(1)
    assert conn.clock.getDelayedCalls() == []
    other = Conn()
    other.sweeper.stop()
    assert other.clock.getDelayedCalls() == []


def test_sweeperSurvivesFailingChannel() -> None:
    class Broken:
        deadline = 0.0

        def _timedOut(self) -> None:
            raise RuntimeError("boom")

    conn = Conn(EdgeLimits(idleTimeout=2))
    conn.sweeper.add(Broken())  # type: ignore[arg-type]
    conn.tick(2)
    assert conn.transport.disconnecting


# Writing.


def test_writeHeadersPersistentHasNoConnectionField() -> None:
    conn = Conn()
    conn.feed(get())
    conn.requests[0].respond(headers=[(b"X-Out", b"1"), (b"x-out", b"2")])
    assert conn.output() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Out: 1\r\nX-Out: 2\r\n\r\nok"


def test_writeHeadersKeepsOwnConnectionField() -> None:
    conn = Conn()
    conn.feed(get(headers=HOST + b"Connection: close\r\n"))
    conn.requests[0].respond(headers=[(b"Connection", b"close")])
    _, headers, _ = split(conn.output())
    assert headers.count(b"Connection: close") == 1


def test_writeSequence() -> None:
    conn = Conn()
    conn.feed(get())
    request = conn.requests[0]
    request.respond(body=b"", finish=False, headers=[(b"content-length", b"3")])
    for piece in (b"a", b"b", b"c"):
        conn.channel.sendData(piece)
    request.finish()
    assert conn.output().endswith(b"\r\n\r\nabc")


def test_noWritesAfterClose() -> None:
    conn = Conn()
    conn.feed(get())
    request = conn.requests[0]
    conn.channel.loseConnection()
    request.respond()
    conn.channel.sendData(b"x")
    assert conn.output() == b""


# Pausing.


def test_pauseReadingTwoReasons() -> None:
    conn = Conn()
    channel, transport = conn.channel, conn.transport
    channel.pauseReading("body")
    assert transport.producerState == "paused"
    channel.pauseReading("pipeline")
    channel.pauseReading("body")
    channel.resumeReading("body")
    assert transport.producerState == "paused"
    channel.resumeReading("other")
    assert transport.producerState == "paused"
    channel.resumeReading("pipeline")
    assert transport.producerState == "producing"
    channel.resumeReading("pipeline")
    assert transport.producerState == "producing"


def test_pipelinePauseAndBodyPauseCombine() -> None:
    """
    Reading stays paused while either reason holds; the end of a request
    releases both (its body can no longer need holding back).
    """
    conn = Conn(EdgeLimits(maxHeadSize=100))
    conn.feed(get(b"/one"))
    conn.channel.pauseReading("body")
    conn.feed(get(b"/two") + get(b"/three") + get(b"/four"))
    assert conn.channel._pausedFor == {"body", "pipeline"}
    conn.channel.resumeReading("pipeline")
    assert conn.transport.producerState == "paused"
    conn.channel.pauseReading("pipeline")
    conn.requests[0].respond()
    assert [r.uri for r in conn.requests] == [b"/one", b"/two"]
    assert conn.channel._pausedFor == set()
    assert conn.transport.producerState == "producing"


def test_noResumeAfterClose() -> None:
    conn = Conn()
    conn.channel.pauseReading("body")
    conn.channel.loseConnection()
    conn.channel.resumeReading("body")
    assert conn.transport.producerState == "paused"


def test_responseProducerFollowsTransport() -> None:
    calls: List[str] = []

    class Producer:
        def pauseProducing(self) -> None:
            calls.append("pause")

        def resumeProducing(self) -> None:
            calls.append("resume")

        def stopProducing(self) -> None:
            calls.append("stop")

    conn = Conn()
    assert conn.transport.producer is conn.channel
    assert conn.transport.streaming
    conn.channel.pauseProducing()  # nothing registered: nothing to do
    conn.channel.setProducer(Producer())
    conn.channel.pauseProducing()
    conn.channel.resumeProducing()
    conn.channel.stopProducing()
    conn.channel.setProducer(None)
    conn.channel.pauseProducing()
    assert calls == ["pause", "resume", "stop"]


# Connection loss.


def test_connectionLostMidBody() -> None:
    conn = Conn()
    conn.feed(post(b"0123456789")[:-5])
    [request] = conn.requests
    reason = Failure(ConnectionDone())
    conn.channel.connectionLost(reason)
    assert request.lost is reason
    assert request.received is None
    assert conn.channel.deadline is None
    assert conn.channel not in conn.sweeper._channels
    conn.channel.dataReceived(b"56789")
    assert request.body == b"01234"


def test_connectionLostWhileWaiting() -> None:
    conn = Conn()
    conn.feed(get())
    [request] = conn.requests
    reason = Failure(ConnectionDone())
    conn.channel.connectionLost(reason)
    assert request.lost is reason
    assert request.events == [("length", 0), "received", "lost"]


def test_connectionLostAfterResponse() -> None:
    conn = Conn()
    conn.feed(get())
    [request] = conn.requests
    request.respond()
    conn.channel.connectionLost(Failure(ConnectionDone()))
    assert request.lost is None


def test_addresses() -> None:
    conn = Conn()
    assert conn.channel.getPeer() == conn.transport.getPeer()
    assert conn.channel.getHost() == conn.transport.getHost()
    assert not conn.channel.isSecure()


# Properties.

FRAGMENTS = [
    b"GET",
    b"POST",
    b"X!",
    b" ",
    b"/",
    b"/p?q",
    b"http://a/b",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/1.2",
    b"\r\n",
    b"\r\n\r\n",
    b"\r",
    b"\n",
    b"Host: a",
    b"Host:",
    b"Content-Length: 3",
    b"Content-Length: 0",
    b"Content-Length: 1",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip",
    b"Connection: close",
    b"Expect: 100-continue",
    b"3\r\nabc\r\n",
    b"0\r\n\r\n",
    b":",
    b";x",
    b"\x00",
    b"\t",
    b"abc",
    b"\xff",
]

streams = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=6)),
    max_size=60,
).map(b"".join)

SMALL = EdgeLimits(maxRequestLine=40, maxHeadSize=120, maxHeaders=4, maxBody=8, maxChunkLine=8)


def _checkRequest(request: FakeRequest) -> None:
    assert request.method and TOKEN.issuperset(request.method)
    assert request.uri and not any(c <= 0x20 or c == 0x7F for c in request.uri)
    assert request.clientproto in (b"HTTP/1.0", b"HTTP/1.1")
    headers = request.requestHeaders
    hasLength = headers.hasHeader(b"content-length")
    hasEncoding = headers.hasHeader(b"transfer-encoding")
    assert not (hasLength and hasEncoding)
    if hasEncoding:
        assert request.clientproto == b"HTTP/1.1"
        assert request.length is None
    if request.clientproto == b"HTTP/1.1":
        assert len(headers.getRawHeaders(b"host", [])) == 1
    if isinstance(request.length, int):
        assert len(request.body) <= request.length
        if request.received is not None:
            assert len(request.body) == request.length


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams, data=st.data(), small=st.booleans(), autoRespond=st.booleans())
def test_arbitraryBytes(stream: bytes, data: Any, small: bool, autoRespond: bool) -> None:
    conn = Conn(SMALL if small else EdgeLimits(), autoRespond=autoRespond)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=8)))
    start = 0
    closedAt: Optional[Tuple[int, bytes]] = None
    for cut in cuts + [len(stream)]:
        conn.channel.dataReceived(stream[start:cut])
        start = cut
        if closedAt is not None:
            # Nothing after a close is read.
            assert (len(conn.requests), conn.output()) == closedAt
        elif conn.transport.disconnecting:
            closedAt = (len(conn.requests), conn.output())
    for request in conn.requests:
        _checkRequest(request)
    if not autoRespond:
        assert len(conn.requests) <= 1


@st.composite
def validRequests(draw: Any) -> Tuple[bytes, bytes, bytes, List[Tuple[bytes, bytes]], bytes]:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]))
    target = b"/" + draw(st.binary(max_size=12).map(lambda b: b.hex().encode()))
    fields = draw(
        st.lists(
            st.tuples(
                st.sampled_from([b"X-A", b"x-b", b"Accept", b"USER-AGENT"]),
                st.text(alphabet="abc ;=/", max_size=8).map(lambda s: s.strip().encode()),
            ),
            max_size=4,
        )
    )
    body = draw(st.binary(max_size=20))
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    head = method + b" " + target + b" HTTP/1.1\r\nHost: h\r\n"
    for name, value in fields:
        head += name + b": " + value + b"\r\n"
    if framing == "none":
        body = b""
        wire = head + b"\r\n"
    elif framing == "length":
        wire = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    else:
        encoded = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        wire = head + b"Transfer-Encoding: chunked\r\n\r\n" + encoded
    return wire, method, target, fields, body


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(validRequests(), min_size=1, max_size=3), data=st.data())
def test_validRequestsSplitAnywhere(messages: List[Any], data: Any) -> None:
    stream = b"".join(m[0] for m in messages)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=12)))
    conn = Conn(autoRespond=True)
    start = 0
    for cut in cuts + [len(stream)]:
        conn.feed(stream[start:cut])
        start = cut
    assert len(conn.requests) == len(messages)
    for request, (_, method, target, fields, body) in zip(conn.requests, messages):
        assert (request.method, request.uri, request.clientproto) == (method, target, b"HTTP/1.1")
        assert request.body == body
        assert request.received == (method, target, b"HTTP/1.1")
        for name in {n for n, _ in fields}:
            assert request.requestHeaders.getRawHeaders(name) == [v for n, v in fields if n == name]
    assert conn.output().count(b"HTTP/1.1 200 OK") == len(messages)
    assert not conn.transport.disconnecting


# Through a real ProxySite.


class Held(Resource):
    """
    A site's resource that keeps every request's exchange for the test to
    answer.
    """

    isLeaf = True

    def __init__(self, onStart: Any = None) -> None:
        super().__init__()
        self.recorder = Recorder()
        self.recorder.onBodyStarts = onStart
        self.onStart = onStart

    @property
    def requests(self) -> List[FakeRequest]:
        return self.recorder.requests

    def handle(self, request: Request, responder: Any, target: bytes) -> FakeRequest:
        exchange = self.recorder.handle(request, responder, target)
        if self.onStart is not None and request.body is None:
            original = exchange.start
            exchange.start = lambda: (original(), self.onStart(exchange))  # type: ignore[method-assign]
        return exchange


def siteConnection(resource: Resource, limits: EdgeLimits = EdgeLimits()) -> Tuple[Any, StringTransport, Clock]:
    clock = Clock()
    site = ProxySite(resource, limits=limits, reactor=clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 50000))
    channel.makeConnection(transport)
    return channel, transport, clock


def answer(request: FakeRequest, body: bytes, code: int = 200) -> None:
    request.channel.sendHead(code, b"", Headers({b"content-length": [b"%d" % len(body)]}))
    request.channel.sendData(body)
    request.finish()


def test_siteRequestAndPipelining() -> None:
    resource = Held()
    channel, transport, _ = siteConnection(resource)
    assert isinstance(channel, HTTP1Channel)
    channel.dataReceived(
        b"GET /a%2Fb?x=1 HTTP/1.1\r\nHost: example.test\r\nX-A: 1\r\nx-a: 2\r\n\r\n" + get(b"/second")
    )
    [request] = resource.requests
    assert request.method == b"GET"
    assert request.uri == b"/a%2Fb?x=1"
    assert request.request.target == b"/a%2Fb?x=1"
    assert request.clientproto == b"HTTP/1.1"
    assert request.request.authority == b"example.test"
    assert request.requestHeaders.getRawHeaders(b"X-A") == [b"1", b"2"]
    assert request.request.clientAddress == "192.0.2.7"
    assert request.request.body is None
    answer(request, b"hello")
    assert transport.value() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert [r.uri for r in resource.requests] == [b"/a%2Fb?x=1", b"/second"]
    second = resource.requests[1]
    second.channel.sendHead(404, b"", Headers())
    second.channel.sendData(b"gone")
    second.finish()
    assert transport.value().endswith(
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ngone\r\n0\r\n\r\n"
    )
    assert not transport.disconnecting


def test_siteAbsoluteForm() -> None:
    """
    An absolute-form target is forwarded in origin form, its authority
    replacing C{Host}.
    """
    resource = Held()
    channel, _, _ = siteConnection(resource)
    channel.dataReceived(b"GET http://other.test:81?q=1 HTTP/1.1\r\nHost: example.test\r\n\r\n")
    [request] = resource.requests
    assert request.request.target == b"/?q=1"
    assert request.request.authority == b"other.test:81"
    assert request.uri == b"http://other.test:81?q=1"


def test_siteChunkedBodyWithExpect() -> None:
    resource = Held()
    channel, transport, _ = siteConnection(resource)
    channel.dataReceived(chunkedPost(b"", headers=b"Expect: 100-continue\r\n"))
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    [request] = resource.requests  # started as soon as the head is in
    assert request.events == [("length", None), "bodyStarts"]
    for piece in (b"5;e=1\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\nT: x\r\n\r\n"):
        assert request.received is None
        channel.dataReceived(piece)
    assert request.body == b"hello world"
    assert request.received is not None
    assert request.request.body.received == 11
    assert request.trailers.getRawHeaders(b"t") == [b"x"]
    answer(request, b"ok")
    assert transport.value().endswith(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert not transport.disconnecting


def test_siteHTTP10() -> None:
    resource = Held()
    channel, transport, _ = siteConnection(resource)
    channel.dataReceived(b"GET /old HTTP/1.0\r\n\r\n")
    [request] = resource.requests
    request.channel.sendHead(200, b"", Headers())
    request.channel.sendData(b"streamed")
    request.finish()
    assert transport.value() == b"HTTP/1.0 200 OK\r\n\r\nstreamed"
    assert transport.disconnecting


def test_siteEarlyResponse() -> None:
    resource = Held(onStart=lambda request: answer(request, b"denied", 403))
    channel, transport, _ = siteConnection(resource)
    channel.dataReceived(post(b"0123456789")[:-6])
    [request] = resource.requests
    assert transport.value().startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert transport.value().endswith(b"\r\n\r\ndenied")
    assert transport.disconnecting
    assert request.request.body.stopped
    channel.dataReceived(b"456789" + get(b"/smuggled"))
    assert request.body == b""  # answered before any body was delivered
    assert len(resource.requests) == 1


def test_siteRejection() -> None:
    resource = Held()
    channel, transport, _ = siteConnection(resource)
    channel.dataReceived(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert transport.disconnecting
    assert resource.requests == []


def test_siteTimeouts() -> None:
    resource = Held()
    channel, transport, clock = siteConnection(resource, EdgeLimits(headTimeout=10, bodyTimeout=5))
    channel.dataReceived(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\nabc")
    [request] = resource.requests
    for _ in range(5):
        clock.advance(1)
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert transport.disconnecting
    assert request.lost is not None and request.lost.check(BadMessage)


def test_siteConnectionLost() -> None:
    resource = Held()
    channel, transport, _ = siteConnection(resource)
    channel.dataReceived(get())
    [request] = resource.requests
    channel.connectionLost(Failure(ConnectionDone()))
    assert request.lost is not None and request.lost.check(ConnectionDone)
    assert channel.closed


def test_siteBodyPauseEndsWithRequest() -> None:
    # An upstream that reads nothing of the body.
    resource = Held(onStart=lambda request: request.request.body.pauseProducing())
    channel, transport, _ = siteConnection(resource)
    data = post(b"x" * 100_000)
    for i in range(0, len(data), 10_000):
        channel.dataReceived(data[i : i + 10_000])
    [request] = resource.requests
    assert transport.producerState == "paused"
    answer(request, b"no")  # e.g. a local reply that never reads the body
    assert transport.producerState == "producing"


def test_oneDeliveryPerRead() -> None:
    """
    However many chunks one read holds, the body gets one piece of it: the
    next hop sees no more pieces than this one read, not one per chunk.
    """
    conn = Conn()
    tiny = b"1\r\na\r\n" * 10000
    reads = [tiny[i : i + 16384] for i in range(0, len(tiny), 16384)]
    conn.feed(chunkedPost(b""))
    for read in reads:
        conn.feed(read)
    conn.feed(b"0\r\n\r\n")
    [request] = conn.requests
    assert b"".join(request.chunks) == b"a" * 10000
    assert len(request.chunks) <= len(reads)
    assert request.received is not None


# The response framing the channel owns.


def _answerWith(conn: Conn, code: int, headers: Headers, pieces: List[bytes], trailers: Any = None) -> bytes:
    conn.channel.sendHead(code, b"", headers)
    for piece in pieces:
        conn.channel.sendData(piece)
    conn.channel.finish(trailers)
    return conn.output()


def test_chunkedResponseWithTrailers() -> None:
    """
    A response of unknown length goes chunked to an HTTP/1.1 client, its
    trailers after the last chunk; the connection stays open.
    """
    conn = Conn()
    conn.feed(get())
    out = _answerWith(
        conn, 200, Headers(), [b"hello", b"", b" world"], Headers({b"grpc-status": [b"0"]})
    )
    assert out == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nGrpc-Status: 0\r\n\r\n"
    )
    assert not conn.transport.disconnecting


def test_lengthResponseDropsTrailers() -> None:
    """
    A response with a Content-Length has no place for trailers: they are
    dropped, and the body is sent as it is.
    """
    conn = Conn()
    conn.feed(get())
    out = _answerWith(
        conn, 200, Headers({b"content-length": [b"2"]}), [b"ok"], Headers({b"x-t": [b"1"]})
    )
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    "request_, code", [(b"HEAD / HTTP/1.1\r\n" + HOST + b"\r\n", 200), (get(), 204), (get(), 304)]
)
def test_responsesWithoutBody(request_: bytes, code: int) -> None:
    """
    HEAD, 204 and 304 responses have no body and no chunked framing; what
    is given as body is not sent.
    """
    conn = Conn()
    conn.feed(request_)
    out = _answerWith(conn, code, Headers({b"etag": [b'"x"']}), [b"ignored"])
    assert out.lower().endswith(b'\r\netag: "x"\r\n\r\n')
    assert b"chunked" not in out and b"ignored" not in out
    assert not conn.transport.disconnecting


def test_http10ResponseDelimitedByClose() -> None:
    conn = Conn()
    conn.feed(get(version=b"HTTP/1.0", headers=b""))
    out = _answerWith(conn, 200, Headers(), [b"abc"], Headers({b"x-t": [b"1"]}))
    assert out == b"HTTP/1.0 200 OK\r\n\r\nabc"
    assert conn.transport.disconnecting


@pytest.mark.parametrize(
    "code, phrase", [(429, b"Too Many Requests"), (508, b"Loop Detected"), (599, b"Unknown")]
)
def test_reasonPhrases(code: int, phrase: bytes) -> None:
    conn = Conn()
    conn.feed(get())
    out = _answerWith(conn, code, Headers({b"content-length": [b"0"]}), [])
    assert out.startswith(b"HTTP/1.1 %d %s\r\n" % (code, phrase))


@pytest.mark.parametrize(
    "code", sorted({s for c in CAUSE_TABLE for s in c.statuses} | {200, 403, 404, 405})
)
def test_everyOwnStatusHasItsPhrase(code: int) -> None:
    """
    Every status the sidecar answers with itself (each error cause's, and
    the admin listener's) goes out with RFC 9110's reason phrase, never
    C{Unknown}.
    """
    conn = Conn()
    conn.feed(get())
    out = _answerWith(conn, code, Headers({b"content-length": [b"0"]}), [])
    expected = TABLE_PHRASES.get(code) or HTTPStatus(code).phrase.encode("ascii")
    assert out.startswith(b"HTTP/1.1 %d %s\r\n" % (code, expected)), out
    assert b"Unknown" not in out


def test_requestTrailersKept() -> None:
    """
    A chunked request's trailer fields reach the exchange with the body's
    end, without those that may not be trailers.
    """
    conn = Conn()
    conn.feed(chunkedPost(b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nHost: evil\r\nContent-Length: 9\r\n\r\n"))
    [request] = conn.requests
    assert request.body == b"abc"
    assert request.received is not None
    assert list(request.trailers.getAllRawHeaders()) == [(b"X-Sum", [b"1"])]


def test_requestTrailersOnlyForbiddenGiveNone() -> None:
    conn = Conn()
    conn.feed(chunkedPost(b"0\r\nHost: evil\r\n\r\n"))
    [request] = conn.requests
    assert request.received is not None
    assert request.trailers is None


@pytest.mark.parametrize("field", [b"Bad Name: x", b"X: a\x01b", b": empty"])
def test_requestBadTrailerRefused(field: bytes) -> None:
    conn = Conn()
    conn.feed(chunkedPost(b"1\r\na\r\n0\r\n" + field + b"\r\n\r\n"))
    assert conn.output().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert conn.transport.disconnecting
    [request] = conn.requests
    assert request.lost is not None and request.received is None


@pytest.mark.parametrize("close", [False, True])
def test_connectionSettledBeforeExchangeDone(close: bool) -> None:
    """
    When an exchange hears that its response is done, the connection is
    already idle or closing: a drain that closes what is busy at that
    moment (SIGTERM once nothing is in flight) never cuts it.
    """
    conn = Conn()
    conn.feed(get(headers=HOST + (b"Connection: close\r\n" if close else b"")))
    [request] = conn.requests
    request.respond()
    assert request.channelAtDone == ((True, False) if close else (False, True))
