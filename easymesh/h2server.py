# -*- test-case-name: tests.test_h2server -*-
"""
The HTTP/2 edge (RFC 9113), on the h2 library: one client connection, each
of its streams an exchange of the listener's core, as an HTTP/1.1 request
is.

A listener's HTTP/1.1 channel hands its connection over to an L{H2Edge}
when the client starts with the HTTP/2 connection preface (prior-knowledge
h2c) or negotiates C{h2} by ALPN.  Each request's pseudo-header fields
become the L{easymesh.message.Request}'s method, target and C{Host}
(C{:authority}); a request the RFC calls malformed (section 8.1.1) is
reset with C{PROTOCOL_ERROR}, never forwarded.

Flow control is the back-pressure both ways.  A request body's DATA is
acknowledged (its window reopened) only while the upstream takes it; a
response body is sent as the client's windows allow, and its producer (the
upstream connection) is paused while more than L{HIGH_WATER} bytes wait.
Memory per stream is thus bounded by the windows and L{HIGH_WATER}.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from easymesh.config.model import EdgeLimits
from easymesh.errors import ERROR_HEADER, edgeCause
from easymesh.h1server import BadMessage, checkTarget, closeWithoutWaiting, validAuthority
from easymesh.h2wire import (
    CONNECTION_SPECIFIC,
    PREFACE,
    DataHead,
    DeclaredLengths,
    FrameFilter,
    connection,
    declaredLength,
    fieldsOf,
    sendWithinWindow,
)
from easymesh.headers import TOKEN, BadField, canonicalName, trailerFields
from easymesh.interfaces import IConnectionTransport, IResponder
from easymesh.message import Request
from easymesh.requestbody import EmptyBody, RequestBodyStream
from easymesh.twistedprivate import rawHeaders

_log = Logger()

#: Response body bytes waiting for the client's window before the
#: upstream is paused; it is resumed below L{LOW_WATER}.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024

_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
#: Bytes a field value may not hold, nor begin or end with (RFC 9113
#: section 8.2.1).
_BAD_VALUE = b"\r\n\x00"
_WHITE = b" \t"
_UPPER = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")

#: Streams a client may reset before their response within
#: L{RESET_WINDOW} seconds before the connection is closed as a rapid
#: reset attack (CVE-2023-44487).
MAX_EARLY_RESETS = 200
RESET_WINDOW = 10.0
#: PINGs a client may send within L{PING_WINDOW} seconds without a
#: request, HEADERS or DATA in between, either way (grpc's servers allow
#: two keepalive pings per ping interval, and forgive them whenever they
#: send HEADERS or DATA: a client measuring bandwidth pings as it reads).
MAX_IDLE_PINGS = 3
PING_WINDOW = 5.0
#: SETTINGS frames, and DATA frames that carry nothing and do not end
#: their stream, a client may send within a second.
MAX_SETTINGS_PER_SECOND = 20
MAX_EMPTY_DATA_PER_SECOND = 100


#: The highest stream id: a first GOAWAY naming it refuses no stream.
_MAX_STREAM_ID = 2**31 - 1
#: The opaque data of the PING that follows a first GOAWAY.
_DRAIN_PING = b"easymesh"


class Malformed(Exception):
    """
    A request that HTTP/2 calls malformed: reset, never forwarded.
    """


class _Refused(Exception):
    """
    A request the edge answers itself, with a status of the cause table.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@implementer(IResponder)
