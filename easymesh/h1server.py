# -*- test-case-name: tests.test_h1server -*-
"""
The HTTP/1.1 edge: a strict, lean server channel for a twisted.web L{Site}.

It reads a whole request head at once and checks it against RFC 9112
(framing, header syntax, C{Host}, limits) before anything is forwarded,
makes an L{easymesh.message.Request} of it, and hands that to the site's
resource as soon as the head is in; the body (and its trailers) streams
after it.  The channel is the exchange's L{IResponder}: it frames the
response itself (length, chunked with trailers, or close-delimited; none
for HEAD, 204 and 304).  One request is handled at a time; pipelined
requests wait, in order, until the response before them has finished.
After any framing error the connection is closed and nothing after the
error is read.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Set, Tuple

from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import alsoProvides, implementer

from easymesh.config.model import EdgeLimits
from easymesh.edge import admitCaller, peerAddress
from easymesh.h2wire import PREFACE
from easymesh.errors import ERROR_HEADER, edgeCause, phrase
from easymesh.headers import (
    TOKEN as _TOKEN,
    BadField,
    commaList,
    forbiddenInHead,
    parseFields,
    trailerFields,
)
from easymesh.interfaces import IConnectionTransport, IResponder
from easymesh.message import Request
from easymesh.requestbody import EmptyBody, RequestBodyStream
from easymesh.tunnel import TransportEnd
from easymesh.twistedprivate import rawHeaders

_log = Logger()

_ALNUM = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
#: The bytes a request target may hold (RFC 3986 section 2): unreserved and
#: reserved characters and C{%}, but not C{#} (no fragment, RFC 9112 section
#: 3.2); what is not here (controls, space, non-ASCII, C{"<>\\^`{|}}) is
#: refused.
_NOT_TARGET = bytes(set(range(256)) - set(_ALNUM + b"-._~:/?[]@!$&'()*+,;=%"))
#: A host name's bytes: what DNS names and the names services use hold.
_REG_NAME = frozenset(_ALNUM + b"-._~")
_IP_LITERAL = frozenset(b"0123456789abcdefABCDEF:.")


def validAuthority(value: bytes) -> bool:
    """
    Whether C{value} is C{host[:port]}, the host a name (letters, digits,
    C{-._~}) or a bracketed IPv6 address, the port up to five digits: the
    form of a C{Host} field and of an absolute-form target's authority.
    Userinfo, C{%}-escapes, C{,}, C{;} and the like are not.  An empty value
    is (a C{Host} field may be empty).
    """
    if value[:1] == b"[":
        end = value.find(b"]")
        if end < 3 or not _IP_LITERAL.issuperset(value[1:end]):
            return False
        port = value[end + 1 :]
    else:
        host, colon, rest = value.partition(b":")
        if not _REG_NAME.issuperset(host) or (colon and not host):
            return False
        port = colon + rest
    if not port:
        return True
    digits = port[1:]
    return port[:1] == b":" and len(digits) <= 5 and (not digits or digits.isdigit())


def checkTarget(target: bytes) -> None:
    """
    @raise BadMessage: C{target} holds a byte outside the URI grammar, a
        fragment, or (in absolute form) userinfo or an authority that is
        not a valid host.
    """
    if not target or len(target.translate(None, _NOT_TARGET)) != len(target):
        raise BadMessage(400, "invalid request target")
    if target[:1] == b"/":
        return
    parts = _absoluteForm(target)
    if parts is not None:
        authority = parts[0]
        if b"@" in authority:
            raise BadMessage(400, "userinfo in request target")
        if not authority or not validAuthority(authority):
            raise BadMessage(400, "invalid authority in request target")


_HEX = frozenset(b"0123456789abcdefABCDEF")
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")

_HEAD, _BODY, _WAIT, _DISCARD, _CLOSED, _TUNNEL = range(6)

class BadMessage(Exception):
    """
    A request that cannot be read safely; answered with C{code} and closed.

    @ivar cause: Its cause, the one the table gives the edge's C{code}.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.cause = edgeCause(code).name


def _errorResponse(error: BadMessage) -> bytes:
    body = error.reason.encode("ascii", "replace") + b"\n"
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (error.code, phrase(error.code)),
            b"Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\n",
            ERROR_HEADER + b": " + error.cause.encode("ascii") + b"\r\n",
            b"Content-Length: %d\r\n\r\n" % len(body),
            body,
        )
    )


