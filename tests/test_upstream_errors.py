"""
What the sidecar says of a malformed upstream response: the reason, and at
most the offending header's name or the start of a status line, never a
header value or body bytes (which may carry cookies or tokens), in the
reply's detail and so in the error log.
"""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseFailed

from easymesh.errorlog import ErrorLog
from easymesh.errors import replyFor
from easymesh.upstream.h1client import asProxyError
from easymesh.message import ProxyRequest
from tests.test_h1client import OK, failure, respond

SECRET = b"s3cr3t-t0ken"

HEADS = {
    "bare CR": (
        OK + b"Content-Length: 2\r\nSet-Cookie: session=" + SECRET + b"\rInjected: 1\r\n\r\n",
        "bare CR in message head in header 'Set-Cookie'",
    ),
    "bare LF": (
        OK + b"Authorization: Bearer " + SECRET + b"\nX: 1\r\n\r\n",
        "bare LF in message head in header 'Authorization'",
    ),
    "NUL": (
        OK + b"X-Token: " + SECRET + b"\x00\r\n\r\n",
        "control character in message head in header 'X-Token'",
    ),
    "no colon": (OK + b"Cookie " + SECRET + b"\r\n\r\n", "bad response header line"),
    "obs-fold": (OK + b"X-A: a\r\n " + SECRET + b"\r\n\r\n", "bad response header line"),
    "bad Content-Length": (OK + b"Content-Length: " + SECRET + b"\r\n\r\n", "bad Content-Length"),
    "bad status line": (
        b"HTTP/1.1 200OK " + SECRET + b"\r\n\r\n",
        "bad status line (beginning b'HTTP/1.1 200')",
    ),
}


def _logged(detail: str) -> str:
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        request = ProxyRequest(b"GET", b"/p", None, listener="inbound")  # type: ignore[arg-type]
        ErrorLog(Clock()).report("inbound", 502, "upstream_protocol_error", detail, request)
    finally:
        globalLogPublisher.removeObserver(events.append)
    [line] = [formatEvent(e) for e in events if e.get("log_namespace") == "easymesh.errors"]
    return line


@pytest.mark.parametrize("raw, said", list(HEADS.values()), ids=list(HEADS))
def test_headErrorNamesNoValue(raw: bytes, said: str) -> None:
    """
    A malformed head is a 502 C{upstream_protocol_error} whose detail says
    why and names the header, and holds none of its value.
    """
    h, d, response, body = respond(raw)
    reply = replyFor(asProxyError(failure(d, ResponseFailed)))
    assert (reply.code, reply.cause) == (502, "upstream_protocol_error")
    assert reply.detail == said
    line = _logged(reply.detail)
    assert SECRET.decode() not in line
    assert said in line


@pytest.mark.parametrize(
    "raw, said",
    [
        (b"Transfer-Encoding: chunked\r\n\r\n" + SECRET + b"\r\n", "bad chunk size"),
        (
            b"Transfer-Encoding: chunked\r\n\r\n2\r\nab" + SECRET + b"\r\n",
            "chunk data longer than declared",
        ),
    ],
)
def test_bodyErrorQuotesNoBody(raw: bytes, said: str) -> None:
    """
    A malformed chunked body fails with the reason only, not the bytes.
    """
    h, d, response, body = respond(OK + raw)
    reason: Failure = body.reason
    assert reason.check(ResponseFailed)
    detail = "; ".join(str(r.value) for r in reason.value.reasons)
    assert detail == said
