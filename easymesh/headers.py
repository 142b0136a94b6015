# -*- test-case-name: tests.test_headers -*-
"""
What a proxy does to headers (RFC 9110 section 7.6): remove hop-by-hop
fields both ways, add C{Via}, C{X-Forwarded-For} and C{X-Forwarded-Proto},
give every request an C{x-request-id}, drop the sidecar's own C{x-easymesh-*}
vocabulary arriving from outside, and detect loops.
"""

from __future__ import annotations

import uuid
from typing import Iterable, List

from twisted.web.http_headers import Headers

from easymesh.errors import RequestLoop

#: Hop-by-hop fields, lower case; plus whatever C{Connection} names.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)

#: Fields describing the client's own framing: easymesh frames what it
#: forwards itself.
FRAMING = frozenset((b"content-length", b"expect"))

OWN_PREFIX = b"x-easymesh-"
REQUEST_ID = b"x-request-id"


def _commaList(values: Iterable[bytes]) -> List[bytes]:
    return [t.strip() for v in values for t in v.split(b",") if t.strip()]


def removeHopByHop(headers: Headers, also: frozenset = frozenset()) -> None:
    """
    Remove hop-by-hop fields, including those named by C{Connection}, and the
    names in C{also}.
    """
    raw = headers._rawHeaders
    named = raw.get(b"Connection")
    doomed = [
        name
        for name in raw
        if name.lower() in HOP_BY_HOP or name.lower() in also
    ]
    for name in doomed:
        del raw[name]
    if named:
        for token in _commaList(named):
            if _isToken(token):
                headers.removeHeader(token)


def _isToken(value: bytes) -> bool:
    return bool(value) and all(
        33 <= c < 127 and c not in b'"(),/:;<=>?@[\\]{}' for c in value
    )


def removeOwn(headers: Headers) -> None:
    """
    Remove the sidecar's own C{x-easymesh-*} fields, which nobody outside may
    set.
    """
    raw = headers._rawHeaders
    for name in [n for n in raw if n.lower().startswith(OWN_PREFIX)]:
        del raw[name]


class HeaderPolicy:
    """
    The header rewriting of one listener.

    @param nodeId: This sidecar's name.
    @param listener: The listener's name; with C{nodeId} it makes the
        pseudonym (C{web-1.outbound}) this listener writes into C{Via}.
    """

    def __init__(self, nodeId: str, listener: str) -> None:
        self.pseudonym = f"{nodeId}.{listener}".encode("ascii")

    def checkLoop(self, headers: Headers) -> None:
        """
        @raise RequestLoop: This listener's pseudonym is already in C{Via}.
        """
        via = headers.getRawHeaders(b"via")
        if not via:
            return
        for entry in _commaList(via):
            parts = entry.split()
            if len(parts) >= 2 and parts[1] == self.pseudonym:
                raise RequestLoop()

    def _via(self, version: bytes) -> bytes:
        return version + b" " + self.pseudonym

    def prepareRequest(
        self, headers: Headers, clientAddress: str, scheme: bytes, version: bytes
    ) -> None:
        """
        Rewrite request headers in place for forwarding.

        @raise RequestLoop: The request has been through this listener.
        """
        self.checkLoop(headers)
        removeHopByHop(headers, FRAMING)
        removeOwn(headers)
        client = clientAddress.encode("ascii")
        forwarded = headers.getRawHeaders(b"x-forwarded-for")
        if forwarded:
            headers.setRawHeaders(
                b"x-forwarded-for", [b", ".join(_commaList(forwarded) + [client])]
            )
        else:
            headers.setRawHeaders(b"x-forwarded-for", [client])
        headers.setRawHeaders(b"x-forwarded-proto", [scheme])
        headers.addRawHeader(b"via", self._via(version))
        if not headers.hasHeader(REQUEST_ID):
            headers.setRawHeaders(REQUEST_ID, [str(uuid.uuid4()).encode("ascii")])

    def prepareResponse(self, headers: Headers, version: bytes) -> None:
        """
        Rewrite upstream response headers in place for relaying.
        """
        removeHopByHop(headers)
        headers.addRawHeader(b"via", self._via(version))
