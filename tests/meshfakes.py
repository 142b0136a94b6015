"""
Stand-ins shared by the tests of clusters, routing, retries and the
runtime: upstreams that record what they are sent and answer as told,
responses, requests, and a host name resolver.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from easymesh.config.addresses import UpstreamURL
from easymesh.message import ProxyRequest, Response


class FakeResponse(Response):
    """
    An upstream response whose body nobody reads; C{delivered} holds the
    sinks it was handed to, and C{discarded} says whether it was dropped.
    """

    def __init__(self, code: int = 200, headers: Optional[Headers] = None, body: bytes = b"") -> None:
        super().__init__(code, headers, b"Whatever")
        self.body = body
        self.delivered: List[Any] = []
        self.discarded = False
        #: Whether a sink given the body gets all of it, and its end, at
        #: once (else the test feeds it).
        self.endAtOnce = False

    def deliverBody(self, sink: Any) -> None:
        self.delivered.append(sink)
        if self.endAtOnce:
            sink.bodyStarted(_NoTransport())
            if self.body:
                sink.bodyData(self.body)
            sink.bodyEnded(None)

    def discard(self) -> None:
        self.discarded = True
        self.delivered.append(None)

    def __repr__(self) -> str:
        return f"<FakeResponse {self.code}>"


class _NoTransport:
    """
    What a body is delivered from when it is delivered whole at once.
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Sent:
    """
    One request as an upstream received it: the request, the timeout it
    was given, the body bytes it has read so far, and the L{Deferred} to
    answer it with.
    """

    def __init__(self, request: ProxyRequest, timeout: Optional[float]) -> None:
        self.request = request
        self.target = request.target
        self.host = (request.headers.getRawHeaders(b"host") or [None])[0]
        self.timeout = timeout
        self.cancelled = False
        self.chunks: List[bytes] = []
        self.bodyDone: Optional[Deferred[None]] = None
        self.bodyEnded = False
        self.deferred: Deferred[Any] = Deferred(self._cancel)
        self.response: Optional[FakeResponse] = None
        if request.body is not None:
            self.bodyDone = request.body.startProducing(self)
            self.bodyDone.addBoth(self._ended)

    def _cancel(self, d: Deferred[Any]) -> None:
        self.cancelled = True

    def _ended(self, result: Any) -> None:
        self.bodyEnded = not isinstance(result, Failure)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    # IConsumer, for the request body.
    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    #: Given to each response (see L{FakeResponse.endAtOnce}).
    endBodies = False

    def respond(self, code: int = 200, headers: Optional[Headers] = None) -> FakeResponse:
        response = self.response = FakeResponse(code, headers)
        response.endAtOnce = self.endBodies
        self.deferred.callback(response)
        return response

    def fail(self, error: BaseException) -> None:
        self.deferred.errback(Failure(error))

    def answer(self, outcome: Any) -> None:
        """
        Answer with a status code (a response) or an exception (a failure).
        """
        if isinstance(outcome, BaseException):
            self.fail(outcome)
        else:
            self.respond(outcome)


class FakeUpstream:
    """
    An L{easymesh.interfaces.IUpstream} for one endpoint.  Each request is
    recorded in C{sent}; it is answered at once with what C{answer}
    returns for it (a status code or an exception), or left pending when
    C{answer} is L{None} or returns L{None}.
    """

    def __init__(self, url: UpstreamURL, settings: Any = None, reactor: Any = None, breakers: Any = None) -> None:
        self.url = url
        self.settings = settings
        self.breakers = breakers
        self.sent: List[Sent] = []
        self.answer: Optional[Callable[[ProxyRequest], Any]] = None
        self.closed = 0
        #: Where every request is recorded too, if given.
        self.journal: Optional[List[Sent]] = None

    #: Whether responses deliver their whole body at once.
    endBodies = False

    def request(self, request: ProxyRequest, timeout: Optional[float] = None) -> Deferred[Any]:
        sent = Sent(request, timeout)
        sent.endBodies = self.endBodies
        self.sent.append(sent)
        if self.journal is not None:
            self.journal.append(sent)
        if self.answer is not None:
            outcome = self.answer(request)
            if outcome is not None:
                sent.answer(outcome)
        return sent.deferred

    @property
    def pending(self) -> List[Sent]:
        return [s for s in self.sent if not s.deferred.called]

    def close(self) -> Deferred[None]:
        self.closed += 1
        return succeed(None)

    def __repr__(self) -> str:
        return f"<FakeUpstream {self.url}>"


