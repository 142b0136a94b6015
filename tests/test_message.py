"""
Tests for L{easymesh.message}: the request and response types every module
behind an edge works with.
"""

from __future__ import annotations

from typing import Any, List

from twisted.web.http_headers import Headers

from easymesh.message import LocalReply, ProxyRequest, Request, Response
from tests.meshfakes import BodyCollector
from easymesh.requestbody import RequestBodyStream


class Sink:
    def __init__(self) -> None:
        self.events: List[Any] = []

    def bodyStarted(self, producer: Any) -> None:
        self.events.append(("started", producer))

    def bodyData(self, data: bytes) -> None:
        self.events.append(("data", data))

    def bodyEnded(self, trailers: Any) -> None:
        self.events.append(("ended", trailers))

    def bodyFailed(self, reason: Any) -> None:
        self.events.append(("failed", reason))


def test_requestAuthorityIsHost() -> None:
    request = Request(b"GET", b"/", Headers({b"host": [b"svc:80"]}))
    assert request.authority == b"svc:80"
    request.headers.setRawHeaders(b"host", [b"other"])
    assert request.authority == b"other"
    assert Request(b"GET", b"/", Headers()).authority is None


def test_requestTrailersFromBody() -> None:
    """
    A request's trailers are its body's, once the body has ended with some.
    """
    body = RequestBodyStream(None, lambda: None, lambda: None)
    request = Request(b"POST", b"/", Headers(), body)
    assert request.trailers is None
    body.write(b"x")
    body.finish(Headers({b"x-sum": [b"1"]}))
    assert request.trailers.getRawHeaders(b"x-sum") == [b"1"]
    assert Request(b"GET", b"/", Headers()).trailers is None


def test_proxyRequestIsRequest() -> None:
    assert ProxyRequest is Request


def test_localReplyDeliversWhole() -> None:
    trailers = Headers({b"grpc-status": [b"0"]})
    reply = LocalReply(200, b"body", trailers=trailers)
    sink = Sink()
    reply.deliverBody(sink)
    assert [e[0] for e in sink.events] == ["started", "data", "ended"]
    assert sink.events[1] == ("data", b"body")
    assert sink.events[2] == ("ended", trailers)
    assert isinstance(reply, Response)


def test_localReplyEmptyBody() -> None:
    sink = Sink()
    LocalReply(204).deliverBody(sink)
    assert [e[0] for e in sink.events] == ["started", "ended"]


def test_bodyCollector() -> None:
    collector = BodyCollector()
    LocalReply(200, b"abc", trailers=Headers({b"t": [b"1"]})).deliverBody(collector)
    body, trailers = collector.done.result
    assert body == b"abc"
    assert trailers.getRawHeaders(b"t") == [b"1"]


def test_plainResponseHasNoBody() -> None:
    sink = Sink()
    Response(204).deliverBody(sink)
    assert [e[0] for e in sink.events] == ["started", "ended"]
    assert sink.events[1] == ("ended", None)
