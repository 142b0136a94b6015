# -*- test-case-name: tests.test_twistedprivate -*-
"""
The private parts of Twisted that easymesh relies on, and the only module
that touches them.

Each is used because no public API does the job (or not at the cost of a
request's hot path), and each has a test of its own in
L{tests.test_twistedprivate}, named for it, so that a Twisted release that
moves one breaks one test with a clear name.  Checked against Twisted
26.4 and 26.10; C{setup.cfg} allows no Twisted release beyond those tested.

  - L{Headers}' dict of canonical names to values, and the encoder of those
    names: header policy works on it directly, once per request, without
    Headers' per-call name encoding.
  - L{ParseError} of C{twisted.web._newclient}: the HTTP/1.1 client's parse
    failures are of this type, so that L{HTTPConnectionPool} treats them as
    its own protocol's.
  - L{HTTPConnectionPool}'s protocol factory and idle connections: the pool
    holds easymesh's own HTTP/1.1 connections, and the circuit breakers
    count whether a request will wait for a new one.
  - C{StreamServerEndpointService._raiseSynchronously}: a listener that
    cannot bind fails the start instead of logging and going on.
  - The reactor's C{_exitSignal}: after an orderly drain on SIGTERM the
    exit status is 0.
  - A listening port's C{_logger}: its accept-loop messages go to
    easymesh's namespace.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, List

from twisted.web._newclient import ParseError
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers, _nameEncoder

__all__ = [
    "ParseError",
    "clearExitSignal",
    "encodeName",
    "idleConnections",
    "portLogger",
    "raiseSynchronously",
    "rawHeaders",
    "setConnectionFactory",
    "setPortLogger",
]


def rawHeaders(headers: Headers) -> Dict[bytes, List[bytes]]:
    """
    The dict in which C{headers} keeps its fields: canonical name (see
    L{encodeName}) to the list of values, in order.  Changing it changes
    C{headers}.
    """
    return headers._rawHeaders


def encodeName(name: bytes) -> bytes:
    """
    The canonical form under which L{Headers} keeps a field name.
    """
    return _nameEncoder.encode(name)


def setConnectionFactory(pool: HTTPConnectionPool, factory: Any) -> None:
    """
    Make C{pool} build its connections with C{factory}, called as
    C{factory(quiescentCallback, metadata)} for each new connection.
    """
    pool._factory = factory


def idleConnections(pool: HTTPConnectionPool, key: Hashable) -> List[Any]:
    """
    The connections C{pool} keeps idle under C{key}.
    """
    return pool._connections.get(key, [])


def raiseSynchronously(service: Any) -> bool:
    """
    Make a C{StreamServerEndpointService} raise from C{privilegedStartService}
    when its endpoint cannot listen, instead of logging the failure.

    @return: Whether C{service} can do so.
    """
    if not hasattr(service, "_raiseSynchronously"):
        return False
    service._raiseSynchronously = True
    return True


def clearExitSignal(reactor: Any) -> None:
    """
    Forget the signal that stopped C{reactor}, so that twistd does not
    re-raise it on exit (and the exit status says a clean stop).
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None


def portLogger(port: Any) -> Any:
    """
    The logger a listening port logs through, or L{None}.
    """
    return getattr(port, "_logger", None)


def setPortLogger(port: Any, logger: Any) -> None:
    """
    Make a listening port log (its accept failures, its start and stop)
    through C{logger}.
    """
    port._logger = logger
