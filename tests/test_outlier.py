"""
Tests for L{easymesh.cluster.outlier}.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from easymesh.cluster.endpoint import Endpoint
from easymesh.cluster.outlier import (
    CONSECUTIVE_5XX,
    CONSECUTIVE_GATEWAY_FAILURE,
    OutlierDetector,
)
from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import OutlierDetection


def makeEndpoints(count: int) -> List[Endpoint]:
    return [Endpoint(UpstreamURL("http", f"10.0.0.{i + 1}", 8080)) for i in range(count)]


class OutlierTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.endpoints = makeEndpoints(3)
        self.ejected: List[Tuple[Endpoint, str]] = []
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.detector = self.make(OutlierDetection(maxEjectionPercent=100.0))

    def make(self, config: OutlierDetection, **kw: Any) -> OutlierDetector:
        detector = OutlierDetector(
            config,
            self.clock,
            "web",
            lambda: self.endpoints,
            onEject=lambda e, reason: self.ejected.append((e, reason)),
            **kw,
        )
        self.addCleanup(detector.stop)
        return detector

    def logged(self, text: str) -> List[dict]:
        return [
            e
            for e in self.events
            if e.get("log_namespace") == "easymesh.cluster.outlier"
            and text in e["log_format"]
        ]

    def report(
        self, endpoint: Endpoint, times: int, status: Any = 500, gateway: bool = False
    ) -> None:
        for _ in range(times):
            self.detector.record(endpoint, status, gateway)

    def test_ejectsAtConsecutive5xx(self) -> None:
        """
        The fifth 5xx in a row ejects at once, for C{baseEjectionTime}; the
        counts restart, the hook is called and one warning is logged.
        """
        e = self.endpoints[0]
        self.report(e, 4)
        self.assertEqual(e.consecutive5xx, 4)
        self.assertTrue(e.available)
        self.report(e, 1)
        self.assertFalse(e.available)
        self.assertEqual(e.ejectedUntil, 1030.0)
        self.assertEqual(e.ejections, 1)
        self.assertEqual((e.consecutive5xx, e.consecutiveGatewayFailures), (0, 0))
        self.assertEqual(self.ejected, [(e, CONSECUTIVE_5XX)])
        [event] = self.logged("ejected")
        self.assertEqual(
            (event["cluster"], event["endpoint"], event["reason"], event["duration"]),
            ("web", "10.0.0.1:8080", CONSECUTIVE_5XX, 30.0),
        )

    def test_gatewayFailures(self) -> None:
        """
        Gateway failures (no response, 502, 503, 504) in a row eject for
        their own reason, even with the 5xx threshold off.
        """
        self.detector = self.make(
            OutlierDetection(consecutive5xx=0, consecutiveGatewayFailure=4, maxEjectionPercent=100)
        )
        e = self.endpoints[0]
        self.detector.record(e, None, True)
        self.detector.record(e, 502, False)
        self.detector.record(e, 503, False)
        self.assertEqual(e.consecutiveGatewayFailures, 3)
        self.assertEqual(e.consecutive5xx, 3)
        self.assertFalse(e.ejected)
        self.detector.record(e, 504, False)
        self.assertTrue(e.ejected)
        self.assertEqual(self.ejected, [(e, CONSECUTIVE_GATEWAY_FAILURE)])

    def test_gatewayFailuresCount5xx(self) -> None:
        """
        Gateway failures count toward the 5xx threshold too.
        """
        self.detector = self.make(
            OutlierDetection(consecutive5xx=3, consecutiveGatewayFailure=0, maxEjectionPercent=100)
        )
        e = self.endpoints[0]
        self.detector.record(e, None, True)
        self.detector.record(e, 500, False)
        self.detector.record(e, 503, False)
        self.assertEqual(self.ejected, [(e, CONSECUTIVE_5XX)])

    def test_other5xxResetsGatewayCount(self) -> None:
        """
        A 5xx that is not a gateway failure breaks a run of gateway failures.
        """
        self.detector = self.make(
            OutlierDetection(consecutive5xx=0, consecutiveGatewayFailure=3, maxEjectionPercent=100)
        )
        e = self.endpoints[0]
        self.report(e, 2, None, True)
        self.report(e, 1, 500)
        self.assertEqual((e.consecutive5xx, e.consecutiveGatewayFailures), (3, 0))
        self.report(e, 2, None, True)
        self.assertFalse(e.ejected)
        self.report(e, 1, None, True)
        self.assertTrue(e.ejected)

    def test_successResets(self) -> None:
        """
        A response that is not a 5xx restarts both counts.
        """
        e = self.endpoints[0]
        for status in (200, 404, 301):
            self.report(e, 4, 503)
            self.report(e, 1, status)
            self.assertEqual((e.consecutive5xx, e.consecutiveGatewayFailures), (0, 0))
        self.report(e, 4)
        self.assertFalse(e.ejected)

    def test_noVerdict(self) -> None:
        """
        No response without a gateway failure (the client went away) counts
        neither way.
        """
        e = self.endpoints[0]
        self.report(e, 4)
        self.detector.record(e, None, False)
        self.assertEqual(e.consecutive5xx, 4)
        self.report(e, 1)
        self.assertTrue(e.ejected)

    def test_disabled(self) -> None:
        self.detector = self.make(OutlierDetection(consecutive5xx=0, consecutiveGatewayFailure=0))
        e = self.endpoints[0]
        self.report(e, 50, None, True)
        self.assertFalse(e.ejected)

    def test_maxEjectionPercent(self) -> None:
        """
        With 10 endpoints and 50%, at most 5 are ejected at once; a refusal
        restarts the counts and is logged.
        """
        self.endpoints = makeEndpoints(10)
        self.detector = self.make(OutlierDetection(consecutive5xx=2, maxEjectionPercent=50))
        for e in self.endpoints:
            self.report(e, 2)
        self.assertEqual([e.ejected for e in self.endpoints], [True] * 5 + [False] * 5)
        self.assertEqual(len(self.ejected), 5)
        self.assertEqual(self.endpoints[5].consecutive5xx, 0)
        self.assertEqual(len(self.logged("not ejecting")), 5)

    def test_atLeastOne(self) -> None:
        """
        One endpoint may be ejected whatever the percent, but no more if
        that takes the cluster over it.
        """
        self.detector = self.make(OutlierDetection(consecutive5xx=1, maxEjectionPercent=10))
        a, b, c = self.endpoints
        self.report(a, 1)
        self.report(b, 1)
        self.assertEqual((a.ejected, b.ejected, c.ejected), (True, False, False))

    def test_zeroPercentStillEjectsOne(self) -> None:
        self.detector = self.make(OutlierDetection(consecutive5xx=1, maxEjectionPercent=0))
        a, b, _ = self.endpoints
        self.report(a, 1)
        self.report(b, 1)
        self.assertEqual((a.ejected, b.ejected), (True, False))

    def test_returnsAfterBaseEjectionTime(self) -> None:
        """
        The sweep returns an endpoint once its time is up, and logs it.
        """
        self.detector.start()
        e = self.endpoints[0]
        self.report(e, 5)
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertTrue(e.ejected)
        self.clock.advance(10)
        self.assertFalse(e.ejected)
        self.assertTrue(e.available)
        [event] = self.logged("returned")
        self.assertEqual(event["endpoint"], "10.0.0.1:8080")

    def test_returnWaitsForSweep(self) -> None:
        """
        An ejection that ends between sweeps ends at the next sweep.
        """
        self.detector.start()
        self.clock.advance(5)
        e = self.endpoints[0]
        self.report(e, 5)
        self.assertEqual(e.ejectedUntil, 1035.0)
        for step in (5, 10, 10, 5):
            self.clock.advance(step)
            self.assertTrue(e.ejected)
        self.assertEqual(self.clock.seconds(), 1035.0)
        self.clock.advance(5)
        self.assertFalse(e.ejected)

    def test_multiplierGrows(self) -> None:
        """
        An endpoint ejected again before the multiplier decays is ejected for
        twice, then three times as long.
        """
        self.detector.start()
        e = self.endpoints[0]
        for n in (1, 2, 3):
            self.report(e, 5)
            self.assertEqual(e.ejections, n)
            self.assertEqual(e.ejectedUntil - self.clock.seconds(), 30.0 * n)
            for _ in range(3 * n):
                self.clock.advance(10)
            self.assertFalse(e.ejected)

    def test_multiplierDecays(self) -> None:
        """
        Each sweep that finds an endpoint back lowers its multiplier by one,
        down to zero; the sweep that returns it does not.
        """
        self.detector.start()
        e = self.endpoints[0]
        e.ejections = 2
        self.report(e, 5)
        self.assertEqual(e.ejections, 3)
        for _ in range(9):
            self.clock.advance(10)
        self.assertFalse(e.ejected)
        self.assertEqual(e.ejections, 3)
        self.clock.advance(10)
        self.assertEqual(e.ejections, 2)
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(e.ejections, 0)
        self.clock.advance(10)
        self.assertEqual(e.ejections, 0)
        self.report(e, 5)
        self.assertEqual(e.ejectedUntil - self.clock.seconds(), 30.0)

    def test_maxEjectionTime(self) -> None:
        """
        Ejections last at most C{maxEjectionTime}, and the multiplier stops
        growing there.
        """
        e = self.endpoints[0]
        durations = []
        for _ in range(12):
            self.report(e, 5)
            durations.append(e.ejectedUntil - self.clock.seconds())
            e.ejectedUntil = None
        self.assertEqual(durations, [30.0 * n for n in range(1, 11)] + [300.0, 300.0])
        self.assertEqual(e.ejections, 10)

    def test_maxEjectionTimeBelowBase(self) -> None:
        self.detector = self.make(OutlierDetection(maxEjectionPercent=100), maxEjectionTime=10.0)
        e = self.endpoints[0]
        for _ in range(3):
            self.report(e, 5)
            self.assertEqual(e.ejectedUntil - self.clock.seconds(), 30.0)
            e.ejectedUntil = None
        self.assertEqual(e.ejections, 1)

    def test_noMaxEjectionTime(self) -> None:
        self.detector = self.make(OutlierDetection(maxEjectionPercent=100), maxEjectionTime=None)
        e = self.endpoints[0]
        e.ejections = 20
        self.report(e, 5)
        self.assertEqual(e.ejectedUntil - self.clock.seconds(), 630.0)

    def test_ejectedIgnoresResults(self) -> None:
        """
        Results for an ejected endpoint (requests sent before the ejection)
        are not counted, and its counts restart when it returns.
        """
        self.detector.start()
        e = self.endpoints[0]
        self.report(e, 5)
        self.report(e, 10)
        self.assertEqual((e.ejections, e.consecutive5xx), (1, 0))
        e.consecutive5xx = 3
        for _ in range(3):
            self.clock.advance(10)
        self.assertFalse(e.ejected)
        self.assertEqual(e.consecutive5xx, 0)

    def test_removedEndpoint(self) -> None:
        """
        An endpoint no longer in the cluster is not ejected.
        """
        e = self.endpoints.pop()
        self.report(e, 5)
        self.assertFalse(e.ejected)
        self.assertEqual(self.ejected, [])

    def test_hookFailureLogged(self) -> None:
        """
        A failing C{onEject} hook is logged, not raised to the caller.
        """

        def hook(endpoint: Endpoint, reason: str) -> None:
            raise RuntimeError("boom")

        self.detector.onEject = hook
        e = self.endpoints[0]
        self.report(e, 5)
        self.assertTrue(e.ejected)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop(self) -> None:
        """
        L{OutlierDetector.stop} ends the sweeps; ejected endpoints stay
        ejected.  Starting twice or stopping twice is harmless.
        """
        self.detector.start()
        self.detector.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        e = self.endpoints[0]
        self.report(e, 5)
        self.detector.stop()
        self.detector.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertTrue(e.ejected)
        self.detector.start()
        self.clock.advance(10)
        self.assertFalse(e.ejected)

    def test_sweepSurvivesBrokenEndpointList(self) -> None:
        calls = []

        def endpoints() -> List[Endpoint]:
            calls.append(None)
            if len(calls) == 1:
                raise RuntimeError("discovery broke")
            return self.endpoints

        detector = OutlierDetector(OutlierDetection(), self.clock, "web", endpoints)
        self.addCleanup(detector.stop)
        detector.start()
        self.clock.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(10)
        self.assertEqual(len(calls), 2)
