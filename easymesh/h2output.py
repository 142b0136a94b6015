# -*- test-case-name: tests.test_h2server,tests.test_h2client -*-
"""
What the HTTP/2 edge and the HTTP/2 upstream both do when they send: turn
L{Headers} into an HTTP/2 field list, and send a stream's queued body
within the peer's flow-control windows.
"""

from __future__ import annotations

from typing import FrozenSet, List, Tuple

from h2.connection import H2Connection
from h2.exceptions import H2Error
from twisted.web.http_headers import Headers

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
