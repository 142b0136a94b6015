"""
Tests for L{easymesh.service.SidecarService}: readiness once every port is
bound, drain, reload and SIGHUP, on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import signal
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from easymesh.service import SidecarService
from easymesh.tap import Options, makeService


class RecordingReactor(MemoryReactorClock):
    """
    A memory reactor that notes each port it binds in a shared event list,
    and can refuse to bind some.
    """

    def __init__(self, events: List[Tuple[str, Any]]) -> None:
        super().__init__()
        self.events = events
        self.refuse: Tuple[int, ...] = ()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.refuse:
            raise CannotListenError(interface, port, OSError("refused by the test"))
        listening = super().listenTCP(port, factory, backlog, interface)
        self.events.append(("bound", port))
        return listening

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.callLater(0, f, *args, **kwargs)


class FakeNotifier:
    """
    Records what the service tells systemd.
    """

    def __init__(self, events: List[Tuple[str, Any]]) -> None:
        self.events = events

    def _note(self, name: str) -> bool:
        self.events.append(("notify", name))
        return True

    def ready(self, status: str = "Ready") -> bool:
        return self._note("ready")

    def stopping(self, status: Optional[str] = None) -> bool:
        return self._note("stopping")

    def reloading(self, status: Optional[str] = None) -> bool:
        return self._note("reloading")

    def startWatchdog(self) -> None:
        self._note("startWatchdog")

    def stopWatchdog(self) -> None:
        self._note("stopWatchdog")

    def calls(self, name: str) -> int:
        return self.events.count(("notify", name))


class ServiceTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        if not hasattr(signal, "SIGHUP"):
            raise SkipTest("no SIGHUP")
        # A handler of our own, so that its restoration can be told apart.
        self.previousHandler = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, self.previousHandler)
        signal.signal(signal.SIGHUP, self.ownHandler)
        self.events: List[Tuple[str, Any]] = []
        self.reactor = RecordingReactor(self.events)
        self.notifier = FakeNotifier(self.events)

    def ownHandler(self, signum: int, frame: Any) -> None:
        self.events.append(("own handler", signum))

    def service(self, *args: str) -> SidecarService:
        options = Options()
        options.parseOptions(list(args))
        service = makeService(options, self.reactor)
        assert isinstance(service, SidecarService)
        service.notifier = self.notifier
        self.addCleanup(self.stopped, service)
        return service

    def stopped(self, service: SidecarService) -> None:
        if service.running:
            service.stopService()

    def stop(self, service: SidecarService) -> List[Any]:
        results: List[Any] = []
        service.stopService().addBoth(results.append)
        return results


class ReadinessTests(ServiceTestCase):
    def test_readyAfterEveryPort(self) -> None:
        """
        The sidecar is ready, and tells systemd so, only once every port
        (demo app, admin, outbound, inbound) is bound.
        """
        service = self.service()
        self.assertFalse(service.ready)
        self.assertEqual(self.events, [])
        service.startService()
        self.assertTrue(service.ready)
        self.assertEqual(
            self.events,
            [
                ("bound", 6060),
                ("bound", 9901),
                ("bound", 8082),
                ("bound", 8083),
                ("notify", "ready"),
                ("notify", "startWatchdog"),
            ],
        )

    def test_notReadyWhileBinding(self) -> None:
        """
        While a port is still being bound, the sidecar is not ready; once it
        is, the sidecar becomes ready.
        """
        service = self.service()
        inbound = service.getServiceNamed("inbound")
        binding: Deferred[Any] = Deferred()
        slow = _SlowEndpoint(binding)
        inbound.endpoint._endpoint = slow
        service.startService()
        self.assertFalse(service.ready)
        self.assertEqual(self.notifier.calls("ready"), 0)
        self.assertEqual([p for e, p in self.events if e == "bound"], [6060, 9901, 8082])
        binding.callback(_Port())
        self.assertTrue(service.ready)
        self.assertEqual(self.events[-2:], [("notify", "ready"), ("notify", "startWatchdog")])
        self.assertEqual(self.notifier.calls("ready"), 1)

    def test_neverReadyIfAPortFails(self) -> None:
        self.reactor.refuse = (8083,)
        service = self.service()
        service.startService()
        self.flushLoggedErrors(CannotListenError)
        self.assertFalse(service.ready)
        self.assertEqual(self.notifier.calls("ready"), 0)

    def test_stoppedBeforeBound(self) -> None:
        """
        A sidecar stopped while a port was still being bound never becomes
        ready.
        """
        service = self.service()
        binding: Deferred[Any] = Deferred()
        service.getServiceNamed("outbound").endpoint._endpoint = _SlowEndpoint(binding)
        service.startService()
        results = self.stop(service)
        self.assertEqual(results, [None])
        self.assertFalse(service.ready)
        self.assertEqual(self.notifier.calls("ready"), 0)

    def test_withoutNotifier(self) -> None:
        service = self.service()
        service.notifier = None
        service.startService()
        self.assertTrue(service.ready)
        service.reload()
        self.assertEqual(self.stop(service), [None])


class DrainTests(ServiceTestCase):
    def countStops(self, services: List[Any]) -> List[str]:
        stopped: List[str] = []
        for s in services:
            original = s.stopService

            def stopService(s: Any = s, original: Any = original) -> Any:
                stopped.append(s.name)
                return original()

            s.stopService = stopService
        return stopped

    def test_startDrain(self) -> None:
        """
        Draining stops the proxy listeners, once, and tells systemd once;
        the admin listener and the demo app go on.
        """
        service = self.service()
        service.startService()
        stopped = self.countStops(service.listeners + service.backends)
        del self.events[:]
        drained: List[Any] = []
        service.startDrain().addBoth(drained.append)
        self.assertTrue(service.draining)
        self.assertTrue(service.inflight.draining)
        self.assertEqual(drained, [None])
        self.assertEqual(self.events, [("notify", "stopping")])
        self.assertEqual(sorted(stopped), ["inbound", "outbound"])
        for listener in service.listeners:
            self.assertFalse(listener.running)
        for backend in service.backends:
            self.assertTrue(backend.running)
        self.assertTrue(service.running)

        again: List[Any] = []
        service.startDrain().addBoth(again.append)
        self.assertEqual(again, [None])
        self.assertEqual(sorted(stopped), ["inbound", "outbound"])
        self.assertEqual(self.notifier.calls("stopping"), 1)

        self.assertEqual(self.stop(service), [None])
        self.assertEqual(sorted(stopped, key=str), [None, "admin", "inbound", "outbound"])
        self.assertEqual(self.notifier.calls("stopping"), 1)
        self.assertEqual(self.notifier.calls("stopWatchdog"), 1)
        self.assertFalse(service.running)
        for child in service:
            self.assertFalse(child.running)

    def test_stopWithoutDrain(self) -> None:
        """
        Stopping drains first: listeners stop, systemd is told once, and
        the stop completes.
        """
        service = self.service()
        service.startService()
        stopped = self.countStops(service.listeners + service.backends)
        self.assertEqual(self.stop(service), [None])
        self.assertEqual(stopped[:2], ["inbound", "outbound"])
        self.assertEqual(sorted(stopped, key=str), [None, "admin", "inbound", "outbound"])
        self.assertEqual(self.notifier.calls("stopping"), 1)
        self.assertTrue(service.draining)

    def test_stopWaitsForRequests(self) -> None:
        """
        A request in flight holds the stop until it is done.
        """
        service = self.service("--drain", "5")
        service.startService()
        service.inflight.enter()
        service.startDrain()
        results = self.stop(service)
        self.assertEqual(results, [])
        self.reactor.advance(4)
        self.assertEqual(results, [])
        service.inflight.leave()
        self.assertEqual(results, [None])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopCutsOffAfterDrainPeriod(self) -> None:
        service = self.service("--drain", "5")
        service.startService()
        service.inflight.enter()
        results = self.stop(service)
        self.assertEqual(results, [])
        self.reactor.advance(4.9)
        self.assertEqual(results, [])
        self.reactor.advance(0.1)
        self.assertEqual(results, [None])
        self.assertEqual(service.inflight.count, 1)


class ReloadTests(ServiceTestCase):
    def test_reload(self) -> None:
        """
        A reload tells systemd it is reloading, reloads the config and the
        certificates, then tells it the sidecar is ready again.
        """
        service = self.service()
        service.reloader = _Recorder(self.events, "config reloaded")
        service.tls = _Recorder(self.events, "certificates reloaded")
        service.startService()
        del self.events[:]
        service.reload()
        self.assertEqual(
            self.events,
            [
                ("notify", "reloading"),
                ("config reloaded", None),
                ("certificates reloaded", None),
                ("notify", "ready"),
            ],
        )

    def test_reloadFails(self) -> None:
        """
        Systemd is told the sidecar is ready even when the reload fails.
        """
        service = self.service()
        service.startService()
        service.reloader = _Recorder(self.events, "config reloaded", ValueError("bad"))
        del self.events[:]
        self.assertRaises(ValueError, service.reload)
        self.assertEqual(
            self.events,
            [("notify", "reloading"), ("config reloaded", None), ("notify", "ready")],
        )

    def test_reloadBeforeReady(self) -> None:
        """
        A sidecar not ready yet is not declared ready by a reload.
        """
        service = self.service()
        service.reload()
        self.assertEqual(self.events, [("notify", "reloading")])
        self.assertFalse(service.ready)


class SighupTests(ServiceTestCase):
    def test_installedAndRestored(self) -> None:
        """
        While the sidecar runs, SIGHUP reloads it (from the reactor); once
        stopped, the previous handler is back.
        """
        service = self.service()
        self.assertEqual(signal.getsignal(signal.SIGHUP), self.ownHandler)
        service.startService()
        handler = signal.getsignal(signal.SIGHUP)
        self.assertNotEqual(handler, self.ownHandler)
        self.assertTrue(callable(handler))
        del self.events[:]
        handler(signal.SIGHUP, None)
        # Not in the signal handler: in the reactor.
        self.assertEqual(self.events, [])
        self.reactor.advance(0)
        self.assertEqual(self.events, [("notify", "reloading"), ("notify", "ready")])
        self.assertEqual(self.stop(service), [None])
        self.assertEqual(signal.getsignal(signal.SIGHUP), self.ownHandler)

    def test_restoredOnce(self) -> None:
        """
        A drain does not restore the handler (the sidecar still runs); a
        second stop does not restore it again.
        """
        service = self.service()
        service.startService()
        handler = signal.getsignal(signal.SIGHUP)
        service.startDrain()
        self.assertIs(signal.getsignal(signal.SIGHUP), handler)
        self.stop(service)
        self.assertEqual(signal.getsignal(signal.SIGHUP), self.ownHandler)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)

    def test_defaultRestored(self) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        service = self.service()
        service.startService()
        self.assertNotEqual(signal.getsignal(signal.SIGHUP), signal.SIG_DFL)
        self.stop(service)
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_DFL)


class _Port:
    """
    A listening port that is never really bound.
    """

    def stopListening(self) -> None:
        pass


class _SlowEndpoint:
    """
    A server endpoint whose port is bound when C{binding} fires.
    """

    def __init__(self, binding: Deferred[Any]) -> None:
        self.binding = binding

    def listen(self, factory: Any) -> Deferred[Any]:
        return self.binding


class _Recorder:
    """
    A reloader or certificate registry that notes each call.
    """

    def __init__(self, events: List[Tuple[str, Any]], name: str, error: Optional[Exception] = None) -> None:
        self.events = events
        self.name = name
        self.error = error

    def reload(self) -> None:
        self.events.append((self.name, None))
        if self.error is not None:
            raise self.error

    def start(self) -> None:
        pass

    def stop(self) -> Any:
        return None