class Upstreams:
    """
    Makes L{FakeUpstream}s (pass C{make} as C{makeUpstream}) and keeps
    every one made, by endpoint authority, newest last.
    """

    def __init__(self) -> None:
        self.made: List[FakeUpstream] = []
        #: Given to every upstream made from now on.
        self.answer: Optional[Callable[[ProxyRequest], Any]] = None
        #: Every request sent to any of them, in order.
        self.journal: List[Sent] = []
        #: Given to every upstream made from now on.
        self.endBodies = False

    def make(self, url: UpstreamURL, settings: Any, reactor: Any, breakers: Any = None) -> FakeUpstream:
        upstream = FakeUpstream(url, settings, reactor, breakers)
        upstream.answer = self.answer
        upstream.journal = self.journal
        upstream.endBodies = self.endBodies
        self.made.append(upstream)
        return upstream

    def __getitem__(self, authority: str) -> FakeUpstream:
        matching = [u for u in self.made if u.url.authority == authority]
        if not matching:
            raise KeyError(authority)
        return matching[-1]

    def allSent(self) -> List[Sent]:
        return list(self.journal)


def makeRequest(
    target: bytes = b"/",
    method: bytes = b"GET",
    host: Optional[bytes] = b"svc.example",
    headers: Sequence[Tuple[bytes, bytes]] = (),
    clientAddress: str = "10.9.9.9",
    body: Any = None,
    listener: str = "outbound",
    peerIdentity: Optional[str] = None,
) -> ProxyRequest:
    h = Headers()
    if host is not None:
        h.setRawHeaders(b"host", [host])
    for name, value in headers:
        h.addRawHeader(name, value)
    return ProxyRequest(
        method,
        target,
        h,
        body=body,
        clientAddress=clientAddress,
        listener=listener,
        peerIdentity=peerIdentity,
    )


class FakeResolver:
    """
    An L{twisted.internet.interfaces.IHostnameResolver}: C{answers[name]}
    is a list of IP addresses, or an exception to report as a failed
    resolution (no addresses), or missing for no addresses.  With
    C{hold} set, resolutions wait in C{held} until L{release}.
    """

    def __init__(self) -> None:
        self.answers: Dict[str, Any] = {}
        self.calls: List[Tuple[str, int, str]] = []
        self.hold = False
        self.held: List[Tuple[Any, str, int]] = []
        self.raiseError: Optional[BaseException] = None

    def resolveHostName(
        self,
        receiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        self.calls.append((hostName, portNumber, transportSemantics))
        if self.raiseError is not None:
            raise self.raiseError
        if self.hold:
            self.held.append((receiver, hostName, portNumber))
            return receiver
        self._answer(receiver, hostName, portNumber)
        return receiver

    def release(self) -> None:
        held, self.held = self.held, []
        for receiver, name, port in held:
            self._answer(receiver, name, port)

    def _answer(self, receiver: Any, name: str, port: int) -> None:
        receiver.resolutionBegan(None)
        answer = self.answers.get(name, [])
        if not isinstance(answer, BaseException):
            for address in answer:
                kind = IPv6Address if ":" in address else IPv4Address
                receiver.addressResolved(kind("TCP", address, port))
        receiver.resolutionComplete()


def logged(events: List[dict], namespace: str, text: str) -> List[dict]:
    """
    The log events from C{namespace} whose format contains C{text}.
    """
    return [
        e
        for e in events
        if e.get("log_namespace", "").startswith(namespace) and text in (e.get("log_format") or "")
    ]


class BodyCollector:
    """
    An L{easymesh.interfaces.IBodySink} that keeps a whole body in memory.

    @ivar done: Fires with C{(body, trailers)}, or fails as the body did.
    """

    def __init__(self) -> None:
        self._chunks: List[bytes] = []
        self._producer: Any = None
        self.done: Deferred[Any] = Deferred()

    def bodyStarted(self, producer: Any) -> None:
        self._producer = producer

    def bodyData(self, data: bytes) -> None:
        self._chunks.append(data)

    def bodyEnded(self, trailers: Optional[Headers]) -> None:
        self.done.callback((b"".join(self._chunks), trailers))

    def bodyFailed(self, reason: Failure) -> None:
        self.done.errback(reason)
