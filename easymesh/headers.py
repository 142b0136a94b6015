# -*- test-case-name: tests.test_headers -*-
"""
What a proxy does to headers (RFC 9110 section 7.6): remove hop-by-hop
fields both ways, add C{Via}, C{X-Forwarded-For} and C{X-Forwarded-Proto},
give every request an C{x-request-id}, drop the sidecar's own C{x-easymesh-*}
vocabulary arriving from outside (from clients, and in the local app's
responses), drop or refuse header names with underscores, and detect loops.
"""

from __future__ import annotations

from random import getrandbits
from typing import Dict, FrozenSet, Iterable, List, Optional

from twisted.web.http_headers import Headers

from easymesh.config.model import OUTBOUND, UNDERSCORE_ACTIONS
from easymesh.errors import HeaderWithUnderscores, RequestLoop
from easymesh.twistedprivate import encodeName, rawHeaders

#: Hop-by-hop fields, lower case; plus whatever C{Connection} names.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
    )
)

#: Fields describing the client's own framing: easymesh frames what it
#: forwards itself.
FRAMING = frozenset((b"content-length", b"expect"))

#: Fields never relayed as trailers (RFC 9110 section 6.5.1): framing,
#: routing, authentication, request modifiers, response control and
#: content description belong in the head, where proxies and apps look.
NOT_TRAILERS = HOP_BY_HOP | FRAMING | frozenset(
    (
        b"host",
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"set-cookie",
        b"cache-control",
        b"max-forwards",
        b"age",
        b"expires",
        b"trailer",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-proto",
    )
)

#: The characters of a token (RFC 9110 section 5.6.2): field names, methods.
TOKEN = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)

OWN_PREFIX = b"x-easymesh-"
REQUEST_ID = b"x-request-id"

#: Fields that C{Connection} may not name for removal: the request's
#: authority, framing, and what the sidecar adds or relies on.  Such a
#: token in C{Connection} is ignored and the field kept.
PROTECTED = frozenset(
    (
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        REQUEST_ID,
        b"traceparent",
        b"tracestate",
    )
)

#: The longest C{x-request-id} kept from a client.
MAX_REQUEST_ID = 128


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
        found = encodeName(name)
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
    raw = rawHeaders(headers)
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


def trailerFields(lines: List[bytes]) -> Optional[Headers]:
    """
    The trailer fields to relay from a chunked body's trailer section
    (C{lines}, without line ends), or L{None} if none is left once the
    fields that may not be trailers (L{NOT_TRAILERS}) and the sidecar's own
    are dropped.

    @raise BadField: A line is not a valid field.
    """
    joined = b"\r\n".join(lines)
    if forbiddenInHead(joined) is not None:
        raise BadField(joined[:64])
    trailers = parseFields(lines)
    raw = rawHeaders(trailers)
    for name in [n for n in raw if n in _NOT_TRAILERS or n.startswith(_OWN_PREFIX)]:
        del raw[name]
    return trailers if raw else None


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


def offendingName(head: bytes) -> Optional[bytes]:
    """
    The name of the first header field of C{head} whose line
    L{forbiddenInHead} objects to; L{None} if that is the first (status or
    request) line, or the line has no valid field name.  Names only: a
    field's value may be a credential.
    """
    lines = head.split(b"\r\n")
    for index, line in enumerate(lines):
        if len(line.translate(None, _CONTROLS)) != len(line):
            if index == 0:
                return None
            name, sep, _ = line.partition(b":")
            return name if sep and canonicalName(name) is not None else None
    return None


_VISIBLE = bytes(range(0x21, 0x7F))


def validRequestId(value: bytes) -> bool:
    """
    Whether C{value} is kept as an C{x-request-id}: 1 to L{MAX_REQUEST_ID}
    visible ASCII characters (no white space), so that it cannot forge or
    bloat a log line.
    """
    return 0 < len(value) <= MAX_REQUEST_ID and not value.translate(None, _VISIBLE)


# Headers stores names in one canonical form, so these sets (in that form)
# are matched without lower-casing every name of every message.
_HOP_BY_HOP = frozenset(encodeName(n) for n in HOP_BY_HOP)
_REQUEST_DROPPED = _HOP_BY_HOP | frozenset(encodeName(n) for n in FRAMING)
_OWN_PREFIX = encodeName(OWN_PREFIX + b"x")[:-1]
_NOT_TRAILERS = frozenset(encodeName(n) for n in NOT_TRAILERS)
_TE = encodeName(b"te")
_PROTECTED = frozenset(encodeName(n) for n in PROTECTED)
_ERROR_HEADER = encodeName(b"x-easymesh-error")
_ATTEMPTS_HEADER = encodeName(b"x-easymesh-attempts")


def removeHopByHop(headers: Headers, also: Iterable[bytes] = ()) -> None:
    """
    Remove hop-by-hop fields, including those named by C{Connection}, and the
    names in C{also}.
    """
    _remove(headers, _HOP_BY_HOP | frozenset(encodeName(n) for n in also), False)


