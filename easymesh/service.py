# -*- test-case-name: tests.test_service -*-
"""
The sidecar's service tree and its orderly stop: stop accepting, let
in-flight requests finish for up to the drain period, close the upstream
pools, then stop the demo app.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.logger import Logger

from easymesh.inflight import InFlight
from easymesh.interfaces import IUpstream


class SidecarService(MultiService):
    """
    The listeners (children added with L{addListener}) and what they share.

    @param drain: Seconds to wait for in-flight requests when stopping.
    """

    log = Logger()

    def __init__(self, clock: Any, inflight: InFlight, drain: float) -> None:
        super().__init__()
        self.clock = clock
        self.inflight = inflight
        self.drain = drain
        self.upstreams: List[IUpstream] = []
        self.listeners: List[Any] = []
        self.backends: List[Any] = []

    def addListener(self, service: Any) -> None:
        self.listeners.append(service)
        service.setServiceParent(self)

    def addBackend(self, service: Any) -> None:
        """
        Add a service that must outlive the drain (the demo app).
        """
        self.backends.append(service)
        service.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        self.inflight.draining = True
        self.running = 0
        d = _stopAll(self.listeners)
        d.addCallback(lambda _: self._waitForRequests())
        d.addCallback(lambda _: gatherResults([u.close() for u in self.upstreams]))
        d.addCallback(lambda _: _stopAll(self.backends))
        return d

    def _waitForRequests(self) -> Deferred[None]:
        if self.inflight.count:
            self.log.info(
                "Draining {count} request(s) for up to {drain}s",
                count=self.inflight.count,
                drain=self.drain,
            )
        idle = self.inflight.whenIdle()
        timer: Optional[Any] = None
        if not idle.called:
            timer = self.clock.callLater(self.drain, idle.cancel)

        def done(result: Any) -> None:
            if timer is not None and timer.active():
                timer.cancel()
            if self.inflight.count:
                self.log.warn(
                    "Drain period over: {count} request(s) cut off",
                    count=self.inflight.count,
                )

        return idle.addBoth(done)


def _stopAll(services: List[Any]) -> Deferred[None]:
    stopping = [s.stopService() for s in reversed(services)]
    waits = [x for x in stopping if isinstance(x, Deferred)]
    return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)
