# -*- test-case-name: tests.test_upstream_http -*-
"""
HTTP/1.1 upstreams (C{http://} and C{https://}): one persistent
L{HTTPConnectionPool} per upstream, the pool treq composes, holding lean
L{easymesh.upstream.h1client} connections.

Neither treq's C{HTTPClient} nor Twisted's C{Agent} is on this path: treq
decodes gzip (adding C{Accept-Encoding} and rewriting the body), keeps a
cookie jar and re-encodes the URL, each wrong for a proxy; both re-parse the
URL and build an endpoint (with IDNA encoding) on every request.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional, Sequence

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.python.failure import Failure
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from easymesh.cluster.breakers import MAX_CONNECTIONS, MAX_PENDING_REQUESTS
from easymesh.config.addresses import UpstreamURL
from easymesh.config.model import PoolSettings
from easymesh.errors import Overflow, UpstreamTimeout
from easymesh.interfaces import IUpstream
from easymesh.message import Request, Response
from easymesh.twistedprivate import idleConnections, rawHeaders, setConnectionFactory
from easymesh.upstream.h1client import (
    H1ConnectionFactory,
    H1Response,
    UpstreamRequest,
    asProxyError,
    deliverTo,
    discardBody,
)


@implementer(IBodyProducer)
class BodyEndWatch:
    """
    A body producer that calls C{onEnd} once the wrapped producer has
    written the whole body: the response timeout runs from then.
    """

    def __init__(self, producer: IBodyProducer, onEnd: Any) -> None:
        self._producer = producer
        self._onEnd = onEnd
        self.length = producer.length

    @property
    def trailers(self) -> Optional[Headers]:
        """
        The request's trailers, once its body has ended with some.
        """
        return getattr(self._producer, "trailers", None)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        return self._producer.startProducing(consumer).addCallback(self._ended)

    def _ended(self, result: None) -> None:
        self._onEnd()
        return result

    def pauseProducing(self) -> None:
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._producer.stopProducing()


class Attempt:
    """
    One request upstream, with its response-headers timer.
    """

    def __init__(self, clock: Any, timeout: float) -> None:
        self._clock = clock
        self._timeout = timeout
        self._timer: Optional[IDelayedCall] = None
        self.timedOut = False
        self.bodyEnded = False
        self.done = False
        self.deferred: Optional[Deferred[Any]] = None

    def endBody(self) -> None:
        self.bodyEnded = True
        self.startTimer()

    def startTimer(self) -> None:
        # Not "deferred.called": a Deferred waiting on the connection's own
        # Deferred (a pooled connection) has been called already.
        if self._timer is None and not self.done and self.deferred is not None:
            self._timer = self._clock.callLater(self._timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.timedOut = True
        assert self.deferred is not None
        self.deferred.cancel()

    def finished(self, result: Any) -> Any:
        """
        The response head arrived, or the request failed: stop the timer,
        and make a timeout's cancellation an L{UpstreamTimeout}.
        """
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.timedOut and isinstance(result, Failure):
            return Failure(
                UpstreamTimeout(f"no response headers within {self._timeout:g}s")
            )
        return result


def endpointFor(
    url: UpstreamURL,
    reactor: Any,
    settings: PoolSettings,
    contexts: Any = None,
    protocols: Optional[Sequence[bytes]] = None,
) -> IStreamClientEndpoint:
    """
    The endpoint to connect to C{url} with: a plain TCP endpoint for an IP
    address (no name resolution on the connect path), a hostname endpoint
    otherwise; wrapped in TLS for C{https} and C{tls}: mTLS from C{contexts} (a
    L{easymesh.tls.registry.TLSContexts}) when the settings name the
    workload's certificate, else verified against the system's trust store.
    """
    connectTimeout = settings.connectTimeout
    endpoint: IStreamClientEndpoint
    if isIPAddress(url.host):
        endpoint = TCP4ClientEndpoint(reactor, url.host, url.port, timeout=connectTimeout)
    elif isIPv6Address(url.host):
        endpoint = TCP6ClientEndpoint(reactor, url.host, url.port, timeout=connectTimeout)
    else:
        endpoint = HostnameEndpoint(reactor, url.host, url.port, timeout=connectTimeout)
    if url.scheme in ("https", "tls"):
        if settings.tls is not None and contexts is not None:
            creator = contexts.client(settings.tls, url.host, protocols)
        else:
            from twisted.internet.ssl import optionsForClientTLS

            creator = optionsForClientTLS(url.host, acceptableProtocols=protocols)
        endpoint = wrapClientTLS(creator, endpoint)
    return endpoint


def requestHead(
    method: bytes,
    target: bytes,
    headers: Headers,
    authority: bytes,
    upgrade: Optional[bytes] = None,
) -> bytes:
    """
    The request line and header lines of a request, without framing
    headers and without the final blank line.  HTTP/1.1 requires C{Host}:
    a request without one (from an HTTP/1.0 client) is sent with the
    upstream's C{authority}.  A request that asks to switch to the
    protocols C{upgrade} carries C{Upgrade} and C{Connection: upgrade}
    (hop-by-hop fields, written here for this hop only).
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    if b"Host" not in rawHeaders(headers):
        parts += (b"Host: ", authority, b"\r\n")
    for name, values in headers.getAllRawHeaders():
        for value in values:
            parts += (name, b": ", value, b"\r\n")
    if upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    return b"".join(parts)


