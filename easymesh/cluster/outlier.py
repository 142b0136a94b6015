# -*- test-case-name: tests.test_outlier -*-
"""
Outlier detection, as Envoy does it: an endpoint that fails too many
attempts in a row is ejected from its cluster's balancing for a while,
longer each time it is ejected again soon after.

Semantics, where Envoy leaves a choice:

  - An endpoint is ejected as soon as a threshold is reached, not at the
    next sweep; the sweep, every C{interval}, only returns endpoints whose
    time is up (so an ejection lasts up to one C{interval} longer).
  - At most C{maxEjectionPercent} of the cluster is ejected at once, but
    one endpoint may always be ejected when none is, whatever the percent
    (Envoy: "will eject at least one host regardless of the value").
  - The n-th ejection lasts C{baseEjectionTime * n}, at most
    C{maxEjectionTime} (Envoy's C{max_ejection_time}, 300 s by default);
    the multiplier stops growing once that cap is reached.
  - The multiplier (L{Endpoint.ejections}) drops by one at every sweep
    that finds the endpoint already back in the cluster, so an endpoint
    that stays well is soon ejected for C{baseEjectionTime} again.
  - Reaching a threshold restarts both counts whether or not the endpoint
    could be ejected; results arriving for an ejected endpoint (requests
    sent before the ejection) are ignored, and its counts restart when it
    returns.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from easymesh.cluster.endpoint import Endpoint
from easymesh.config.mesh import OutlierDetection

_log = Logger()

#: Responses that count as gateway failures, like no response at all.
GATEWAY_STATUSES = frozenset((502, 503, 504))

#: Envoy's default C{max_ejection_time}, in seconds.
MAX_EJECTION_TIME = 300.0

#: Ejection reasons, as Envoy names them.
CONSECUTIVE_5XX = "consecutive_5xx"
CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"


class OutlierDetector:
    """
    Ejects the endpoints of one cluster.

    @param endpoints: Returns the cluster's current endpoints.
    @param onEject: Called with the endpoint and the reason
        (L{CONSECUTIVE_5XX} or L{CONSECUTIVE_GATEWAY_FAILURE}) after each
        ejection, e.g. for metrics.
    @param maxEjectionTime: Longest an ejection lasts (never less than
        C{baseEjectionTime}); L{None}: no limit.
    """

    def __init__(
        self,
        config: OutlierDetection,
        clock: IReactorTime,
        cluster: str,
        endpoints: Callable[[], Sequence[Endpoint]],
        onEject: Optional[Callable[[Endpoint, str], object]] = None,
        maxEjectionTime: Optional[float] = MAX_EJECTION_TIME,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.onEject = onEject
        self.maxEjectionTime = maxEjectionTime
        self._clock = clock
        self._endpoints = endpoints
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = clock

    def start(self) -> None:
        """
        Sweep every C{interval} seconds from now on.
        """
        if not self._loop.running:
            self._loop.start(self.config.interval, now=False)

    def stop(self) -> None:
        """
        Stop sweeping; ejected endpoints stay ejected.
        """
        if self._loop.running:
            self._loop.stop()

    def record(
        self, endpoint: Endpoint, status: Optional[int], gatewayFailure: bool = False
    ) -> None:
        """
        Count the outcome of one attempt to C{endpoint}, ejecting it if that
        reaches a threshold.

        @param status: The response's status code, or L{None} for no
            response.
        @param gatewayFailure: No response because of the endpoint: a
            connect failure, a reset or a timeout.  A 502, 503 or 504 is a
            gateway failure whatever this says.  No response without a
            gateway failure (the client went away) is not counted.
        """
        if endpoint.ejectedUntil is not None:
            return
        if gatewayFailure or status in GATEWAY_STATUSES:
            endpoint.consecutiveGatewayFailures += 1
            endpoint.consecutive5xx += 1
        elif status is None:
            return
        elif 500 <= status < 600:
            endpoint.consecutiveGatewayFailures = 0
            endpoint.consecutive5xx += 1
        else:
            endpoint.consecutiveGatewayFailures = 0
            endpoint.consecutive5xx = 0
            return
        config = self.config
        gateway, any5xx = endpoint.consecutiveGatewayFailures, endpoint.consecutive5xx
        if 0 < config.consecutiveGatewayFailure <= gateway:
            self._tripped(endpoint, CONSECUTIVE_GATEWAY_FAILURE, gateway)
        elif 0 < config.consecutive5xx <= any5xx:
            self._tripped(endpoint, CONSECUTIVE_5XX, any5xx)

    def _tripped(self, endpoint: Endpoint, reason: str, count: int) -> None:
        endpoint.consecutive5xx = 0
        endpoint.consecutiveGatewayFailures = 0
        current = self._endpoints()
        if endpoint not in current:
            # Removed from the cluster while its last request was running.
            return
        ejected = sum(1 for e in current if e.ejectedUntil is not None)
        if ejected and (ejected + 1) * 100 > self.config.maxEjectionPercent * len(current):
            _log.info(
                "Cluster {cluster}: not ejecting {endpoint} ({reason}, {count} in a row):"
                " {ejected} of {total} endpoints are ejected already,"
                " the most allowed is {percent}%",
                cluster=self.cluster,
                endpoint=endpoint.key,
                reason=reason,
                count=count,
                ejected=ejected,
                total=len(current),
                percent=self.config.maxEjectionPercent,
            )
            return
        self._eject(endpoint, reason, count)

    def _eject(self, endpoint: Endpoint, reason: str, count: int) -> None:
        base = self.config.baseEjectionTime
        limit = None if self.maxEjectionTime is None else max(self.maxEjectionTime, base)
        if limit is None or base * endpoint.ejections < limit:
            endpoint.ejections += 1
        duration = base * endpoint.ejections
        if limit is not None:
            duration = min(duration, limit)
        endpoint.ejectedUntil = self._clock.seconds() + duration
        _log.warn(
            "Cluster {cluster}: ejected {endpoint} for {duration}s"
            " after {count} failures in a row ({reason})",
            cluster=self.cluster,
            endpoint=endpoint.key,
            reason=reason,
            count=count,
            duration=duration,
        )
        if self.onEject is not None:
            try:
                self.onEject(endpoint, reason)
            except Exception:
                _log.failure("onEject hook for cluster {cluster} failed", cluster=self.cluster)

    def sweep(self) -> None:
        """
        Return the endpoints whose ejection is over, and lower the ejection
        multiplier of those that were back already.
        """
        try:
            current = list(self._endpoints())
        except Exception:
            _log.failure("Cluster {cluster}: could not list endpoints", cluster=self.cluster)
            return
        now = self._clock.seconds()
        for endpoint in current:
            if endpoint.ejectedUntil is None:
                if endpoint.ejections > 0:
                    endpoint.ejections -= 1
            elif endpoint.ejectedUntil <= now:
                endpoint.ejectedUntil = None
                endpoint.consecutive5xx = 0
                endpoint.consecutiveGatewayFailures = 0
                _log.info(
                    "Cluster {cluster}: {endpoint} returned after ejection",
                    cluster=self.cluster,
                    endpoint=endpoint.key,
                )
