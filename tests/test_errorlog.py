"""
Tests for L{easymesh.errorlog}: each error once, with where and why, and a
burst of the same error as one line and a count.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from easymesh.errorlog import ErrorLog
from easymesh.message import ProxyRequest


def proxied(target: bytes = b"/orders?token=secret") -> ProxyRequest:
    request = ProxyRequest(b"GET", target, Headers(), listener="outbound")
    request.route = "orders-route"
    request.cluster = "orders"
    request.upstreamHost = "10.0.0.5:8083"
    request.attempts = 3
    return request


class ErrorLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.log = ErrorLog(self.clock, quiet=10.0)

    def lines(self) -> List[str]:
        return [
            formatEvent(e) for e in self.events if e.get("log_namespace") == "easymesh.errors"
        ]

    def test_oneLineWithWhereAndWhy(self) -> None:
        self.log.report("outbound", 503, "upstream_connect_failure", "Connection refused", proxied())
        [line] = self.lines()
        self.assertEqual(
            line,
            "outbound GET /orders: 503 upstream_connect_failure [route orders-route, "
            "cluster orders (10.0.0.5:8083), after 3 tries]: Connection refused",
        )
        self.assertNotIn("secret", line)

    def test_burstCounted(self) -> None:
        """
        The same error again within the quiet period is counted, and the
        count is logged with the next line after it.
        """
        for _ in range(5):
            self.log.report("outbound", 503, "overflow", "", proxied())
            self.clock.advance(1)
        self.assertEqual(len(self.lines()), 1)
        self.clock.advance(10)
        self.log.report("outbound", 503, "overflow", "", proxied())
        lines = self.lines()
        self.assertEqual(len(lines), 3)
        self.assertIn("4 more overflow error(s)", lines[1])

    def test_differentErrorsEachLogged(self) -> None:
        self.log.report("outbound", 503, "overflow", "", proxied())
        self.log.report("outbound", 504, "upstream_timeout", "no response headers within 1s", proxied())
        self.log.report("inbound", 503, "overflow", "", proxied())
        self.assertEqual(len(self.lines()), 3)

    def test_noResponse(self) -> None:
        """
        A request that got no response (its body cut off mid-way) says so.
        """
        self.log.report("inbound", 0, "upstream_reset_mid_body", "Connection lost", proxied())
        [line] = self.lines()
        self.assertIn(": no response upstream_reset_mid_body", line)

    def test_detailOnOneBoundedLine(self) -> None:
        """
        A detail cannot add a line to the log, nor grow it without bound.
        """
        forged = "boom\n2026-12-02T16:00:00+0000 [easymesh.errors#warn] forged\r\x1b[2J"
        self.log.report("outbound", 500, "internal_error", forged + "x" * 5000, proxied())
        [line] = self.lines()
        self.assertNotIn("\n", line)
        self.assertNotIn("\r", line)
        self.assertNotIn("\x1b", line)
        self.assertIn("boom\\n2026", line)
        self.assertLess(len(line), 700)
