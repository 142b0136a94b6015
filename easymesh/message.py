# -*- test-case-name: tests.test_forwarder -*-
"""
A proxied request and a locally made reply, independent of any one
listener's HTTP implementation, so that the HTTP/1.1 listener and later
protocol paths share routing, filters, upstreams and error mapping.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.protocol import Protocol
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse


class ProxyRequest:
    """
    A request on its way through a listener.

    @ivar method: The request method, as received.
    @ivar target: The origin-form request target (path and query), byte-exact.
    @ivar headers: The request headers; filters may change them.
    @ivar body: A producer of the request body, or L{None} for none.
    @ivar clientAddress: The downstream peer's IP address.
    @ivar scheme: C{b"http"} or C{b"https"}: how the request arrived.
    @ivar version: The protocol version, e.g. C{b"1.1"}.
    @ivar listener: The receiving listener's name.
    @ivar peerIdentity: The caller's verified identity (mTLS), or L{None}.

    What happened to it, for logs and metrics:

    @ivar route: The name of the route it took, or L{None}.
    @ivar cluster: The cluster it was sent to, or L{None}.
    @ivar upstreamHost: The endpoint (C{host:port}) of its last try.
    @ivar attempts: How many times it was sent upstream.
    @ivar trace: This hop's L{easymesh.tracing.TraceContext}.
    @ivar streamIdleTimeout: Its cluster's stream idle timeout, once a
        cluster is chosen; L{None} before.
    """

    __slots__ = (
        "method",
        "target",
        "headers",
        "body",
        "clientAddress",
        "scheme",
        "version",
        "listener",
        "peerIdentity",
        "route",
        "cluster",
        "upstreamHost",
        "attempts",
        "trace",
        "streamIdleTimeout",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Optional[IBodyProducer] = None,
        clientAddress: str = "",
        scheme: bytes = b"http",
        version: bytes = b"1.1",
        listener: str = "",
        peerIdentity: Optional[str] = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.clientAddress = clientAddress
        self.scheme = scheme
        self.version = version
        self.listener = listener
        self.peerIdentity = peerIdentity
        self.route: Optional[str] = None
        self.cluster: Optional[str] = None
        self.upstreamHost: Optional[str] = None
        self.attempts = 0
        self.trace: Optional[Any] = None
        self.streamIdleTimeout: Optional[float] = None

    def __repr__(self) -> str:
        return f"<ProxyRequest {self.listener} {self.method!r} {self.target!r}>"


class LocalReply:
    """
    A response made by the sidecar itself (an error, or a filter's early
    answer), with the same C{code}, C{phrase} and C{headers} as an upstream
    L{twisted.web.iweb.IResponse}.

    @ivar cause: The short name of the reason, also sent in the
        C{x-easymesh-error} header for errors; L{None} for a filter's
        deliberate answer.
    @ivar detail: What happened, for the log (never sent to the client).
    """

    __slots__ = ("code", "phrase", "headers", "body", "cause", "detail")

    def __init__(
        self,
        code: int,
        body: bytes = b"",
        headers: Optional[Headers] = None,
        phrase: bytes = b"",
        cause: Optional[str] = None,
        detail: str = "",
    ) -> None:
        self.code = code
        self.body = body
        self.headers = headers if headers is not None else Headers()
        self.phrase = phrase
        self.cause = cause
        self.detail = detail

    def __repr__(self) -> str:
        return f"<LocalReply {self.code} {self.cause}>"


class _Discard(Protocol):
    """
    Drop a response body nobody is waiting for, and its connection with it.
    """

    def connectionMade(self) -> None:
        self.transport.stopProducing()


def discardResponse(response: IResponse) -> None:
    """
    Drop an upstream response that will not be relayed (a client gone, a
    try to be retried): its body is not read, its connection is closed.
    """
    response.deliverBody(_Discard())
