# -*- test-case-name: tests.test_cluster -*-
"""
One upstream endpoint of a cluster and what the balancers, the outlier
detector and the health checker know about it.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

from easymesh.config.addresses import UpstreamURL

#: Seconds over which a peak-EWMA latency estimate decays (Finagle's and
#: Linkerd's default).
EWMA_DECAY = 10.0


class Endpoint:
    """
    An upstream endpoint.

    @ivar url: Where it is.
    @ivar key: A stable name for it: C{host:port}, used for hashing and logs.
    @ivar weight: Its share of traffic relative to the cluster's other
        endpoints (a positive integer).
    @ivar upstream: The L{easymesh.interfaces.IUpstream} that sends to it.
    @ivar active: Requests now in flight to it.
    @ivar healthy: Whether active health checks pass (always, without them).
    @ivar ejectedUntil: When an outlier ejection ends, or L{None}.
    @ivar ejections: How many times it has been ejected (the ejection time
        grows with it).
    @ivar consecutive5xx: 5xx responses (and gateway failures) in a row.
    @ivar consecutiveGatewayFailures: 502/503/504 and connection failures in
        a row.
    @ivar failures: Requests to it in a row that got no answer because of
        it (refused, reset, timed out), counted with or without outlier
        detection; an answer, whatever its status, ends the run.
    @ivar lastFailure: When the last of those failed, and its cause, or
        L{None}.
    """

    def __init__(self, url: UpstreamURL, upstream: Any = None, weight: int = 1) -> None:
        self.url = url
        self.key = f"{url.host}:{url.port}"
        self.weight = weight
        self.upstream = upstream
        self.active = 0
        self.healthy = True
        self.ejectedUntil: Optional[float] = None
        self.ejections = 0
        self.consecutive5xx = 0
        self.consecutiveGatewayFailures = 0
        self.failures = 0
        self.lastFailure: Optional[Tuple[float, str]] = None
        self._ewma = 0.0
        self._ewmaStamp: Optional[float] = None

    @property
    def ejected(self) -> bool:
        return self.ejectedUntil is not None

    @property
    def available(self) -> bool:
        """
        Whether the balancers should send it traffic: healthy and not
        ejected.
        """
        return self.healthy and self.ejectedUntil is None

    def started(self) -> None:
        """
        A request to it started.
        """
        self.active += 1

    def finished(self, now: float, latency: Optional[float], failure: Optional[str] = None) -> None:
        """
        A request to it ended after C{latency} seconds (L{None}: it failed
        before a response, which says nothing of latency).

        @param failure: Without a response, the cause if the endpoint is to
            blame (not, say, a client that went away).
        """
        self.active -= 1
        if latency is not None:
            self.failures = 0
            self.observe(now, latency)
        elif failure is not None:
            self.failures += 1
            self.lastFailure = (now, failure)

    def observe(self, now: float, latency: float) -> None:
        """
        Fold a latency into the peak-EWMA estimate: a slower observation
        replaces the estimate at once, a faster one is averaged in with a
        weight that decays over L{EWMA_DECAY} seconds.  A latency below
        zero (the wall clock stepped back meanwhile) counts as zero.
        """
        latency = max(0.0, latency)
        if self._ewmaStamp is None or latency > self._ewma:
            self._ewma = latency
        else:
            elapsed = max(0.0, now - self._ewmaStamp)
            w = math.exp(-elapsed / EWMA_DECAY)
            self._ewma = self._ewma * w + latency * (1.0 - w)
        self._ewmaStamp = now

    @property
    def answered(self) -> bool:
        """
        Whether it has answered a request (so its latency estimate stands
        for something).
        """
        return self._ewmaStamp is not None

    def ewma(self, now: float) -> float:
        """
        The latency estimate at C{now}, decayed toward zero since the last
        observation, so that an endpoint once slow is retried in time.
        """
        if self._ewmaStamp is None:
            return 0.0
        elapsed = max(0.0, now - self._ewmaStamp)
        return self._ewma * math.exp(-elapsed / EWMA_DECAY)

    def __repr__(self) -> str:
        state = "" if self.available else (" ejected" if self.ejected else " unhealthy")
        return f"<Endpoint {self.key}{state}>"