@implementer(IUpstream)
class HTTPUpstream:
    """
    An HTTP/1.1 upstream: lean L{H1Connection}s kept in one persistent
    L{HTTPConnectionPool}, which also retries a request once on a fresh
    connection when a reused one turns out to be closed.
    """

    def __init__(
        self,
        url: UpstreamURL,
        settings: PoolSettings,
        reactor: Any,
        breakers: Any = None,
        tls: Any = None,
    ) -> None:
        self.url = url
        self._breakers = breakers
        self._reactor = reactor
        self._timeout = settings.responseTimeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = settings.size
        # Twisted declares an int; it only hands the value to callLater.
        self.pool.cachedConnectionTimeout = settings.idle  # type: ignore[assignment]
        self.pool.retryAutomatically = True
        setConnectionFactory(
            self.pool,
            H1ConnectionFactory
            if breakers is None
            else partial(H1ConnectionFactory, observer=breakers)
        )
        self._endpoint = endpointFor(url, reactor, settings, tls)
        self._key = (url.scheme, url.host, url.port)
        self._authority = url.authority.encode("ascii")

    def request(
        self, request: Request, timeout: Optional[float] = None
    ) -> Deferred[Response]:
        """
        Send C{request}; see L{IUpstream.request}.

        @param timeout: Seconds to wait for the response head after the body
            is sent, instead of the pool settings' response timeout.
        """
        breakers = self._breakers
        pending = False
        if breakers is not None and not idleConnections(self.pool, self._key):
            # No idle connection: this request waits for a new one.
            if not breakers.canConnect():
                breakers.overflowed(MAX_CONNECTIONS)
                return fail(Overflow(MAX_CONNECTIONS))
            if not breakers.tryPending():
                return fail(Overflow(MAX_PENDING_REQUESTS))
            pending = True
        request.upstreamProtocol = "HTTP/1.1"
        attempt = Attempt(self._reactor, timeout if timeout is not None else self._timeout)
        body = request.body
        if body is not None:
            body = BodyEndWatch(body, attempt.endBody)
        # A request with a body is never switched (see the HTTP/1.1 edge).
        upgrade = request.upgrade if body is None else None
        upstreamRequest = UpstreamRequest(
            request.method,
            requestHead(request.method, request.target, request.headers, self._authority, upgrade),
            body,
            upgrade,
        )
        d = self.pool.getConnection(self._key, self._endpoint)
        if pending:
            d.addBoth(_pendingDone, breakers)
        d.addCallback(_send, upstreamRequest)
        attempt.deferred = d
        if body is None or attempt.bodyEnded:
            attempt.startTimer()
        d.addBoth(attempt.finished)
        return d.addCallbacks(_H1UpstreamResponse, asProxyError)

    def idleConnections(self) -> int:
        """
        Connections kept open in the pool, waiting for a request.
        """
        return len(idleConnections(self.pool, self._key))

    def close(self) -> Deferred[None]:
        """
        Close idle connections now, and each busy one as soon as it is done
        (a retired cluster's, or at stop): none is kept for reuse.
        """
        self.pool.cachedConnectionTimeout = 0
        return self.pool.closeCachedConnections()


class _H1UpstreamResponse(Response):
    """
    An HTTP/1.1 upstream's response, as the core sees it.
    """

    __slots__ = ("_h1",)

    def __init__(self, h1: H1Response) -> None:
        super().__init__(h1.code, h1.headers, h1.phrase)
        self._h1 = h1
        self.upgrade = h1.upgrade

    def tunnelEnd(self) -> Any:
        return self._h1.tunnelEnd()

    def deliverBody(self, sink: Any) -> None:
        deliverTo(self._h1, sink)

    def discard(self) -> None:
        discardBody(self._h1)

    def endsWithHead(self) -> bool:
        # A Content-Length of 0 (which carries no trailers): what a
        # Trailers-Only gRPC reply becomes on an HTTP/1.1 hop.
        return self._h1.length == 0


def _pendingDone(result: Any, breakers: Any) -> Any:
    breakers.pendingDone()
    return result


def _send(connection: Any, request: UpstreamRequest) -> Deferred[H1Response]:
    return connection.request(request)
