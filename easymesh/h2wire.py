# -*- test-case-name: tests.test_h2wire -*-
"""
What the HTTP/2 edge and the HTTP/2 upstream do alike on the wire: turn
L{Headers} into an HTTP/2 field list, send a stream's queued body within
the peer's flow-control windows, and split what is read into frames
before the h2 library sees them (see L{FrameFilter}).
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Tuple, Union

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import H2Error
from hpack import Encoder, NeverIndexedHeaderTuple
from twisted.web.http_headers import Headers

#: What an HTTP/2 client sends first (RFC 9113 section 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: Fields that are connection-specific, and so malformed in HTTP/2
#: (RFC 9113 section 8.2.2).
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


#: Fields whose values are secrets (RFC 7541 section 7.1.3) or new with
#: almost every message: they are sent as literals never indexed, so
#: that they neither leak through the compression context nor push the
#: fields that do repeat out of the peer's table (nghttp2 and Envoy
#: choose likewise).
UNINDEXED = frozenset(
    (
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"set-cookie",
        b"x-request-id",
        b"traceparent",
        b"tracestate",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-amzn-trace-id",
        b"content-length",
        b"etag",
        b"last-modified",
        b"location",
        b"age",
        b"if-none-match",
        b"if-modified-since",
        b"link",
        b"grpc-timeout",
    )
)

#: Values longer than this are not indexed either: one would fill most
#: of the peer's table (4,096 bytes unless it says otherwise).
MAX_INDEXED_VALUE = 512

Field = Tuple[bytes, bytes]


def field(name: bytes, value: bytes) -> Field:
    """
    One HTTP/2 field, marked never to be indexed if it is one of
    L{UNINDEXED} or a long value.
    """
    if name in UNINDEXED or len(value) > MAX_INDEXED_VALUE:
        return NeverIndexedHeaderTuple(name, value)
    return (name, value)


def fieldsOf(headers: Headers, dropped: FrozenSet[bytes] = CONNECTION_SPECIFIC) -> List[Field]:
    """
    C{headers} as HTTP/2 fields: lower-case names, repeated fields in
    order, without the names in C{dropped}; see L{field}.
    """
    return [
        field(lower, value)
        for name, values in headers.getAllRawHeaders()
        for lower in (name.lower(),)
        if lower not in dropped
        for value in values
    ]


class PlainEncoder(Encoder):
    """
    An HPACK encoder that writes string literals without Huffman coding:
    a quarter more bytes on the wire for those, and much less CPU on
    both sides (decoding Huffman is the costlier half of HPACK in pure
    Python).
    """

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)


def connection(config: H2Configuration) -> H2Connection:
    """
    An h2 connection that encodes with L{PlainEncoder}.
    """
    conn = H2Connection(config=config)
    conn.encoder = PlainEncoder()
    return conn


def sendWithinWindow(conn: H2Connection, streamId: int, pending: List[bytes]) -> int:
    """
    Send DATA from the front of C{pending} as far as the stream's and the
    connection's windows (and the frame size) allow, taking what is sent
    off C{pending}.

    @return: How many bytes were sent.
    """
    sent = 0
    while pending:
        try:
            window = min(conn.local_flow_control_window(streamId), conn.max_outbound_frame_size)
        except H2Error:
            break
        if window <= 0:
            break
        chunk = pending[0]
        if len(chunk) > window:
            pending[0] = chunk[window:]
            chunk = chunk[:window]
        else:
            pending.pop(0)
        sent += len(chunk)
        conn.send_data(streamId, chunk)
    return sent


#: A frame's header: length (3 bytes), type, flags, stream (4 bytes).
_FRAME_HEADER = 9
_DATA = 0x0
_GOAWAY = 0x7
_END_STREAM = 0x1
_PADDED = 0x8
#: The largest frame this side accepts (SETTINGS_MAX_FRAME_SIZE's default,
#: which neither side changes).
_MAX_FRAME = 16384


class GoAway:
    """
    A GOAWAY frame taken out of what was read.
    """

    __slots__ = ("lastStreamId", "errorCode")

    def __init__(self, lastStreamId: int, errorCode: int) -> None:
        self.lastStreamId = lastStreamId
        self.errorCode = errorCode


class DataHead:
    """
    What a DATA frame about to be passed on carries: its stream, the
    length of its data (padding left out) and whether it ends the stream.
    """

    __slots__ = ("streamId", "length", "endStream")

    def __init__(self, streamId: int, length: int, endStream: bool) -> None:
        self.streamId = streamId
        self.length = length
        self.endStream = endStream


#: What L{FrameFilter.feed} passes on: bytes for the h2 library, each
#: DATA frame announced by its L{DataHead} just before the bytes that
#: start with it.
Segment = Union[bytes, DataHead]


class FrameFilter:
    """
    Split the bytes read into whole frames before the h2 library sees
    them:

      - GOAWAY frames are taken out, for the caller to act on: the
        library closes its connection state on one, so that the streams
        a GOAWAY lets finish could not (python-hyper/h2 issue 1181);
      - each DATA frame is announced (L{DataHead}) before it is passed
        on, so that the caller can check it against the stream's
        declared content-length (L{DeclaredLengths}) and reset that
        stream alone: the library treats a mismatch as an error of the
        whole connection, where RFC 9113 section 8.1.1 says it is the
        stream's.

    A frame longer than this side accepts is passed on as it comes, for
    the library to refuse.

    @param skip: Bytes to pass on before the first frame (a server's
        client connection preface).
    """

    def __init__(self, skip: int = 0) -> None:
        self._skip = skip
        self._buffer = b""
        self._passing = False

    def feed(self, data: bytes) -> Tuple[List[Segment], List[GoAway]]:
        """
        @return: What to pass on, in order, and the GOAWAY frames taken
            out, in order.
        """
        if self._passing:
            return [data], []
        buffer = self._buffer + data if self._buffer else data
        passed: List[Segment] = []
        pending: List[bytes] = []
        goAways: List[GoAway] = []
        position = 0
        if self._skip:
            taken = min(self._skip, len(buffer))
            self._skip -= taken
            position = taken
            pending.append(buffer[:taken])
        start = position
        size = len(buffer)
        while size - position >= _FRAME_HEADER:
            length = int.from_bytes(buffer[position : position + 3], "big")
            if length > _MAX_FRAME:
                self._passing = True
                position = size
                break
            end = position + _FRAME_HEADER + length
            if end > size:
                break
            kind = buffer[position + 3]
            if kind == _GOAWAY and length >= 8:
                pending.append(buffer[start:position])
                payload = buffer[position + _FRAME_HEADER : end]
                goAways.append(
                    GoAway(
                        int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                        int.from_bytes(payload[4:8], "big"),
                    )
                )
                start = end
            elif kind == _DATA:
                pending.append(buffer[start:position])
                segment = b"".join(pending)
                if segment:
                    passed.append(segment)
                pending = []
                start = position
                flags = buffer[position + 4]
                if flags & _PADDED and length:
                    length -= 1 + buffer[position + _FRAME_HEADER]
                passed.append(
                    DataHead(
                        int.from_bytes(buffer[position + 5 : position + 9], "big") & 0x7FFFFFFF,
                        max(length, 0),
                        bool(flags & _END_STREAM),
                    )
                )
            position = end
        pending.append(buffer[start:position])
        segment = b"".join(pending)
        if segment:
            passed.append(segment)
        self._buffer = buffer[position:]
        return passed, goAways


def declaredLength(fields: Any, method: Optional[bytes] = None) -> Optional[int]:
    """
    The body length the h2 library expects of a message with these
    header fields, a request or (given its request's C{method}) a
    response: 0 for HEAD, else the last C{content-length}, which the
    library has parsed already; L{None} if there is none.
    """
    length = None
    for name, value in fields:
        if name == b"content-length":
            length = int(value, 10)
        elif name == b":method" and method is None:
            method = value
    return 0 if method == b"HEAD" else length


class DeclaredLengths:
    """
    The streams whose messages declare a body length, and what their
    DATA frames have carried so far; see L{FrameFilter}.
    """

    def __init__(self) -> None:
        self._streams: Dict[int, List[int]] = {}

    def declare(self, streamId: int, length: Optional[int]) -> None:
        if length is not None:
            self._streams[streamId] = [length, 0]

    def check(self, head: DataHead) -> Optional[str]:
        """
        Count a DATA frame about to be passed on.

        @return: Why it makes the message malformed, or L{None}.
        """
        counts = self._streams.get(head.streamId)
        if counts is None:
            return None
        counts[1] += head.length
        if counts[1] > counts[0]:
            del self._streams[head.streamId]
            return "more DATA than content-length"
        if head.endStream:
            return self.ended(head.streamId)
        return None

    def ended(self, streamId: int) -> Optional[str]:
        """
        The stream's message has ended (its last DATA frame, or trailers).

        @return: Why it is malformed, or L{None}.
        """
        counts = self._streams.pop(streamId, None)
        if counts is not None and counts[1] != counts[0]:
            return "less DATA than content-length"
        return None

    def forget(self, streamId: int) -> None:
        self._streams.pop(streamId, None)
