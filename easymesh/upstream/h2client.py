# -*- test-case-name: tests.test_h2client -*-
"""
HTTP/2 to upstreams, on the h2 library: one multiplexed connection carries
many requests, each on its own stream.

L{H2ClientConnection} is one connection: it sends a L{Request} as a stream
(its body within the peer's windows, then its trailers), and answers with
a L{Response} whose body is delivered with flow control as the
back-pressure (DATA is acknowledged only as the reader takes it).  A GOAWAY
fails the streams the peer never processed with L{StreamRefused}, which
the pool retries at once on another connection.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from easymesh.errors import UpstreamProtocolError, UpstreamReset
from easymesh.h2wire import (
    CONNECTION_SPECIFIC,
    DataHead,
    DeclaredLengths,
    FrameFilter,
    connection,
    declaredLength,
    field,
    fieldsOf,
    sendWithinWindow,
)
from easymesh.headers import BadField, trailerFields
from easymesh.interfaces import IConnectionTransport
from easymesh.message import Request, Response

_log = Logger()

#: Request body bytes held for the peer's window before the body's source
#: is paused; it is resumed below L{LOW_WATER}.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
#: The window this side grants each response stream (and the connection):
#: a response body is read ahead by at most this much.
WINDOW = 256 * 1024
#: Request fields not sent as such: connection-specific ones (RFC 9113
#: section 8.2.2), C{Host} (sent as C{:authority}), and C{te} (sent only as
#: C{te: trailers}).
_NOT_SENT = CONNECTION_SPECIFIC | frozenset((b"host", b"te"))


#: Streams opened before the peer's SETTINGS arrive.
INITIAL_STREAMS = 100


class StreamRefused(UpstreamReset):
    """
    The upstream refused a stream before processing it (C{REFUSED_STREAM},
    or above the last stream of its GOAWAY): safe to send again.
    """


@implementer(IPushProducer)
class _ClientStream:
    """
    One request on an HTTP/2 connection, and its response.
    """

    def __init__(self, connection: "H2ClientConnection", streamId: int) -> None:
        self.connection = connection
        self.id = streamId
        self.method = b"GET"
        self.deferred: Deferred[Response] = Deferred(self._cancel)
        self.response: Optional["_H2Response"] = None
        self.closed = False
        # The request body, going out.
        self.pending: List[bytes] = []
        self.pendingSize = 0
        self.bodyDone = False
        self.sourcePaused = False
        self.producer: Any = None
        self.body: Any = None

    # The request body's consumer.

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.pending.append(data)
        self.pendingSize += len(data)
        self.connection._flushStream(self)
        if self.pendingSize > HIGH_WATER and not self.sourcePaused and self.producer is not None:
            self.sourcePaused = True
            self.producer.pauseProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    # The response body's producer: the reader pauses and resumes it.

    def pauseProducing(self) -> None:
        if self.response is not None:
            self.response.paused = True

    def resumeProducing(self) -> None:
        response = self.response
        if response is not None and response.paused:
            response.paused = False
            unacked, response.unacked = response.unacked, 0
            self.connection._acknowledge(self.id, unacked)

    def stopProducing(self) -> None:
        self.connection._reset(self, ErrorCodes.CANCEL)

    def _cancel(self, d: Deferred[Response]) -> None:
        self.connection._reset(self, ErrorCodes.CANCEL, Failure(CancelledError()))


class _H2Response(Response):
    """
    An HTTP/2 upstream's response: its body is delivered as DATA arrives.
    """

    __slots__ = ("_stream", "sink", "buffered", "trailers", "ended", "failed", "paused", "unacked", "headEnded")

    def __init__(self, stream: _ClientStream, code: int, headers: Headers) -> None:
        super().__init__(code, headers)
        self._stream = stream
        self.sink: Any = None
        self.buffered: List[bytes] = []
        self.trailers: Optional[Headers] = None
        self.ended = False
        self.failed: Optional[Failure] = None
        self.paused = True  # until somebody reads
        self.unacked = 0
        #: Whether its HEADERS frame ended the stream (Trailers-Only).
        self.headEnded = False

    def endsWithHead(self) -> bool:
        return self.headEnded

    def deliverBody(self, sink: Any) -> None:
        self.sink = sink
        # Reading starts; the sink may pause it at once.
        self.paused = False
        sink.bodyStarted(self._stream)
        buffered, self.buffered = self.buffered, []
        for data in buffered:
            sink.bodyData(data)
        if self.failed is not None:
            sink.bodyFailed(self.failed)
        elif self.ended:
            sink.bodyEnded(self.trailers)
        elif not self.paused and self.unacked:
            unacked, self.unacked = self.unacked, 0
            self._stream.connection._acknowledge(self._stream.id, unacked)

    def discard(self) -> None:
        self._stream.stopProducing()


class H2ClientConnection(Protocol):
    """
    One HTTP/2 connection to an upstream.

    @param authority: What C{:authority} says when a request has no C{Host}.
    @param scheme: C{b"http"} or C{b"https"}, for C{:scheme}.
    @param clock: Times the keepalive PINGs.
    @param keepalive: Seconds without a frame from the peer before a PING
        is sent; as many again without an answer and the connection is
        closed.  L{None}: no keepalive.
    """

    transport: IConnectionTransport
    #: Told of this connection's opening and closing, if set.
    observer: Any = None
    #: Called with this connection when it can take another stream.
    onCapacity: Optional[Callable[["H2ClientConnection"], None]] = None
    #: Called with this connection once it is closed.
    onClose: Optional[Callable[["H2ClientConnection"], None]] = None

    def __init__(
        self, authority: bytes, scheme: bytes, clock: Any, keepalive: Optional[float] = 30.0
    ) -> None:
        self.authority = authority
        self.scheme = scheme
        self.clock = clock
        self.keepalive = keepalive
        config = H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=True,
        )
        self._conn = connection(config)
        self._streams: Dict[int, _ClientStream] = {}
        #: The streams with request bytes waiting for flow-control window.
        self._waiting: Dict[int, _ClientStream] = {}
        self.closed = False
        #: Whether the peer said GOAWAY: no new streams go on it.
        self.goingAway = False
        self.ready: Deferred[H2ClientConnection] = Deferred()
        self._keepaliveCall: Any = None
        self._pinged = False
        self._frames = FrameFilter()
        self._lengths = DeclaredLengths()

    # Capacity.

    @property
    def active(self) -> int:
        return len(self._streams)

    @property
    def capacity(self) -> int:
        """
        Streams it can take now (the peer's limit less those open).
        """
        if self.closed or self.goingAway:
            return 0
        limit = self._conn.remote_settings.max_concurrent_streams
        if not self.ready.called:
            # Until the peer's SETTINGS say otherwise, no more than the
            # value RFC 9113 recommends as a minimum: a peer that allows
            # fewer would refuse the rest, or close the connection.
            limit = min(limit, INITIAL_STREAMS)
        return max(0, limit - len(self._streams))

    # The connection.

    def connectionMade(self) -> None:
        # Frames are small and written as they are made: Nagle's algorithm
        # would hold each behind the peer's delayed ACK.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        conn = self._conn
        conn.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                # Not 0, though the peer may open none (push is off): the h2
                # library checks this limit before it sees that a HEADERS
                # frame is for a stream this side has just reset.
                SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(WINDOW - 65535)
        self._flush()
        if self.observer is not None:
            self.observer.connectionOpened()
        self._armKeepalive()

    def dataReceived(self, data: bytes) -> None:
        self._pinged = False
        self._armKeepalive()
        segments, goAways = self._frames.feed(data)
        for segment in segments:
            if isinstance(segment, DataHead):
                why = self._lengths.check(segment)
                if why is not None:
                    self._malformed(segment.streamId, why)
                continue
            try:
                events = self._conn.receive_data(segment)
            except H2Error as e:
                _log.warn(
                    "HTTP/2 connection to {authority} closed: {error}",
                    authority=self.authority.decode("ascii", "replace"),
                    error=str(e) or type(e).__name__,
                )
                self._flush()
                self._abort(Failure(UpstreamProtocolError(f"HTTP/2: {e}")))
                return
            for event in events:
                handler = _HANDLERS.get(type(event))
                if handler is not None:
                    handler(self, event)
        for goAway in goAways:
            self._goAway(goAway.lastStreamId)
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.closed and self.observer is not None:
            self.observer.connectionClosed()
        self.closed = True
        if self._keepaliveCall is not None and self._keepaliveCall.active():
            self._keepaliveCall.cancel()
        self._keepaliveCall = None
        streams, self._streams = self._streams, {}
        why = reason.getErrorMessage() if reason is not None else "connection closed"
        for stream in streams.values():
            self._fail(stream, Failure(UpstreamReset(why)))
        if not self.ready.called:
            self.ready.errback(Failure(UpstreamReset(why)))
        onClose, self.onClose = self.onClose, None
        if onClose is not None:
            onClose(self)

    def close(self) -> None:
        """
        Close once the open streams end (GOAWAY now).
        """
        self.goingAway = True
        if not self.closed and self.transport is not None:
            # GOAWAY on the side: the h2 library's own closes its state at
            # once, and the answers to the open streams would then be
            # refused as protocol errors.
            self._flush()
            frame = GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR)
            self.transport.write(frame.serialize())
            if not self._streams:
                self.transport.loseConnection()

    def _abort(self, reason: Failure) -> None:
        self.goingAway = True
        if self.transport is not None:
            self.transport.abortConnection()

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _armKeepalive(self) -> None:
        if self.keepalive is None or self.clock is None or self.closed:
            return
        call = self._keepaliveCall
        if call is not None and call.active():
            call.reset(self.keepalive)
        else:
            self._keepaliveCall = self.clock.callLater(self.keepalive, self._keepaliveDue)

    def _keepaliveDue(self) -> None:
        self._keepaliveCall = None
        if self.closed:
            return
        if self._pinged:
            # No answer to the last PING: the peer is gone.
            self._abort(Failure(UpstreamReset("no answer to a keepalive PING")))
            return
        self._pinged = True
        self._conn.ping(b"keepaliv")
        self._flush()
        self._keepaliveCall = self.clock.callLater(self.keepalive, self._keepaliveDue)

    # Sending a request.

    def request(self, request: Request, body: Any = None) -> Deferred[Response]:
        """
        Send C{request} on a new stream, with C{body} (a producer of its
        body, or L{None}) rather than its own C{body}.
        """
        if self.capacity <= 0:
            d: Deferred[Response] = Deferred()
            d.errback(Failure(StreamRefused("connection has no capacity")))
            return d
        conn = self._conn
        streamId = conn.get_next_available_stream_id()
        stream = _ClientStream(self, streamId)
        stream.method = request.method
        self._streams[streamId] = stream
        fields = [
            (b":method", request.method),
            (b":scheme", self.scheme),
            (b":authority", request.authority or self.authority),
            field(b":path", request.target),
        ]
        fields += fieldsOf(request.headers, _NOT_SENT)
        if request.headers.getRawHeaders(b"te") == [b"trailers"]:
            fields.append((b"te", b"trailers"))
        stream.body = body
        conn.send_headers(streamId, fields, end_stream=body is None)
        self._flush()
        if body is not None:
            stream.producer = body
            producing = body.startProducing(stream)
            producing.addCallbacks(self._bodyDone, self._bodyFailed, (stream,), None, (stream,))
        return stream.deferred

    def _bodyDone(self, _: Any, stream: _ClientStream) -> None:
        stream.bodyDone = True
        self._flushStream(stream)

    def _bodyFailed(self, reason: Failure, stream: _ClientStream) -> None:
        self._reset(stream, ErrorCodes.CANCEL, Failure(UpstreamReset(reason.getErrorMessage())))

    def _flushStream(self, stream: _ClientStream) -> None:
        if stream.closed or self.closed:
            self._waiting.pop(stream.id, None)
            return
        conn = self._conn
        pending = stream.pending
        stream.pendingSize -= sendWithinWindow(conn, stream.id, pending)
        if pending:
            self._waiting[stream.id] = stream
        else:
            self._waiting.pop(stream.id, None)
        if stream.sourcePaused and stream.pendingSize <= LOW_WATER and stream.producer is not None:
            stream.sourcePaused = False
            stream.producer.resumeProducing()
        if not pending and stream.bodyDone:
            stream.bodyDone = False
            trailers = getattr(stream.body, "trailers", None)
            if trailers is not None:
                conn.send_headers(stream.id, fieldsOf(trailers), end_stream=True)
            else:
                conn.send_data(stream.id, b"", end_stream=True)
        self._flush()

    # Events.

    def _settingsChanged(self, event: RemoteSettingsChanged) -> None:
        if not self.ready.called:
            self.ready.callback(self)
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            for stream in list(self._waiting.values()):
                self._flushStream(stream)
        self._capacityFreed()

    def _responseReceived(self, event: ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        headers = Headers()
        code = 0
        for name, value in event.headers:
            if name == b":status":
                code = int(value)
            elif name[:1] != b":":
                headers.addRawHeader(name, value)
        stream.response = response = _H2Response(stream, code, headers)
        response.headEnded = event.stream_ended is not None
        self._lengths.declare(stream.id, declaredLength(event.headers, stream.method))
        d, stream.deferred = stream.deferred, Deferred()
        d.callback(response)

    def _dataReceived(self, event: DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        response = stream.response if stream is not None else None
        if response is None:
            self._acknowledge(event.stream_id, event.flow_controlled_length)
            return
        if response.paused:
            response.unacked += event.flow_controlled_length
        else:
            self._acknowledge(event.stream_id, event.flow_controlled_length)
        if response.sink is None:
            response.buffered.append(event.data)
        else:
            response.sink.bodyData(event.data)

    def _trailersReceived(self, event: TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None or stream.response is None:
            return
        lines = [name + b": " + value for name, value in event.headers]
        try:
            stream.response.trailers = trailerFields(lines) if lines else None
        except BadField:
            self._reset(stream, ErrorCodes.PROTOCOL_ERROR, Failure(UpstreamProtocolError("bad trailers")))
            return
        why = self._lengths.ended(stream.id)
        if why is not None:
            self._malformed(stream.id, why)

    def _streamEnded(self, event: StreamEnded) -> None:
        stream = self._streams.pop(event.stream_id, None)
        if stream is None:
            return
        stream.closed = True
        response = stream.response
        if response is None:
            self._fail(stream, Failure(UpstreamProtocolError("stream ended without a response")))
        else:
            response.ended = True
            if response.sink is not None:
                response.sink.bodyEnded(response.trailers)
            # The response keeps what it needs of its stream; the ended
            # stream lets go of it, so that the two are not left a cycle.
            stream.response = None
        self._capacityFreed()

    def _streamReset(self, event: StreamReset) -> None:
        self._lengths.forget(event.stream_id)
        stream = self._streams.pop(event.stream_id, None)
        if stream is None:
            return
        stream.closed = True
        if event.error_code == ErrorCodes.REFUSED_STREAM and stream.response is None:
            reason = Failure(StreamRefused("stream refused by the upstream"))
        else:
            reason = Failure(UpstreamReset(f"stream reset by the upstream ({event.error_code!s})"))
        self._fail(stream, reason)
        self._capacityFreed()

    def _windowUpdated(self, event: WindowUpdated) -> None:
        if event.stream_id:
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                self._flushStream(stream)
        else:
            for stream in list(self._waiting.values()):
                self._flushStream(stream)

    def _terminated(self, event: ConnectionTerminated) -> None:
        self._goAway(event.last_stream_id or 0)

    def _goAway(self, last: int) -> None:
        """
        GOAWAY: streams above its last stream never reached the app, and
        are refused (to be sent again elsewhere); the others may finish.
        """
        self.goingAway = True
        for streamId in [s for s in self._streams if s > last]:
            stream = self._streams.pop(streamId)
            stream.closed = True
            self._fail(stream, Failure(StreamRefused("upstream said GOAWAY before this stream")))
        if not self._streams and self.transport is not None:
            self.transport.loseConnection()

    def _pingAcknowledged(self, event: PingAckReceived) -> None:
        self._pinged = False

    # Streams.

    def _acknowledge(self, streamId: int, size: int) -> None:
        if size and not self.closed:
            self._conn.acknowledge_received_data(size, streamId)
            self._flush()

    def _malformed(self, streamId: int, why: str) -> None:
        """
        The response on C{streamId} is malformed (RFC 9113 section 8.1.1),
        found before h2 sees the frame that makes it so: reset that stream
        alone.
        """
        stream = self._streams.get(streamId)
        if stream is not None:
            self._reset(stream, ErrorCodes.PROTOCOL_ERROR, Failure(UpstreamProtocolError(f"HTTP/2: {why}")))
            return
        self._lengths.forget(streamId)
        try:
            self._conn.reset_stream(streamId, ErrorCodes.PROTOCOL_ERROR)
        except H2Error:
            pass

    def _reset(self, stream: _ClientStream, code: int, reason: Optional[Failure] = None) -> None:
        self._lengths.forget(stream.id)
        if stream.closed:
            return
        stream.closed = True
        self._streams.pop(stream.id, None)
        if not self.closed:
            try:
                self._conn.reset_stream(stream.id, code)
            except H2Error:
                pass
            self._flush()
        self._fail(stream, reason or Failure(UpstreamReset("stream abandoned")))
        self._capacityFreed()

    def _fail(self, stream: _ClientStream, reason: Failure) -> None:
        stream.closed = True
        stream.pending = []
        self._waiting.pop(stream.id, None)
        if stream.response is not None and stream.response.unacked:
            # Nobody will read what a paused reader held back: give it to
            # the connection's window, which the other streams share.
            unacked, stream.response.unacked = stream.response.unacked, 0
            self._acknowledge(stream.id, unacked)
        if stream.producer is not None:
            stream.producer.stopProducing()
            stream.producer = None
        response = stream.response
        if response is None:
            d, stream.deferred = stream.deferred, Deferred()
            if not d.called:
                d.errback(reason)
        else:
            if not response.ended and response.failed is None:
                response.failed = reason
                if response.sink is not None:
                    response.sink.bodyFailed(reason)
            stream.response = None

    def _capacityFreed(self) -> None:
        if self.goingAway and not self._streams and self.transport is not None and not self.closed:
            self.transport.loseConnection()
            return
        if self.onCapacity is not None and self.capacity > 0:
            self.onCapacity(self)


_HANDLERS: Dict[type, Any] = {
    RemoteSettingsChanged: H2ClientConnection._settingsChanged,
    ResponseReceived: H2ClientConnection._responseReceived,
    DataReceived: H2ClientConnection._dataReceived,
    TrailersReceived: H2ClientConnection._trailersReceived,
    StreamEnded: H2ClientConnection._streamEnded,
    StreamReset: H2ClientConnection._streamReset,
    WindowUpdated: H2ClientConnection._windowUpdated,
    ConnectionTerminated: H2ClientConnection._terminated,
    PingAckReceived: H2ClientConnection._pingAcknowledged,
}
