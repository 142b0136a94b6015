# -*- test-case-name: tests.test_tcpproxy -*-
"""
Raw TCP upstreams: C{tcp://host:port}, and C{tls://host:port}, to which
the sidecar originates TLS with its workload certificate (checking the
identities of the cluster's C{tls}), as for C{https://}.  A C{tcp}
listener connects each accepted connection to one (see
L{easymesh.tcpproxy}); they carry no HTTP requests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProtocolFactory
from zope.interface import implementer

from easymesh.config.addresses import UpstreamURL
from easymesh.config.model import PoolSettings
from easymesh.errors import UpstreamProtocolError
from easymesh.interfaces import IUpstream
from easymesh.upstream.http import endpointFor


@implementer(IUpstream)
class TCPUpstream:
    """
    One TCP endpoint of a cluster.

    @ivar breakers: Its cluster's circuit breakers, told of each
        connection opened and closed.
    """

    def __init__(
        self, url: UpstreamURL, settings: PoolSettings, reactor: Any, breakers: Any = None, tls: Any = None
    ) -> None:
        self.url = url
        self.settings = settings
        self.breakers = breakers
        self._endpoint = endpointFor(url, reactor, settings, tls)

    def connect(self, factory: IProtocolFactory) -> "Deferred[Any]":
        """
        Connect to the endpoint (within the cluster's connect timeout).

        @return: A L{Deferred} firing with the connected protocol, or
            failing as the connection did; cancelling it abandons the
            attempt.
        """
        return self._endpoint.connect(factory)

    def request(self, request: Any, timeout: Any = None) -> "Deferred[Any]":
        return fail(UpstreamProtocolError(f"{self.url} carries TCP, not HTTP requests"))

    def idleConnections(self) -> int:
        return 0

    def close(self) -> "Deferred[None]":
        return succeed(None)
