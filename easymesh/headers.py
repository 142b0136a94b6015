# -*- test-case-name: tests.test_headers -*-
"""
What a proxy does to headers (RFC 9110 section 7.6): remove hop-by-hop
fields both ways, add C{Via}, C{X-Forwarded-For} and C{X-Forwarded-Proto},
give every request an C{x-request-id}, drop the sidecar's own C{x-easymesh-*}
vocabulary arriving from outside, and detect loops.
"""

from __future__ import annotations

from random import getrandbits
from typing import Dict, Iterable, List, Optional

from twisted.web.http_headers import Headers, _nameEncoder

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

#: The characters of a token (RFC 9110 section 5.6.2): field names, methods.
TOKEN = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)

OWN_PREFIX = b"x-easymesh-"
REQUEST_ID = b"x-request-id"


_canonicalNames: Dict[bytes, bytes] = {}


def canonicalName(name: bytes) -> Optional[bytes]:
    """
    The name under which L{Headers} stores a header field, or L{None} if
    C{name} is not a valid field name (RFC 9110 section 5.1).
    """
    found = _canonicalNames.get(name)
    if found is None:
        if not name or not TOKEN.issuperset(name):
            return None
        found = _nameEncoder.encode(name)
        if len(_canonicalNames) < 4096:
            _canonicalNames[name] = found
    return found


class BadField(ValueError):
    """
    A header field line that is not C{name: value} with a valid name.
    """


def parseFields(lines: Iterable[bytes]) -> Headers:
    """
    Parse header field lines (already checked by L{forbiddenInHead}) into
    L{Headers}, keeping repeated fields in order.

    @raise BadField: A line has no colon or an invalid name (which covers
        white space before the colon, and obs-fold lines).
    """
    headers = Headers()
    raw = headers._rawHeaders
    canonical = canonicalName
    for line in lines:
        name, sep, value = line.partition(b":")
        key = canonical(name) if sep else None
        if key is None:
            raise BadField(line)
        value = value.strip(b" \t")
        values = raw.get(key)
        if values is None:
            raw[key] = [value]
        else:
            values.append(value)
    return headers


_CONTROLS = bytes(c for c in range(32) if c != 9) + b"\x7f"


def forbiddenInHead(head: bytes) -> Optional[str]:
    """
    Why a message head (lines joined by CRLF, without the final blank line)
    cannot be read, if it holds a control character other than HTAB, or a
    CR or LF that is not part of a CRLF; else L{None}.
    """
    lineEnds = head.count(b"\r\n")
    if len(head.translate(None, _CONTROLS)) == len(head) - 2 * lineEnds:
        return None
    if head.count(b"\n") != lineEnds:
        return "bare LF in message head"
    if head.count(b"\r") != lineEnds:
        return "bare CR in message head"
    return "control character in message head"


def commaList(values: Iterable[bytes]) -> List[bytes]:
    return [t.strip() for v in values for t in v.split(b",") if t.strip()]


# Headers stores names in one canonical form, so these sets (in that form)
# are matched without lower-casing every name of every message.
_HOP_BY_HOP = frozenset(_nameEncoder.encode(n) for n in HOP_BY_HOP)
_REQUEST_DROPPED = _HOP_BY_HOP | frozenset(_nameEncoder.encode(n) for n in FRAMING)
_OWN_PREFIX = _nameEncoder.encode(OWN_PREFIX + b"x")[:-1]


def removeHopByHop(headers: Headers, also: Iterable[bytes] = ()) -> None:
    """
    Remove hop-by-hop fields, including those named by C{Connection}, and the
    names in C{also}.
    """
    _remove(headers, _HOP_BY_HOP | frozenset(_nameEncoder.encode(n) for n in also), False)


def _ownWithUnderscores(name: bytes) -> bool:
    """
    Whether C{name} spells one of the sidecar's own headers with
    underscores (C{x_easymesh_peer_identity}), which CGI and WSGI servers
    read as the same header: a client must not forge one that way.
    """
    return b"_" in name and name.lower().replace(b"_", b"-").startswith(OWN_PREFIX)


def _remove(headers: Headers, dropped: frozenset, own: bool) -> None:
    raw = headers._rawHeaders
    named = raw.get(b"Connection")
    doomed = [
        name
        for name in raw
        if name in dropped or (own and (name.startswith(_OWN_PREFIX) or _ownWithUnderscores(name)))
    ]
    for name in doomed:
        del raw[name]
    if named:
        for token in commaList(named):
            key = canonicalName(token)
            if key is not None:
                raw.pop(key, None)


#: The caller's verified mTLS identity, for the app.
PEER_IDENTITY = b"x-easymesh-peer-identity"


def newRequestId() -> bytes:
    """
    A random version 4 UUID, as text.
    """
    value = "%032x" % (getrandbits(128) & _UUID4_MASK | _UUID4_BITS)
    return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}".encode()


_UUID4_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_BITS = (0x4000 << 64) | (0x8000 << 48)


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
        for entry in commaList(via):
            parts = entry.split()
            if len(parts) >= 2 and parts[1] == self.pseudonym:
                raise RequestLoop()

    def prepareRequest(
        self, headers: Headers, clientAddress: str, scheme: bytes, version: bytes
    ) -> None:
        """
        Rewrite request headers in place for forwarding.

        @raise RequestLoop: The request has been through this listener.
        """
        # This runs for every request: it works on the canonical names that
        # Headers stores, rather than through its name-encoding methods.
        raw = headers._rawHeaders
        if b"Via" in raw:
            self.checkLoop(headers)
        _remove(headers, _REQUEST_DROPPED, True)
        client = clientAddress.encode("ascii")
        forwarded = raw.get(b"X-Forwarded-For")
        if forwarded:
            raw[b"X-Forwarded-For"] = [b", ".join(commaList(forwarded) + [client])]
        else:
            raw[b"X-Forwarded-For"] = [client]
        raw[b"X-Forwarded-Proto"] = [scheme]
        via = raw.get(b"Via")
        if via is None:
            raw[b"Via"] = [version + b" " + self.pseudonym]
        else:
            via.append(version + b" " + self.pseudonym)
        if b"X-Request-Id" not in raw:
            raw[b"X-Request-Id"] = [newRequestId()]

    def prepareResponse(self, headers: Headers, version: bytes) -> None:
        """
        Rewrite upstream response headers in place for relaying.
        """
        _remove(headers, _HOP_BY_HOP, False)
        raw = headers._rawHeaders
        via = raw.get(b"Via")
        if via is None:
            raw[b"Via"] = [version + b" " + self.pseudonym]
        else:
            via.append(version + b" " + self.pseudonym)
