"""
Tests for L{easymesh.ops.live}: the dashboard's per-second figures, fed
under a L{Clock}.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from easymesh.ops.live import HISTORY, RECENT_ERRORS, SAMPLES, LiveStats, Window


def record(
    stats: LiveStats,
    status: int = 200,
    latency: float = 0.01,
    listener: str = "outbound",
    cluster: Optional[str] = "peer",
    cause: Optional[str] = None,
    method: bytes = b"GET",
    path: bytes = b"/",
) -> None:
    stats.record(listener, cluster, status, latency, cause, method, path)


def newStats(seed: int = 0) -> Tuple[LiveStats, Clock]:
    clock = Clock()
    # Away from zero, so that "the last 60 seconds" are all after the epoch.
    clock.advance(1000)
    return LiveStats(clock, random.Random(seed)), clock


class BucketTests(SynchronousTestCase):
    """
    Requests are counted in the second they finish in, and only complete
    seconds are reported.
    """

    def test_currentSecondNotReported(self) -> None:
        """
        Requests in the second now running appear in no figure until it is
        over.
        """
        stats, clock = newStats()
        clock.advance(0.2)
        record(stats)
        record(stats)
        listener = stats.snapshot()["listeners"]["outbound"]
        self.assertEqual(listener["rps"], 0.0)
        self.assertEqual(sum(b["requests"] for b in listener["series"]), 0)
        clock.advance(0.8)
        listener = stats.snapshot()["listeners"]["outbound"]
        self.assertEqual(listener["series"][-1]["requests"], 2)
        self.assertEqual(listener["series"][-1]["t"], 1000)

    def test_perSecond(self) -> None:
        """
        Requests finishing in different seconds go to different buckets,
        and requests within one second to the same one.
        """
        stats, clock = newStats()
        for count in (3, 0, 1, 5):
            for _ in range(count):
                record(stats)
                clock.advance(0.1)
            clock.advance(1 - 0.1 * count)
        series = stats.snapshot()["listeners"]["outbound"]["series"]
        self.assertEqual([b["requests"] for b in series[-4:]], [3, 0, 1, 5])
        self.assertEqual([b["t"] for b in series[-4:]], [1000, 1001, 1002, 1003])

    def test_listenerAndCluster(self) -> None:
        """
        A request counts for its listener and its cluster; one that reached
        no cluster counts for its listener only.
        """
        stats, clock = newStats()
        record(stats, listener="outbound", cluster="peer")
        record(stats, listener="inbound", cluster=None)
        clock.advance(1)
        snapshot = stats.snapshot()
        self.assertEqual(sorted(snapshot["listeners"]), ["inbound", "outbound"])
        self.assertEqual(sorted(snapshot["clusters"]), ["peer"])
        self.assertEqual(snapshot["total"], 2)
        self.assertEqual(snapshot["time"], 1001)

    def test_empty(self) -> None:
        stats, _ = newStats()
        self.assertEqual(
            stats.snapshot(),
            {"time": 1000, "total": 0, "listeners": {}, "clusters": {}, "errors": []},
        )


class SummaryTests(SynchronousTestCase):
    """
    The summary covers the last 10 complete seconds.
    """

    def test_rps(self) -> None:
        """
        Requests a second are the requests of the last 10 complete seconds
        divided by 10, whether or not every second had requests.
        """
        stats, clock = newStats()
        for _ in range(25):
            record(stats)
        clock.advance(5)
        for _ in range(7):
            record(stats)
        clock.advance(1)
        summary = stats.snapshot()["listeners"]["outbound"]
        self.assertEqual(summary["rps"], 3.2)

    def test_olderSecondsLeaveSummary(self) -> None:
        """
        A second more than 10 seconds back no longer counts, though the
        series still shows it.
        """
        stats, clock = newStats()
        for _ in range(10):
            record(stats)
        clock.advance(10)
        summary = stats.snapshot()["listeners"]["outbound"]
        self.assertEqual(summary["rps"], 1.0)
        clock.advance(1)
        summary = stats.snapshot()["listeners"]["outbound"]
        self.assertEqual(summary["rps"], 0.0)
        self.assertEqual(summary["error_rate"], 0.0)
        self.assertIsNone(summary["p50"])
        self.assertIsNone(summary["p99"])
        self.assertEqual(sum(b["requests"] for b in summary["series"]), 10)

    def test_errorRate(self) -> None:
        """
        The error rate is the share of requests answered 5xx or not at all.
        """
        stats, clock = newStats()
        for status in [200] * 6 + [502, 503, 0] + [404]:
            record(stats, status=status)
        clock.advance(1)
        summary = stats.snapshot()["listeners"]["outbound"]
        self.assertEqual(summary["error_rate"], 0.3)
        self.assertEqual(summary["series"][-1]["errors"], 3)

    def test_percentilesInMilliseconds(self) -> None:
        """
        p50 and p99 are reported in milliseconds, over every second of the
        span.
        """
        stats, clock = newStats()
        for i in range(1, 51):
            record(stats, latency=i / 1000)
        clock.advance(1)
        for i in range(51, 101):
            record(stats, latency=i / 1000)
        clock.advance(1)
        summary = stats.snapshot()["listeners"]["outbound"]
        self.assertTrue(49 <= summary["p50"] <= 52, summary["p50"])
        self.assertTrue(98 <= summary["p99"] <= 100, summary["p99"])
        self.assertTrue(24 <= summary["series"][-2]["p50"] <= 26)
        self.assertTrue(74 <= summary["series"][-1]["p50"] <= 76)

    def test_singleSample(self) -> None:
        stats, clock = newStats()
        record(stats, latency=0.25)
        clock.advance(1)
        summary = stats.snapshot()["listeners"]["outbound"]
        self.assertEqual((summary["p50"], summary["p99"]), (250.0, 250.0))
        self.assertEqual(summary["rps"], 0.1)


class SeriesTests(SynchronousTestCase):
    """
    The series has one entry per complete second of the last minute, oldest
    first, with zeros where nothing happened.
    """

    def test_shape(self) -> None:
        stats, clock = newStats()
        record(stats, latency=0.002)
        clock.advance(3)
        record(stats, status=500, latency=0.004)
        clock.advance(1)
        series = stats.snapshot()["listeners"]["outbound"]["series"]
        self.assertEqual(len(series), HISTORY)
        self.assertEqual([b["t"] for b in series], list(range(1004 - HISTORY, 1004)))
        gap = {"requests": 0, "errors": 0, "p50": None, "p99": None}
        for entry in series[:-4] + series[-3:-1]:
            self.assertEqual({k: v for k, v in entry.items() if k != "t"}, gap)
        self.assertEqual(series[-4], {"t": 1000, "requests": 1, "errors": 0, "p50": 2.0, "p99": 2.0})
        self.assertEqual(series[-1], {"t": 1003, "requests": 1, "errors": 1, "p50": 4.0, "p99": 4.0})

    def test_olderThanAMinute(self) -> None:
        """
        A second that ended more than a minute ago is gone.
        """
        stats, clock = newStats()
        record(stats)
        clock.advance(HISTORY)
        series = stats.snapshot()["listeners"]["outbound"]["series"]
        self.assertEqual(series[0]["requests"], 1)
        clock.advance(1)
        series = stats.snapshot()["listeners"]["outbound"]["series"]
        self.assertEqual(len(series), HISTORY)
        self.assertEqual(sum(b["requests"] for b in series), 0)

    def test_fullMinute(self) -> None:
        """
        With requests in every second, the series shows each of the last 60
        complete seconds, including while the current second has requests
        of its own.
        """
        stats, clock = newStats()
        for second in range(2 * HISTORY):
            for _ in range(second % 3 + 1):
                record(stats)
            clock.advance(1)
        record(stats)
        series = stats.snapshot()["listeners"]["outbound"]["series"]
        self.assertEqual(len(series), HISTORY)
        self.assertEqual(
            [b["requests"] for b in series],
            [second % 3 + 1 for second in range(HISTORY, 2 * HISTORY)],
        )


class ReservoirTests(SynchronousTestCase):
    """
    At most L{SAMPLES} latencies are kept per bucket, a uniform sample of
    the second's requests.
    """

    def test_bound(self) -> None:
        clock = Clock()
        window = Window(random.Random(1))
        for i in range(SAMPLES * 5):
            window.add(clock.seconds(), i / 1000, False)
        [bucket] = window._buckets
        self.assertEqual(bucket.count, SAMPLES * 5)
        self.assertEqual(len(bucket.samples), SAMPLES)
        # Not merely the first ones: later requests are represented.
        self.assertTrue(max(bucket.samples) > SAMPLES / 1000)

    def test_boundPerKey(self) -> None:
        stats, clock = newStats()
        for i in range(3 * SAMPLES):
            record(stats, latency=i / 1000)
        for window in (stats.listeners["outbound"], stats.clusters["peer"]):
            self.assertEqual([len(b.samples) for b in window._buckets], [SAMPLES])

    @settings(max_examples=20, deadline=None)
    @given(
        seed=st.integers(min_value=0, max_value=2**32 - 1),
        order=st.sampled_from(["ascending", "descending", "shuffled"]),
    )
    def test_percentilesUnderLoad(self, seed: int, order: str) -> None:
        """
        With 10,000 requests in one second, the percentiles drawn from the
        sample are close to the true ones, in whatever order the latencies
        come.
        """
        latencies = [i / 10_000 for i in range(10_000)]  # 0 to 1 s, uniform
        if order == "descending":
            latencies.reverse()
        elif order == "shuffled":
            random.Random(seed).shuffle(latencies)
        clock = Clock()
        clock.advance(50)
        stats = LiveStats(clock, random.Random(seed))
        for latency in latencies:
            stats.record("outbound", None, 200, latency, None, b"GET", b"/")
        clock.advance(1)
        summary = stats.snapshot()["listeners"]["outbound"]
        self.assertEqual([len(b.samples) for b in stats.listeners["outbound"]._buckets], [SAMPLES])
        self.assertEqual(summary["rps"], 1000.0)
        self.assertTrue(350 <= summary["p50"] <= 650, summary)
        self.assertTrue(900 <= summary["p99"] <= 1000, summary)
        self.assertTrue(summary["p50"] <= summary["p99"])
        entry = summary["series"][-1]
        self.assertEqual(entry["requests"], 10_000)
        self.assertEqual((entry["p50"], entry["p99"]), (summary["p50"], summary["p99"]))


class ErrorListTests(SynchronousTestCase):
    """
    Recent errors: what failed and why, bounded, newest first.
    """

    def errors(self, stats: LiveStats) -> List[Dict[str, Any]]:
        return stats.snapshot()["errors"]

    def test_serverError(self) -> None:
        stats, clock = newStats()
        clock.advance(0.5)
        record(stats, status=503, method=b"POST", path=b"/orders", cluster="peer")
        self.assertEqual(
            self.errors(stats),
            [
                {
                    "time": 1000.5,
                    "listener": "outbound",
                    "cluster": "peer",
                    "method": "POST",
                    "path": "/orders",
                    "status": 503,
                    "reason": "upstream answered 503",
                }
            ],
        )

    def test_causeGiven(self) -> None:
        stats, _ = newStats()
        record(stats, status=504, cause="upstream_timeout")
        [error] = self.errors(stats)
        self.assertEqual(error["reason"], "upstream_timeout")

    def test_successNotListed(self) -> None:
        stats, _ = newStats()
        for status in (200, 204, 301, 404):
            record(stats, status=status)
        self.assertEqual(self.errors(stats), [])

    def test_clientErrorWithCause(self) -> None:
        """
        A 4xx the sidecar sent itself (it has a cause) is listed, but is not
        an error in the figures.
        """
        stats, clock = newStats()
        record(stats, status=429, cause="rate_limited")
        clock.advance(1)
        snapshot = stats.snapshot()
        [error] = snapshot["errors"]
        self.assertEqual((error["status"], error["reason"]), (429, "rate_limited"))
        listener = snapshot["listeners"]["outbound"]
        self.assertEqual(listener["error_rate"], 0.0)
        self.assertEqual(listener["series"][-1]["errors"], 0)
        self.assertEqual(listener["series"][-1]["requests"], 1)

    def test_noResponse(self) -> None:
        """
        Status 0 (no response was sent) is an error.
        """
        stats, clock = newStats()
        record(stats, status=0, cause="client_closed", cluster=None)
        record(stats, status=200, cluster=None)
        clock.advance(1)
        snapshot = stats.snapshot()
        [error] = snapshot["errors"]
        self.assertEqual((error["status"], error["reason"], error["cluster"]), (0, "client_closed", None))
        self.assertEqual(snapshot["listeners"]["outbound"]["error_rate"], 0.5)
        self.assertEqual(snapshot["listeners"]["outbound"]["series"][-1]["errors"], 1)

    def test_noResponseWithoutCause(self) -> None:
        stats, _ = newStats()
        record(stats, status=0)
        [error] = self.errors(stats)
        self.assertEqual(error["status"], 0)
        self.assertTrue(error["reason"])

    def test_queryNeverKept(self) -> None:
        """
        The query string may carry credentials: only the path is kept.
        """
        stats, _ = newStats()
        record(stats, status=502, path=b"/login?token=secret&x=1")
        record(stats, status=502, path=b"http://peer.example/a/b?token=secret")
        record(stats, status=502, path=b"/?token=secret")
        record(stats, status=502, path=b"?token=secret")
        paths = [e["path"] for e in self.errors(stats)]
        self.assertEqual(paths, ["", "/", "http://peer.example/a/b", "/login"])
        self.assertNotIn("secret", repr(stats.snapshot()))
        self.assertNotIn("secret", repr(list(stats.errors)))

    def test_longFieldsCut(self) -> None:
        stats, _ = newStats()
        record(stats, status=500, method=b"M" * 100, path=b"/" + b"p" * 1000)
        [error] = self.errors(stats)
        self.assertEqual(len(error["method"]), 16)
        self.assertEqual(len(error["path"]), 200)

    def test_bounded(self) -> None:
        """
        Only the last L{RECENT_ERRORS} errors are kept, newest first.
        """
        stats, clock = newStats()
        for i in range(RECENT_ERRORS * 3):
            record(stats, status=500, path=b"/%d" % (i,))
            clock.advance(0.01)
        errors = self.errors(stats)
        self.assertEqual(len(errors), RECENT_ERRORS)
        self.assertEqual(len(stats.errors), RECENT_ERRORS)
        self.assertEqual(
            [e["path"] for e in errors],
            ["/%d" % (i,) for i in reversed(range(RECENT_ERRORS * 2, RECENT_ERRORS * 3))],
        )
        times = [e["time"] for e in errors]
        self.assertEqual(times, sorted(times, reverse=True))
        self.assertEqual(stats.total, RECENT_ERRORS * 3)
