# -*- test-case-name: tests.test_h1client -*-
"""
A lean HTTP/1.1 client connection for upstreams, kept in Twisted's
L{HTTPConnectionPool}.

It does only what a proxy needs: write a prepared request head and stream a
body; parse the response head strictly; deliver the body (fixed length,
chunked or close-delimited) with back-pressure; return the connection to the
pool when a response has ended cleanly.  It keeps the contract the pool
expects of L{twisted.web._newclient.HTTP11ClientProtocol} (C{state},
C{abort()}, the quiescent callback), and fails with the same exception types,
so the pool's one retry of a stale connection applies.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, cast

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, INegotiated, IPushProducer, ISSLTransport
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestGenerationFailed,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import alsoProvides, implementer

from easymesh.errors import (
    BadRequest,
    ProxyError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTLSFailure,
    isTLSFailure,
)
from easymesh.headers import (
    BadField,
    commaList,
    forbiddenInHead,
    offendingName,
    parseFields,
    trailerFields,
)
from easymesh.tunnel import TransportEnd
from easymesh.interfaces import IConnectionTransport
from easymesh.twistedprivate import ParseError, rawHeaders

#: Largest response head (status line and headers) accepted.
MAX_HEAD = 64 * 1024
#: Most header fields in a response head.
MAX_HEADERS = 256
#: Largest chunk-size line (with extensions) accepted.
MAX_CHUNK_LINE = 4096

_NO_BODY_CODES = frozenset((204, 304))
_HTTP11 = (b"HTTP", 1, 1)
_HTTP10 = (b"HTTP", 1, 0)
_HEX = frozenset(b"0123456789abcdefABCDEF")
#: The ends of a body, made once: a L{Failure} costs to build.
_RESPONSE_DONE = Failure(ResponseDone())
_POTENTIAL_DATA_LOSS = Failure(PotentialDataLoss())


class UpstreamRequest:
    """
    A request ready to write: its head (request line and headers, without
    framing headers or the blank line) and its body.

    @ivar upgrade: The protocols it asks to switch to (its head then
        carries C{Upgrade} and C{Connection: upgrade}), or L{None}.  Such a
        request has no body.
    """

    __slots__ = ("method", "head", "bodyProducer", "upgrade")

    def __init__(
        self,
        method: bytes,
        head: bytes,
        bodyProducer: Optional[IBodyProducer],
        upgrade: Optional[bytes] = None,
    ) -> None:
        self.method = method
        self.head = head
        self.bodyProducer = bodyProducer
        self.upgrade = upgrade


class ResponseParseError(ParseError):
    """
    A malformed upstream response.  Its text (which the error log shows)
    says what is wrong and, at most, which header field or how the status
    line begins: never a field's value, which may be a credential.
    """

    def __str__(self) -> str:
        return str(self.args[0])


#: How much of a bad status line an error quotes: its version and code.
_STATUS_QUOTED = 12


def _parseError(reason: str, status: bytes = b"", field: Optional[bytes] = None) -> Failure:
    """
    @param status: The status line, when it is what is wrong.
    @param field: The name of the offending header field, if known.
    """
    if status:
        reason += f" (beginning {status[:_STATUS_QUOTED]!r})"
    if field is not None:
        reason += f" in header {field[:64].decode('ascii')!r}"
    return Failure(ResponseParseError(reason, b""))


class _BodyTransport:
    """
    What a response body's protocol sees as its transport: pausing pauses
    the upstream connection; stopping abandons it.  Once the body has ended
    it is detached, and touches the connection (by then perhaps serving
    another request) no more.
    """

    def __init__(self, connection: Optional["H1Connection"]) -> None:
        self._connection = connection
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        if self._connection is not None:
            self._connection.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self._connection is not None:
            self._connection.transport.resumeProducing()

    def stopProducing(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abandon()

    def detach(self) -> None:
        self._connection = None


@implementer(IResponse)
class H1Response:
    """
    A response whose head has arrived; the body is delivered to the
    protocol given to L{deliverBody}.
    """

    request = None
    previousResponse = None
    #: The trailer fields of a chunked body, once it has ended with some.
    trailers: Optional[Headers] = None
    #: For a C{101}, the protocol switched to.
    upgrade: Optional[bytes] = None

    def __init__(
        self,
        version: Any,
        code: int,
        phrase: bytes,
        headers: Headers,
        length: Any,
        connection: "H1Connection",
    ) -> None:
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self._connection = connection
        self._protocol: Optional[Protocol] = None
        self._pending: List[bytes] = []
        self._ended: Optional[Failure] = None
        self._waitingForReader = False
        self._transport = _BodyTransport(connection)

    def tunnelEnd(self) -> Optional[TransportEnd]:
        """
        For a C{101} that switched the connection's protocol, its tunnel
        end; else L{None}.
        """
        return self._connection.tunnelEnd if self.upgrade is not None else None

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    def deliverBody(self, protocol: Protocol) -> None:
        if self._protocol is not None:
            raise RuntimeError("deliverBody called twice")
        self._protocol = protocol
        if self._ended is not None:
            self._transport.detach()
        protocol.makeConnection(self._transport)
        pending, self._pending = self._pending, []
        for data in pending:
            protocol.dataReceived(data)
        if self._ended is not None:
            protocol.connectionLost(self._ended)
        elif self._waitingForReader:
            self._waitingForReader = False
            if not self._transport.paused:
                self._transport.resumeProducing()

    def _bodyData(self, data: bytes) -> None:
        if self._protocol is None:
            self._pending.append(data)
            if not self._waitingForReader:
                # Nobody reads yet: stop reading until somebody does.
                self._waitingForReader = True
                self._connection.transport.pauseProducing()
        else:
            self._protocol.dataReceived(data)

    def _bodyEnded(self, reason: Failure) -> None:
        self._transport.detach()
        if self._protocol is None:
            self._ended = reason
        else:
            self._protocol.connectionLost(reason)


def _receiving(response: Optional[H1Response]) -> H1Response:
    """
    The response whose body is being parsed: there is one while there is.
    """
    return cast(H1Response, response)


class H1Connection(Protocol):
    """
    One HTTP/1.1 connection to an upstream, one request at a time.

    @ivar state: C{"QUIESCENT"} when idle (what the pool checks), else
        C{"BUSY"} or C{"CLOSED"}.
    """

    #: Set by C{makeConnection}; L{None} only before it.
    transport: IConnectionTransport
    #: Told of this connection's opening and closing
    #: (C{connectionOpened()}, C{connectionClosed()}), if set.
    observer: Any = None
    #: Once a C{101} switched its protocol, its tunnel end; the connection
    #: then never returns to the pool.
    tunnelEnd: Optional[TransportEnd] = None

    def __init__(self, quiescentCallback: Callable[["H1Connection"], None]) -> None:
        self._quiescentCallback = quiescentCallback
        self.state = "QUIESCENT"
        self._closed: List[Deferred[None]] = []
        self._reset()

    def _reset(self) -> None:
        self._request: Optional[UpstreamRequest] = None
        self._responseDeferred: Optional[Deferred[IResponse]] = None
        self._response: Optional[H1Response] = None
        self._buffer = b""
        self._parse: Optional[Callable[[bytes], None]] = None
        self._remaining = 0
        self._chunkState = 0
        self._bodySent = False
        self._trailerLines: List[bytes] = []
        self._received = False
        self._keepAlive = True
        self._bodyFinished = False

    # The pool's contract.

    def abort(self) -> Deferred[None]:
        if self.state == "CLOSED":
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed.append(d)
        self.transport.abortConnection()
        return d

    def abandon(self) -> None:
        """
        Give up on the current exchange and its connection.
        """
        self._keepAlive = False
        if self.transport is not None and self.state != "CLOSED":
            self.transport.abortConnection()

    # Sending.

    def request(self, request: UpstreamRequest) -> Deferred[IResponse]:
        if self.state != "QUIESCENT":
            return fail(RequestNotSent())
        self.state = "BUSY"
        self._request = request
        self._parse = self._parseHead
        d: Deferred[IResponse] = Deferred(self._cancel)
        self._responseDeferred = d
        producer = request.bodyProducer
        transport = self.transport
        if producer is None:
            transport.write(request.head + b"\r\n")
            self._bodySent = True
            return d
        length = producer.length
        if length is UNKNOWN_LENGTH:
            transport.write(request.head + b"Transfer-Encoding: chunked\r\n\r\n")
            consumer: Any = _ChunkedConsumer(transport)
        else:
            transport.write(request.head + b"Content-Length: %d\r\n\r\n" % (length,))
            consumer = transport
        transport.registerProducer(producer, True)
        producing = producer.startProducing(consumer)
        producing.addCallbacks(self._bodyDone, self._bodyFailed, callbackArgs=(consumer,))
        return d

    def _bodyDone(self, _: Any, consumer: Any) -> None:
        if self.transport is None or self.state == "CLOSED":
            return
        self.transport.unregisterProducer()
        if isinstance(consumer, _ChunkedConsumer):
            request = self._request
            producer = request.bodyProducer if request is not None else None
            trailers = getattr(producer, "trailers", None)
            parts = [b"0\r\n"]
            if trailers is not None:
                for name, values in trailers.getAllRawHeaders():
                    for value in values:
                        parts += (name, b": ", value, b"\r\n")
            parts.append(b"\r\n")
            self.transport.write(b"".join(parts))
        self._bodySent = True
        self._maybeQuiescent()

    def _bodyFailed(self, reason: Failure) -> None:
        if self.transport is not None:
            self.transport.unregisterProducer()
        self._keepAlive = False
        d, self._responseDeferred = self._responseDeferred, None
        if d is not None:
            d.errback(RequestTransmissionFailed([reason]))
        if self.transport is not None:
            self.transport.abortConnection()

    def _cancel(self, d: Deferred[IResponse]) -> None:
        self._responseDeferred = None
        self._keepAlive = False
        d.errback(ResponseNeverReceived([Failure(CancelledError())]))
        if self.transport is not None:
            self.transport.abortConnection()

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        if self.tunnelEnd is not None:
            self.tunnelEnd.dataReceived(data)
            return
        self._received = True
        parse = self._parse
        if parse is None:
            # Bytes nobody asked for: the connection cannot be trusted.
            self._keepAlive = False
            self.transport.abortConnection()
            return
        parse(data)

    def _fail(self, reason: Failure) -> None:
        self._keepAlive = False
        self._parse = None
        d, self._responseDeferred = self._responseDeferred, None
        if d is not None:
            d.errback(ResponseFailed([reason]))
        elif self._response is not None and not self._bodyFinished:
            self._endBody(Failure(ResponseFailed([reason])))
        self.transport.abortConnection()

    def _parseHead(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            # The head may be MAX_HEAD bytes, plus up to 3 of its terminator.
            if len(buffer) > MAX_HEAD + 3:
                self._fail(_parseError("response head too large"))
            else:
                self._buffer = buffer
            return
        if end > MAX_HEAD:
            self._fail(_parseError("response head too large"))
            return
        head, rest = buffer[:end], buffer[end + 4 :]
        self._buffer = b""
        lines = head.split(b"\r\n")
        status = lines[0]
        if status[:9] not in (b"HTTP/1.1 ", b"HTTP/1.0 ") or len(status) < 12:
            self._fail(_parseError("bad status line", status))
            return
        codeText = status[9:12]
        if not codeText.isdigit() or (len(status) > 12 and status[12:13] != b" "):
            self._fail(_parseError("bad status line", status))
            return
        code = int(codeText)
        if code < 100:
            self._fail(_parseError("bad status code", status))
            return
        phrase = status[13:]
        if len(lines) > MAX_HEADERS + 1:
            self._fail(_parseError("too many response headers"))
            return
        bad = forbiddenInHead(head)
        if bad is not None:
            self._fail(_parseError(bad, field=offendingName(head)))
            return
        try:
            headers = parseFields(lines[1:])
        except BadField:
            self._fail(_parseError("bad response header line"))
            return
        raw = rawHeaders(headers)
        if code == 101:
            self._switched(status, phrase, headers, rest)
            return
        if 100 <= code < 200:
            # Informational: drop it and read the final response.
            if rest:
                self._parseHead(rest)
            return
        if status[7:8] == b"0":
            self._keepAlive = False
        connection = raw.get(b"Connection")
        if connection and any(b"close" in v.lower() for v in connection):
            self._keepAlive = False
        length: Any = UNKNOWN_LENGTH
        encodings = raw.get(b"Transfer-Encoding")
        lengths = raw.get(b"Content-Length")
        request = self._request
        if (request is not None and request.method == b"HEAD") or code in _NO_BODY_CODES:
            length = 0
            parse = None
        elif encodings is not None:
            if lengths is not None:
                self._fail(_parseError("both Content-Length and Transfer-Encoding"))
                return
            codings = [c.strip().lower() for v in encodings for c in v.split(b",")]
            if codings[-1:] != [b"chunked"] or codings.count(b"chunked") != 1:
                self._fail(_parseError("unsupported Transfer-Encoding"))
                return
            parse = self._parseChunked
            self._chunkState = 0
        elif lengths is not None:
            values = {v.strip() for item in lengths for v in item.split(b",")}
            if len(values) != 1:
                self._fail(_parseError("conflicting Content-Length"))
                return
            text = values.pop()
            if not text.isdigit() or len(text) > 18:
                self._fail(_parseError("bad Content-Length"))
                return
            length = self._remaining = int(text)
            parse = self._parseFixed if length else None
        else:
            self._keepAlive = False
            parse = self._parseUntilClose
        response = H1Response(
            _HTTP10 if status[7:8] == b"0" else _HTTP11, code, phrase, headers, length, self
        )
        self._response = response
        self._parse = parse
        d, self._responseDeferred = self._responseDeferred, None
        if parse is None:
            if rest:
                # Bytes after a complete response: not to be trusted.
                self._keepAlive = False
            self._responseEnded()
        if d is not None:
            d.callback(response)
        if parse is not None and rest:
            parse(rest)

    def _switched(self, status: bytes, phrase: bytes, headers: Headers, rest: bytes) -> None:
        """
        A C{101}: if the request asked to switch to the protocol it names,
        the connection leaves HTTP (and the pool) for good and becomes a
        tunnel end, holding what followed the head; otherwise it cannot
        be trusted.
        """
        request = self._request
        offered = request.upgrade if request is not None else None
        if offered is None:
            self._fail(_parseError("unrequested protocol switch", status))
            return
        chosen = headers.getRawHeaders(b"upgrade")
        names = {t.split(b"/", 1)[0].lower() for t in commaList([offered])}
        if not chosen or len(chosen) != 1 or chosen[0].split(b"/", 1)[0].strip().lower() not in names:
            self._fail(_parseError("switch to a protocol not asked for", status))
            return
        self.state = "SWITCHED"
        self._parse = None
        self._keepAlive = False
        secure = ISSLTransport.providedBy(self.transport) or INegotiated.providedBy(self.transport)
        halfClose = not secure and hasattr(self.transport, "loseWriteConnection")
        self.tunnelEnd = TransportEnd(self.transport, halfClose, rest)
        if halfClose:
            alsoProvides(self, IHalfCloseableProtocol)
            # An endpoint's connection reaches this protocol through a
            # wrapper, which relays a half-close only if it provides the
            # interface too.
            outer = getattr(self.transport, "protocol", None)
            if outer is not None and outer is not self and hasattr(outer, "readConnectionLost"):
                alsoProvides(outer, IHalfCloseableProtocol)
        response = H1Response(_HTTP11, 101, phrase, headers, 0, self)
        response.upgrade = chosen[0].strip()
        self._response = response
        d, self._responseDeferred = self._responseDeferred, None
        if d is not None:
            d.callback(response)

    def readConnectionLost(self) -> None:
        """
        The upstream ended its sending (TCP half-close); only once switched
        is this connection half-closeable.
        """
        if self.tunnelEnd is not None:
            self.tunnelEnd.readConnectionLost()

    def writeConnectionLost(self) -> None:
        pass

    def _parseFixed(self, data: bytes) -> None:
        remaining = self._remaining
        if len(data) < remaining:
            self._remaining = remaining - len(data)
            _receiving(self._response)._bodyData(data)
            return
        extra = data[remaining:]
        if remaining:
            _receiving(self._response)._bodyData(data[:remaining])
        self._remaining = 0
        self._parse = None
        if extra:
            # More than declared: never deliver it, never reuse the connection.
            self._keepAlive = False
        self._responseEnded()

    def _parseUntilClose(self, data: bytes) -> None:
        _receiving(self._response)._bodyData(data)

    def _parseChunked(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        response = self._response
        assert response is not None
        position = 0
        size = len(buffer)
        while position < size:
            state = self._chunkState
            if state == 1:
                # Inside a chunk's data.
                take = min(self._remaining, size - position)
                response._bodyData(buffer[position : position + take])
                position += take
                self._remaining -= take
                if self._remaining == 0:
                    self._chunkState = 2
                continue
            end = buffer.find(b"\r\n", position)
            if end < 0:
                if size - position > MAX_CHUNK_LINE:
                    self._fail(_parseError("chunk line too long"))
                    return
                self._buffer = buffer[position:]
                return
            line = buffer[position:end]
            position = end + 2
            if len(line) > MAX_CHUNK_LINE:
                self._fail(_parseError("chunk line too long"))
                return
            if state == 0:
                sizeText = line.split(b";", 1)[0].strip(b" \t")
                if not sizeText or not _HEX.issuperset(sizeText) or len(sizeText) > 15:
                    self._fail(_parseError("bad chunk size"))
                    return
                self._remaining = int(sizeText, 16)
                self._chunkState = 1 if self._remaining else 3
            elif state == 2:
                if line:
                    self._fail(_parseError("chunk data longer than declared"))
                    return
                self._chunkState = 0
            else:
                # Trailer section: an empty line ends the message.
                if line:
                    if len(self._trailerLines) >= MAX_HEADERS:
                        self._fail(_parseError("too many trailer fields"))
                        return
                    self._trailerLines.append(line)
                    continue
                if self._trailerLines:
                    try:
                        response.trailers = trailerFields(self._trailerLines)
                    except BadField:
                        self._fail(_parseError("bad trailer field"))
                        return
                self._parse = None
                if position < size:
                    self._keepAlive = False
                self._responseEnded()
                return

    def _endBody(self, reason: Failure) -> None:
        self._bodyFinished = True
        _receiving(self._response)._bodyEnded(reason)

    def _responseEnded(self) -> None:
        self._endBody(_RESPONSE_DONE)
        self._maybeQuiescent()

    def _maybeQuiescent(self) -> None:
        if self.state != "BUSY" or self._parse is not None or self._response is None:
            return
        if not self._bodySent:
            # The response ended before the request body: stop sending it.
            producer = self._request.bodyProducer if self._request else None
            if producer is not None:
                producer.stopProducing()
            self.transport.unregisterProducer()
            self._keepAlive = False
        if not self._keepAlive:
            self.transport.loseConnection()
            return
        self._reset()
        self.state = "QUIESCENT"
        self.transport.resumeProducing()
        self._quiescentCallback(self)

    def connectionMade(self) -> None:
        if self.observer is not None:
            self.observer.connectionOpened()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self.observer is not None and self.state != "CLOSED":
            self.observer.connectionClosed()
        self.state = "CLOSED"
        if self.tunnelEnd is not None:
            self.tunnelEnd.connectionLost(reason)
            return
        parse, self._parse = self._parse, None
        d, self._responseDeferred = self._responseDeferred, None
        if d is not None:
            if self._received:
                d.errback(ResponseFailed([reason]))
            else:
                d.errback(ResponseNeverReceived([reason]))
        elif self._response is not None and not self._bodyFinished:
            if parse is not None and parse == self._parseUntilClose:
                self._endBody(_POTENTIAL_DATA_LOSS)
            else:
                self._endBody(Failure(ResponseFailed([reason])))
        closed, self._closed = self._closed, []
        for c in closed:
            c.callback(None)


class _ChunkedConsumer:
    """
    Writes what a body producer produces as HTTP/1.1 chunks.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        if data:
            self._transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._transport.unregisterProducer()


