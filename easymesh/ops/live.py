# -*- test-case-name: tests.test_live -*-
"""
Live figures for the dashboard: per listener and per cluster, a minute of
per-second buckets (requests, errors, latency samples), and the most recent
errors with their reasons.  Memory is bounded: 61 buckets per key, at most
L{SAMPLES} latency samples per bucket (reservoir sampling), and keys are
listener and cluster names from the configuration.
"""

from __future__ import annotations

import random as _random
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

#: Seconds of history kept.
HISTORY = 60
#: Latency samples kept per second per key.
SAMPLES = 200
#: Recent errors kept.
RECENT_ERRORS = 50


class _Bucket:
    __slots__ = ("second", "count", "errors", "samples")

    def __init__(self, second: int) -> None:
        self.second = second
        self.count = 0
        self.errors = 0
        self.samples: List[float] = []


def _percentile(ordered: List[float], fraction: float) -> Optional[float]:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]


class Window:
    """
    A minute of per-second figures for one listener or cluster.
    """

    def __init__(self, random: _random.Random) -> None:
        # The last minute's complete seconds, and the current one.
        self._buckets: Deque[_Bucket] = deque(maxlen=HISTORY + 1)
        self._random = random

    def add(self, now: float, latency: float, error: bool) -> None:
        second = int(now)
        buckets = self._buckets
        bucket = buckets[-1] if buckets else None
        if bucket is None or bucket.second != second:
            bucket = _Bucket(second)
            buckets.append(bucket)
        bucket.count += 1
        if error:
            bucket.errors += 1
        samples = bucket.samples
        if len(samples) < SAMPLES:
            samples.append(latency)
        else:
            slot = self._random.randrange(bucket.count)
            if slot < SAMPLES:
                samples[slot] = latency

    def series(self, now: float) -> List[Dict[str, Any]]:
        """
        One entry per second of the last minute (complete seconds only),
        oldest first: requests, errors, p50 and p99 latency in ms.
        """
        current = int(now)
        bySecond = {b.second: b for b in self._buckets}
        out: List[Dict[str, Any]] = []
        for second in range(current - HISTORY, current):
            bucket = bySecond.get(second)
            if bucket is None:
                out.append({"t": second, "requests": 0, "errors": 0, "p50": None, "p99": None})
                continue
            ordered = sorted(bucket.samples)
            out.append(
                {
                    "t": second,
                    "requests": bucket.count,
                    "errors": bucket.errors,
                    "p50": _ms(_percentile(ordered, 0.5)),
                    "p99": _ms(_percentile(ordered, 0.99)),
                }
            )
        return out

    def summary(self, now: float, span: int = 10) -> Dict[str, Any]:
        """
        Requests a second, error rate and p50/p99 latency over the last
        C{span} complete seconds.
        """
        current = int(now)
        buckets = [b for b in self._buckets if current - span <= b.second < current]
        count = sum(b.count for b in buckets)
        errors = sum(b.errors for b in buckets)
        ordered = sorted(s for b in buckets for s in b.samples)
        return {
            "rps": round(count / span, 2),
            "error_rate": round(errors / count, 4) if count else 0.0,
            "p50": _ms(_percentile(ordered, 0.5)),
            "p99": _ms(_percentile(ordered, 0.99)),
        }


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 3)


class LiveStats:
    """
    What the dashboard shows, fed at the end of every request.
    """

    def __init__(self, clock: Any, random: Optional[_random.Random] = None) -> None:
        self._clock = clock
        self._random = random if random is not None else _random.Random()
        self.listeners: Dict[str, Window] = {}
        self.clusters: Dict[str, Window] = {}
        self.errors: Deque[Dict[str, Any]] = deque(maxlen=RECENT_ERRORS)
        self.total = 0

    def _window(self, table: Dict[str, Window], name: str) -> Window:
        window = table.get(name)
        if window is None:
            window = table[name] = Window(self._random)
        return window

    def record(
        self,
        listener: str,
        cluster: Optional[str],
        status: int,
        latency: float,
        cause: Optional[str],
        method: bytes,
        path: bytes,
    ) -> None:
        """
        A request finished with C{status} (0: no response) after
        C{latency} seconds; C{cause} is the sidecar's reason for an error.
        """
        now = self._clock.seconds()
        self.total += 1
        error = status == 0 or status >= 500
        self._window(self.listeners, listener).add(now, latency, error)
        if cluster is not None:
            self._window(self.clusters, cluster).add(now, latency, error)
        if error or cause is not None:
            self.errors.append(
                {
                    "time": now,
                    "listener": listener,
                    "cluster": cluster,
                    "method": method.decode("latin-1")[:16],
                    # The path only: a query string may carry credentials.
                    "path": path.split(b"?", 1)[0].decode("latin-1")[:200],
                    "status": status,
                    "reason": cause or f"upstream answered {status}",
                }
            )

    def snapshot(self) -> Dict[str, Any]:
        now = self._clock.seconds()
        return {
            "time": now,
            "total": self.total,
            "listeners": _describe(self.listeners, now),
            "clusters": _describe(self.clusters, now),
            "errors": list(reversed(self.errors)),
        }


def _describe(table: Dict[str, Window], now: float) -> Dict[str, Any]:
    return {
        name: dict(window.summary(now), series=window.series(now))
        for name, window in sorted(table.items())
    }


__all__: Tuple[str, ...] = ("LiveStats", "Window", "HISTORY", "SAMPLES", "RECENT_ERRORS")
