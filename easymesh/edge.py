# -*- test-case-name: tests.test_edge -*-
"""
What every edge (the protocol side of a listener) shares: the lifecycle of
one exchange, from a request's arrival to the end of its response, and
the check of an mTLS caller's identity.

An edge parses its protocol into an L{easymesh.message.Request}, gives it
to its listener's L{Exchange} with an L{easymesh.interfaces.IResponder}
that frames the response, and tells the exchange when the response is
done or the client is gone.  The exchange does the rest: the forwarder,
the one rescue of a failure, relaying the response body with
back-pressure, the stream idle timeout, a gRPC call's deadline, the
tunnel a protocol switch makes of the two connections (the end of the
exchange's life), and one report to the in-flight count, telemetry, the
access log and the error log.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from easymesh.errors import (
    CLIENT_CLOSED,
    ERROR_HEADER,
    INTERNAL_ERROR,
    UPSTREAM_RESET_MID_BODY,
    CAUSES,
    DeadlineExceeded,
    StreamIdleTimeout,
    replyFor,
)
from easymesh.grpc import GRPC_TIMEOUT, errorTrailers, grpcReply, isGrpc, parseTimeout, statusOf
from easymesh.headers import REQUEST_ID
from easymesh.interfaces import IBodySink
from easymesh.message import LocalReply, Request, Response
from easymesh.requestbody import RequestBodyStream
from easymesh.tunnel import Tunnel

_log = Logger()

#: Causes the error log reports even when the status sent is not a 5xx:
#: the response was cut off.
_CUT_OFF = (UPSTREAM_RESET_MID_BODY, INTERNAL_ERROR, StreamIdleTimeout.cause, DeadlineExceeded.cause)


@implementer(IBodySink)
class Exchange:
    """
    One request on a listener, from its arrival to the end of its response.

    While its request body is arriving or its response body is being
    relayed, the body bytes moving either way are timed: once none has
    moved for its cluster's stream idle timeout (checked by the listener's
    C{streams} sweeper once a second), the upstream connection is closed and
    the client answered 504, or dropped if its response has begun.  A
    client that does not read pauses the upstream, so it too stops the
    bytes and is timed out.

    A gRPC call (L{easymesh.grpc.isGrpc}) is answered in gRPC's terms
    when the sidecar answers it itself (L{easymesh.grpc.grpcReply}), and
    its C{grpc-timeout} bounds it whole: once that passes, its upstream
    stream is reset and the client answered C{DEADLINE_EXCEEDED}, as a
    Trailers-Only reply or, if its response has begun, in trailers (over
    HTTP/2; an HTTP/1.1 client is dropped).

    @ivar listener: The listener's shared parts: C{name}, C{forwarder},
        C{clock}, C{inflight}, C{streams}, C{telemetry}, C{accessLog} and
        C{errorLog} (see L{easymesh.listener.ProxyResource}).
    @ivar movedAt: When a body byte last moved (or the exchange began, or
        its response head was sent).
    @ivar expired: The reply for its stream idle timeout or its deadline,
        once either passed.
    @ivar grpc: Whether the request is a gRPC call.
    @ivar grpcStatus: The C{grpc-status} its response carried, once known.
    """

    def __init__(self, listener: Any, request: Request, responder: Any, target: bytes) -> None:
        self.listener = listener
        self.request = request
        self.responder = responder
        #: The request target as received, for the logs.
        self.target = target
        self.started = self.movedAt = listener.clock.seconds()
        self.pending: Optional[Deferred[Any]] = None
        self.producer: Optional[IPushProducer] = None
        self.status = 0
        self.sent = 0
        self.cause: Optional[str] = None
        #: What this sidecar says of an error it made, for the error log.
        self.detail: Optional[str] = None
        self.expired: Optional[LocalReply] = None
        self.ended = False
        self.grpc = isGrpc(request.headers)
        self.grpcStatus: Optional[int] = None
        self._deadlineCall: Any = None
        #: Once the upstream switched protocols, the tunnel this exchange
        #: ends with.
        self.tunnel: Optional[Tunnel] = None
        body = request.body
        if isinstance(body, RequestBodyStream) and not body.complete:
            body.onData = self.moved
            listener.streams.add(self)

    def start(self) -> None:
        """
        Forward the request; whatever happens is answered.
        """
        self.listener.inflight.enter()
        if self.grpc:
            self._startDeadline()
        try:
            d = self.listener.forwarder.forward(self.request)
        except BaseException:
            self.failed(Failure())
            return
        # Kept even if "called": a Deferred waiting on another (a request on
        # a reused pooled connection) has been called already, and must
        # still be cancelled if the client goes away.  respond() clears it.
        self.pending = d
        d.addCallback(self.respond).addErrback(self.failed)

    # The response.

    def respond(self, reply: Response) -> None:
        """
        Send C{reply}'s head, then relay its body.
        """
        self.pending = None
        responder = self.responder
        if self.ended or responder.closed:
            reply.discard()
            return
        if self.expired is not None and reply is not self.expired:
            # Timed out while waiting for it: the answer is the timeout's.
            reply.discard()
            reply = self.expired
        if reply.upgrade is not None:
            self._switch(reply)
            return
        if self.grpc:
            reply = self._grpcHead(reply)
        headers = reply.headers
        if self.listener.inflight.draining or responder.bodyIncomplete():
            headers.setRawHeaders(b"connection", [b"close"])
            responder.closeAfterResponse()
        if isinstance(reply, LocalReply):
            self.cause = reply.cause
            self.detail = reply.detail
            if reply.code != 304 and reply.trailers is None:
                headers.setRawHeaders(b"content-length", [b"%d" % len(reply.body)])
        else:
            errors = headers.getRawHeaders(ERROR_HEADER)
            if errors:
                self.cause = errors[0].decode("latin-1")
            # The response head counts as movement: its body is timed from now.
            self.moved()
            self.listener.streams.add(self)
        self.status = reply.code
        responder.sendHead(reply.code, reply.phrase, headers, reply.endsWithHead())
        reply.deliverBody(self)

    def _switch(self, reply: Response) -> None:
        """
        The upstream switched protocols: relay its C{101}, and make the
        client's connection and the upstream's one tunnel, which ends this
        exchange when it ends.
        """
        upstream = reply.tunnelEnd()
        switch = getattr(self.responder, "switchProtocols", None)
        if upstream is None or switch is None or self.request.upgrade is None:
            # An edge that cannot switch (HTTP/2) never asks to.
            reply.discard()
            self.failed(Failure(RuntimeError(f"a switch to {reply.upgrade!r} not asked for")))
            return
        request = self.request
        self.status = reply.code
        client = switch(reply.phrase, reply.headers, reply.upgrade)
        self.tunnel = Tunnel(
            client,
            upstream,
            self.listener.clock,
            request.tunnelIdleTimeout,
            request.tunnelMaxLifetime,
            self._tunnelEnded,
        )
        # Timed by its sweeper from now on as a tunnel (see deadline).
        self.listener.streams.add(self)
        telemetry = self.listener.telemetry
        if telemetry is not None:
            telemetry.tunnelOpened(self.listener.name)
        self.tunnel.start()

    def _tunnelEnded(self, how: str) -> None:
        tunnel = self.tunnel
        assert tunnel is not None
        self.sent = tunnel.fromUpstream
        telemetry = self.listener.telemetry
        if telemetry is not None:
            telemetry.tunnelClosed(self.listener.name, how, tunnel.fromClient, tunnel.fromUpstream)
        self.done(None)

    def bodyStarted(self, producer: IPushProducer) -> None:
        self.producer = producer
        self.responder.setProducer(producer)

    def bodyData(self, data: bytes) -> None:
        self.movedAt = self.listener.clock.seconds()
        self.sent += len(data)
        self.responder.sendData(data)

    def bodyEnded(self, trailers: Optional[Headers]) -> None:
        if self.ended or self.responder.closed:
            return
        if self.grpc and self.grpcStatus is None:
            self.grpcStatus = statusOf(trailers)
        self.producer = None
        self.responder.setProducer(None)
        self.responder.finish(trailers)

    def bodyFailed(self, reason: Failure) -> None:
        if self.ended or self.responder.closed or self.expired is not None:
            # (Timed out: the exchange stopped the body itself.)
            return
        self.producer = None
        self.responder.setProducer(None)
        value = reason.value
        detail = getattr(value, "detail", "") or str(value) or type(value).__name__
        if self._endsWithTrailers():
            self._grpcEnd(UPSTREAM_RESET_MID_BODY, detail)
        else:
            self._abort(UPSTREAM_RESET_MID_BODY, detail)

    # Failures and timeouts.

    def failed(self, failure: Failure) -> None:
        """
        Answering this request failed unexpectedly (a bug): answer with the
        sidecar's reply for the failure, or drop the client if the response
        has begun; the logs say why, once, when the exchange ends.  The one
        rescue point of every edge.
        """
        self.pending = None
        reply = replyFor(failure)
        self.cause = reply.cause
        self.detail = reply.detail
        responder = self.responder
        if self.ended or responder.closed:
            return
        if not responder.started:
            try:
                self.respond(reply)
                return
            except Exception:
                # Sending failed as well: the abort below ends the exchange.
                _log.failure("Answering {request} failed", request=self.request)
        responder.abort()

    def moved(self) -> None:
        """
        Body bytes moved, from the client or to it.
        """
        self.movedAt = self.listener.clock.seconds()

    @property
    def deadline(self) -> Optional[float]:
        """
        When its streaming bodies time out; L{None} while none streams or
        before its cluster (and so its timeout) is known.
        """
        if self.tunnel is not None:
            return self.tunnel.deadline
        timeout = self.request.streamIdleTimeout
        if timeout is None or self.expired is not None or self.ended:
            return None
        if self.producer is None and not self.responder.bodyIncomplete():
            return None
        return self.movedAt + timeout

    def _timedOut(self) -> None:
        """
        No body byte has moved for the stream idle timeout: close the
        upstream connection, and answer 504, or drop the client if its
        response has begun.  A tunnel has timeouts of its own.
        """
        if self.tunnel is not None:
            self.tunnel.timedOut()
            return
        seconds = self.request.streamIdleTimeout or 0
        self._expire(StreamIdleTimeout(f"no body bytes moved either way for {seconds:g}s").reply())

    def _expire(self, reply: LocalReply) -> None:
        """
        A timeout passed: stop the upstream (closing its connection, or
        resetting its stream), and answer with C{reply}, or end or drop
        the response if it has begun.
        """
        self.expired = reply
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
            self.responder.setProducer(None)
        pending, self.pending = self.pending, None
        if pending is not None:
            # Closes the upstream connection; respond() answers 504 for
            # whatever the cancellation then yields.
            pending.cancel()
        if self.ended or self.responder.closed:
            return
        if not self.responder.started:
            self.respond(reply)
        elif self._endsWithTrailers():
            self._grpcEnd(reply.cause or DeadlineExceeded.cause, reply.detail)
        else:
            self._abort(reply.cause, reply.detail)

    # gRPC.

    def _startDeadline(self) -> None:
        """
        Time a gRPC call by its C{grpc-timeout}, if it has a valid one.
        """
        values = self.request.headers.getRawHeaders(GRPC_TIMEOUT)
        seconds = parseTimeout(values[0]) if values else None
        if seconds is None:
            return
        self.request.deadline = self.started + seconds
        self._deadlineCall = self.listener.clock.callLater(seconds, self._deadlinePassed)

    def _deadlinePassed(self) -> None:
        self._deadlineCall = None
        self._expire(DeadlineExceeded("the call's deadline passed").reply())

    def _grpcHead(self, reply: Response) -> Response:
        """
        C{reply} as a gRPC client reads it, noting its status if its head
        carries one; and the deadline, which the route may have brought
        forward, timed anew.
        """
        if isinstance(reply, LocalReply) and (reply.cause is not None or reply.code >= 400):
            reply = grpcReply(reply)
        self.grpcStatus = statusOf(reply.headers)
        call, deadline = self._deadlineCall, self.request.deadline
        if call is not None and deadline is not None and call.getTime() > deadline:
            call.reset(max(0.0, deadline - self.listener.clock.seconds()))
        return reply

    def _endsWithTrailers(self) -> bool:
        """
        Whether a response cut short is ended with a gRPC status in its
        trailers rather than dropped: a gRPC call over HTTP/2, whose client
        then reads the status (an HTTP/1.1 client is dropped, so that a
        short body never passes for a whole one).
        """
        return self.grpc and self.request.version == b"2"

    def _grpcEnd(self, cause: str, detail: str) -> None:
        """
        End a gRPC response that has begun with the status of C{cause} in
        its trailers.
        """
        row = CAUSES[cause]
        self.cause = cause
        self.detail = detail
        self.grpcStatus = int(row.grpc)
        self.responder.setProducer(None)
        self.responder.finish(errorTrailers(row.grpc, row.message, cause))

    def _abort(self, cause: Optional[str], detail: str) -> None:
        """
        Drop the client in the middle of its response, so that a truncated
        body is never presented as complete.
        """
        self.cause = cause
        self.detail = detail
        self.responder.abort()

    # The end.

    def done(self, reason: Optional[Failure] = None) -> None:
        """
        The edge is done with this exchange: its response was sent whole
        (C{reason} L{None}), or the client went away first.  Reported once.
        """
        if self.ended:
            return
        self.ended = True
        listener = self.listener
        listener.inflight.leave()
        listener.streams.remove(self)
        call, self._deadlineCall = self._deadlineCall, None
        if call is not None and call.active():
            call.cancel()
        body = self.request.body
        if isinstance(body, RequestBodyStream):
            # No longer timed; nor left holding this exchange in a cycle.
            body.onData = None
        if reason is not None:
            pending, self.pending = self.pending, None
            producer, self.producer = self.producer, None
            if pending is not None:
                pending.cancel()
            elif producer is not None:
                producer.stopProducing()
            if self.cause is None:
                self.cause = CLIENT_CLOSED
        self._report()

    def _report(self) -> None:
        listener = self.listener
        request = self.request
        duration = listener.clock.seconds() - self.started
        status = self.status if self.responder.started else 0
        cause = self.cause
        if (
            self.detail is not None
            and cause is not None
            and (status >= 500 or cause in _CUT_OFF)
            and listener.errorLog is not None
        ):
            listener.errorLog.report(listener.name, status, cause, self.detail, request)
        telemetry = listener.telemetry
        if telemetry is not None:
            telemetry.requestDone(
                listener.name,
                request,
                status,
                duration,
                cause,
                request.method,
                self.target,
                self.grpcStatus,
                self.grpc,
            )
        if listener.accessLog is not None:
            ids = request.headers.getRawHeaders(REQUEST_ID)
            body = request.body
            tunnel = self.tunnel
            if tunnel is not None:
                received = tunnel.fromClient
            else:
                received = body.received if isinstance(body, RequestBodyStream) else 0
            listener.accessLog.record(
                listener.name,
                request.method,
                self.target,
                status,
                received,
                self.sent,
                duration,
                request,
                ids[0] if ids else None,
                cause,
                self.started,
                self.grpcStatus,
                tunnel.how if tunnel is not None else None,
            )


def admitCaller(transport: Any, allowed: Any, peer: Any) -> Optional[str]:
    """
    The identity of an mTLS caller whose handshake has just completed, if
    C{allowed} (identity patterns, see L{easymesh.tls.identity}) accepts
    it; else L{None}, logged: the edge then closes the connection.  The one
    connection-level identity check of every edge.
    """
    from easymesh.tls.contexts import peerCertificate
    from easymesh.tls.identity import describeIdentities, matches

    cert = peerCertificate(transport)
    identity = matches(allowed, cert) if cert is not None else None
    if identity is None:
        _log.warn(
            "Refused mTLS client {peer}: {presented} is not allowed",
            peer=peerAddress(peer),
            presented=_presented(describeIdentities(cert)),
        )
    return identity


def _presented(described: str) -> str:
    """
    What a refused client presented, for a log line.
    """
    if described == "no identity":
        return "a certificate with no identity"
    if described == "no certificate":
        return "no certificate"
    return f"identity {described}"


def peerAddress(address: Any) -> str:
    """
    C{host:port} of an address, for a log line.
    """
    return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"

