"""
Tests for L{easymesh.twistedprivate}: one test per private Twisted API that
easymesh relies on, checking the behaviour it relies on, so that a Twisted
release that changes one fails here by name.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers

from easymesh import twistedprivate
from easymesh.upstream.h1client import H1Connection, H1ConnectionFactory


def test_headersRawHeadersIsCanonicalDict() -> None:
    """
    L{Headers} keeps its fields in a dict of canonical names to value
    lists, in order; changing the dict changes the headers.
    """
    headers = Headers()
    headers.addRawHeader(b"x-thing", b"1")
    headers.addRawHeader(b"X-Thing", b"2")
    raw = twistedprivate.rawHeaders(headers)
    assert raw == {b"X-Thing": [b"1", b"2"]}
    raw[twistedprivate.encodeName(b"content-type")] = [b"text/plain"]
    assert headers.getRawHeaders(b"Content-Type") == [b"text/plain"]
    del raw[b"X-Thing"]
    assert not headers.hasHeader(b"x-thing")


def test_headersNameEncoderCanonicalForm() -> None:
    """
    The name encoder gives the form L{Headers} stores names under.
    """
    for name in (b"content-length", b"X-REQUEST-ID", b"te", b"x-easymesh-error"):
        headers = Headers({name: [b"v"]})
        assert list(twistedprivate.rawHeaders(headers)) == [twistedprivate.encodeName(name)]


def test_newclientParseError() -> None:
    """
    C{twisted.web._newclient.ParseError} carries a reason and the data, and
    the public L{ResponseFailed} wraps failures of it.
    """
    error = twistedprivate.ParseError("bad status line", b"HTTP/9")
    assert error.args == ("bad status line", b"HTTP/9")
    assert isinstance(error, Exception)
    wrapped = ResponseFailed([error])
    assert wrapped.reasons == [error]


def test_poolFactoryIsUsedForNewConnections() -> None:
    """
    The factory set on a pool builds its new connections, given the
    pool's quiescent callback.
    """
    reactor = MemoryReactorClock()
    pool = HTTPConnectionPool(reactor, persistent=True)
    twistedprivate.setConnectionFactory(pool, H1ConnectionFactory)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", 8080)
    d = pool.getConnection(("http", "127.0.0.1", 8080), endpoint)
    [(_, _, factory, _, _)] = reactor.tcpClients
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    connections: List[Any] = []
    d.addCallback(connections.append)
    assert len(connections) == 1
    assert isinstance(connections[0], H1Connection)


def test_poolConnectionsHoldsIdleConnections() -> None:
    """
    A connection handed back to the pool is kept idle under its key.
    """
    reactor = MemoryReactorClock()
    pool = HTTPConnectionPool(reactor, persistent=True)
    key = ("http", "127.0.0.1", 8080)
    assert twistedprivate.idleConnections(pool, key) == []
    connection = H1Connection(lambda c: None)
    connection.makeConnection(StringTransport())
    pool._putConnection(key, connection)
    assert twistedprivate.idleConnections(pool, key) == [connection]


def test_endpointServiceRaiseSynchronously() -> None:
    """
    A service told to raise fails its privileged start when its endpoint
    cannot listen.
    """

    class Refusing:
        def listen(self, factory: Any) -> "Deferred[Any]":
            d: Deferred[Any] = Deferred()
            d.errback(CannotListenError("127.0.0.1", 1, OSError("in use")))
            return d

    service = StreamServerEndpointService(Refusing(), Factory.forProtocol(Protocol))
    assert twistedprivate.raiseSynchronously(service)
    with pytest.raises(CannotListenError):
        service.privilegedStartService()
    assert not twistedprivate.raiseSynchronously(object())


def test_reactorExitSignal() -> None:
    """
    A reactor stopped by a signal remembers it in C{_exitSignal} (which
    twistd re-raises on exit); clearing it forgets it.
    """
    from twisted.internet import reactor

    assert hasattr(reactor, "_exitSignal")

    class Stopped:
        _exitSignal = 15

    stopped = Stopped()
    twistedprivate.clearExitSignal(stopped)
    assert stopped._exitSignal is None
    twistedprivate.clearExitSignal(object())


def test_portHasLogger() -> None:
    """
    A listening TCP port logs through its C{_logger}, which can be
    replaced.
    """
    from twisted.internet import reactor

    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    ports: List[Any] = []
    endpoint.listen(Factory.forProtocol(Protocol)).addCallback(ports.append)
    [port] = ports
    try:
        assert isinstance(twistedprivate.portLogger(port), Logger)
        replacement = Logger(namespace="test")
        twistedprivate.setPortLogger(port, replacement)
        assert twistedprivate.portLogger(port) is replacement
    finally:
        port.stopListening()
