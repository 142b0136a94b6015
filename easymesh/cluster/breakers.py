# -*- test-case-name: tests.test_breakers -*-
"""
A cluster's circuit breakers: counters with limits, in Envoy's vocabulary.

A caller asks before it starts something (C{tryRequest}, C{tryPending},
C{tryRetry}) and says when it is done; a refusal means the cluster is
overloaded and the request fails at once instead of queueing.
"""

from __future__ import annotations

from typing import Any, Dict

from easymesh.config.mesh import CircuitBreakers

#: Breaker names, as Envoy's configuration spells them; the keys of
#: L{Breakers.overflows}.
MAX_CONNECTIONS = "max_connections"
MAX_PENDING_REQUESTS = "max_pending_requests"
MAX_REQUESTS = "max_requests"
MAX_RETRIES = "max_retries"


class Breakers:
    """
    Counters for one cluster, checked against its L{CircuitBreakers}.

    @ivar requests: Requests active in the cluster.
    @ivar pending: Requests waiting for a connection.
    @ivar retries: Retries in flight.
    @ivar connections: Connections open to the cluster's endpoints.
    @ivar overflows: How often each breaker refused, by breaker name.
    @param telemetry: An L{easymesh.ops.telemetry.Telemetry} told of
        overflows and connections, under the name C{cluster}, or L{None}.
    """

    def __init__(self, config: CircuitBreakers, cluster: str = "", telemetry: Any = None) -> None:
        self.config = config
        self.cluster = cluster
        self.telemetry = telemetry
        self.requests = 0
        self.pending = 0
        self.retries = 0
        self.connections = 0
        self.overflows: Dict[str, int] = {}

    def overflowed(self, breaker: str) -> None:
        """
        Count a refusal by C{breaker}.  The C{try} methods count their own;
        a caller that acts on L{canConnect} counts that one.
        """
        self.overflows[breaker] = self.overflows.get(breaker, 0) + 1
        if self.telemetry is not None:
            self.telemetry.overflowed(self.cluster, breaker)

    def tryRequest(self) -> bool:
        """
        Start a request, unless C{maxRequests} are active.
        """
        if self.requests >= self.config.maxRequests:
            self.overflowed(MAX_REQUESTS)
            return False
        self.requests += 1
        return True

    def requestDone(self) -> None:
        self.requests = max(0, self.requests - 1)

    def tryPending(self) -> bool:
        """
        Queue a request for a connection, unless C{maxPendingRequests}
        already wait.
        """
        if self.pending >= self.config.maxPendingRequests:
            self.overflowed(MAX_PENDING_REQUESTS)
            return False
        self.pending += 1
        return True

    def pendingDone(self) -> None:
        self.pending = max(0, self.pending - 1)

    def tryRetry(self) -> bool:
        """
        Start a retry, unless C{maxRetries} are in flight.
        """
        if self.retries >= self.config.maxRetries:
            self.overflowed(MAX_RETRIES)
            return False
        self.retries += 1
        return True

    def retryDone(self) -> None:
        self.retries = max(0, self.retries - 1)

    def canConnect(self) -> bool:
        """
        Whether another connection may be opened (fewer than
        C{maxConnections} are).  Only asks: nothing is counted.
        """
        return self.connections < self.config.maxConnections

    def connectionOpened(self) -> None:
        self.connections += 1
        if self.telemetry is not None:
            self.telemetry.upstreamConnectionOpened(self.cluster)

    def connectionClosed(self) -> None:
        self.connections = max(0, self.connections - 1)
        if self.telemetry is not None:
            self.telemetry.upstreamConnectionClosed(self.cluster)
