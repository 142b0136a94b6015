# -*- test-case-name: tests.test_h2wire -*-
"""
What the HTTP/2 edge and the HTTP/2 upstream do alike on the wire: turn
L{Headers} into an HTTP/2 field list, send a stream's queued body within
the peer's flow-control windows, and take GOAWAY frames out of what is
read (see L{GoAwayFilter}).
"""

from __future__ import annotations

from typing import FrozenSet, List, Tuple

from h2.connection import H2Connection
from h2.exceptions import H2Error
from twisted.web.http_headers import Headers

#: What an HTTP/2 client sends first (RFC 9113 section 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: Fields that are connection-specific, and so malformed in HTTP/2
#: (RFC 9113 section 8.2.2).
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


def fieldsOf(headers: Headers, dropped: FrozenSet[bytes] = CONNECTION_SPECIFIC) -> List[Tuple[bytes, bytes]]:
    """
    C{headers} as HTTP/2 fields: lower-case names, repeated fields in
    order, without the names in C{dropped}.
    """
    return [
        (lower, value)
        for name, values in headers.getAllRawHeaders()
        for lower in (name.lower(),)
        if lower not in dropped
        for value in values
    ]


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
_GOAWAY = 0x7
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


class GoAwayFilter:
    """
    Take the GOAWAY frames out of the bytes read, for the caller to act
    on: the h2 library closes its connection state on one, so that the
    streams a GOAWAY lets finish could not (python-hyper/h2 issue 1181).
    Other bytes are passed on in whole frames; a frame longer than this
    side accepts is passed on as it comes, for the library to refuse.

    @param skip: Bytes to pass on before the first frame (a server's
        client connection preface).
    """

    def __init__(self, skip: int = 0) -> None:
        self._skip = skip
        self._buffer = b""
        self._passing = False

    def feed(self, data: bytes) -> Tuple[bytes, List[GoAway]]:
        """
        @return: The bytes for the h2 library, and the GOAWAY frames taken
            out, in order.
        """
        if self._passing:
            return data, []
        buffer = self._buffer + data if self._buffer else data
        passed: List[bytes] = []
        goAways: List[GoAway] = []
        position = 0
        if self._skip:
            taken = min(self._skip, len(buffer))
            self._skip -= taken
            position = taken
            passed.append(buffer[:taken])
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
            if buffer[position + 3] == _GOAWAY and length >= 8:
                passed.append(buffer[start:position])
                payload = buffer[position + _FRAME_HEADER : end]
                goAways.append(
                    GoAway(
                        int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                        int.from_bytes(payload[4:8], "big"),
                    )
                )
                start = end
            position = end
        passed.append(buffer[start:position])
        self._buffer = buffer[position:]
        return b"".join(passed), goAways
