# -*- test-case-name: tests.test_service -*-
"""
The sidecar's service tree and its orderly stop: stop accepting, let
in-flight requests finish for up to the drain period, stop the clusters
(closing their pools), then stop the demo app.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from easymesh.inflight import InFlight
from easymesh.twistedprivate import clearExitSignal, raiseSynchronously


class SidecarService(MultiService):
    """
    The listeners (children added with L{addListener}) and what they share.

    @param drain: Seconds to wait for in-flight requests when stopping.
    @param runtime: The routes and clusters.
    @ivar reloader: Reloads routes and clusters from the config file, if
        there is one.
    @ivar tls: The L{easymesh.tls.registry.TLSContexts}, whose certificate
        files are watched while running and re-read on SIGHUP.
    @ivar notifier: An L{easymesh.ops.sdnotify.Notifier}, told when the
        sidecar is ready (every port bound), reloading and stopping.
    @ivar ready: Whether every port is bound (and the config loaded).
    """

    log = Logger()

    def __init__(self, clock: Any, inflight: InFlight, drain: float, runtime: Any) -> None:
        super().__init__()
        self.clock = clock
        self.inflight = inflight
        self.drain = drain
        self.runtime = runtime
        self.reloader: Optional[Any] = None
        self.tls: Optional[Any] = None
        self.notifier: Optional[Any] = None
        self.telemetry: Optional[Any] = None
        self.ready = False
        self._restoreSighup: Optional[Any] = None
        self._listenersStopped: Optional[Deferred[None]] = None
        self.listeners: List[Any] = []
        self.sites: List[Any] = []
        self.backends: List[Any] = []

    def addListener(self, service: Any, site: Any) -> None:
        """
        Add a listener's service and its L{easymesh.listener.ProxySite}.
        """
        self.listeners.append(service)
        self.sites.append(site)
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Bind every port now; one that cannot be bound stops the start with
        a clear message (rather than a sidecar half up).
        """
        for child in self:
            raiseSynchronously(child)
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise SystemExit(f"easymesh: {e}") from None

    def startService(self) -> None:
        raiseFileLimit()
        self.runtime.start()
        if self.tls is not None:
            self.tls.start()
        super().startService()
        if self.reloader is not None:
            self.reloader.start()
        from easymesh.ports import whenBound
        from easymesh.reload import installSighup

        self._restoreSighup = installSighup(self.reload, self.clock)
        bound = DeferredList([whenBound(s) for s in self], fireOnOneErrback=True, consumeErrors=True)
        bound.addCallbacks(self._bound, lambda f: None)

    def _bound(self, _: Any) -> None:
        if not self.running:
            return
        self.ready = True
        self.log.info("Ready: every listener is bound")
        if self.notifier is not None:
            self.notifier.ready()
            self.notifier.startWatchdog()

    @property
    def draining(self) -> bool:
        return self.inflight.draining

    def reload(self) -> None:
        """
        Reload the config file (routes and clusters) and certificates.
        """
        if self.notifier is not None:
            self.notifier.reloading()
        try:
            if self.reloader is not None:
                self.reloader.reload()
            if self.tls is not None:
                self.tls.reload()
        finally:
            if self.notifier is not None and self.ready and not self.draining:
                self.notifier.ready()

    def startDrain(self) -> Deferred[None]:
        """
        Stop accepting connections and close idle ones; requests in flight
        go on, answered with C{Connection: close}.  The process keeps
        running (its admin listener too) until it is stopped.
        """
        if self._listenersStopped is None:
            self.log.info("Draining: no longer accepting connections")
            self.inflight.draining = True
            if self.notifier is not None:
                self.notifier.stopping()
            self._listenersStopped = _stopAll(self.listeners)
            for site in self.sites:
                site.sweeper.closeIdle()
        d: Deferred[None] = Deferred()

        def stopped(result: object) -> object:
            d.callback(None)
            return result

        self._listenersStopped.addBoth(stopped)
        return d

    def addBackend(self, service: Any) -> None:
        """
        Add a service that must outlive the drain (the demo app).
        """
        self.backends.append(service)
        service.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        d = self.startDrain()
        self.running = 0
        if self.reloader is not None:
            self.reloader.stop()
        if self.tls is not None:
            self.tls.stop()
        if self.notifier is not None:
            self.notifier.stopWatchdog()
        if self._restoreSighup is not None:
            self._restoreSighup()
            self._restoreSighup = None
        d.addCallback(lambda _: self._waitForRequests())
        d.addCallback(lambda _: self._closeConnections())
        d.addCallback(lambda _: self.runtime.stop())
        if self.telemetry is not None:
            telemetry = self.telemetry
            d.addCallback(lambda _: telemetry.close())
        d.addCallback(lambda _: _stopAll(self.backends))
        d.addCallback(self._stopped)
        return d

    def _closeConnections(self) -> Deferred[None]:
        """
        Close the clients' connections once what they are owed is written,
        waiting at most a second for slow readers.
        """
        closing = DeferredList(
            [site.sweeper.closeAll() for site in self.sites], consumeErrors=True
        )
        timer = self.clock.callLater(1.0, closing.cancel)

        def done(_: Any) -> None:
            if timer.active():
                timer.cancel()

        return closing.addBoth(done)

    def _stopped(self, _: Any) -> None:
        # twistd re-raises a stopping signal once the reactor has stopped, so
        # that the exit status says "killed by SIGTERM"; after an orderly
        # drain, the exit status is 0.
        clearExitSignal(self.clock)

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


def raiseFileLimit() -> None:
    """
    Raise this process's soft limit on open files to its hard limit: a
    proxied request holds two descriptors, and the usual soft limit of 1024
    would cap a sidecar at a few hundred connections.  (The systemd unit
    sets C{LimitNOFILE}.)
    """
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
