"""
Tests for L{easymesh.ops.metrics}: events in, Prometheus text format out,
read back with C{prometheus_client}'s parser.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from typing import Any, Dict, List, Tuple

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from easymesh import __version__
from easymesh.ops.metrics import (
    METRIC_DOCS,
    Metrics,
    codeClass,
    markdownTable,
)

Labels = Tuple[Tuple[str, str], ...]


def scrape(metrics: Metrics) -> Dict[str, Dict[Labels, float]]:
    """
    Every sample exposed, by sample name, then by sorted labels.
    """
    body, contentType = metrics.exposition()
    assert contentType.startswith("text/plain"), contentType
    samples: Dict[str, Dict[Labels, float]] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def families(metrics: Metrics) -> Dict[str, Any]:
    body, _ = metrics.exposition()
    return {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}


def L(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


class CodeClassTests(SynchronousTestCase):
    def test_classes(self) -> None:
        self.assertEqual(
            [codeClass(s) for s in [100, 200, 204, 304, 429, 502, 599, 999]],
            ["1xx", "2xx", "2xx", "3xx", "4xx", "5xx", "5xx", "9xx"],
        )

    def test_none(self) -> None:
        for status in [None, 0, 99, 1000, -200]:
            self.assertEqual(codeClass(status), "none")


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = Metrics(processMetrics=False)

    def test_requests(self) -> None:
        m = self.metrics
        m.requestFinished("outbound", "default", "peer", 200, 0.004)
        m.requestFinished("outbound", "default", "peer", 201, 0.02)
        m.requestFinished("outbound", "default", "peer", 503, 0.3)
        m.requestFinished("inbound", "api", "app", None, 12.0)
        samples = scrape(m)
        self.assertEqual(
            samples["easymesh_requests_total"],
            {
                L(listener="outbound", route="default", cluster="peer", code_class="2xx"): 2.0,
                L(listener="outbound", route="default", cluster="peer", code_class="5xx"): 1.0,
                L(listener="inbound", route="api", cluster="app", code_class="none"): 1.0,
            },
        )
        out = dict(listener="outbound", route="default", cluster="peer")
        self.assertEqual(samples["easymesh_request_duration_seconds_count"][L(**out)], 3.0)
        self.assertAlmostEqual(samples["easymesh_request_duration_seconds_sum"][L(**out)], 0.324)
        buckets = samples["easymesh_request_duration_seconds_bucket"]
        self.assertEqual(buckets[L(le="0.005", **out)], 1.0)
        self.assertEqual(buckets[L(le="0.025", **out)], 2.0)
        self.assertEqual(buckets[L(le="0.5", **out)], 3.0)
        self.assertEqual(buckets[L(le="+Inf", **out)], 3.0)
        inbound = dict(listener="inbound", route="api", cluster="app")
        self.assertEqual(buckets[L(le="10.0", **inbound)], 0.0)
        self.assertEqual(buckets[L(le="30.0", **inbound)], 1.0)

    def test_upstreamRequest(self) -> None:
        self.metrics.upstreamRequest("peer", 0.05)
        self.metrics.upstreamRequest("peer", 0.15)
        samples = scrape(self.metrics)
        self.assertEqual(
            samples["easymesh_upstream_request_duration_seconds_count"], {L(cluster="peer"): 2.0}
        )
        self.assertAlmostEqual(
            samples["easymesh_upstream_request_duration_seconds_sum"][L(cluster="peer")], 0.2
        )

    def test_connections(self) -> None:
        m = self.metrics
        for _ in range(3):
            m.downstreamConnectionOpened("outbound")
        m.downstreamConnectionClosed("outbound")
        m.downstreamConnectionOpened("inbound")
        m.upstreamConnectionOpened("peer")
        m.upstreamConnectionOpened("peer")
        m.upstreamConnectionClosed("peer")
        m.upstreamConnectionClosed("peer")
        samples = scrape(m)
        self.assertEqual(
            samples["easymesh_downstream_connections_active"],
            {L(listener="outbound"): 2.0, L(listener="inbound"): 1.0},
        )
        self.assertEqual(
            samples["easymesh_downstream_connections_total"],
            {L(listener="outbound"): 3.0, L(listener="inbound"): 1.0},
        )
        self.assertEqual(samples["easymesh_upstream_connections_active"], {L(cluster="peer"): 0.0})
        self.assertEqual(samples["easymesh_upstream_connections_total"], {L(cluster="peer"): 2.0})

    def test_pools(self) -> None:
        """
        Pool sizes are read from the source at each scrape.
        """
        pools: List[Tuple[str, int, int]] = [("peer", 3, 1)]
        self.metrics.setPoolSource(lambda: pools)
        self.assertEqual(
            scrape(self.metrics)["easymesh_upstream_pool_connections"],
            {L(cluster="peer", state="idle"): 3.0, L(cluster="peer", state="active"): 1.0},
        )
        pools[:] = [("peer", 0, 5), ("app", 2, 0)]
        self.assertEqual(
            scrape(self.metrics)["easymesh_upstream_pool_connections"],
            {
                L(cluster="peer", state="idle"): 0.0,
                L(cluster="peer", state="active"): 5.0,
                L(cluster="app", state="idle"): 2.0,
                L(cluster="app", state="active"): 0.0,
            },
        )
        self.assertEqual(families(self.metrics)["easymesh_upstream_pool_connections"].type, "gauge")
        self.metrics.setPoolSource(None)
        self.assertNotIn("easymesh_upstream_pool_connections", scrape(self.metrics))

    def test_poolSourceFails(self) -> None:
        """
        A failing pool source is logged and leaves the family empty; the
        other metrics are still exposed.
        """
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def broken() -> List[Tuple[str, int, int]]:
            raise RuntimeError("pool gone")

        self.metrics.setPoolSource(broken)
        self.metrics.upstreamRetried("peer")
        samples = scrape(self.metrics)
        self.assertNotIn("easymesh_upstream_pool_connections", samples)
        self.assertEqual(samples["easymesh_retries_total"], {L(cluster="peer"): 1.0})
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0]["log_failure"].value, RuntimeError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_counters(self) -> None:
        m = self.metrics
        m.requestRateLimited("inbound", "api")
        m.requestRateLimited("inbound", "api")
        m.upstreamRetried("peer")
        m.upstreamTimedOut("peer")
        m.upstreamTimedOut("app")
        m.hostEjected("peer")
        m.breakerOverflowed("peer", "max_requests")
        m.configReloaded(True)
        m.configReloaded(True)
        m.configReloaded(False)
        samples = scrape(m)
        self.assertEqual(
            samples["easymesh_rate_limited_total"], {L(listener="inbound", route="api"): 2.0}
        )
        self.assertEqual(samples["easymesh_retries_total"], {L(cluster="peer"): 1.0})
        self.assertEqual(
            samples["easymesh_timeouts_total"], {L(cluster="peer"): 1.0, L(cluster="app"): 1.0}
        )
        self.assertEqual(samples["easymesh_ejections_total"], {L(cluster="peer"): 1.0})
        self.assertEqual(
            samples["easymesh_overflow_total"], {L(cluster="peer", breaker="max_requests"): 1.0}
        )
        self.assertEqual(
            samples["easymesh_config_reloads_total"],
            {L(result="success"): 2.0, L(result="failure"): 1.0},
        )

    def test_reloadsStartAtZero(self) -> None:
        """
        Both reload results are exposed from the start, so rates work from
        the first failure on.
        """
        self.assertEqual(
            scrape(self.metrics)["easymesh_config_reloads_total"],
            {L(result="success"): 0.0, L(result="failure"): 0.0},
        )

    def test_buildInfo(self) -> None:
        python = f"{platform.python_implementation()} {platform.python_version()}"
        self.assertEqual(
            scrape(self.metrics)["easymesh_build_info"],
            {L(version=__version__, python=python): 1.0},
        )

    def test_documented(self) -> None:
        """
        Every exposed family is in L{METRIC_DOCS}, with its type and help,
        and carries exactly its documented labels.
        """
        m = self.metrics
        m.requestFinished("a", "b", "c", 200, 0.1)
        m.upstreamRequest("c", 0.1)
        m.downstreamConnectionOpened("a")
        m.upstreamConnectionOpened("c")
        m.setPoolSource(lambda: [("c", 1, 1)])
        m.requestRateLimited("a", "b")
        m.upstreamRetried("c")
        m.upstreamTimedOut("c")
        m.hostEjected("c")
        m.breakerOverflowed("c", "d")
        exposed = families(m)
        names = set()
        for name, kind, labels, text in METRIC_DOCS:
            family = name[: -len("_total")] if kind == "counter" else name
            names.add(family)
            self.assertIn(family, exposed)
            self.assertEqual(exposed[family].type, kind)
            self.assertEqual(exposed[family].documentation, text)
            for sample in exposed[family].samples:
                self.assertEqual(set(sample.labels) - {"le"}, set(labels), sample)
        self.assertEqual(set(exposed), names)

    def test_noCreatedSeries(self) -> None:
        self.metrics.requestFinished("a", "b", "c", 200, 0.1)
        self.metrics.upstreamRetried("c")
        body, _ = self.metrics.exposition()
        self.assertNotIn(b"_created", body)

    def test_processMetrics(self) -> None:
        """
        C{process_*} metrics are exposed where the platform has them
        (Linux), unless turned off.
        """
        with_ = families(Metrics())
        self.assertFalse(any(name.startswith("process_") for name in families(self.metrics)))
        if sys.platform.startswith("linux"):
            self.assertIn("process_open_fds", with_)

    def test_separateRegistries(self) -> None:
        """
        Two instances share no state, and neither uses the global registry.
        """
        other = Metrics(processMetrics=False)
        self.assertIsNot(other.registry, self.metrics.registry)
        self.assertIsNot(self.metrics.registry, prometheus_client.REGISTRY)
        self.metrics.upstreamRetried("peer")
        self.metrics.setPoolSource(lambda: [("peer", 1, 1)])
        self.assertEqual(scrape(self.metrics)["easymesh_retries_total"], {L(cluster="peer"): 1.0})
        otherSamples = scrape(other)
        self.assertNotIn("easymesh_retries_total", otherSamples)
        self.assertNotIn("easymesh_upstream_pool_connections", otherSamples)
        self.assertIsNone(
            prometheus_client.REGISTRY.get_sample_value(
                "easymesh_retries_total", {"cluster": "peer"}
            )
        )

    def test_refusesGlobalRegistry(self) -> None:
        with self.assertRaises(ValueError):
            Metrics(prometheus_client.REGISTRY)

    def test_givenRegistry(self) -> None:
        registry = prometheus_client.CollectorRegistry()
        metrics = Metrics(registry, processMetrics=False)
        metrics.upstreamRetried("peer")
        self.assertIs(metrics.registry, registry)
        self.assertEqual(
            registry.get_sample_value("easymesh_retries_total", {"cluster": "peer"}), 1.0
        )

    def test_histogramBuckets(self) -> None:
        """
        Durations land in the first bucket whose bound is at least the
        duration; the exposed buckets are cumulative, with their sum and
        count.
        """
        for seconds in (0.0005, 0.001, 0.2, 100.0):
            self.metrics.upstreamRequest("peer", seconds)
        [family] = [
            f
            for f in text_string_to_metric_families(self.metrics.exposition()[0].decode())
            if f.name == "easymesh_upstream_request_duration_seconds"
        ]
        buckets = {
            s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")
        }
        self.assertEqual(buckets["0.001"], 2)
        self.assertEqual(buckets["0.1"], 2)
        self.assertEqual(buckets["0.25"], 3)
        self.assertEqual(buckets["60.0"], 3)
        self.assertEqual(buckets["+Inf"], 4)
        [count] = [s.value for s in family.samples if s.name.endswith("_count")]
        [total] = [s.value for s in family.samples if s.name.endswith("_sum")]
        self.assertEqual(count, 4)
        self.assertAlmostEqual(total, 100.2015)


class MarkdownTests(SynchronousTestCase):
    def test_table(self) -> None:
        lines = markdownTable().splitlines()
        self.assertEqual(lines[0], "| metric | type | labels | meaning |")
        self.assertEqual(lines[1], "|---|---|---|---|")
        self.assertEqual(len(lines), 2 + len(METRIC_DOCS))
        self.assertIn(
            "| `easymesh_retries_total` | counter | `cluster` | Upstream requests retried. |",
            lines,
        )
        for line in lines[2:]:
            self.assertEqual(line.count("|"), 5, line)


class ImportTests(SynchronousTestCase):
    def test_noReactor(self) -> None:
        """
        Importing the module and using it installs no reactor and imports
        no C{prometheus_client.twisted}.
        """
        code = (
            "import sys\n"
            "from easymesh.ops.metrics import Metrics\n"
            "Metrics().exposition()\n"
            "print(sorted(m for m in sys.modules if m == 'twisted.internet.reactor'"
            " or m.startswith('prometheus_client.twisted')))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")


