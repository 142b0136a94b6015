# -*- test-case-name: tests.test_health -*-
"""
Active health checks: each endpoint of a cluster is probed every
C{interval}; C{unhealthyThreshold} failures in a row mark it unhealthy,
C{healthyThreshold} successes in a row mark it healthy again.

Endpoints start healthy (Envoy starts them unhealthy until a first check
passes), so that a fresh sidecar serves at once; each is first probed
soon after it is seen, within a random tenth of C{interval} so that the
probes of a cluster are spread out, then every C{interval} after that.  A
probe still running when the next is due is not doubled: that round is
skipped.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, Optional, Sequence, Union

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from easymesh.cluster.endpoint import Endpoint
from easymesh.config.mesh import HealthCheck
from easymesh.errors import ClientClosed, classify

_log = Logger()

#: The first probe of an endpoint is delayed by up to this share of the
#: interval.
JITTER = 0.1

Probe = Callable[[Endpoint, HealthCheck], "Deferred[int]"]


class _State:
    """
    What the checker knows of one endpoint.

    @ivar timer: The next probe.
    @ivar running: The probe in flight, if any.
    @ivar deadline: When that probe times out.
    @ivar timedOut: Whether it did.
    """

    __slots__ = ("successes", "failures", "timer", "running", "deadline", "timedOut")

    def __init__(self) -> None:
        self.successes = 0
        self.failures = 0
        self.timer: Optional[IDelayedCall] = None
        self.running: Optional[Deferred[int]] = None
        self.deadline: Optional[IDelayedCall] = None
        self.timedOut = False

    def close(self) -> None:
        for call in (self.timer, self.deadline):
            if call is not None and call.active():
                call.cancel()
        self.timer = self.deadline = None
        running, self.running = self.running, None
        if running is not None:
            running.cancel()


class HealthChecker:
    """
    Health-checks the endpoints of one cluster.

    @param endpoints: Returns the cluster's current endpoints; looked at
        every C{interval} and on L{refresh}.
    @param probe: Sends C{GET path} to an endpoint; its L{Deferred} fires
        with the response's status code.  It is cancelled on timeout.
    @param rng: Chooses the delay of each endpoint's first probe.
    """

    def __init__(
        self,
        config: HealthCheck,
        clock: IReactorTime,
        cluster: str,
        endpoints: Callable[[], Sequence[Endpoint]],
        probe: Probe,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.running = False
        self._clock = clock
        self._endpoints = endpoints
        self._probe = probe
        self._rng = rng if rng is not None else random.Random()
        self._states: Dict[Endpoint, _State] = {}
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = clock

    def start(self) -> None:
        """
        Start checking: the current endpoints are probed within a tenth of
        C{interval}.
        """
        if self.running:
            return
        self.running = True
        self._loop.start(self.config.interval, now=True)

    def stop(self) -> None:
        """
        Stop checking: cancel every timer and every probe in flight.
        Endpoints keep the health they had.
        """
        if not self.running:
            return
        self.running = False
        if self._loop.running:
            self._loop.stop()
        states, self._states = self._states, {}
        for state in states.values():
            state.close()

    def refresh(self) -> None:
        """
        Notice endpoints added to or removed from the cluster now rather
        than at the next interval: new ones are scheduled for a first probe,
        gone ones forgotten (a probe in flight to one is cancelled).
        """
        if not self.running:
            return
        try:
            current = list(self._endpoints())
        except Exception:
            _log.failure("Cluster {cluster}: could not list endpoints", cluster=self.cluster)
            return
        live = set(current)
        for endpoint in [e for e in self._states if e not in live]:
            self._states.pop(endpoint).close()
        for endpoint in current:
            if endpoint not in self._states:
                state = self._states[endpoint] = _State()
                delay = self._rng.uniform(0.0, JITTER * self.config.interval)
                state.timer = self._clock.callLater(delay, self._check, endpoint, state)

    def _check(self, endpoint: Endpoint, state: _State) -> None:
        state.timer = self._clock.callLater(self.config.interval, self._check, endpoint, state)
        if state.running is not None:
            _log.debug(
                "Cluster {cluster}: health check of {endpoint} still running, skipped",
                cluster=self.cluster,
                endpoint=endpoint.key,
            )
            return
        state.timedOut = False
        running = maybeDeferred(self._probe, endpoint, self.config)
        state.running = running
        state.deadline = self._clock.callLater(self.config.timeout, self._timeOut, state)
        running.addBoth(self._probed, endpoint, state)

    def _timeOut(self, state: _State) -> None:
        state.deadline = None
        state.timedOut = True
        if state.running is not None:
            state.running.cancel()

    def _probed(self, result: Union[int, Failure], endpoint: Endpoint, state: _State) -> None:
        if state.running is None:
            # Cancelled by stop() or because the endpoint went away.
            return
        state.running = None
        if state.deadline is not None and state.deadline.active():
            state.deadline.cancel()
        state.deadline = None
        if state.timedOut:
            self._failed(endpoint, state, f"timed out after {self.config.timeout}s")
        elif isinstance(result, Failure):
            self._failed(endpoint, state, _describe(result))
        elif isinstance(result, int) and 200 <= result < 300:
            self._passed(endpoint, state)
        else:
            self._failed(endpoint, state, f"status {result}")

    def _passed(self, endpoint: Endpoint, state: _State) -> None:
        state.failures = 0
        state.successes += 1
        if not endpoint.healthy and state.successes >= max(1, self.config.healthyThreshold):
            endpoint.healthy = True
            _log.info(
                "Cluster {cluster}: {endpoint} is healthy again"
                " after {count} health checks passed",
                cluster=self.cluster,
                endpoint=endpoint.key,
                count=state.successes,
            )

    def _failed(self, endpoint: Endpoint, state: _State, reason: str) -> None:
        state.successes = 0
        state.failures += 1
        if endpoint.healthy and state.failures >= max(1, self.config.unhealthyThreshold):
            endpoint.healthy = False
            _log.warn(
                "Cluster {cluster}: {endpoint} is unhealthy"
                " after {count} health checks failed (last: {reason})",
                cluster=self.cluster,
                endpoint=endpoint.key,
                count=state.failures,
                reason=reason,
            )


def _describe(failure: Failure) -> str:
    error = classify(failure)
    if error is not None and not isinstance(error, ClientClosed):
        return f"{error.cause}: {error.detail or error.message}"
    return failure.getErrorMessage() or type(failure.value).__name__
