"""
Tests for L{easymesh.forwarder.Forwarder}: whatever fails on the request
path (header policy, filters, the router, a bug in any of them, raised at
once or later) becomes one reply, and an upstream response that will not
be relayed is discarded.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from easymesh.errors import ERROR_HEADER
from easymesh.filters.chain import FilterChain
from easymesh.forwarder import Forwarder
from easymesh.headers import HeaderPolicy
from easymesh.message import LocalReply, ProxyRequest


class _Producer:
    stopped = 0

    def stopProducing(self) -> None:
        self.stopped += 1

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


@implementer(IResponse)
class _Response:
    """
    An upstream response whose body nobody has read yet.
    """

    version = (b"HTTP", 1, 1)
    code = 200
    phrase = b"OK"
    length = UNKNOWN_LENGTH
    request = None
    previousResponse = None

    def __init__(self) -> None:
        self.headers = Headers({b"content-length": [b"2"]})
        self.producer = _Producer()

    def deliverBody(self, sink: Any) -> None:
        sink.bodyStarted(self.producer)

    def discard(self) -> None:
        self.producer.stopProducing()

    def setPreviousResponse(self, response: Any) -> None:
        pass


class _Router:
    def __init__(self, route: Any) -> None:
        self.route = route


class _Routes:
    """
    A stand-in for L{easymesh.runtime.MeshRuntime}: the outbound router
    answers with C{route(request)}.
    """

    mesh = None

    def __init__(self, route: Any) -> None:
        self.routers = {"outbound": _Router(route)}


def _allZeroWeights(request: ProxyRequest) -> Deferred[Any]:
    # What the router's weighted choice did with weights that are all 0.
    return next(iter(()))


class _Filter:
    def __init__(self, onRequest: Any = None, onResponse: Any = None) -> None:
        self.onRequest = onRequest
        self.onResponse = onResponse

    def requestReceived(self, request: ProxyRequest) -> Any:
        if self.onRequest is not None:
            return self.onRequest(request)
        return None

    def responseReceived(self, request: ProxyRequest, response: Any) -> Any:
        if self.onResponse is not None:
            return self.onResponse(request, response)
        return None


def _boom(*args: Any) -> Any:
    raise ZeroDivisionError("boom")


def _request() -> ProxyRequest:
    return ProxyRequest(b"GET", b"/p", Headers({b"host": [b"svc"]}), listener="outbound")


class ForwarderFailureTests(SynchronousTestCase):
    def forward(
        self, route: Any, filters: Any = (), policy: Optional[HeaderPolicy] = None
    ) -> Any:
        forwarder = Forwarder(
            policy or HeaderPolicy("web-1", "outbound"),
            FilterChain(filters),
            _Routes(route),
            "outbound",
        )
        return self.successResultOf(forwarder.forward(_request()))

    def assertInternalError(self, reply: Any, named: str) -> None:
        self.assertIsInstance(reply, LocalReply)
        self.assertEqual(reply.code, 500)
        self.assertEqual(reply.cause, "internal_error")
        self.assertEqual(reply.headers.getRawHeaders(ERROR_HEADER), [b"internal_error"])
        self.assertIn(named, reply.detail)
        self.assertNotIn(named.encode(), reply.body)

    def test_routerRaisesAtOnce(self) -> None:
        """
        A router that raises instead of returning a L{Deferred} (here, a
        weighted choice among clusters that all weigh 0) does not escape
        C{forward}: the reply is 500 C{internal_error}, and its detail, for
        the error log, names the exception and where it was raised.
        """
        reply = self.forward(_allZeroWeights)
        self.assertInternalError(reply, "StopIteration")
        self.assertIn("_allZeroWeights", reply.detail)

    def test_routerFailsLater(self) -> None:
        """
        A router whose L{Deferred} fails with something unexpected gives the
        same reply.
        """
        reply = self.forward(lambda request: fail(KeyError("cluster")))
        self.assertInternalError(reply, "KeyError")

    def test_expectedFailureKeepsItsCause(self) -> None:
        reply = self.forward(lambda request: fail(ConnectionRefusedError()))
        self.assertEqual((reply.code, reply.cause), (503, "upstream_connect_failure"))

    def test_requestFilterRaises(self) -> None:
        """
        A filter whose request hook raises: 500 C{internal_error}, naming
        the exception; the request is not routed.
        """
        routes: List[Any] = []
        reply = self.forward(lambda r: routes.append(r) or succeed(_Response()), [_Filter(_boom)])
        self.assertInternalError(reply, "ZeroDivisionError: boom")
        self.assertEqual(routes, [])

    def test_routerRaisesBehindFilters(self) -> None:
        reply = self.forward(_allZeroWeights, [_Filter()])
        self.assertInternalError(reply, "StopIteration")

    def test_responseFilterRaises(self) -> None:
        """
        A filter whose response hook raises: 500, and the upstream response,
        which will not be relayed, is discarded (its connection closed).
        """
        response = _Response()
        reply = self.forward(lambda r: succeed(response), [_Filter(onResponse=_boom)])
        self.assertInternalError(reply, "ZeroDivisionError")
        self.assertEqual(response.producer.stopped, 1)

    def test_responseFilterFailsLater(self) -> None:
        response = _Response()
        reply = self.forward(
            lambda r: succeed(response),
            [_Filter(onResponse=lambda req, resp: fail(RuntimeError("late")))],
        )
        self.assertInternalError(reply, "RuntimeError: late")
        self.assertEqual(response.producer.stopped, 1)

    def test_headerPolicyRaises(self) -> None:
        """
        A bug in the header policy, on the way in or out, is answered the
        same way; an upstream response it could not prepare is discarded.
        """

        class BadIn(HeaderPolicy):
            def prepareRequest(self, *args: Any) -> None:
                raise TypeError("in")

        class BadOut(HeaderPolicy):
            def prepareResponse(self, *args: Any) -> None:
                raise TypeError("out")

        self.assertInternalError(
            self.forward(lambda r: succeed(_Response()), policy=BadIn("web-1", "outbound")),
            "TypeError: in",
        )
        response = _Response()
        self.assertInternalError(
            self.forward(lambda r: succeed(response), policy=BadOut("web-1", "outbound")),
            "TypeError: out",
        )
        self.assertEqual(response.producer.stopped, 1)

    def test_relayedResponseKept(self) -> None:
        """
        Without failure, the upstream response is relayed, not discarded.
        """
        response = _Response()
        self.assertIs(self.forward(lambda r: succeed(response), [_Filter()]), response)
        self.assertEqual(response.producer.stopped, 0)