class _Stream:
    """
    One request and its response on an HTTP/2 connection: the exchange's
    responder, and the source of its request body.
    """

    def __init__(self, edge: "H2Edge", streamId: int, method: bytes) -> None:
        self.edge = edge
        self.id = streamId
        self.method = method
        self.started = False
        self.closed = False
        self.exchange: Any = None
        self.body: Optional[RequestBodyStream] = None
        self.trailers: Optional[Headers] = None
        self.expected: Optional[int] = None
        self.received = 0
        self.unacked = 0
        self.readPaused = False
        self.noBody = False
        #: Whether the response ended with its head (see IResponder.sendHead).
        self.headEnded = False
        self.pending: List[bytes] = []
        self.pendingSize = 0
        self.ending: Optional[Tuple[Optional[Headers]]] = None
        self.producer: Any = None
        self.producerPaused = False

    # IResponder.

    def sendHead(self, code: int, reason: bytes, headers: Headers, whole: bool = False) -> None:
        self.edge._sendHead(self, code, headers, whole)

    def sendData(self, data: bytes) -> None:
        self.edge._sendData(self, data)

    def finish(self, trailers: Optional[Headers] = None) -> None:
        self.edge._finish(self, trailers)

    def abort(self) -> None:
        self.edge._reset(self, ErrorCodes.INTERNAL_ERROR)

    def closeAfterResponse(self) -> None:
        # The connection outlives the stream; a drain sends GOAWAY.
        pass

    def setProducer(self, producer: Any) -> None:
        self.producer = producer
        self.producerPaused = False
        if producer is not None and (self.pendingSize > HIGH_WATER or self.edge._transportPaused):
            self.producerPaused = True
            producer.pauseProducing()

    def bodyIncomplete(self) -> bool:
        return self.body is not None and not self.body.complete

    # The request body's source.

    def pauseReading(self) -> None:
        self.readPaused = True

    def resumeReading(self) -> None:
        self.readPaused = False
        unacked, self.unacked = self.unacked, 0
        if unacked:
            self.edge._acknowledge(self.id, unacked)


class StreamGone(Exception):
    """
    A stream ended before its response did: reset by the client, or its
    connection closed.
    """