def _ownWithUnderscores(name: bytes) -> bool:
    """
    Whether C{name} spells one of the sidecar's own headers with
    underscores (C{x_easymesh_peer_identity}), which CGI and WSGI servers
    read as the same header: a client must not forge one that way.
    """
    return b"_" in name and name.lower().replace(b"_", b"-").startswith(OWN_PREFIX)


def _remove(
    headers: Headers, dropped: FrozenSet[bytes], own: bool, underscores: bool = False
) -> None:
    """
    Remove the fields in C{dropped}, and those C{Connection} names (but
    never a L{PROTECTED} one); with C{own}, the sidecar's own fields in any
    spelling; with C{underscores}, every name holding an underscore.
    """
    raw = rawHeaders(headers)
    named = raw.get(b"Connection")
    doomed = [
        name
        for name in raw
        if name in dropped
        or (underscores and b"_" in name)
        or (own and (name.startswith(_OWN_PREFIX) or _ownWithUnderscores(name)))
    ]
    for name in doomed:
        del raw[name]
    if named:
        for token in commaList(named):
            key = canonicalName(token)
            if key is not None and key not in _PROTECTED:
                raw.pop(key, None)


#: What an C{x-easymesh-error} value from a peer sidecar may be: a cause
#: (lower-case letters, digits and underscores).
_CAUSE_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789_"
MAX_CAUSE = 64


def _isCause(value: bytes) -> bool:
    return 0 < len(value) <= MAX_CAUSE and not value.translate(None, _CAUSE_CHARS)


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
    @param underscores: One of L{UNDERSCORE_ACTIONS}: what to do with a
        request header whose name holds an underscore (C{X_Forwarded_For}),
        which many servers read as its dashed spelling: keep it, drop it,
        or refuse the request.  The sidecar's own names are dropped in any
        spelling whatever this says.
    @param upstreamIsSidecar: Whether this listener's upstreams are peer
        sidecars, whose C{x-easymesh-*} response headers (the cause of an
        error) are relayed; otherwise (the local app behind the inbound
        listener) they are removed.  By default, only the outbound
        listener's are.
    """

    def __init__(
        self,
        nodeId: str,
        listener: str,
        underscores: str = "drop_header",
        upstreamIsSidecar: Optional[bool] = None,
    ) -> None:
        if underscores not in UNDERSCORE_ACTIONS:
            raise ValueError(f"underscores: one of {UNDERSCORE_ACTIONS}, not {underscores!r}")
        self.pseudonym = f"{nodeId}.{listener}".encode("ascii")
        self._dropUnderscores = underscores == "drop_header"
        self._rejectUnderscores = underscores == "reject_request"
        if upstreamIsSidecar is None:
            upstreamIsSidecar = listener == OUTBOUND
        self.upstreamIsSidecar = upstreamIsSidecar

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
        @raise HeaderWithUnderscores: A header name holds an underscore, and
            this listener refuses such requests.
        """
        # This runs for every request: it works on the canonical names that
        # Headers stores, rather than through its name-encoding methods.
        raw = rawHeaders(headers)
        if b"Via" in raw:
            self.checkLoop(headers)
        if self._rejectUnderscores:
            for name in raw:
                if b"_" in name:
                    raise HeaderWithUnderscores(
                        f"header name {name[:64].decode('latin-1')!r} holds an underscore"
                    )
        te = raw.get(_TE)
        _remove(headers, _REQUEST_DROPPED, True, self._dropUnderscores)
        if te is not None and b"trailers" in (t.lower() for t in commaList(te)):
            # The one TE that passes (and the one HTTP/2 allows): the
            # client accepts trailers, which this sidecar relays.
            raw[_TE] = [b"trailers"]
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
        ids = raw.get(b"X-Request-Id")
        if ids is None or len(ids) != 1 or not validRequestId(ids[0]):
            raw[b"X-Request-Id"] = [newRequestId()]

    def prepareResponse(self, headers: Headers, version: bytes, attempts: int = 0) -> None:
        """
        Rewrite upstream response headers in place for relaying.

        From an upstream that is not a sidecar, every C{x-easymesh-*} field
        is removed, except an C{x-easymesh-attempts} saying this sidecar's
        own count of tries (C{attempts}, which a retry policy writes).  From
        a peer sidecar they are relayed, but an C{x-easymesh-error} whose
        value is not a cause is removed.
        """
        raw = rawHeaders(headers)
        if self.upstreamIsSidecar:
            _remove(headers, _HOP_BY_HOP, False)
            errors = raw.get(_ERROR_HEADER)
            if errors is not None and not all(_isCause(v) for v in errors):
                del raw[_ERROR_HEADER]
        else:
            counted = raw.get(_ATTEMPTS_HEADER)
            _remove(headers, _HOP_BY_HOP, True)
            if counted == [b"%d" % (attempts,)]:
                raw[_ATTEMPTS_HEADER] = counted
        via = raw.get(b"Via")
        if via is None:
            raw[b"Via"] = [version + b" " + self.pseudonym]
        else:
            via.append(version + b" " + self.pseudonym)
