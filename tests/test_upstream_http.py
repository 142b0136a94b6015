"""
Tests for L{easymesh.upstream.http}: the HTTP/1.1 upstream over the pool,
with connections on in-memory transports and time from a L{Clock}.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock as Clock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from easymesh.config.addresses import UpstreamURL
from easymesh.config.model import PoolSettings
from easymesh.errors import UpstreamTimeout
from easymesh.message import ProxyRequest
from tests.meshfakes import BodyCollector
from easymesh.requestbody import RequestBodyStream
from easymesh.upstream import upstreamFor
from easymesh.upstream.http import HTTPUpstream

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class MemoryEndpoint:
    """
    Connects each new connection to its own L{StringTransport} at once.
    """

    def __init__(self) -> None:
        self.connections: List[Tuple[Any, StringTransport]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


def upstream(clock: Clock, timeout: float = 5.0) -> Tuple[HTTPUpstream, MemoryEndpoint]:
    up = HTTPUpstream(
        UpstreamURL("http", "app.internal", 8080), PoolSettings(responseTimeout=timeout), clock
    )
    endpoint = MemoryEndpoint()
    up._endpoint = endpoint
    return up, endpoint


def get(target: bytes = b"/x", headers: Any = ((b"Host", b"svc"),), body: Any = None) -> ProxyRequest:
    h = Headers()
    for name, value in headers:
        h.addRawHeader(name, value)
    return ProxyRequest(b"GET" if body is None else b"POST", target, h, body)


def outcome(d: Deferred[Any]) -> List[Any]:
    box: List[Any] = []
    d.addBoth(box.append)
    return box


class HTTPUpstreamTests(SynchronousTestCase):
    def test_schemes(self) -> None:
        """
        C{http} and C{https} URLs get an L{HTTPUpstream}.
        """
        for scheme in ("http", "https"):
            up = upstreamFor(UpstreamURL(scheme, "example.com", 443), PoolSettings(), Clock())
            self.assertIsInstance(up, HTTPUpstream)

    def test_headWritten(self) -> None:
        """
        The request goes out with its target byte-exact and its headers.
        """
        clock = Clock()
        up, endpoint = upstream(clock)
        result = outcome(up.request(get(b"/a%2Fb?q=1")))
        protocol, transport = endpoint.connections[0]
        self.assertEqual(transport.value(), b"GET /a%2Fb?q=1 HTTP/1.1\r\nHost: svc\r\n\r\n")
        protocol.dataReceived(OK)
        self.assertEqual(result[0].code, 200)

    def test_closedKeepsNoConnection(self) -> None:
        """
        After L{HTTPUpstream.close}, a connection busy at the time is closed
        once its response is done, not kept in the pool.
        """
        clock = Clock()
        up, endpoint = upstream(clock)
        result = outcome(up.request(get()))
        protocol, transport = endpoint.connections[0]
        up.close()
        protocol.dataReceived(OK)
        self.assertEqual(result[0].code, 200)
        result[0].deliverBody(BodyCollector())
        self.assertFalse(transport.disconnecting)
        clock.advance(0)
        self.assertTrue(transport.disconnecting)

    def test_hostAdded(self) -> None:
        """
        A request without C{Host} (from an HTTP/1.0 client) is sent with
        the upstream's authority: HTTP/1.1 requires one.
        """
        clock = Clock()
        up, endpoint = upstream(clock)
        up.request(get(headers=()))
        _, transport = endpoint.connections[0]
        self.assertEqual(transport.value(), b"GET /x HTTP/1.1\r\nHost: app.internal:8080\r\n\r\n")

    def test_timeoutOnFreshConnection(self) -> None:
        """
        No response head within the timeout: the request fails with
        L{UpstreamTimeout} and its connection is dropped.
        """
        clock = Clock()
        up, endpoint = upstream(clock, timeout=2)
        result = outcome(up.request(get()))
        clock.advance(1.9)
        self.assertEqual(result, [])
        clock.advance(0.2)
        self.assertIsInstance(result[0], Failure)
        result[0].trap(UpstreamTimeout)
        self.assertTrue(endpoint.connections[0][1].disconnecting)

    def test_timeoutOnPooledConnection(self) -> None:
        """
        The timeout holds for a request on a connection from the pool too
        (whose Deferred has already fired when the request is sent).
        """
        clock = Clock()
        up, endpoint = upstream(clock, timeout=2)
        up.request(get())
        protocol, transport = endpoint.connections[0]
        protocol.dataReceived(OK)
        transport.clear()
        result = outcome(up.request(get(b"/second")))
        self.assertEqual(len(endpoint.connections), 1, "the pooled connection was not reused")
        self.assertIn(b"GET /second ", transport.value())
        clock.advance(2.1)
        result[0].trap(UpstreamTimeout)

    def test_timeoutCountsFromEndOfBody(self) -> None:
        """
        With a body, the timeout starts when the body has been sent, not
        before.
        """
        clock = Clock()
        up, endpoint = upstream(clock, timeout=2)
        body = RequestBodyStream(3, lambda: None, lambda: None)
        result = outcome(up.request(get(body=body)))
        clock.advance(10)
        self.assertEqual(result, [], "timed out while the body was still coming")
        body.write(b"abc")
        body.finish()
        clock.advance(1.9)
        self.assertEqual(result, [])
        clock.advance(0.2)
        result[0].trap(UpstreamTimeout)

    def test_responseStopsTimer(self) -> None:
        """
        Once the response head is in, the timer is gone.
        """
        clock = Clock()
        up, endpoint = upstream(clock, timeout=2)
        result = outcome(up.request(get()))
        endpoint.connections[0][0].dataReceived(OK)
        self.assertEqual(result[0].code, 200)
        pending = [c for c in clock.getDelayedCalls() if c.func.__name__ == "_expire"]
        self.assertEqual(pending, [])

    def test_cancelAbandonsConnection(self) -> None:
        """
        Cancelling (the client went away) drops the connection rather than
        pooling it half-used.
        """
        clock = Clock()
        up, endpoint = upstream(clock)
        d = up.request(get())
        d.addErrback(lambda f: None)
        d.cancel()
        self.assertTrue(endpoint.connections[0][1].disconnecting)