class H1ConnectionFactory(ClientFactory):
    """
    What L{HTTPConnectionPool} builds connections with (its C{_factory}).
    """

    noisy = False

    def __init__(
        self,
        quiescentCallback: Callable[[H1Connection], None],
        metadata: Any = None,
        observer: Any = None,
    ) -> None:
        self._quiescentCallback = quiescentCallback
        self._observer = observer

    def buildProtocol(self, addr: Any) -> H1Connection:
        connection = H1Connection(self._quiescentCallback)
        connection.observer = self._observer
        return connection


class _ToSink(Protocol):
    """
    Relay an L{H1Response}'s body to an L{easymesh.interfaces.IBodySink}.
    """

    def __init__(self, response: H1Response, sink: Any) -> None:
        self._response: Optional[H1Response] = response
        self._sink = sink

    def connectionMade(self) -> None:
        self._sink.bodyStarted(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._sink.bodyData(data)

    def connectionLost(self, reason: Failure = _RESPONSE_DONE) -> None:
        # The response holds this protocol: let go of it, so that the two
        # are not left as a reference cycle.
        response, self._response = self._response, None
        if reason.type is ResponseDone:
            self._sink.bodyEnded(response.trailers if response is not None else None)
        elif reason.type is PotentialDataLoss:
            # Delimited by the close: complete as far as anyone can tell.
            self._sink.bodyEnded(None)
        else:
            self._sink.bodyFailed(Failure(UpstreamReset(reason.getErrorMessage())))


def deliverTo(response: H1Response, sink: Any) -> None:
    """
    Deliver C{response}'s body to C{sink}, an L{easymesh.interfaces.IBodySink}.
    """
    response.deliverBody(_ToSink(response, sink))


class _Discard(Protocol):
    """
    Drop a response body nobody is waiting for, and its connection with it.
    """

    def connectionMade(self) -> None:
        # A body's transport is a producer (see IResponse.deliverBody).
        cast(IPushProducer, self.transport).stopProducing()


def discardBody(response: H1Response) -> None:
    """
    Drop C{response}'s body unread, and the connection it arrives on.
    """
    response.deliverBody(_Discard())


def _reasons(exc: BaseException) -> List[Failure]:
    return getattr(exc, "reasons", None) or []


def _describe(exc: BaseException) -> str:
    reasons = _reasons(exc)
    if reasons:
        return "; ".join(str(r.value) or type(r.value).__name__ for r in reasons)
    return str(exc)


def proxyErrorFor(failure: Failure) -> Optional[BaseException]:
    """
    The easymesh error an HTTP/1.1 client failure stands for (the
    exceptions this module and L{HTTPConnectionPool} raise); the failure's
    own value if it is none of them.
    """
    exc = failure.value
    if isinstance(exc, (ResponseFailed, ResponseNeverReceived)):
        reasons = _reasons(exc)
        if any(r.check(CancelledError) for r in reasons):
            return CancelledError()
        if any(isTLSFailure(r) for r in reasons):
            return UpstreamTLSFailure(_describe(exc))
        if any(r.check(ParseError) for r in reasons):
            return UpstreamProtocolError(_describe(exc))
        if isinstance(exc, ResponseNeverReceived):
            return UpstreamReset(_describe(exc))
        return UpstreamProtocolError(_describe(exc))
    if isinstance(exc, RequestTransmissionFailed):
        if any(r.check(CancelledError) for r in _reasons(exc)):
            return CancelledError()
        return UpstreamReset(_describe(exc))
    if isinstance(exc, RequestGenerationFailed):
        return BadRequest(_describe(exc))
    return exc


def asProxyError(failure: Failure) -> Failure:
    """
    An errback: C{failure} as easymesh's own error (see L{proxyErrorFor}).
    """
    exc = proxyErrorFor(failure)
    if exc is failure.value or isinstance(failure.value, ProxyError):
        return failure
    return Failure(exc)
