# -*- test-case-name: tests.test_telemetry -*-
"""
Where the data path reports what happened: each finished request, client
connections, and cluster events.  One object feeds both the Prometheus
metrics and the dashboard's live figures, so that the request path makes
one call per event and knows nothing of either.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import succeed
from twisted.logger import Logger

from easymesh.errors import DeadlineExceeded, StreamIdleTimeout, TooManyRequests, UpstreamTimeout
from easymesh.grpc import httpEquivalent, statusName
from easymesh.ops.live import LiveStats

_log = Logger()

#: The label for a request that took no route or reached no cluster.
NONE = "none"

#: The causes counted as timeouts of a cluster's requests.
_TIMEOUTS = (UpstreamTimeout.cause, StreamIdleTimeout.cause, DeadlineExceeded.cause)


class Telemetry:
    """
    @param metrics: An L{easymesh.ops.metrics.Metrics}, or L{None}.
    @param live: A L{LiveStats}, or L{None}.
    @param traces: An L{easymesh.ops.otel.OTLPTraces}, or L{None}.
    @param clock: Gives the time a request ended, for C{traces}.
    """

    def __init__(
        self,
        metrics: Any = None,
        live: Optional[LiveStats] = None,
        traces: Any = None,
        clock: Any = None,
    ) -> None:
        self.metrics = metrics
        self.live = live
        self.traces = traces
        self.clock = clock

    def requestDone(
        self,
        listener: str,
        proxied: Any,
        status: int,
        duration: float,
        cause: Optional[str],
        method: bytes,
        path: bytes,
        grpcStatus: Optional[int] = None,
        grpc: bool = False,
    ) -> None:
        """
        A request on C{listener} is finished.

        @param proxied: Its L{easymesh.message.ProxyRequest}, or L{None} if
            it was refused before one was made.
        @param status: The status sent, or 0 if none was.
        @param grpc: Whether it was a gRPC call; C{grpcStatus} is then its
            C{grpc-status}, if one was sent.  A call whose HTTP status is
            200 counts as the HTTP status that stands for its gRPC status
            (L{easymesh.grpc.httpEquivalent}): UNAVAILABLE is a 503 to
            error rates and traces.
        """
        route = getattr(proxied, "route", None)
        cluster = getattr(proxied, "cluster", None)
        if grpcStatus is not None and status == 200:
            status = httpEquivalent(grpcStatus)
        metrics = self.metrics
        if metrics is not None:
            clusterLabel = cluster or NONE
            metrics.requestFinished(listener, route or NONE, clusterLabel, status, duration)
            if grpc:
                metrics.grpcFinished(listener, route or NONE, clusterLabel, statusName(grpcStatus))
            if cause == TooManyRequests.cause:
                metrics.requestRateLimited(listener, route or NONE)
            elif cause in _TIMEOUTS and cluster is not None:
                metrics.upstreamTimedOut(cluster)
            attempts = getattr(proxied, "attempts", 0)
            for _ in range(attempts - 1):
                metrics.upstreamRetried(clusterLabel)
        if self.live is not None:
            self.live.record(listener, cluster, status, duration, cause, method, path)
        if self.traces is not None and proxied is not None:
            ended = self.clock.seconds()
            try:
                self.traces.record(listener, proxied, status, ended - duration, ended, cause)
            except Exception:
                _log.failure("Recording a span for {request}", request=proxied)

    def close(self) -> Any:
        """
        Flush what is exported.

        @return: A L{Deferred} firing when done.
        """
        if self.traces is not None:
            return self.traces.close()
        return succeed(None)

    def tcpConnectionDone(
        self,
        listener: str,
        cluster: str,
        ended: str,
        bytesIn: int,
        bytesOut: int,
        connectTime: Optional[float] = None,
        failure: Optional[str] = None,
    ) -> None:
        """
        A C{tcp} listener's connection is closed; C{ended} says how (see
        L{easymesh.tcpproxy}).  The dashboard counts it as one of the
        listener's requests, its latency the time the upstream took to
        connect, an error if it never reached the upstream (C{failure}).

        @param connectTime: Seconds to connect upstream; L{None} if it was
            not connected.
        """
        if self.metrics is not None:
            self.metrics.tcpConnectionDone(listener, cluster, ended, bytesIn, bytesOut)
        if self.live is not None:
            status = 503 if failure is not None else 200
            self.live.record(listener, cluster, status, connectTime or 0.0, failure, b"TCP", b"")

    def tunnelOpened(self, listener: str) -> None:
        """
        A connection on C{listener} switched protocols: a tunnel began.
        """
        if self.metrics is not None:
            self.metrics.tunnelOpened(listener)

    def tunnelClosed(self, listener: str, how: str, fromClient: int, fromUpstream: int) -> None:
        """
        A tunnel on C{listener} ended C{how} (one of
        L{easymesh.tunnel.ENDS}), having relayed so many bytes each way.
        """
        if self.metrics is not None:
            self.metrics.tunnelClosed(listener, how, fromClient, fromUpstream)

    def connectionOpened(self, listener: str) -> None:
        if self.metrics is not None:
            self.metrics.downstreamConnectionOpened(listener)

    def connectionClosed(self, listener: str) -> None:
        if self.metrics is not None:
            self.metrics.downstreamConnectionClosed(listener)

    def upstreamAnswered(self, cluster: str, duration: float) -> None:
        if self.metrics is not None:
            self.metrics.upstreamRequest(cluster, duration)

    def upstreamConnectionOpened(self, cluster: str) -> None:
        if self.metrics is not None:
            self.metrics.upstreamConnectionOpened(cluster)

    def upstreamConnectionClosed(self, cluster: str) -> None:
        if self.metrics is not None:
            self.metrics.upstreamConnectionClosed(cluster)

    def ejected(self, cluster: str) -> None:
        if self.metrics is not None:
            self.metrics.hostEjected(cluster)

    def overflowed(self, cluster: str, breaker: str) -> None:
        if self.metrics is not None:
            self.metrics.breakerOverflowed(cluster, breaker)

    def configReloaded(self, applied: bool) -> None:
        if self.metrics is not None:
            self.metrics.configReloaded(applied)