@implementer(IPushProducer)
class H2Edge(Protocol):
    """
    One client connection speaking HTTP/2.

    @param channel: The listener's HTTP/1.1 channel that took the
        connection: its site, limits, sweeper, addresses, scheme and the
        caller's identity are this connection's.
    """

    transport: IConnectionTransport
    deadline: Optional[float] = None

    def __init__(self, channel: Any) -> None:
        self.site = channel.site
        self.limits: EdgeLimits = channel.limits
        self.sweeper = channel.sweeper
        self.peer = channel.peer
        self.local = channel.local
        self.scheme = channel.scheme
        self.peerIdentity = channel.peerIdentity
        self.onClose = channel.onClose
        self.clock = self.sweeper.clock if self.sweeper is not None else None
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self._conn = connection(config)
        self._streams: Dict[int, _Stream] = {}
        #: The streams with response bytes waiting for flow-control window:
        #: what a connection's WINDOW_UPDATE or new SETTINGS may unblock.
        self._waiting: Dict[int, _Stream] = {}
        self._closing = False
        self._shutDown = False
        self._goingAway = False
        #: Whether new streams are refused: the final GOAWAY has gone out.
        self._refusing = False
        self._transportPaused = False
        self._lastStream = 0
        self._earlyResets: List[float] = []
        self._pings: List[float] = []
        self._settings: List[float] = []
        self._emptyData: List[float] = []
        self._frames = FrameFilter(skip=len(PREFACE))
        self._lengths = DeclaredLengths()

    # The connection.

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        conn = self._conn
        limits = self.limits
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: limits.maxConcurrentStreams,
                SettingCodes.MAX_HEADER_LIST_SIZE: limits.maxHeadSize,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # A header list over the advertised size gets 431 on its stream; one
        # far over it (an HPACK bomb) is refused by the decoder as it
        # decodes, and the connection closed.
        conn.decoder.max_header_list_size = 2 * limits.maxHeadSize
        conn.initiate_connection()
        self._flush()
        if self.sweeper is not None:
            self.sweeper.add(self)
        self._setTimer(limits.idleTimeout)

    def dataReceived(self, data: bytes) -> None:
        if self._shutDown:
            return
        segments, goAways = self._frames.feed(data)
        for segment in segments:
            if isinstance(segment, DataHead):
                why = self._lengths.check(segment)
                if why is not None:
                    self._malformedData(segment.streamId, why)
                continue
            try:
                events = self._conn.receive_data(segment)
            except H2Error as e:
                # h2 has queued a GOAWAY naming the error: send it and close.
                _log.info(
                    "HTTP/2 connection from {peer} closed: {error}",
                    peer=_describe(self.peer),
                    error=str(e) or type(e).__name__,
                )
                self._flush()
                self._shut()
                return
            for event in events:
                handler = _HANDLERS.get(type(event))
                if handler is not None:
                    handler(self, event)
                if self._shutDown:
                    return
        if goAways:
            self._clientGoingAway()
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        self.deadline = None
        if self.sweeper is not None:
            self.sweeper.remove(self)
        onClose, self.onClose = self.onClose, None
        if onClose is not None:
            onClose()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            self._streamLost(stream, reason)

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _shut(self) -> None:
        """
        Close the connection after what is queued, whatever streams are
        open.
        """
        if self._shutDown:
            return
        if self._goingAway and not self._refusing:
            self._refusing = True
            self._writeGoAway(self._lastStream)
        self._shutDown = self._closing = True
        self._setTimer(self.limits.closeTimeout)
        self.transport.unregisterProducer()
        if self.scheme == b"https":
            closeWithoutWaiting(self.transport)
        self.transport.loseConnection()

    def _calm(self, why: str) -> None:
        """
        A client that floods: GOAWAY with C{ENHANCE_YOUR_CALM}, and close.
        """
        _log.warn("HTTP/2 client {peer} closed: {why}", peer=_describe(self.peer), why=why)
        self._conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self._lastStream)
        self._flush()
        self._shut()

    # What a listener's sweeper and drain see (as of an HTTP/1.1 channel).

    @property
    def idle(self) -> bool:
        return not self._streams and not self._closing

    @property
    def closing(self) -> bool:
        return self._closing

    def loseConnection(self) -> None:
        """
        Close gracefully: GOAWAY, then close once the open streams end.
        """
        self.goAway()
        if not self._streams:
            self._shut()

    def goAway(self) -> None:
        """
        Tell the client to open no more streams, in the graceful two steps
        (RFC 9113 section 6.8): a GOAWAY that still admits every stream,
        and a PING; once the PING's answer shows the client has seen it, a
        GOAWAY naming the last stream taken.  Open streams may finish.
        """
        if self._goingAway or self._closing:
            return
        self._goingAway = True
        self._writeGoAway(_MAX_STREAM_ID)
        self._conn.ping(_DRAIN_PING)
        self._flush()

    def _writeGoAway(self, lastStream: int) -> None:
        """
        Send a GOAWAY (C{NO_ERROR}) on the side: the h2 library's own
        closes its connection at once, which would cut the open streams.
        """
        self._flush()
        frame = GoAwayFrame(0, last_stream_id=lastStream, error_code=ErrorCodes.NO_ERROR)
        if self.transport is not None:
            self.transport.write(frame.serialize())

    def _setTimer(self, seconds: Optional[float]) -> None:
        if seconds is None or self.clock is None:
            self.deadline = None
        else:
            self.deadline = self.clock.seconds() + seconds

    def _timedOut(self) -> None:
        self.deadline = None
        if self._closing:
            self.transport.abortConnection()
        elif not self._streams:
            self.loseConnection()

    # Producing, for the transport: the client reads slowly, or catches up.

    def pauseProducing(self) -> None:
        self._transportPaused = True
        for stream in self._streams.values():
            if stream.producer is not None and not stream.producerPaused:
                stream.producerPaused = True
                stream.producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._transportPaused = False
        for stream in list(self._streams.values()):
            self._flushStream(stream)
        self._flush()

    def stopProducing(self) -> None:
        self.transport.abortConnection()

    # Events.

    def _requestReceived(self, event: RequestReceived) -> None:
        streamId = event.stream_id
        self._lastStream = max(self._lastStream, streamId)
        self._pings.clear()
        if self._refusing:
            self._conn.reset_stream(streamId, ErrorCodes.REFUSED_STREAM)
            return
        stream = _Stream(self, streamId, b"")
        try:
            request, target = self._request(stream, event.headers, event.stream_ended is not None)
        except Malformed as e:
            _log.debug("Malformed HTTP/2 request: {why}", why=str(e))
            self._conn.reset_stream(streamId, ErrorCodes.PROTOCOL_ERROR)
            return
        except _Refused as e:
            self._refuse(stream, e)
            return
        self._streams[streamId] = stream
        self._lengths.declare(streamId, declaredLength(event.headers))
        self._setTimer(None)
        stream.exchange = self.site.handle(request, stream, target)
        stream.exchange.start()

    def _request(self, stream: _Stream, fields: Any, ended: bool) -> Tuple[Request, bytes]:
        """
        The request of a stream's header fields.

        @raise Malformed: They are malformed (RFC 9113 section 8.1.1).
        @raise _Refused: They are over the listener's limits.
        """
        limits = self.limits
        pseudo: Dict[bytes, bytes] = {}
        headers = Headers()
        raw = rawHeaders(headers)
        size = count = 0
        for name, value in fields:
            size += len(name) + len(value) + 32
            if name[:1] == b":":
                if raw or name not in _REQUEST_PSEUDO or name in pseudo:
                    raise Malformed(f"pseudo-header field {name[:32]!r}")
                pseudo[name] = value
                continue
            _checkField(name, value)
            if name == b"te" and value != b"trailers":
                raise Malformed("te other than trailers")
            count += 1
            key = canonicalName(name)
            if key is None:
                raise Malformed("invalid field name")
            values = raw.get(key)
            if values is None:
                raw[key] = [value]
            else:
                values.append(value)
        if size > limits.maxHeadSize or count > limits.maxHeaders:
            raise _Refused(431, "request header fields too large")
        method = pseudo.get(b":method")
        path = pseudo.get(b":path")
        if not method or not pseudo.get(b":scheme") or not path:
            raise Malformed("missing pseudo-header field")
        stream.method = method
        if not _isToken(method):
            raise Malformed("invalid method")
        if path[:1] != b"/" or not _validTarget(path):
            raise _Refused(400, "invalid request target")
        authority = pseudo.get(b":authority")
        hosts = raw.get(b"Host")
        if authority is not None:
            if not authority or not validAuthority(authority):
                raise _Refused(400, "invalid :authority")
            if hosts is not None and hosts != [authority]:
                raise _Refused(400, "Host differs from :authority")
            raw[b"Host"] = [authority]
        elif hosts is None or len(hosts) != 1 or not validAuthority(hosts[0]):
            raise _Refused(400, "missing or invalid :authority")
        cookies = raw.get(b"Cookie")
        if cookies is not None and len(cookies) > 1:
            # RFC 9113 section 8.2.3: one field, as HTTP/1.1 carries it.
            raw[b"Cookie"] = [b"; ".join(cookies)]
        lengths = raw.get(b"Content-Length")
        if lengths is not None:
            if len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
                raise Malformed("invalid content-length")
            stream.expected = int(lengths[0])
            if ended and stream.expected:
                raise Malformed("content-length without DATA")
        if limits.maxBody is not None and stream.expected is not None and stream.expected > limits.maxBody:
            raise _Refused(413, "request body too large")
        body: Any = None
        if not ended:
            if limits.maxBody == 0:
                raise _Refused(413, "request body not accepted")
            length = stream.expected if stream.expected is not None else UNKNOWN_LENGTH
            if b"Trailer" in raw:
                # Trailers are announced: send the body chunked, the one
                # HTTP/1.1 framing that carries them.
                length = UNKNOWN_LENGTH
            body = stream.body = RequestBodyStream(length, stream.pauseReading, stream.resumeReading)
        elif lengths is not None:
            body = _EMPTY
        request = Request(
            method,
            path,
            headers,
            body,
            getattr(self.peer, "host", ""),
            self.scheme,
            b"2",
            peerIdentity=self.peerIdentity,
        )
        return request, path

    def _dataReceived(self, event: DataReceived) -> None:
        streamId = event.stream_id
        data = event.data
        if not data and not event.stream_ended and self._flood(self._emptyData, 1.0, MAX_EMPTY_DATA_PER_SECOND):
            self._calm("a flood of empty DATA frames")
            return
        self._pings.clear()
        stream = self._streams.get(streamId)
        body = stream.body if stream is not None else None
        if stream is None or body is None or body.stopped:
            # Nobody reads it (the response has ended): give the window back.
            self._acknowledge(streamId, event.flow_controlled_length)
            return
        stream.received += len(data)
        limits = self.limits
        if limits.maxBody is not None and stream.received > limits.maxBody:
            self._overLimit(stream, _Refused(413, "request body too large"))
            return
        body.write(data)
        if stream.readPaused:
            stream.unacked += event.flow_controlled_length
        else:
            self._acknowledge(streamId, event.flow_controlled_length)

    def _trailersReceived(self, event: TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        lines = []
        try:
            for name, value in event.headers:
                if name[:1] == b":":
                    raise Malformed("pseudo-header field in trailers")
                _checkField(name, value)
                lines.append(name + b": " + value)
            stream.trailers = trailerFields(lines) if lines else None
            why = self._lengths.ended(stream.id)
            if why is not None:
                raise Malformed(why)
        except (Malformed, BadField) as e:
            self._malformed(stream, str(e))

    def _streamEnded(self, event: StreamEnded) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None or stream.body is None:
            return
        stream.body.finish(stream.trailers)

    def _streamReset(self, event: StreamReset) -> None:
        self._lengths.forget(event.stream_id)
        stream = self._streams.pop(event.stream_id, None)
        if stream is None:
            return
        if event.remote_reset and not stream.started and self.clock is not None:
            if self._flood(self._earlyResets, RESET_WINDOW, MAX_EARLY_RESETS):
                self._streamLost(stream, Failure(StreamGone("reset by the client")))
                self._calm("streams reset faster than they are answered (rapid reset)")
                return
        self._streamLost(stream, Failure(StreamGone("reset by the client")))
        self._afterStream()

    def _windowUpdated(self, event: WindowUpdated) -> None:
        if event.stream_id:
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                self._flushStream(stream)
        else:
            for stream in list(self._waiting.values()):
                self._flushStream(stream)

    def _settingsChanged(self, event: RemoteSettingsChanged) -> None:
        if self._flood(self._settings, 1.0, MAX_SETTINGS_PER_SECOND):
            self._calm("a flood of SETTINGS frames")
            return
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            for stream in list(self._waiting.values()):
                self._flushStream(stream)

    def _pingReceived(self, event: PingReceived) -> None:
        if self._flood(self._pings, PING_WINDOW, MAX_IDLE_PINGS):
            self._calm("a flood of PING frames")

    def _pingAcknowledged(self, event: PingAckReceived) -> None:
        if event.ping_data == _DRAIN_PING and not self._refusing:
            self._refusing = True
            self._writeGoAway(self._lastStream)

    def _terminated(self, event: ConnectionTerminated) -> None:
        self._clientGoingAway()

    def _clientGoingAway(self) -> None:
        """
        The client said GOAWAY: it opens no more streams; those open may
        finish, then the connection closes.
        """
        self._goingAway = self._refusing = True
        if not self._streams:
            self._shut()

    def _flood(self, times: List[float], window: float, most: int) -> bool:
        """
        Count one more of something within C{window} seconds; whether there
        are now more than C{most}.
        """
        if self.clock is None:
            return False
        now = self.clock.seconds()
        times.append(now)
        while times and times[0] <= now - window:
            times.pop(0)
        return len(times) > most

    # Streams.

    def _acknowledge(self, streamId: int, size: int) -> None:
        if size and not self._closing:
            self._conn.acknowledge_received_data(size, streamId)
            self._flush()

    def _malformed(self, stream: _Stream, why: str) -> None:
        _log.debug("Malformed HTTP/2 request: {why}", why=why)
        self._reset(stream, ErrorCodes.PROTOCOL_ERROR)

    def _malformedData(self, streamId: int, why: str) -> None:
        """
        A DATA frame, not yet passed to h2, disagrees with its stream's
        content-length: reset that stream before h2 sees the frame (it
        then only gives the connection window back).
        """
        stream = self._streams.get(streamId)
        if stream is not None:
            self._malformed(stream, why)
            return
        _log.debug("Malformed HTTP/2 request: {why}", why=why)
        try:
            self._conn.reset_stream(streamId, ErrorCodes.PROTOCOL_ERROR)
        except H2Error:
            pass

    def _overLimit(self, stream: _Stream, refused: _Refused) -> None:
        if stream.started:
            self._reset(stream, ErrorCodes.CANCEL)
            return
        self._streams.pop(stream.id, None)
        self._streamLost(stream, Failure(StreamGone(refused.reason)))
        self._refuse(stream, refused)

    def _refuse(self, stream: _Stream, refused: _Refused) -> None:
        """
        Answer a stream the edge will not forward, from the cause table,
        and stop its request body.
        """
        self._lengths.forget(stream.id)
        cause = edgeCause(refused.status)
        body = refused.reason.encode("ascii", "replace") + b"\n"
        conn = self._conn
        try:
            conn.send_headers(
                stream.id,
                [
                    (b":status", b"%d" % refused.status),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (ERROR_HEADER, cause.name.encode("ascii")),
                    (b"content-length", b"%d" % len(body)),
                ],
            )
            conn.send_data(stream.id, body, end_stream=True)
            conn.reset_stream(stream.id, ErrorCodes.NO_ERROR)
        except (StreamClosedError, H2Error):
            pass
        self._flush()

    def _reset(self, stream: _Stream, code: int) -> None:
        self._streams.pop(stream.id, None)
        self._lengths.forget(stream.id)
        if not stream.closed:
            try:
                self._conn.reset_stream(stream.id, code)
            except H2Error:
                pass
            self._flush()
        self._streamLost(stream, Failure(StreamGone(f"reset ({code})")))
        self._afterStream()

    def _streamLost(self, stream: _Stream, reason: Failure) -> None:
        self._waiting.pop(stream.id, None)
        if stream.closed:
            return
        stream.closed = True
        stream.pending = []
        body, stream.body = stream.body, None
        if body is not None:
            body.fail(reason)
        exchange, stream.exchange = stream.exchange, None
        if exchange is not None:
            exchange.done(reason)

    def _afterStream(self) -> None:
        if self._streams:
            return
        if self._goingAway or self._closing:
            self._shut()
        else:
            self._setTimer(self.limits.idleTimeout)

    # Sending.

    def _sendHead(self, stream: _Stream, code: int, headers: Headers, whole: bool = False) -> None:
        stream.started = True
        if stream.closed or self._shutDown:
            return
        stream.noBody = stream.method == b"HEAD" or code in (204, 304)
        fields = [(b":status", b"%d" % code)] + fieldsOf(headers)
        self._conn.send_headers(stream.id, fields, end_stream=whole)
        stream.headEnded = whole
        self._pings.clear()
        self._flush()

    def _sendData(self, stream: _Stream, data: bytes) -> None:
        if stream.closed or stream.noBody or not data or self._shutDown:
            return
        stream.pending.append(data)
        stream.pendingSize += len(data)
        self._flushStream(stream)
        if stream.pendingSize > HIGH_WATER and stream.producer is not None and not stream.producerPaused:
            stream.producerPaused = True
            stream.producer.pauseProducing()

    def _finish(self, stream: _Stream, trailers: Optional[Headers]) -> None:
        if stream.closed or self._shutDown:
            return
        stream.ending = (trailers,)
        self._flushStream(stream)

    def _flushStream(self, stream: _Stream) -> None:
        if stream.closed or self._shutDown:
            self._waiting.pop(stream.id, None)
            return
        pending = stream.pending
        if not self._transportPaused:
            sent = sendWithinWindow(self._conn, stream.id, pending)
            if sent:
                stream.pendingSize -= sent
                self._pings.clear()
        if pending:
            self._waiting[stream.id] = stream
        else:
            self._waiting.pop(stream.id, None)
        if stream.producerPaused and stream.pendingSize <= LOW_WATER and not self._transportPaused:
            stream.producerPaused = False
            if stream.producer is not None:
                stream.producer.resumeProducing()
        if not pending and stream.ending is not None:
            self._endStream(stream)
        self._flush()

    def _endStream(self, stream: _Stream) -> None:
        (trailers,) = stream.ending  # type: ignore[misc]
        conn = self._conn
        if stream.headEnded:
            pass
        elif trailers is not None and not stream.noBody:
            conn.send_headers(stream.id, fieldsOf(trailers), end_stream=True)
        else:
            conn.send_data(stream.id, b"", end_stream=True)
        stream.closed = True
        self._streams.pop(stream.id, None)
        self._waiting.pop(stream.id, None)
        # The body (which calls back the stream) is let go of, so that the
        # two are not left a reference cycle.
        body, stream.body = stream.body, None
        if body is not None and not body.complete:
            # Answered before the request body ended: the client may stop.
            body.stopProducing()
            try:
                conn.reset_stream(stream.id, ErrorCodes.NO_ERROR)
            except H2Error:
                pass
        self._flush()
        exchange, stream.exchange = stream.exchange, None
        if exchange is not None:
            exchange.done(None)
        self._afterStream()


_HANDLERS: Dict[type, Any] = {
    RequestReceived: H2Edge._requestReceived,
    DataReceived: H2Edge._dataReceived,
    TrailersReceived: H2Edge._trailersReceived,
    StreamEnded: H2Edge._streamEnded,
    StreamReset: H2Edge._streamReset,
    WindowUpdated: H2Edge._windowUpdated,
    RemoteSettingsChanged: H2Edge._settingsChanged,
    PingReceived: H2Edge._pingReceived,
    PingAckReceived: H2Edge._pingAcknowledged,
    ConnectionTerminated: H2Edge._terminated,
}

_EMPTY = EmptyBody()


def _checkField(name: bytes, value: bytes) -> None:
    """
    @raise Malformed: The field is not allowed in an HTTP/2 request
        (RFC 9113 sections 8.2.1 and 8.2.2).
    """
    if not name or _UPPER.intersection(name):
        raise Malformed("field name empty or not lower case")
    if name in CONNECTION_SPECIFIC:
        raise Malformed(f"connection-specific field {name.decode('latin-1')!r}")
    if value and (value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t")):
        raise Malformed("field value with leading or trailing white space")
    if len(value.translate(None, _BAD_VALUE)) != len(value):
        raise Malformed("CR, LF or NUL in a field value")


def _isToken(value: bytes) -> bool:
    return bool(value) and TOKEN.issuperset(value)


def _validTarget(path: bytes) -> bool:
    try:
        checkTarget(path)
    except BadMessage:
        return False
    return True


def _describe(address: Any) -> str:
    return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
