"""
Tests for L{easymesh.ports}: listening services and quiet EMFILE logging.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.resource import Resource

from easymesh.ports import BURST_QUIET, BurstLogFilter, listeningService


def emfile(n: int) -> Dict[str, Any]:
    return {"log_format": "EMFILE encountered; releasing reserved file descriptor.", "n": n}


class BurstLogFilterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.seen: List[Dict[str, Any]] = []
        self.filter = BurstLogFilter(self.seen.append, self.clock)
        self.warnings: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.warnings.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.warnings.append)

    def summaries(self) -> List[Dict[str, Any]]:
        return [e for e in self.warnings if "were shed" in e.get("log_format", "")]

    def test_otherEventsPass(self) -> None:
        for i in range(5):
            self.filter({"log_format": "Port closed", "n": i})
        self.assertEqual([e["n"] for e in self.seen], [0, 1, 2, 3, 4])

    def test_oncePerBurst(self) -> None:
        """
        The first EMFILE event of a burst is logged; the rest are counted,
        and reported once the burst has been quiet for C{BURST_QUIET}.
        """
        for i in range(100):
            self.filter(emfile(i))
            self.clock.advance(0.01)
        self.assertEqual([e["n"] for e in self.seen], [0])
        self.assertEqual(self.summaries(), [])
        self.clock.advance(BURST_QUIET)
        [summary] = self.summaries()
        self.assertEqual(summary["count"], 99)

    def test_nextBurstLogsAgain(self) -> None:
        self.filter(emfile(1))
        self.filter(emfile(2))
        self.clock.advance(BURST_QUIET * 3)
        self.filter(emfile(3))
        self.assertEqual([e["n"] for e in self.seen], [1, 3])
        self.assertEqual([s["count"] for s in self.summaries()], [1])

    def test_longBurstReportedWhenOver(self) -> None:
        """
        A burst longer than the quiet period is summed up once, at its end.
        """
        for i in range(30):
            self.filter(emfile(i))
            self.clock.advance(1.0)
        self.assertEqual(self.summaries(), [])
        self.clock.advance(BURST_QUIET * 2)
        self.assertEqual([s["count"] for s in self.summaries()], [29])


class ListeningServiceTests(SynchronousTestCase):
    def test_backlogAndQuietPort(self) -> None:
        """
        A C{tcp:} endpoint listens with a backlog of 1024 unless it names
        one.
        """
        reactor = MemoryReactorClock()
        site = Site(Resource())
        listeningService("tcp:8083", site, reactor).startService()
        listeningService("tcp:8084:backlog=7", site, reactor).startService()
        backlogs = [(port, backlog) for port, _, backlog, _ in reactor.tcpServers]
        self.assertEqual(backlogs, [(8083, 1024), (8084, 7)])
