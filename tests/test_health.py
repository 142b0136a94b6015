"""
Tests for L{easymesh.cluster.health}.
"""

from __future__ import annotations

import random
from typing import Any, List, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from easymesh.cluster.endpoint import Endpoint
from easymesh.cluster.health import HealthChecker
from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import HealthCheck


def makeEndpoints(count: int) -> List[Endpoint]:
    return [Endpoint(UpstreamURL("http", f"10.0.0.{i + 1}", 8080)) for i in range(count)]


class FixedRandom(random.Random):
    """
    Always picks the low end of a range.
    """

    def uniform(self, a: float, b: float) -> float:
        return a


class HealthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoints = makeEndpoints(2)
        self.probes: List[Tuple[Endpoint, HealthCheck, Deferred[int]]] = []
        self.cancelled: List[Endpoint] = []
        #: Probes of endpoints not here succeed at once.
        self.manual = {self.endpoints[0]}
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.config = HealthCheck(
            path="/healthz", interval=5.0, timeout=1.0, healthyThreshold=2, unhealthyThreshold=3
        )
        self.checker = self.make(self.config)

    def make(self, config: HealthCheck, rng: random.Random = FixedRandom()) -> HealthChecker:
        checker = HealthChecker(config, self.clock, "web", lambda: self.endpoints, self.probe, rng)
        self.addCleanup(checker.stop)
        return checker

    def probe(self, endpoint: Endpoint, config: HealthCheck) -> Deferred[int]:
        d: Deferred[int] = Deferred(lambda _: self.cancelled.append(endpoint))
        self.probes.append((endpoint, config, d))
        if endpoint not in self.manual:
            d.callback(200)
        return d

    def pending(self, endpoint: Endpoint) -> List[Deferred[int]]:
        return [d for e, _, d in self.probes if e is endpoint and not d.called]

    def answer(self, endpoint: Endpoint, result: Any) -> None:
        """
        Fire the one probe in flight to C{endpoint} with C{result} (a status
        code or an exception).
        """
        [d] = self.pending(endpoint)
        if isinstance(result, Exception):
            d.errback(result)
        else:
            d.callback(result)

    def rounds(self, endpoint: Endpoint, results: List[Any]) -> None:
        """
        Answer one probe of C{endpoint} per interval with each of C{results}.
        """
        for result in results:
            self.answer(endpoint, result)
            self.clock.advance(self.config.interval)

    def logged(self, text: str) -> List[dict]:
        return [
            e
            for e in self.events
            if e.get("log_namespace") == "easymesh.cluster.health" and text in e["log_format"]
        ]

    def test_probesAtStart(self) -> None:
        """
        Every endpoint is probed once the (here zero) jitter has passed, with
        the configuration, then once every interval.
        """
        self.manual.update(self.endpoints)
        self.checker.start()
        self.assertEqual(self.probes, [])
        self.clock.advance(0)
        self.assertEqual(
            [(e, c) for e, c, _ in self.probes], [(e, self.config) for e in self.endpoints]
        )
        for e in self.endpoints:
            self.answer(e, 200)
        self.clock.advance(4.9)
        self.assertEqual(len(self.probes), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.probes), 4)

    def test_jitter(self) -> None:
        """
        First probes are spread over a tenth of the interval.
        """
        self.endpoints = makeEndpoints(50)
        checker = self.make(self.config, random.Random(7))
        checker.start()
        self.clock.advance(0.25)
        self.assertTrue(0 < len(self.probes) < 50, len(self.probes))
        self.clock.advance(0.25)
        self.assertEqual(len(self.probes), 50)

    def test_unhealthyAfterStatusFailures(self) -> None:
        """
        C{unhealthyThreshold} non-2xx answers in a row mark an endpoint
        unhealthy, logged once with the status.
        """
        self.checker.start()
        self.clock.advance(0)
        a, b = self.endpoints
        self.assertTrue(a.healthy)
        self.rounds(a, [500, 301])
        self.assertTrue(a.healthy)
        self.answer(a, 503)
        self.assertFalse(a.healthy)
        self.assertFalse(a.available)
        self.assertTrue(b.healthy)
        self.clock.advance(5)
        self.answer(a, 500)
        [event] = self.logged("unhealthy")
        self.assertEqual(
            (event["cluster"], event["endpoint"], event["reason"]),
            ("web", "10.0.0.1:8080", "status 503"),
        )

    def test_unhealthyAfterTimeouts(self) -> None:
        """
        A probe unanswered after C{timeout} is cancelled and fails.
        """
        self.checker.start()
        self.clock.advance(0)
        a = self.endpoints[0]
        for n in range(3):
            self.assertEqual(len(self.pending(a)), 1)
            self.clock.advance(0.5)
            self.assertEqual(self.cancelled.count(a), n)
            self.clock.advance(0.5)
            self.assertEqual(self.cancelled.count(a), n + 1)
            self.assertEqual(self.pending(a), [])
            self.clock.advance(4)
        self.assertFalse(a.healthy)
        [event] = self.logged("unhealthy")
        self.assertIn("timed out", event["reason"])

    def test_unhealthyAfterErrors(self) -> None:
        """
        A failed probe fails, and the error is the reason logged.
        """
        self.checker.start()
        self.clock.advance(0)
        a = self.endpoints[0]
        self.rounds(a, [ConnectionRefusedError(), ConnectionRefusedError()])
        self.answer(a, ConnectionRefusedError())
        self.assertFalse(a.healthy)
        [event] = self.logged("unhealthy")
        self.assertIn("upstream_connect_failure", event["reason"])
        self.assertIn("refused", event["reason"])

    def test_probeRaises(self) -> None:
        """
        A probe that raises at once fails like one that errbacks.
        """

        def probe(endpoint: Endpoint, config: HealthCheck) -> Deferred[int]:
            raise ValueError("no such endpoint")

        checker = HealthChecker(
            self.config, self.clock, "web", lambda: self.endpoints, probe, FixedRandom()
        )
        self.addCleanup(checker.stop)
        checker.start()
        for _ in range(3):
            self.clock.advance(5)
        self.assertEqual([e.healthy for e in self.endpoints], [False, False])
        self.assertIn("no such endpoint", self.logged("unhealthy")[0]["reason"])

    def test_synchronousAnswer(self) -> None:
        """
        A probe that has its answer at once is counted at once.
        """
        checker = HealthChecker(
            HealthCheck(unhealthyThreshold=1),
            self.clock,
            "web",
            lambda: self.endpoints,
            lambda e, c: succeed(404),
            FixedRandom(),
        )
        self.addCleanup(checker.stop)
        checker.start()
        self.clock.advance(0)
        self.assertEqual([e.healthy for e in self.endpoints], [False, False])

    def test_healthyAgain(self) -> None:
        """
        C{healthyThreshold} 2xx answers in a row mark it healthy again,
        logged once; a failure between them starts the count over.
        """
        self.checker.start()
        self.clock.advance(0)
        a = self.endpoints[0]
        self.rounds(a, [500, 500, 500])
        self.assertFalse(a.healthy)
        self.rounds(a, [200, 500, 204])
        self.assertFalse(a.healthy)
        self.answer(a, 200)
        self.assertTrue(a.healthy)
        self.clock.advance(5)
        self.answer(a, 200)
        self.assertEqual(len(self.logged("healthy again")), 1)

    def test_successResetsFailures(self) -> None:
        self.checker.start()
        self.clock.advance(0)
        a = self.endpoints[0]
        self.rounds(a, [500, 500, 200, 500, 500])
        self.assertTrue(a.healthy)

    def test_noOverlap(self) -> None:
        """
        A probe still running when the next is due is not doubled; the
        round is skipped.
        """
        config = HealthCheck(interval=5.0, timeout=12.0)
        self.config = config
        checker = self.make(config)
        checker.start()
        self.clock.advance(0)
        a = self.endpoints[0]
        for _ in range(2):
            self.clock.advance(5)
            self.assertEqual(len(self.pending(a)), 1)
        self.assertEqual(len([e for e, _, _ in self.probes if e is a]), 1)
        self.answer(a, 200)
        self.clock.advance(5)
        self.assertEqual(len([e for e, _, _ in self.probes if e is a]), 2)

    def test_stopCancels(self) -> None:
        """
        L{HealthChecker.stop} cancels probes in flight and every timer;
        cancelled probes count for nothing.
        """
        self.manual.update(self.endpoints)
        self.checker.start()
        self.clock.advance(0)
        self.checker.stop()
        self.assertEqual(self.cancelled, self.endpoints)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.checker._states, {})
        self.assertEqual(self.logged(""), [])
        self.checker.stop()

    def test_stopKeepsHealth(self) -> None:
        """
        Endpoints keep the health they had when checks stop.
        """
        self.checker.start()
        self.clock.advance(0)
        a, b = self.endpoints
        self.rounds(a, [500, 500, 500])
        self.checker.stop()
        self.assertEqual(self.cancelled, [a])
        self.assertEqual((a.healthy, b.healthy), (False, True))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restart(self) -> None:
        self.checker.start()
        self.checker.start()
        self.clock.advance(0)
        self.assertEqual(len(self.probes), 2)
        self.checker.stop()
        self.checker.start()
        self.clock.advance(0)
        self.assertEqual(len(self.probes), 4)

    def test_newEndpoint(self) -> None:
        """
        An endpoint added to the cluster is probed from the next interval,
        or at once on L{HealthChecker.refresh}.
        """
        self.checker.start()
        self.clock.advance(0)
        c, d = makeEndpoints(4)[2:]
        self.manual.update((c, d))
        self.endpoints.append(c)
        self.clock.advance(5)
        self.assertEqual(len(self.pending(c)), 1)
        self.endpoints.append(d)
        self.checker.refresh()
        self.clock.advance(0)
        self.assertEqual(len(self.pending(d)), 1)

    def test_goneEndpoint(self) -> None:
        """
        An endpoint gone from the cluster is forgotten: its probe is
        cancelled, counts nothing, and it is not probed again.
        """
        self.checker.start()
        self.clock.advance(0)
        a, b = self.endpoints
        self.rounds(a, [500, 500])
        del self.endpoints[0]
        self.checker.refresh()
        self.assertEqual(self.cancelled, [a])
        self.assertTrue(a.healthy)
        for _ in range(3):
            self.clock.advance(5)
        self.assertEqual(self.pending(a), [])
        self.assertEqual(len([e for e, _, _ in self.probes if e is a]), 3)
        self.assertEqual(len(self.checker._states), 1)
        self.endpoints.insert(0, a)
        self.checker.refresh()
        self.clock.advance(0)
        self.answer(a, 500)
        self.assertTrue(a.healthy)
