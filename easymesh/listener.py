# -*- test-case-name: tests.test_listener -*-
"""
The HTTP/1.1 edge of a listener: a twisted.web L{Site} whose one resource
turns each request into a L{ProxyRequest}, hands it to the listener's
L{Forwarder} and relays the reply, streaming the body with back-pressure.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web._newclient import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from twisted.web.resource import Resource
from zope.interface import implementer

from easymesh.accesslog import AccessLog
from easymesh.config.model import EdgeLimits
from easymesh.errors import (
    CLIENT_CLOSED,
    ERROR_HEADER,
    INTERNAL_ERROR,
    UPSTREAM_RESET_MID_BODY,
    BadRequest,
    StreamIdleTimeout,
    replyFor,
)
from easymesh.forwarder import Forwarder
from easymesh.h1server import DeadlineSweeper, HTTP1Channel
from easymesh.headers import REQUEST_ID
from easymesh.inflight import InFlight
from easymesh.message import LocalReply, ProxyRequest, discardResponse
from easymesh.requestbody import EmptyBody, RequestBodyStream

_EMPTY = EmptyBody()
_log = Logger()


class StreamingRequest(server.Request):
    """
    A request that starts proxying as soon as its headers are in and
    streams its body (no buffering in memory or temporary files).

    @ivar body: The body for the upstream, or L{None} if it has none.
    """

    body: Optional[IBodyProducer] = None
    _stream: Optional[RequestBodyStream] = None
    #: Called once with L{None} when the response is finished, or with the
    #: reason when the connection is lost first.
    onDone: Optional[Callable[[Optional[Failure]], None]] = None

    # Constant defaults live on the class, so that a request costs only what
    # differs per request.
    queued = False
    cookies: Any = ()
    received_cookies: Any = {}
    defaultContentType = None
    _parsePOSTFormSubmission = False

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.transport = channel.transport
        self.client = channel.peer
        self.host = channel.local
        self.notifications = []
        self.responseHeaders = Headers()

    def gotLength(self, length: Optional[int]) -> None:
        """
        The head is in (method, target, version and headers are set); a body
        of C{length} bytes (L{None}: chunked) follows.
        """
        self.content = None
        if length is None or length > 0:
            channel = self.channel
            self.body = self._stream = RequestBodyStream(
                length,
                lambda: channel.pauseReading("body"),
                lambda: channel.resumeReading("body"),
            )
        elif self.requestHeaders.hasHeader(b"content-length"):
            self.body = _EMPTY

    def bodyStarts(self) -> None:
        """
        A body follows the head: start proxying now.
        """
        self.process()

    def handleContentChunk(self, data: bytes) -> None:
        if self._stream is not None:
            self._stream.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._stream is not None:
            # The whole body is in; proxying began at bodyStarts.
            self._stream.finish()
        else:
            self.process()

    def process(self) -> None:
        self.site = site = self.channel.site
        try:
            site.resource.render(self)
        except BaseException:
            # Never Twisted's HTML error page: the sidecar's own reply.
            reply = replyFor(Failure())
            errorLog = getattr(site.resource, "errorLog", None)
            if errorLog is not None:
                name = getattr(site.resource, "name", "-")
                errorLog.report(name, reply.code, reply.cause, reply.detail, None)
            else:
                _log.error(
                    "{request}: {cause}: {detail}",
                    request=self,
                    cause=reply.cause,
                    detail=reply.detail,
                )
            _rescue(self, reply)

    @property
    def bytesReceived(self) -> int:
        """
        Body bytes received from the client so far.
        """
        return self._stream.received if self._stream is not None else 0

    def bodyIncomplete(self) -> bool:
        """
        Whether the client is still sending this request's body.
        """
        return self._stream is not None and not self._stream.complete

    def finish(self) -> None:
        if self.bodyIncomplete() and self.channel is not None:
            # Answered before the body ended: drop the rest of it and close,
            # so no part of it is read as a new request.
            self.channel.discardBody()
            self._stream.stopProducing()  # type: ignore[union-attr]
        super().finish()
        self._done(None)

    def connectionLost(self, reason: Failure) -> None:
        if self._stream is not None:
            self._stream.fail(reason)
        super().connectionLost(reason)
        self._done(reason)

    def _done(self, reason: Optional[Failure]) -> None:
        onDone, self.onDone = self.onDone, None
        if onDone is not None:
            onDone(reason)


def _originForm(request: server.Request) -> bytes:
    """
    The request target in origin form; an absolute-form target's authority
    replaces C{Host} (RFC 9112 section 3.2.2).

    @raise BadRequest: The target is neither form.
    """
    target = request.uri
    if target[:1] == b"/":
        return target
    if b"://" in target[:10]:
        parts = urlsplit(target)
        if parts.scheme in (b"http", b"https") and parts.netloc:
            request.requestHeaders.setRawHeaders(b"host", [parts.netloc])
            path = parts.path or b"/"
            return path + (b"?" + parts.query if parts.query else b"")
    raise BadRequest(f"unsupported request target {target[:100]!r}")


def _writeLocal(request: server.Request, reply: LocalReply) -> None:
    """
    Send a reply the sidecar made, whole.
    """
    request.setResponseCode(reply.code, reply.phrase or None)
    request.responseHeaders = reply.headers
    if reply.code != 304:
        reply.headers.setRawHeaders(b"content-length", [b"%d" % len(reply.body)])
    request.write(reply.body)
    request.finish()


def _rescue(request: server.Request, reply: LocalReply) -> None:
    """
    Answer a request whose handling failed unexpectedly with C{reply} (from
    L{replyFor}: 500 C{internal_error} for a bug), or, if its response has
    begun or cannot be sent, abort the connection, so that nothing cut
    short passes for a whole response.
    """
    if request._disconnected:
        return
    if not request.startedWriting:
        try:
            _writeLocal(request, reply)
            return
        except Exception:
            # Sending failed as well: the abort below ends the request.
            pass
    request.channel.transport.abortConnection()


#: Causes the error log reports even when the status sent is not a 5xx:
#: the response was cut off.
_CUT_OFF = (UPSTREAM_RESET_MID_BODY, INTERNAL_ERROR, StreamIdleTimeout.cause)


@implementer(IPushProducer)
class _BodyRelay(Protocol):
    """
    Relay an upstream response body to the client; the client's
    back-pressure pauses the upstream connection.
    """

    def __init__(self, exchange: "_Exchange") -> None:
        self.exchange = exchange

    def connectionMade(self) -> None:
        self.exchange.request.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        exchange.moved()
        exchange.request.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.exchange.bodyEnded(reason)

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()


class _Exchange:
    """
    One request on a listener, from its arrival to the end of its response.

    While its request body is arriving or its response body is being
    relayed, the body bytes moving either way are timed: once none has
    moved for its cluster's stream idle timeout (checked by the listener's
    L{ProxyResource.streams} once a second), the upstream connection is
    closed and the client answered 504, or dropped if its response has
    begun.  A client that does not read pauses the upstream, so it too
    stops the bytes and is timed out.

    @ivar movedAt: When a body byte last moved (or the exchange began, or
        its response head arrived).
    @ivar idle: The reply for its stream idle timeout, once it has timed
        out.
    """

    def __init__(self, resource: "ProxyResource", request: server.Request) -> None:
        self.resource = resource
        self.request = request
        self.started = self.movedAt = resource.clock.seconds()
        self.pending: Optional[Deferred[Any]] = None
        self.relay: Optional[_BodyRelay] = None
        self.cause: Optional[str] = None
        #: What this sidecar says of an error it made, for the error log.
        self.detail: Optional[str] = None
        self.proxied: Optional[ProxyRequest] = None
        self.idle: Optional[LocalReply] = None
        body = getattr(request, "body", None)
        if isinstance(body, RequestBodyStream) and not body.complete:
            body.onData = self.moved
            resource.streams.add(self)

    def moved(self) -> None:
        """
        Body bytes moved, from the client or to it.
        """
        self.movedAt = self.resource.clock.seconds()

    @property
    def deadline(self) -> Optional[float]:
        """
        When its streaming bodies time out; L{None} while none streams or
        before its cluster (and so its timeout) is known.
        """
        proxied = self.proxied
        timeout = proxied.streamIdleTimeout if proxied is not None else None
        if timeout is None or self.idle is not None:
            return None
        if self.relay is None and not self.request.bodyIncomplete():
            return None
        return self.movedAt + timeout

    def _timedOut(self) -> None:
        """
        No body byte has moved for the stream idle timeout: close the
        upstream connection, and answer 504, or drop the client if its
        response has begun.
        """
        assert self.proxied is not None
        seconds = self.proxied.streamIdleTimeout
        self.idle = idle = StreamIdleTimeout(
            f"no body bytes moved either way for {seconds:g}s"
        ).reply()
        request = self.request
        relay = self.relay
        if relay is not None:
            relay.transport.stopProducing()
            request.unregisterProducer()
        pending, self.pending = self.pending, None
        if pending is not None:
            # Closes the upstream connection; respond() answers 504 for
            # whatever the cancellation then yields.
            pending.cancel()
        if request.finished or request._disconnected:
            return
        if request.startedWriting:
            self._abort(idle.cause, idle.detail)
        else:
            self.respond(idle)

    def _abort(self, cause: Optional[str], detail: str) -> None:
        """
        Drop the client in the middle of its response, so that a truncated
        body is never presented as complete.
        """
        self.cause = cause
        self.detail = detail
        self.request.channel.transport.abortConnection()

    def respond(self, reply: Union[IResponse, LocalReply]) -> None:
        self.pending = None
        request = self.request
        if request._disconnected or request.finished:
            if not isinstance(reply, LocalReply):
                discardResponse(reply)
            return
        if self.idle is not None and reply is not self.idle:
            # Timed out while waiting for it: the answer is the timeout's.
            if not isinstance(reply, LocalReply):
                discardResponse(reply)
            reply = self.idle
        if self.resource.inflight.draining or request.bodyIncomplete():
            reply.headers.setRawHeaders(b"connection", [b"close"])
            request.channel.persistent = False
        if isinstance(reply, LocalReply):
            self.cause = reply.cause
            self.detail = reply.detail
            _writeLocal(request, reply)
            return
        request.setResponseCode(reply.code, reply.phrase or None)
        request.responseHeaders = reply.headers
        errors = reply.headers.getRawHeaders(ERROR_HEADER)
        if errors:
            self.cause = errors[0].decode("latin-1")
        self.relay = _BodyRelay(self)
        # The response head counts as movement: its body is timed from now.
        self.moved()
        self.resource.streams.add(self)
        reply.deliverBody(self.relay)

    def failed(self, failure: Failure) -> None:
        """
        Answering this request failed unexpectedly (a bug): answer with the
        sidecar's reply for the failure, or drop the client if the response
        has begun; the logs say why, once, when the request ends.
        """
        self.pending = None
        reply = replyFor(failure)
        self.cause = reply.cause
        self.detail = reply.detail
        _rescue(self.request, reply)

    def bodyEnded(self, reason: Failure) -> None:
        request = self.request
        if request._disconnected or self.idle is not None:
            return
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
        else:
            self._abort(UPSTREAM_RESET_MID_BODY, reason.getErrorMessage())

    def finished(self, result: Optional[Failure]) -> None:
        resource = self.resource
        resource.inflight.leave()
        resource.streams.remove(self)
        request = self.request
        if result is not None:
            if self.pending is not None:
                self.pending.cancel()
            elif self.relay is not None and self.relay.transport is not None:
                self.relay.transport.stopProducing()
            if self.cause is None:
                self.cause = CLIENT_CLOSED
        duration = resource.clock.seconds() - self.started
        status = request.code if request.startedWriting else 0
        if (
            self.detail is not None
            and self.cause is not None
            and (status >= 500 or self.cause in _CUT_OFF)
            and resource.errorLog is not None
        ):
            resource.errorLog.report(resource.name, status, self.cause, self.detail, self.proxied)
        telemetry = resource.telemetry
        if telemetry is not None:
            telemetry.requestDone(
                resource.name,
                self.proxied,
                status,
                duration,
                self.cause,
                request.method,
                request.uri,
            )
        if resource.accessLog is not None:
            ids = request.requestHeaders.getRawHeaders(REQUEST_ID)
            proxied = self.proxied
            resource.accessLog.record(
                resource.name,
                request.method,
                request.uri,
                status,
                request.bytesReceived,
                request.sentLength,
                duration,
                proxied,
                ids[0] if ids else None,
                self.cause,
                self.started,
            )


class ProxyResource(Resource):
    """
    Proxy every request under it through a L{Forwarder}.
    """

    isLeaf = True

    def __init__(
        self,
        name: str,
        forwarder: Forwarder,
        clock: Any,
        inflight: Optional[InFlight] = None,
        accessLog: Optional[AccessLog] = None,
        telemetry: Any = None,
        errorLog: Any = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.forwarder = forwarder
        self.clock = clock
        self.inflight = inflight if inflight is not None else InFlight()
        self.accessLog = accessLog
        #: An L{easymesh.ops.telemetry.Telemetry} told of every request and
        #: connection, or L{None}.
        self.telemetry = telemetry
        #: An L{easymesh.errorlog.ErrorLog} for the errors this listener
        #: answers with, or L{None}.
        self.errorLog = errorLog
        #: Times out the exchanges whose bodies stream and have stopped
        #: moving (see L{_Exchange}).
        self.streams = DeadlineSweeper(clock)

    def render(self, request: StreamingRequest) -> Any:
        exchange = _Exchange(self, request)
        self.inflight.enter()
        request.onDone = exchange.finished
        try:
            self._start(exchange, request)
        except BaseException:
            exchange.failed(Failure())
        return server.NOT_DONE_YET

    def _start(self, exchange: _Exchange, request: StreamingRequest) -> None:
        try:
            target = _originForm(request)
        except BadRequest as e:
            exchange.respond(e.reply())
            return
        body = request.body
        proxied = ProxyRequest(
            request.method,
            target,
            request.requestHeaders,
            body,
            getattr(request.client, "host", ""),
            request.channel.scheme,
            request.clientproto[5:],
            self.name,
            request.channel.peerIdentity,
        )
        exchange.proxied = proxied
        d = self.forwarder.forward(proxied)
        # Kept even if "called": a Deferred waiting on another (a request on
        # a reused pooled connection) has been called already, and must
        # still be cancelled if the client goes away.  respond() clears it.
        exchange.pending = d
        d.addCallback(exchange.respond).addErrback(exchange.failed)


class ProxySite(server.Site):
    """
    A L{server.Site} for a proxy listener: no per-request logging of its own
    (the access log is easymesh's), no tracebacks to clients.
    """

    displayTracebacks = False
    noisy = False
    #: Over mTLS, the caller identity patterns accepted (see
    #: L{easymesh.tls.identity}); L{None} without TLS.
    allowedIdentities: Optional[Any] = None
    requestFactory = StreamingRequest
    protocol = HTTP1Channel
    #: Whether connections are reported to the resource's telemetry.
    countsConnections = True

    def __init__(self, resource: Any, limits: EdgeLimits = EdgeLimits(), **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.limits = limits
        self.sweeper = DeadlineSweeper(self.reactor)
        self._overflowing = False

    def buildProtocol(self, addr: Any) -> Any:
        if self.sweeper.open >= self.limits.maxConnections:
            # Refused: Twisted closes the accepted socket at once.
            if not self._overflowing:
                self._overflowing = True
                _log.warn(
                    "{site} has {count} connections open, its limit: refusing more",
                    site=self,
                    count=self.sweeper.open,
                )
            return None
        self._overflowing = False
        channel = super().buildProtocol(addr)
        channel.limits = self.limits
        channel.sweeper = self.sweeper
        telemetry = getattr(self.resource, "telemetry", None) if self.countsConnections else None
        if telemetry is not None:
            name = self.resource.name
            telemetry.connectionOpened(name)
            channel.onClose = lambda: telemetry.connectionClosed(name)
        return channel

    def stopFactory(self) -> None:
        self.sweeper.stop()
        super().stopFactory()

    def log(self, request: server.Request) -> None:
        pass


class MutualTLSFactory(TLSMemoryBIOFactory):
    """
    TLS in front of a L{ProxySite}: connections the site refuses (over its
    connection limit) are closed at once rather than wrapped.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)