def _originForm(target: bytes, headers: Headers) -> bytes:
    """
    The request target in origin form; an absolute-form target's authority
    replaces C{Host} (RFC 9112 section 3.2.2).

    @raise BadMessage: The target is neither form (C{*}, or an authority
        form outside CONNECT, or a scheme other than http and https).
    """
    if target[:1] == b"/":
        return target
    parts = _absoluteForm(target)
    if parts is None:
        raise BadMessage(400, "unsupported request target")
    authority, path = parts
    headers.setRawHeaders(b"host", [authority])
    return path if path[:1] == b"/" else b"/" + path


def _absoluteForm(target: bytes) -> Optional[Tuple[bytes, bytes]]:
    """
    The authority and the rest (path and query) of an absolute-form
    C{http} or C{https} target; L{None} for any other form.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    end = len(rest)
    for delimiter in (b"/", b"?"):
        found = rest.find(delimiter)
        if 0 <= found < end:
            end = found
    return rest[:end], rest[end:]


_EMPTY = EmptyBody()


def _checkToken(value: bytes, what: str) -> None:
    if not value or not _TOKEN.issuperset(value):
        raise BadMessage(400, f"invalid {what}")


class _IdentityBody:
    """
    A body of known length.
    """

    def __init__(self, length: int, deliver: Callable[[bytes], None]) -> None:
        self.remaining = length
        self._deliver = deliver

    def feed(self, data: bytes) -> Optional[bytes]:
        """
        @return: L{None} while more is due; the bytes after the body once it
            is complete.
        """
        remaining = self.remaining
        if len(data) < remaining:
            self.remaining = remaining - len(data)
            self._deliver(data)
            return None
        self.remaining = 0
        if remaining:
            self._deliver(data[:remaining])
        return data[remaining:]


_QDTEXT_BAD = frozenset(bytes(c for c in range(32) if c != 9) + b"\x7f")


def _validExtensions(text: bytes) -> bool:
    """
    Whether C{text} (what follows a chunk size) is empty or chunk extensions
    written strictly (RFC 9112 section 7.1.1, without optional white space):
    C{;name} or C{;name=value}, a name a token and a value a token or a
    closed quoted-string.
    """
    position, size = 0, len(text)
    while position < size:
        if text[position] != 59:  # ;
            return False
        position += 1
        start = position
        while position < size and text[position] in _TOKEN:
            position += 1
        if position == start:
            return False  # a bare ;
        if position == size or text[position] == 59:
            continue
        if text[position] != 61:  # =
            return False
        position += 1
        if position < size and text[position] == 34:  # a quoted-string
            position += 1
            while True:
                if position >= size:
                    return False  # never closed
                byte = text[position]
                if byte == 34:
                    position += 1
                    break
                if byte == 92:  # a quoted pair
                    position += 1
                    if position >= size or text[position] in _QDTEXT_BAD:
                        return False
                elif byte in _QDTEXT_BAD:
                    return False
                position += 1
        else:
            start = position
            while position < size and text[position] in _TOKEN:
                position += 1
            if position == start:
                return False
    return True


class _ChunkedBody:
    """
    A chunked body (RFC 9112 section 7.1), parsed strictly: hex sizes with
    nothing after them but strict extensions, CRLF after each chunk; the
    trailer fields are kept in C{trailers} (L{None} if none are relayed,
    see L{trailerFields}).  What one read yields is delivered in
    one piece, however many chunks it held, so that the next hop never sees
    more pieces than this one read.
    """

    def __init__(
        self,
        deliver: Callable[[bytes], None],
        maxLine: int,
        maxTrailers: int,
        maxBody: Optional[int] = None,
    ) -> None:
        self._deliver = deliver
        self._maxLine = maxLine
        self._trailerBudget = maxTrailers
        self._bodyBudget = maxBody
        self._buffer = b""
        self._state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailers
        self._remaining = 0
        self._trailerLines: List[bytes] = []
        self.trailers: Optional[Headers] = None

    def feed(self, data: bytes) -> Optional[bytes]:
        """
        @return: L{None} while more is due; the bytes after the body once it
            is complete.
        """
        pieces: List[bytes] = []
        try:
            return self._parse(data, pieces)
        finally:
            if pieces:
                self._deliver(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _parse(self, data: bytes, pieces: List[bytes]) -> Optional[bytes]:
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        position, size = 0, len(buffer)
        while position < size:
            if self._state == 1:
                take = min(self._remaining, size - position)
                pieces.append(buffer[position : position + take])
                position += take
                self._remaining -= take
                if not self._remaining:
                    self._state = 2
                continue
            end = buffer.find(b"\n", position)
            if end < 0:
                if size - position - (buffer[-1:] == b"\r") > self._maxLine:
                    raise BadMessage(400, "chunk line too long")
                self._buffer = buffer[position:]
                return None
            if end == position or buffer[end - 1] != 13:
                raise BadMessage(400, "bare LF in chunked body")
            line = buffer[position : end - 1]
            position = end + 1
            if len(line) > self._maxLine:
                raise BadMessage(400, "chunk line too long")
            if b"\r" in line:
                raise BadMessage(400, "bare CR in chunked body")
            if self._state == 0:
                cut = line.find(b";")
                sizeText = line if cut < 0 else line[:cut]
                if not sizeText or not _HEX.issuperset(sizeText) or len(sizeText) > 15:
                    raise BadMessage(400, "invalid chunk size")
                if cut >= 0 and not _validExtensions(line[cut:]):
                    raise BadMessage(400, "invalid chunk extension")
                self._remaining = int(sizeText, 16)
                if self._bodyBudget is not None:
                    self._bodyBudget -= self._remaining
                    if self._bodyBudget < 0:
                        raise BadMessage(413, "request body too large")
                self._state = 1 if self._remaining else 3
            elif self._state == 2:
                if line:
                    raise BadMessage(400, "chunk longer than its size")
                self._state = 0
            else:
                if not line:
                    if self._trailerLines:
                        try:
                            self.trailers = trailerFields(self._trailerLines)
                        except BadField:
                            raise BadMessage(400, "invalid trailer field") from None
                    return buffer[position:]
                self._trailerBudget -= 1
                if self._trailerBudget < 0:
                    raise BadMessage(431, "too many trailer fields")
                if line[:1] in (b" ", b"\t") or b":" not in line:
                    raise BadMessage(400, "invalid trailer field")
                self._trailerLines.append(line)
        return None


class DeadlineSweeper:
    """
    Once a second, time out the connections whose deadline has passed; and
    keep the set of open connections, for a drain to close.
    """

    def __init__(self, clock: Any, interval: float = 1.0) -> None:
        self.clock = clock
        self.interval = interval
        self._channels: Set[Any] = set()
        self._call: Any = None
        self._whenEmpty: List[Deferred[None]] = []

    def add(self, channel: "HTTP1Channel") -> None:
        self._channels.add(channel)
        if self._call is None:
            self._call = self.clock.callLater(self.interval, self._sweep)

    @property
    def open(self) -> int:
        """
        Connections open now.
        """
        return len(self._channels)

    def remove(self, channel: "HTTP1Channel") -> None:
        self._channels.discard(channel)
        if not self._channels and self._whenEmpty:
            waiting, self._whenEmpty = self._whenEmpty, []
            for d in waiting:
                d.callback(None)

    def closeIdle(self) -> None:
        """
        Close the connections waiting for a request.
        """
        for channel in list(self._channels):
            if channel.idle:
                channel.loseConnection()
            else:
                # An HTTP/2 connection in use: no new streams on it.
                goAway = getattr(channel, "goAway", None)
                if goAway is not None:
                    goAway()

    def closeAll(self) -> Deferred[None]:
        """
        Close every connection: gracefully (after what is written) if idle,
        at once if a request is still being served.

        @return: A L{Deferred} that fires once all are closed.
        """
        for channel in list(self._channels):
            if channel.closing:
                continue  # already closing, after what it is owed
            if channel.idle:
                channel.loseConnection()
            else:
                cut = getattr(channel, "cutOff", None)
                if cut is not None:
                    cut()
                else:
                    channel.transport.abortConnection()
        if not self._channels:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._whenEmpty.append(d)
        return d

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        expired = [c for c in self._channels if c.deadline is not None and c.deadline <= now]
        for channel in expired:
            try:
                channel._timedOut()
            except Exception:
                _log.failure("Timing out {channel}", channel=channel)
        if self._channels:
            self._call = self.clock.callLater(self.interval, self._sweep)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def closeWithoutWaiting(transport: Any) -> None:
    """
    Let a TLS transport close its connection as soon as it has sent its own
    close alert, rather than wait for the peer's, which a vanished or
    careless peer never sends (RFC 8446 section 6.1 allows this).
    """
    getHandle = getattr(transport, "getHandle", None)
    connection = getHandle() if getHandle is not None else None
    if isinstance(connection, SSL.Connection):
        connection.set_shutdown(connection.get_shutdown() | SSL.RECEIVED_SHUTDOWN)


def _tlsReason(reason: Failure) -> str:
    """
    OpenSSL's reasons for a failed handshake, readable.
    """
    value = reason.value
    args = getattr(value, "args", ())
    if args and isinstance(args[0], list):
        parts = [str(item[-1]) for item in args[0] if isinstance(item, tuple) and item]
        if parts:
            return "; ".join(parts)
    return str(value) or type(value).__name__


def _upgradeAsked(
    raw: Any, connection: Optional[List[bytes]], version: bytes, method: bytes, length: Optional[int]
) -> Optional[bytes]:
    """
    The protocols a request asks to switch to (its C{Upgrade} field), if
    it is an HTTP/1.1 request without a body whose C{Connection} names
    C{upgrade}; else L{None}.  A request with a body, or a CONNECT, is
    never switched: it is forwarded without the upgrade.
    """
    upgrades = raw.get(b"Upgrade")
    if not upgrades or not connection or version != b"HTTP/1.1" or length != 0:
        return None
    if method == b"CONNECT" or b"upgrade" not in (t.lower() for t in commaList(connection)):
        return None
    return b", ".join(commaList(upgrades)) or None


#: Status codes whose responses never have a body (RFC 9110 section 6.4.1).
_NO_BODY_CODES = frozenset((204, 304))


@implementer(IPushProducer, IHandshakeListener, IResponder)
class HTTP1Channel(Protocol):
    """
    One client connection.  C{site} and C{factory} are set by the L{Site}
    that builds it; the site's C{handle(request, responder, target)} gives
    each request its exchange (an object with C{start()} and
    C{done(reason)}).  For the request being answered, the channel is the
    exchange's L{IResponder}.

    @ivar peerIdentity: Over mTLS, the caller's verified identity that the
        site's C{allowedIdentities} accepted; else L{None}.
    """

    transport: IConnectionTransport
    site: Any = None
    peerIdentity: Optional[str] = None
    #: Called once when the connection is closed, if set.
    onClose: Optional[Callable[[], None]] = None
    _handshakeDone = False
    _registered = False
    sweeper: Optional["DeadlineSweeper"] = None
    deadline: Optional[float] = None
    limits = EdgeLimits()
    #: The HTTP/2 edge this connection was handed to, if it was.
    _h2: Any = None
    #: Whether no request has been read yet (only then may HTTP/2 begin).
    _fresh = True
    # The response being sent (see IResponder).
    started = False
    _chunked = False
    _noBody = False

    def __init__(self) -> None:
        self._buffer = b""
        self._state = _HEAD
        self._exchange: Any = None
        self._stream: Optional[RequestBodyStream] = None
        self._body: Any = None
        self._producer: Any = None
        self._parsing = False
        self._headStarted = False
        self._emptyLines = 0
        self._pausedFor: Set[str] = set()
        self._method = b""
        self._version = b"HTTP/1.1"
        self.persistent = True
        #: Once the protocol has switched, the tunnel end of this connection.
        self._tunnelEnd: Optional[TransportEnd] = None

    # Connection.

    def connectionMade(self) -> None:
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        self._registered = True
        #: The client's and our addresses, and the scheme: fixed for the
        #: connection, so looked up once.
        self.peer = transport.getPeer()
        self.local = transport.getHost()
        secure = ISSLTransport.providedBy(transport) or INegotiated.providedBy(transport)
        self.scheme = b"https" if secure else b"http"
        if self.sweeper is not None:
            self.sweeper.add(self)
        self._setTimer(self.limits.idleTimeout)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done and the client's chain verified: refuse a
        caller whose identity the site does not accept; hand a client that
        negotiated C{h2} to the HTTP/2 edge.
        """
        self._handshakeDone = True
        allowed = getattr(self.site, "allowedIdentities", None)
        if allowed is not None:
            identity = admitCaller(self.transport, allowed, self.peer)
            if identity is None:
                self._state = _CLOSED
                self.transport.abortConnection()
                return
            self.peerIdentity = identity
        if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
            self._switchToHTTP2()

    def _switchToHTTP2(self) -> None:
        """
        Hand this connection, and what it has sent so far, to an HTTP/2
        edge: the client negotiated C{h2}, or began with its preface.
        """
        data, self._buffer = self._buffer, b""
        self._setTimer(None)
        if self.sweeper is not None:
            self.sweeper.remove(self)
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()
        from easymesh.h2server import H2Edge

        self._h2 = edge = H2Edge(self)
        self.onClose = None
        edge.makeConnection(self.transport)
        if data:
            edge.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._h2 is not None:
            self._h2.connectionLost(reason)
            return
        if self._tunnelEnd is not None:
            self._state = _CLOSED
            if self.sweeper is not None:
                self.sweeper.remove(self)
            onClose, self.onClose = self.onClose, None
            if onClose is not None:
                onClose()
            self._tunnelEnd.connectionLost(reason)
            return
        if (
            self.scheme == b"https"
            and not self._handshakeDone
            and self._state != _CLOSED
            # A connection closed before any TLS byte (a port probe) is not
            # worth a warning.
            and reason.check("OpenSSL.SSL.Error", "easymesh.tls.identity.IdentityMismatch")
        ):
            _log.warn(
                "TLS handshake with {peer} failed: {reason}",
                peer=peerAddress(self.peer),
                reason=_tlsReason(reason),
            )
        self._state = _CLOSED
        self._setTimer(None)
        if self.sweeper is not None:
            self.sweeper.remove(self)
        onClose, self.onClose = self.onClose, None
        if onClose is not None:
            onClose()
        self._endExchange(reason)

    def getPeer(self) -> Any:
        return self.peer

    def getHost(self) -> Any:
        return self.local

    def isSecure(self) -> bool:
        return self.scheme == b"https"

    def loseConnection(self) -> None:
        """
        Close the connection once what is written has been delivered; abort
        it if that takes longer than the close timeout.  Over TLS the close
        alert is sent and the connection closed without waiting for the
        client's.
        """
        if self._state == _CLOSED:
            return  # already closing, or closed: its deadline stands
        self._state = _CLOSED
        self._setTimer(self.limits.closeTimeout)
        transport = self.transport
        if self._registered:
            # No transport closes while it has a producer to wait for: TLS
            # while one is registered, TCP while it has paused one.
            self._registered = False
            transport.unregisterProducer()
        if self.scheme == b"https":
            closeWithoutWaiting(transport)
        transport.loseConnection()

    @property
    def closing(self) -> bool:
        """
        Whether the connection is closing (or closed).
        """
        return self._state == _CLOSED

    @property
    def idle(self) -> bool:
        """
        Whether the connection is between requests.
        """
        return self._state == _HEAD and not self._buffer and self._exchange is None

    # Timeouts: a deadline the site's sweeper checks, so that a request
    # costs no timer of its own.

    def _setTimer(self, seconds: Optional[float]) -> None:
        sweeper = self.sweeper
        if seconds is None or sweeper is None:
            self.deadline = None
        else:
            self.deadline = sweeper.clock.seconds() + seconds

    def _timedOut(self) -> None:
        self.deadline = None
        state = self._state
        if state == _CLOSED:
            # Closing, and the client does not take what it is owed.
            self.transport.abortConnection()
        elif state == _HEAD:
            if self._buffer:
                self._refuse(BadMessage(408, "request head not received in time"))
            else:
                self.loseConnection()
        elif state == _BODY:
            self._refuse(BadMessage(408, "request body stalled"))

    # Reading.

    def dataReceived(self, data: bytes) -> None:
        if self._h2 is not None:
            self._h2.dataReceived(data)
            return
        state = self._state
        if state == _TUNNEL:
            self._tunnelEnd.dataReceived(data)  # type: ignore[union-attr]
        elif state == _BODY:
            try:
                rest = self._body.feed(data)
            except BadMessage as e:
                self._refuse(e)
                return
            if rest is None:
                if self.deadline is not None:
                    self._setTimer(self.limits.bodyTimeout)
                return
            self._buffer = rest
            self._bodyComplete()
            if self._state == _WAIT:
                self._checkBuffered()
            elif self._state == _HEAD:
                self._parseHeads()
        elif state == _HEAD:
            if self._buffer:
                self._buffer += data
            else:
                self._buffer = data
                if not self._headStarted:
                    # The head timeout runs from the first byte of a request
                    # (empty lines before it included).
                    self._headStarted = True
                    self._setTimer(self.limits.headTimeout)
            self._parseHeads()
        elif state == _WAIT:
            self._buffer += data
            self._checkBuffered()
        # _DISCARD and _CLOSED: drop it.

    def _checkBuffered(self) -> None:
        if len(self._buffer) > self.limits.maxHeadSize:
            # A pipelining client ahead of us: stop reading until we catch up.
            self.pauseReading("pipeline")

    def pauseReading(self, reason: str) -> None:
        """
        Stop reading from the client for C{reason} (the request body's
        upstream is full, or pipelined requests are piling up).
        """
        if not self._pausedFor:
            self.transport.pauseProducing()
        self._pausedFor.add(reason)

    def resumeReading(self, reason: str) -> None:
        """
        C{reason} no longer holds; read again once no other reason does.
        """
        if reason in self._pausedFor:
            self._pausedFor.discard(reason)
            if not self._pausedFor and self._state != _CLOSED:
                self.transport.resumeProducing()

    def _parseHeads(self) -> None:
        if self._parsing:
            return
        self._parsing = True
        try:
            while self._state == _HEAD and self._buffer:
                if not self._parseHead():
                    break
        finally:
            self._parsing = False

    def _parseHead(self) -> bool:
        """
        Parse one request head from the buffer, if it is all there.

        @return: Whether a request was started.
        """
        buffer = self._buffer
        limits = self.limits
        while buffer[:1] in (b"\r", b"\n"):
            # RFC 9112 section 2.2: ignore a few empty lines (CRLF) before a
            # request line; nothing else.
            if buffer == b"\r":
                return False
            if buffer[:2] != b"\r\n":
                self._refuse(BadMessage(400, "bare CR or LF before request line"))
                return False
            self._emptyLines += 1
            if self._emptyLines > 4:
                self._refuse(BadMessage(400, "empty lines before request"))
                return False
            self._buffer = buffer = buffer[2:]
        if not buffer:
            return False
        if self._fresh and buffer[:1] == b"P":
            # Prior-knowledge HTTP/2 (h2c): its preface, before any request.
            if len(buffer) < len(PREFACE) and PREFACE.startswith(buffer):
                return False
            if buffer.startswith(PREFACE):
                self._switchToHTTP2()
                return False
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            # Limits apply to content: a line end that is still arriving
            # does not count against them.
            lineEnd = buffer.find(b"\n")
            if lineEnd < 0:
                lineLength = len(buffer) - (buffer[-1:] == b"\r")
            else:
                lineLength = lineEnd - (buffer[lineEnd - 1 : lineEnd] == b"\r")
            if lineLength > limits.maxRequestLine:
                self._refuse(BadMessage(414, "request line too long"))
            elif len(buffer) > limits.maxHeadSize + 3:
                self._refuse(BadMessage(431, "request head too large"))
            elif forbiddenInHead(buffer.rstrip(b"\r")) is not None:
                self._refuse(BadMessage(400, forbiddenInHead(buffer.rstrip(b"\r")) or ""))
            return False
        if end > limits.maxHeadSize:
            self._refuse(BadMessage(431, "request head too large"))
            return False
        head = buffer[:end]
        self._buffer = buffer[end + 4 :]
        try:
            request = self._startRequest(head)
        except BadMessage as e:
            self._refuse(e)
            return False
        return request

    def _startRequest(self, head: bytes) -> bool:
        limits = self.limits
        bad = forbiddenInHead(head)
        if bad is not None:
            raise BadMessage(400, bad)
        lines = head.split(b"\r\n")
        requestLine = lines[0]
        if len(requestLine) > limits.maxRequestLine:
            raise BadMessage(414, "request line too long")
        parts = requestLine.split(b" ")
        if len(parts) != 3:
            raise BadMessage(400, "invalid request line")
        method, target, version = parts
        _checkToken(method, "method")
        checkTarget(target)
        if version not in _VERSIONS:
            if version[:5] == b"HTTP/" and len(version) == 8 and version[5:6].isdigit():
                raise BadMessage(505, "HTTP version not supported")
            raise BadMessage(400, "invalid HTTP version")
        if len(lines) - 1 > limits.maxHeaders:
            raise BadMessage(431, "too many header fields")
        try:
            headers = parseFields(lines[1:])
        except BadField:
            raise BadMessage(400, "invalid header field") from None
        raw = rawHeaders(headers)
        hosts = raw.get(b"Host")
        if hosts is not None:
            if len(hosts) != 1 or not validAuthority(hosts[0]):
                raise BadMessage(400, "invalid Host")
        elif version == b"HTTP/1.1":
            raise BadMessage(400, "missing Host")
        length: Optional[int] = 0
        encodings = raw.get(b"Transfer-Encoding")
        lengths = raw.get(b"Content-Length")
        if encodings is not None:
            if lengths is not None:
                raise BadMessage(400, "both Content-Length and Transfer-Encoding")
            if version != b"HTTP/1.1":
                raise BadMessage(400, "Transfer-Encoding in an HTTP/1.0 request")
            codings = [c.strip(b" \t").lower() for v in encodings for c in v.split(b",")]
            if codings != [b"chunked"]:
                if codings[-1:] == [b"chunked"]:
                    raise BadMessage(501, "unsupported transfer coding")
                raise BadMessage(400, "final transfer coding is not chunked")
            length = None
        elif lengths is not None:
            values = {v.strip(b" \t") for item in lengths for v in item.split(b",")}
            if len(values) != 1:
                raise BadMessage(400, "conflicting Content-Length")
            text = values.pop()
            if not text.isdigit() or len(text) > 18:
                raise BadMessage(400, "invalid Content-Length")
            length = int(text)
        if limits.maxBody == 0 and length is None:
            raise BadMessage(413, "request body not accepted")
        if limits.maxBody is not None and length is not None and length > limits.maxBody:
            raise BadMessage(413, "request body too large")
        connection = raw.get(b"Connection")
        if version == b"HTTP/1.1":
            self.persistent = not (
                connection and any(b"close" in t.strip().lower() for v in connection for t in v.split(b","))
            )
        else:
            self.persistent = False
        upgrade = _upgradeAsked(raw, connection, version, method, length)

        target = _originForm(target, headers)
        self._headStarted = False
        self._emptyLines = 0
        self._fresh = False
        self._method = method
        self._version = version
        self.started = False
        stream: Optional[RequestBodyStream] = None
        body: Any = None
        if length is None or length > 0:
            body = stream = RequestBodyStream(length, self._pauseForBody, self._resumeForBody)
        elif lengths is not None:
            body = _EMPTY
        self._stream = stream
        request = Request(
            method,
            target,
            headers,
            body,
            getattr(self.peer, "host", ""),
            self.scheme,
            version[5:],
            peerIdentity=self.peerIdentity,
        )
        request.upgrade = upgrade
        try:
            exchange = self.site.handle(request, self, parts[1])
        except Exception:
            _log.failure("Starting the exchange of {request} failed", request=request)
            raise BadMessage(500, "internal error") from None
        self._exchange = exchange
        if stream is None:
            self._state = _WAIT
            self._setTimer(None)
            exchange.start()
            return True
        self._state = _BODY
        self._setTimer(limits.bodyTimeout)
        if length is None:
            self._body = _ChunkedBody(
                stream.write, limits.maxChunkLine, limits.maxHeaders, limits.maxBody
            )
        else:
            self._body = _IdentityBody(length, stream.write)
        expect = raw.get(b"Expect")
        if expect and version == b"HTTP/1.1" and expect[0].lower() == b"100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # Forwarding starts with the head; the body streams after it.
        exchange.start()
        if self._state == _BODY and self._buffer:
            data, self._buffer = self._buffer, b""
            self.dataReceived(data)
        return True

    def _pauseForBody(self) -> None:
        self.pauseReading("body")

    def _resumeForBody(self) -> None:
        self.resumeReading("body")

    def _bodyComplete(self) -> None:
        body, self._body = self._body, None
        self._state = _WAIT
        self._setTimer(None)
        if self._stream is not None:
            self._stream.finish(getattr(body, "trailers", None))

    def discardBody(self) -> None:
        """
        The response to the current request is complete before its body:
        drop the rest of the body and close once the response is written.
        """
        if self._state == _BODY:
            self._state = _DISCARD
            self._body = None
            self.persistent = False
            if self._stream is not None:
                self._stream.stopProducing()

    def _endExchange(self, reason: Optional[Failure]) -> None:
        """
        Tell the exchange being answered, if any, that it is over.
        """
        exchange, self._exchange = self._exchange, None
        stream, self._stream = self._stream, None
        self._producer = None
        if reason is not None and stream is not None:
            stream.fail(reason)
        if exchange is not None:
            exchange.done(reason)

    def _refuse(self, error: BadMessage) -> None:
        """
        Answer an unreadable request and close the connection.
        """
        self._buffer = b""
        if not (self._exchange is not None and self.started):
            self.transport.write(_errorResponse(error))
            self.loseConnection()
        else:
            self._state = _CLOSED
            self._setTimer(None)
            self.transport.abortConnection()
        self._endExchange(Failure(error))

    # The response (IResponder).

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    def bodyIncomplete(self) -> bool:
        stream = self._stream
        return stream is not None and not stream.complete

    def closeAfterResponse(self) -> None:
        self.persistent = False

    def setProducer(self, producer: Any) -> None:
        self._producer = producer

    def sendHead(self, code: int, reason: bytes, headers: Headers, whole: bool = False) -> None:
        self.started = True
        if self._state == _CLOSED:
            return
        version = self._version
        parts = [version, b" %d " % code, reason or phrase(code), b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        self._noBody = noBody = self._method == b"HEAD" or code in _NO_BODY_CODES
        self._chunked = False
        if not noBody and not headers.hasHeader(b"content-length"):
            if whole:
                parts.append(b"Content-Length: 0\r\n")
            elif version == b"HTTP/1.1":
                self._chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                # Delimited by the close.
                self.persistent = False
        if not self.persistent and version == b"HTTP/1.1" and not headers.hasHeader(b"connection"):
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        # One joined write: the transport checks every piece of a sequence.
        self.transport.write(b"".join(parts))

    def sendData(self, data: bytes) -> None:
        if self._state == _CLOSED or self._noBody or not data:
            return
        if self._chunked:
            self.transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.transport.write(data)

    def finish(self, trailers: Optional[Headers] = None) -> None:
        if self._state != _CLOSED and self._chunked:
            if trailers is None:
                self.transport.write(b"0\r\n\r\n")
            else:
                parts = [b"0\r\n"]
                for name, values in trailers.getAllRawHeaders():
                    for value in values:
                        parts += (name, b": ", value, b"\r\n")
                parts.append(b"\r\n")
                self.transport.write(b"".join(parts))
        if self._state == _BODY:
            # Answered before the body ended: drop the rest of it and close,
            # so no part of it is read as a new request.
            self.discardBody()
        exchange, self._exchange = self._exchange, None
        self._stream = None
        self._producer = None
        # The connection's next state is settled before the exchange hears
        # it is done: a drain waiting for it then finds this connection
        # closing or idle, never mid-request.
        self._afterResponse()
        if exchange is not None:
            exchange.done(None)
        if self._state == _HEAD and self._buffer and self._exchange is None:
            self._parseHeads()

    def abort(self) -> None:
        self._state = _CLOSED
        self._setTimer(None)
        self.transport.abortConnection()

    # The protocol switch.

    def switchProtocols(self, reason: bytes, headers: Headers, protocol: bytes) -> TransportEnd:
        """
        Send a C{101} switching to C{protocol} (with C{headers}, from
        which hop-by-hop fields are gone), and make this connection a
        tunnel end: what the client sent after the upgrade request, and
        all it sends from now on, is the tunnel's.
        """
        self.started = True
        parts = [b"HTTP/1.1 101 ", reason or phrase(101), b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        parts += (b"Connection: upgrade\r\nUpgrade: ", protocol, b"\r\n\r\n")
        transport = self.transport
        transport.write(b"".join(parts))
        self._state = _TUNNEL
        self._setTimer(None)
        self._exchange = None
        self._producer = None
        if self._registered:
            self._registered = False
            transport.unregisterProducer()
        if self._pausedFor:
            self._pausedFor.clear()
            transport.resumeProducing()
        pending, self._buffer = self._buffer, b""
        # Only plain TCP ends its sending alone (see easymesh.tunnel).
        halfClose = self.scheme == b"http" and hasattr(transport, "loseWriteConnection")
        self._tunnelEnd = end = TransportEnd(transport, halfClose, pending)
        if halfClose:
            alsoProvides(self, IHalfCloseableProtocol)
        return end

    def readConnectionLost(self) -> None:
        """
        The client ended its sending (TCP half-close); only once tunnelling
        is this connection half-closeable.
        """
        if self._tunnelEnd is not None:
            self._tunnelEnd.readConnectionLost()

    def writeConnectionLost(self) -> None:
        pass

    def cutOff(self) -> None:
        """
        Close the connection now (the end of a drain): a tunnel's both
        sides once what they are owed is written, a request's at once.
        """
        end = self._tunnelEnd
        tunnel = end.tunnel if end is not None else None
        if tunnel is not None:
            tunnel.cut()
        else:
            self.transport.abortConnection()

    def _afterResponse(self) -> None:
        if self._state == _CLOSED:
            return
        if not self.persistent or self._state in (_DISCARD, _BODY):
            self.loseConnection()
            return
        self._state = _HEAD
        self.resumeReading("body")
        self.resumeReading("pipeline")
        self._setTimer(self.limits.headTimeout if self._buffer else self.limits.idleTimeout)

    # The response's producer, paused when the client reads slowly.

    def pauseProducing(self) -> None:
        if self._producer is not None:
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self._producer is not None:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        if self._producer is not None:
            self._producer.stopProducing()
