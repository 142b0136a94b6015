# -*- test-case-name: tests.test_message -*-
"""
The request and response every module behind an edge works with,
whatever protocol carried them: status, headers, a body streamed with
back-pressure, and trailers.

An edge (the HTTP/1.1 channel today) makes a L{Request} of what arrives and
hands it to the listener's forwarder; upstreams answer with a L{Response};
the sidecar's own answers are L{LocalReply} responses.  Bodies are
delivered to an L{easymesh.interfaces.IBodySink}.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from easymesh.config.model import TUNNEL_IDLE_TIMEOUT


class Request:
    """
    A request on its way through a listener.

    @ivar method: The request method, as received.
    @ivar target: The origin-form request target (path and query), byte-exact.
    @ivar headers: The request headers; filters may change them.  The
        authority is the C{Host} field (see L{authority}).
    @ivar body: A producer of the request body, or L{None} for none.  Once
        it has been produced whole, its C{trailers} attribute (if any)
        holds the request's trailers.
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
    @ivar upstreamProtocol: What its last try was sent with (C{HTTP/1.1}
        or C{HTTP/2}); L{None} if it was not sent.
    @ivar deadline: When a gRPC call's deadline passes (its clock's
        seconds), from its C{grpc-timeout} and its route's timeout;
        L{None} for none.
    @ivar upgrade: The protocols an HTTP/1.1 request asks to switch to
        (its C{Upgrade} field, e.g. C{b"websocket"}), as its edge read
        it and then as its route allows (see the route's
        C{upgradeTypes}); L{None} if it asks for none, or none is allowed.
        The header itself is hop-by-hop: an upstream writes it anew from
        this.
    @ivar tunnelIdleTimeout: Once routed, seconds a tunnel made by a
        switch may carry no byte either way before it is closed.
    @ivar tunnelMaxLifetime: Once routed, seconds after which such a
        tunnel is closed whatever moves; L{None} for no limit.
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
        "upstreamProtocol",
        "deadline",
        "upgrade",
        "tunnelIdleTimeout",
        "tunnelMaxLifetime",
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
        self.upstreamProtocol: Optional[str] = None
        self.deadline: Optional[float] = None
        self.upgrade: Optional[bytes] = None
        self.tunnelIdleTimeout: float = TUNNEL_IDLE_TIMEOUT
        self.tunnelMaxLifetime: Optional[float] = None

    @property
    def authority(self) -> Optional[bytes]:
        """
        The authority the request is for (C{Host}, or HTTP/2's
        C{:authority}, which an edge stores as C{Host}); L{None} if absent.
        """
        values = self.headers.getRawHeaders(b"host")
        return values[0] if values else None

    @property
    def trailers(self) -> Optional[Headers]:
        """
        The request's trailers, once its body has ended with some; else
        L{None}.
        """
        return getattr(self.body, "trailers", None)

    def __repr__(self) -> str:
        return f"<Request {self.listener} {self.method!r} {self.target!r}>"


#: The name filter plugins written for earlier releases import.
ProxyRequest = Request


class Response:
    """
    A response whose head is known: C{code}, C{phrase} and C{headers}; its
    body goes to the L{easymesh.interfaces.IBodySink} given to
    L{deliverBody}, and its trailers, if any, come with the body's end.

    @ivar cause: The short name of the reason for an error the sidecar
        made (also in its C{x-easymesh-error} header); L{None} otherwise.
    @ivar detail: What happened, for the error log (never sent).
    @ivar upgrade: For a C{101} to a request that asked to upgrade, the
        protocol switched to (the upstream's C{Upgrade} field); the body
        is then not delivered: the connection is a tunnel end (see
        L{tunnelEnd}).
    """

    __slots__ = ("code", "phrase", "headers", "cause", "detail", "upgrade")

    def __init__(
        self,
        code: int,
        headers: Optional[Headers] = None,
        phrase: bytes = b"",
        cause: Optional[str] = None,
        detail: str = "",
    ) -> None:
        self.code = code
        self.headers = headers if headers is not None else Headers()
        self.phrase = phrase
        self.cause = cause
        self.detail = detail
        self.upgrade: Optional[bytes] = None

    def tunnelEnd(self) -> Any:
        """
        The upstream's L{easymesh.interfaces.ITunnelEnd}, for a response
        that switched protocols (see C{upgrade}); else L{None}.
        """
        return None

    def deliverBody(self, sink: Any) -> None:
        """
        Deliver the body, then its end (with the trailers) or its failure,
        to C{sink}, an L{easymesh.interfaces.IBodySink}.  Called at most
        once.  A plain L{Response} has no body: it ends at once.
        """
        sink.bodyStarted(_WHOLE)
        sink.bodyEnded(None)

    def discard(self) -> None:
        """
        The body will not be read (a client gone, a try to be retried):
        release what holds it, closing its connection if need be.
        """

    def endsWithHead(self) -> bool:
        """
        Whether it is known, with the head, that neither body nor trailers
        follow: an edge may then end the response with its head (see
        L{easymesh.interfaces.IResponder.sendHead}).
        """
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.code} {self.cause}>"


@implementer(IPushProducer)
class _Whole:
    """
    The producer of a body that is in memory: there is nothing to pause.
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


_WHOLE = _Whole()


class LocalReply(Response):
    """
    A response the sidecar makes itself (an error, a direct response, or a
    filter's early answer), its body whole in memory.

    @ivar trailers: Trailers sent after the body, or L{None}.
    """

    __slots__ = ("body", "trailers")

    def __init__(
        self,
        code: int,
        body: bytes = b"",
        headers: Optional[Headers] = None,
        phrase: bytes = b"",
        cause: Optional[str] = None,
        detail: str = "",
        trailers: Optional[Headers] = None,
    ) -> None:
        super().__init__(code, headers, phrase, cause, detail)
        self.body = body
        self.trailers = trailers

    def deliverBody(self, sink: Any) -> None:
        sink.bodyStarted(_WHOLE)
        if self.body:
            sink.bodyData(self.body)
        sink.bodyEnded(self.trailers)

    def endsWithHead(self) -> bool:
        return not self.body and self.trailers is None


def discardResponse(response: Response) -> None:
    """
    Drop a response that will not be relayed (a client gone, a try to be
    retried): its body is not read, its connection is closed.
    """
    response.discard()
