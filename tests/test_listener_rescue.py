"""
Tests for the last rescue of L{easymesh.listener}: whatever fails while a
request is answered (a forwarder that raises or fails, a reply that cannot
be relayed, a resource that raises) gets the sidecar's own C{500
internal_error}, never Twisted's HTML error page, or, once the response has
begun, a dropped connection; and the error log says why, once.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionAborted
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from easymesh.accesslog import AccessLog
from easymesh.errorlog import ErrorLog
from easymesh.filters.chain import FilterChain
from easymesh.forwarder import Forwarder
from easymesh.headers import HeaderPolicy
from easymesh.inflight import InFlight
from easymesh.listener import ProxyResource, ProxySite
from tests.test_listener import FakeResponse


class _AllZeroWeights:
    """
    A runtime whose router raises at once, as a weighted choice among
    clusters that all weigh 0 did.
    """

    mesh = None

    def __init__(self) -> None:
        self.routers = {"outbound": self}

    def route(self, request: Any) -> Any:
        return next(iter(()))


class _Forwarder:
    """
    A forwarder that does what C{forward} says, whatever its contract.
    """

    def __init__(self, forward: Any) -> None:
        self.forward = forward


class _Raising(Resource):
    isLeaf = True
    errorLog: Any = None
    name = "outbound"

    def handle(self, request: Any, responder: Any, target: bytes) -> Any:
        raise RuntimeError("resource bug")


class RescueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.inflight = InFlight()
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def connect(self, resource: Any) -> None:
        client = IPv4Address("TCP", "10.1.2.3", 5555)
        self.transport = StringTransport(peerAddress=client)
        self.channel = ProxySite(resource, reactor=self.clock).buildProtocol(client)
        self.channel.makeConnection(self.transport)

    def proxy(self, forwarder: Any) -> ProxyResource:
        resource = ProxyResource(
            "outbound",
            forwarder,
            self.clock,
            self.inflight,
            AccessLog("json"),
            errorLog=ErrorLog(self.clock),
        )
        self.connect(resource)
        return resource

    def get(self) -> None:
        self.channel.dataReceived(b"GET /p HTTP/1.1\r\nHost: svc\r\n\r\n")

    def logged(self, namespace: str) -> List[Dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == namespace]

    def assertInternalError(self) -> None:
        """
        The client got the sidecar's 500, not Twisted's page; the error log
        has one line naming the exception, the access log the cause.
        """
        data = self.transport.value()
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 500 "), data)
        self.assertIn(b"\r\nX-Easymesh-Error: internal_error", head)
        self.assertIn(b"\r\nContent-Type: text/plain; charset=utf-8", head)
        self.assertEqual(body, b"internal proxy error\n")
        self.assertNotIn(b"Processing Failed", data)
        self.assertNotIn(b"html", data.lower())
        [line] = [formatEvent(e) for e in self.logged("easymesh.errors")]
        self.assertIn("500 internal_error", line)
        self.assertIn("unexpected", line)
        [access] = self.logged("easymesh.access")
        self.assertEqual((access["status"], access["error"]), (500, "internal_error"))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.inflight.count, 0)

    def test_routerRaises(self) -> None:
        """
        On a listener without filters, a router that raises at once (a bug)
        is answered 500 C{internal_error}, logged once; the connection stays
        usable.
        """
        policy = HeaderPolicy("web-1", "outbound")
        self.proxy(Forwarder(policy, FilterChain(), _AllZeroWeights(), "outbound"))
        self.get()
        self.assertInternalError()
        self.assertIn("StopIteration", formatEvent(self.logged("easymesh.errors")[0]))
        self.assertFalse(self.transport.disconnecting)

    def test_forwardRaises(self) -> None:
        self.proxy(_Forwarder(lambda request: 1 / 0))
        self.get()
        self.assertInternalError()
        self.assertIn("ZeroDivisionError", formatEvent(self.logged("easymesh.errors")[0]))

    def test_forwardFails(self) -> None:
        self.proxy(_Forwarder(lambda request: fail(KeyError("k"))))
        self.get()
        self.assertInternalError()

    def test_replyCannotBeRelayed(self) -> None:
        """
        A reply whose body cannot be delivered once its head is sent (the
        head goes out at once, as it arrives) drops the client, and is
        logged once.
        """

        class Broken(FakeResponse):
            def deliverBody(self, sink: Any) -> None:
                raise ValueError("no body")

        self.proxy(_Forwarder(lambda request: succeed(Broken(200, b"OK", []))))
        self.get()
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(self.transport.disconnected)
        self.channel.connectionLost(Failure(ConnectionAborted()))
        [line] = [formatEvent(e) for e in self.logged("easymesh.errors")]
        self.assertIn("internal_error", line)
        self.assertIn("ValueError: no body", line)
        self.assertEqual(self.inflight.count, 0)

    def test_failsMidResponse(self) -> None:
        """
        A failure once the response has begun drops the client (nothing cut
        short passes for a whole response), and is logged once.
        """

        class Broken(FakeResponse):
            def deliverBody(self, sink: Any) -> None:
                super().deliverBody(sink)
                sink.bodyData(b"partial")
                raise ValueError("mid body")

        self.proxy(_Forwarder(lambda request: succeed(Broken(200, b"OK", []))))
        self.get()
        self.assertTrue(self.transport.disconnected)
        self.channel.connectionLost(Failure(ConnectionAborted()))
        [line] = [formatEvent(e) for e in self.logged("easymesh.errors")]
        self.assertIn("internal_error", line)
        self.assertIn("ValueError: mid body", line)
        self.assertEqual(self.inflight.count, 0)

    def test_resourceRaises(self) -> None:
        """
        Even a resource that cannot start an exchange (a bug) gets the
        sidecar's 500, not Twisted's HTML page; the failure is logged.
        """
        resource = _Raising()
        resource.errorLog = ErrorLog(self.clock)
        self.connect(resource)
        self.get()
        data = self.transport.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 500 "), data)
        self.assertIn(b"x-easymesh-error: internal_error", data.lower())
        self.assertNotIn(b"Processing Failed", data)
        [failure] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(failure.value), "resource bug")
