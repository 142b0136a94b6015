"""
Tests for L{easymesh.ops.telemetry.Telemetry}: one call per event feeds
real L{Metrics} (read back through their exposition) and L{LiveStats}.
"""

from __future__ import annotations

import random
from typing import Dict, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from easymesh.message import ProxyRequest
from easymesh.ops.live import LiveStats
from easymesh.ops.metrics import Metrics
from easymesh.ops.telemetry import NONE, Telemetry

Labels = Tuple[Tuple[str, str], ...]


def L(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


def scrape(metrics: Metrics) -> Dict[str, Dict[Labels, float]]:
    """
    Every sample exposed, by sample name, then by sorted labels.
    """
    body, _ = metrics.exposition()
    samples: Dict[str, Dict[Labels, float]] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def proxied(
    route: Optional[str] = "default", cluster: Optional[str] = "peer", attempts: int = 1
) -> ProxyRequest:
    request = ProxyRequest(b"GET", b"/", Headers(), listener="outbound")
    request.route = route
    request.cluster = cluster
    request.attempts = attempts
    return request


class TelemetryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.metrics = Metrics(processMetrics=False)
        self.live = LiveStats(self.clock, random.Random(0))
        self.telemetry = Telemetry(self.metrics, self.live)

    def done(
        self,
        request: Optional[ProxyRequest],
        status: int = 200,
        duration: float = 0.01,
        cause: Optional[str] = None,
        listener: str = "outbound",
        path: bytes = b"/",
    ) -> None:
        self.telemetry.requestDone(listener, request, status, duration, cause, b"GET", path)

    def test_requestLabels(self) -> None:
        """
        A finished request is counted under its listener, route, cluster and
        status class, and its duration observed.
        """
        self.done(proxied("api", "orders"), 201, 0.003)
        self.done(proxied("api", "orders"), 503, 0.2)
        samples = scrape(self.metrics)
        self.assertEqual(
            samples["easymesh_requests_total"],
            {
                L(listener="outbound", route="api", cluster="orders", code_class="2xx"): 1.0,
                L(listener="outbound", route="api", cluster="orders", code_class="5xx"): 1.0,
            },
        )
        labels = L(listener="outbound", route="api", cluster="orders")
        self.assertEqual(samples["easymesh_request_duration_seconds_count"], {labels: 2.0})
        self.assertAlmostEqual(
            samples["easymesh_request_duration_seconds_sum"][labels], 0.203
        )
        buckets = samples["easymesh_request_duration_seconds_bucket"]
        self.assertEqual(buckets[tuple(sorted(labels + (("le", "0.005"),)))], 1.0)
        self.assertEqual(buckets[tuple(sorted(labels + (("le", "0.25"),)))], 2.0)

    def test_noRouteNoCluster(self) -> None:
        """
        A request refused before it was made into a proxy request, or that
        took no route or reached no cluster, is labelled C{none}; so is a
        request with no response.
        """
        self.done(None, 400, listener="inbound")
        self.done(proxied(route=None, cluster=None), 404)
        self.done(proxied(route="r", cluster=None), 0, cause="client_closed")
        self.assertEqual(NONE, "none")
        self.assertEqual(
            scrape(self.metrics)["easymesh_requests_total"],
            {
                L(listener="inbound", route="none", cluster="none", code_class="4xx"): 1.0,
                L(listener="outbound", route="none", cluster="none", code_class="4xx"): 1.0,
                L(listener="outbound", route="r", cluster="none", code_class="none"): 1.0,
            },
        )

    def test_rateLimited(self) -> None:
        """
        A request refused by a rate limit is counted under its listener and
        route.
        """
        self.done(proxied("api", None, attempts=0), 429, cause="rate_limited")
        self.done(None, 429, cause="rate_limited", listener="inbound")
        self.done(proxied("api", "orders"), 429)  # the upstream's own 429
        samples = scrape(self.metrics)
        self.assertEqual(
            samples["easymesh_rate_limited_total"],
            {L(listener="outbound", route="api"): 1.0, L(listener="inbound", route="none"): 1.0},
        )
        self.assertNotIn("easymesh_timeouts_total", samples)

    def test_timeout(self) -> None:
        """
        An upstream timeout is counted under its cluster; one with no
        cluster is not.
        """
        self.done(proxied("api", "orders"), 504, cause="upstream_timeout")
        self.done(proxied("api", "orders"), 504, cause="upstream_timeout")
        self.done(proxied("api", None), 504, cause="upstream_timeout")
        self.done(proxied("api", "orders"), 504)  # the upstream's own 504
        samples = scrape(self.metrics)
        self.assertEqual(samples["easymesh_timeouts_total"], {L(cluster="orders"): 2.0})
        self.assertNotIn("easymesh_rate_limited_total", samples)

    def test_otherCauses(self) -> None:
        self.done(proxied(), 503, cause="upstream_connect_failure")
        self.done(proxied(), 0, cause="client_closed")
        samples = scrape(self.metrics)
        self.assertNotIn("easymesh_timeouts_total", samples)
        self.assertNotIn("easymesh_rate_limited_total", samples)
        self.assertNotIn("easymesh_retries_total", samples)

    def test_retries(self) -> None:
        """
        Every attempt after the first is a retry of the request's cluster.
        """
        self.done(proxied(cluster="orders", attempts=3))
        self.done(proxied(cluster="orders", attempts=2))
        self.done(proxied(cluster="users", attempts=1))
        self.done(proxied(cluster=None, attempts=0))
        self.done(None)
        self.assertEqual(
            scrape(self.metrics)["easymesh_retries_total"], {L(cluster="orders"): 3.0}
        )

    def test_connections(self) -> None:
        """
        Client and upstream connections are counted open now and in total.
        """
        t = self.telemetry
        for _ in range(3):
            t.connectionOpened("outbound")
        t.connectionClosed("outbound")
        t.connectionOpened("inbound")
        t.upstreamConnectionOpened("peer")
        t.upstreamConnectionOpened("peer")
        t.upstreamConnectionClosed("peer")
        samples = scrape(self.metrics)
        self.assertEqual(
            samples["easymesh_downstream_connections_active"],
            {L(listener="outbound"): 2.0, L(listener="inbound"): 1.0},
        )
        self.assertEqual(
            samples["easymesh_downstream_connections_total"],
            {L(listener="outbound"): 3.0, L(listener="inbound"): 1.0},
        )
        self.assertEqual(samples["easymesh_upstream_connections_active"], {L(cluster="peer"): 1.0})
        self.assertEqual(samples["easymesh_upstream_connections_total"], {L(cluster="peer"): 2.0})

    def test_clusterEvents(self) -> None:
        t = self.telemetry
        t.upstreamAnswered("peer", 0.02)
        t.ejected("peer")
        t.overflowed("peer", "max_requests")
        t.configReloaded(True)
        t.configReloaded(False)
        t.configReloaded(False)
        samples = scrape(self.metrics)
        self.assertEqual(
            samples["easymesh_upstream_request_duration_seconds_count"], {L(cluster="peer"): 1.0}
        )
        self.assertEqual(samples["easymesh_ejections_total"], {L(cluster="peer"): 1.0})
        self.assertEqual(
            samples["easymesh_overflow_total"], {L(cluster="peer", breaker="max_requests"): 1.0}
        )
        self.assertEqual(
            samples["easymesh_config_reloads_total"],
            {L(result="success"): 1.0, L(result="failure"): 2.0},
        )

    def test_live(self) -> None:
        """
        The live figures get every finished request, with its cluster, and
        its reason when it failed.
        """
        self.done(proxied("api", "orders"), 200)
        self.done(None, 400, cause="bad_request", listener="inbound", path=b"/x?token=secret")
        self.done(proxied("api", "orders"), 504, cause="upstream_timeout")
        self.clock.advance(1)
        snapshot = self.live.snapshot()
        self.assertEqual(snapshot["total"], 3)
        self.assertEqual(sorted(snapshot["listeners"]), ["inbound", "outbound"])
        self.assertEqual(sorted(snapshot["clusters"]), ["orders"])
        self.assertEqual(snapshot["clusters"]["orders"]["series"][-1]["requests"], 2)
        self.assertEqual(
            [(e["listener"], e["cluster"], e["status"], e["reason"], e["path"]) for e in snapshot["errors"]],
            [
                ("outbound", "orders", 504, "upstream_timeout", "/"),
                ("inbound", None, 400, "bad_request", "/x"),
            ],
        )

    def test_metricsOnly(self) -> None:
        telemetry = Telemetry(self.metrics)
        telemetry.requestDone("outbound", proxied(), 200, 0.1, None, b"GET", b"/")
        self.assertEqual(len(scrape(self.metrics)["easymesh_requests_total"]), 1)
        self.assertEqual(self.live.total, 0)

    def test_liveOnly(self) -> None:
        telemetry = Telemetry(live=self.live)
        telemetry.requestDone("outbound", proxied(), 500, 0.1, None, b"GET", b"/")
        telemetry.connectionOpened("outbound")
        self.assertEqual(self.live.total, 1)
        self.assertNotIn("easymesh_requests_total", scrape(self.metrics))


class NothingAttachedTests(SynchronousTestCase):
    """
    A L{Telemetry} with neither metrics nor live figures does nothing.
    """

    def test_everyEvent(self) -> None:
        t = Telemetry()
        self.assertIsNone(t.metrics)
        self.assertIsNone(t.live)
        t.requestDone("outbound", proxied(attempts=3), 504, 0.1, "upstream_timeout", b"GET", b"/")
        t.requestDone("outbound", None, 429, 0.1, "rate_limited", b"GET", b"/")
        t.requestDone("outbound", None, 0, 0.1, None, b"GET", b"/")
        t.connectionOpened("outbound")
        t.connectionClosed("outbound")
        t.upstreamAnswered("peer", 0.1)
        t.upstreamConnectionOpened("peer")
        t.upstreamConnectionClosed("peer")
        t.ejected("peer")
        t.overflowed("peer", "max_requests")
        t.configReloaded(True)
        self.assertIsNone(t.metrics)
        self.assertIsNone(t.live)
