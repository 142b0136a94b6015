"""
Tests for L{easymesh.cluster.cluster}: endpoint choice, panic mode,
outlier detection and breakers fed by real outcomes, endpoint updates and
health probes.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Sequence

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from easymesh.cluster.cluster import Cluster
from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import (
    CircuitBreakers,
    ClusterConfig,
    DnsDiscovery,
    HealthCheck,
    OutlierDetection,
)
from easymesh.config.model import PoolSettings
from easymesh.errors import NoHealthyUpstream, Overflow, UpstreamConnectFailure
from easymesh.message import ProxyRequest
from tests.meshfakes import FakeResolver, Upstreams, logged, makeRequest


def urls(*hosts: str) -> Sequence[UpstreamURL]:
    return tuple(UpstreamURL.parse(f"http://{h}") for h in hosts)


def config(*hosts: str, **kw: Any) -> ClusterConfig:
    endpoints = urls(*hosts)
    return ClusterConfig("web", endpoints=endpoints, weights=(1,) * len(endpoints), **kw)


class ClusterCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.upstreams = Upstreams()
        self.upstreams.answer = lambda request: 200
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def cluster(self, config: ClusterConfig, **kw: Any) -> Cluster:
        cluster = Cluster(config, self.clock, random.Random(2), makeUpstream=self.upstreams.make, **kw)
        self.addCleanup(cluster.stop)
        return cluster

    def send(self, cluster: Cluster, count: int = 1, **kw: Any) -> List[ProxyRequest]:
        requests = []
        for _ in range(count):
            request = makeRequest(b"/x")
            cluster.request(request, **kw).addErrback(lambda f: None)
            requests.append(request)
        return requests

    def spread(self, cluster: Cluster, count: int = 30) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for request in self.send(cluster, count):
            assert request.upstreamHost is not None
            counts[request.upstreamHost] = counts.get(request.upstreamHost, 0) + 1
        return counts


class SelectionTests(ClusterCase):
    def test_upstreamsMadeFromTheConfig(self) -> None:
        cluster = self.cluster(
            config("a1:8080", "a2:8080", poolSize=7, poolIdle=2.0, connectTimeout=0.5, timeout=3.0)
        )
        self.assertEqual([u.url for u in self.upstreams.made], list(urls("a1:8080", "a2:8080")))
        for upstream in self.upstreams.made:
            self.assertEqual(upstream.settings, PoolSettings(7, 2.0, 0.5, 3.0))
            self.assertIs(upstream.breakers, cluster.breakers)
        self.assertEqual([e.key for e in cluster.endpoints], ["a1:8080", "a2:8080"])

    def test_weights(self) -> None:
        endpoints = urls("a1", "a2")
        cluster = self.cluster(ClusterConfig("web", endpoints=endpoints, weights=(1, 3)))
        self.assertEqual([e.weight for e in cluster.endpoints], [1, 3])
        counts = self.spread(cluster, 400)
        self.assertEqual(counts, {"a1:80": 100, "a2:80": 300})

    def test_upstreamHostAndTimeout(self) -> None:
        cluster = self.cluster(config("a1:8080"))
        request = makeRequest(b"/x")
        response = self.successResultOf(cluster.request(request, 2.5))
        self.assertEqual(response.code, 200)
        self.assertEqual(request.upstreamHost, "a1:8080")
        (sent,) = self.upstreams["a1:8080"].sent
        self.assertIs(sent.request, request)
        self.assertEqual(sent.timeout, 2.5)

    def test_countsInFlight(self) -> None:
        self.upstreams.answer = None
        cluster = self.cluster(config("a1", "a2"))
        self.send(cluster, 3)
        self.assertEqual(cluster.active, 3)
        self.assertEqual(cluster.breakers.requests, 3)
        self.assertEqual(sum(e.active for e in cluster.endpoints), 3)
        self.clock.advance(0.25)
        for sent in self.upstreams.allSent():
            sent.respond(200)
        self.assertEqual((cluster.active, cluster.breakers.requests), (0, 0))
        self.assertEqual([e.active for e in cluster.endpoints], [0, 0])
        self.assertAlmostEqual(cluster.endpoints[0].ewma(self.clock.seconds()), 0.25)

    def test_skipsEjectedAndUnhealthy(self) -> None:
        cluster = self.cluster(config("a1", "a2", "a3"))
        cluster.endpoints[0].healthy = False
        cluster.endpoints[1].ejectedUntil = self.clock.seconds() + 30
        self.assertEqual(self.spread(cluster), {"a3:80": 30})
        self.assertEqual(logged(self.events, "easymesh.cluster", "panic"), [])

    def test_panicMode(self) -> None:
        cluster = self.cluster(config("a1", "a2", "a3"))
        for endpoint in cluster.endpoints:
            endpoint.healthy = False
        self.assertEqual(self.spread(cluster), {"a1:80": 10, "a2:80": 10, "a3:80": 10})
        self.assertEqual(len(logged(self.events, "easymesh.cluster", "panic mode")), 1)
        cluster.endpoints[1].healthy = True
        self.assertEqual(self.spread(cluster), {"a2:80": 30})
        self.assertEqual(len(logged(self.events, "easymesh.cluster", "panic over")), 1)
        cluster.endpoints[1].ejectedUntil = self.clock.seconds() + 1
        self.spread(cluster, 5)
        self.assertEqual(len(logged(self.events, "easymesh.cluster", "panic mode")), 2)

    def test_noEndpoints(self) -> None:
        resolver = FakeResolver()
        cluster = self.cluster(
            ClusterConfig("web", dns=DnsDiscovery("web.internal", 80)), resolver=resolver
        )
        failure = self.failureResultOf(cluster.request(makeRequest()), NoHealthyUpstream)
        self.assertEqual(failure.value.reply().code, 503)
        self.assertEqual((cluster.active, cluster.breakers.requests), (0, 0))

    def test_upstreamRaising(self) -> None:
        def broken(request: Any, timeout: Any = None) -> Any:
            raise RuntimeError("bug")

        cluster = self.cluster(config("a1"))
        self.upstreams["a1"].request = broken  # type: ignore[assignment]
        self.failureResultOf(cluster.request(makeRequest()), RuntimeError)
        self.assertEqual((cluster.active, cluster.breakers.requests), (0, 0))
        self.assertEqual(cluster.endpoints[0].active, 0)


class BreakerTests(ClusterCase):
    def test_maxRequests(self) -> None:
        self.upstreams.answer = None
        cluster = self.cluster(config("a1", circuitBreakers=CircuitBreakers(maxRequests=2)))
        self.send(cluster, 2)
        failure = self.failureResultOf(cluster.request(makeRequest()), Overflow)
        reply = failure.value.reply()
        self.assertEqual((reply.code, reply.cause), (503, "overflow"))
        self.assertEqual(failure.value.breaker, "max_requests")
        self.assertEqual(cluster.breakers.overflows, {"max_requests": 1})
        self.assertEqual(len(self.upstreams.allSent()), 2)
        self.upstreams.allSent()[0].respond(200)
        d = cluster.request(makeRequest())
        self.assertNoResult(d)
        self.assertEqual(len(self.upstreams.allSent()), 3)

    def test_failuresReleaseTheBreaker(self) -> None:
        self.upstreams.answer = lambda request: ConnectionRefusedError()
        cluster = self.cluster(config("a1", circuitBreakers=CircuitBreakers(maxRequests=1)))
        for _ in range(3):
            self.failureResultOf(cluster.request(makeRequest()), ConnectionRefusedError)
        self.assertEqual(cluster.breakers.overflows, {})
        self.assertEqual(cluster.breakers.requests, 0)


class OutlierTests(ClusterCase):
    def setUp(self) -> None:
        super().setUp()
        self.codes: Dict[str, Any] = {}
        self.upstreams.answer = self.answer

    def answer(self, request: ProxyRequest) -> Any:
        outcome = self.codes.get(request.upstreamHost or "", 200)
        return outcome() if callable(outcome) else outcome

    def detecting(self, **kw: Any) -> Cluster:
        detection = OutlierDetection(
            **{"interval": 10.0, "baseEjectionTime": 30.0, "maxEjectionPercent": 50.0, **kw}
        )
        cluster = self.cluster(config("a1", "a2", "a3", outlierDetection=detection))
        cluster.start()
        return cluster

    def test_5xxEjectsAndReturns(self) -> None:
        cluster = self.detecting(consecutive5xx=3, consecutiveGatewayFailure=0)
        self.codes["a1:80"] = 500
        self.spread(cluster, 9)
        a1 = cluster.endpoints[0]
        self.assertTrue(a1.ejected)
        self.assertEqual(a1.ejectedUntil, self.clock.seconds() + 30)
        self.assertEqual(len(self.upstreams["a1"].sent), 3)
        self.assertNotIn("a1:80", self.spread(cluster, 30))
        self.codes["a1:80"] = 200
        self.clock.advance(30)
        self.assertFalse(a1.ejected)
        self.assertIn("a1:80", self.spread(cluster, 30))

    def test_gatewayErrorsEject(self) -> None:
        cluster = self.detecting(consecutive5xx=0, consecutiveGatewayFailure=2)
        self.codes["a2:80"] = 503
        self.spread(cluster, 6)
        self.assertEqual([e.ejected for e in cluster.endpoints], [False, True, False])

    def test_connectFailuresEject(self) -> None:
        cluster = self.detecting(consecutive5xx=0, consecutiveGatewayFailure=2)
        self.codes["a3:80"] = lambda: ConnectionRefusedError()
        self.spread(cluster, 6)
        self.assertEqual([e.ejected for e in cluster.endpoints], [False, False, True])

    def test_proxyErrorsEject(self) -> None:
        cluster = self.detecting(consecutive5xx=0, consecutiveGatewayFailure=2)
        self.codes["a3:80"] = lambda: UpstreamConnectFailure()
        self.spread(cluster, 6)
        self.assertTrue(cluster.endpoints[2].ejected)

    def test_successBetweenFailuresResets(self) -> None:
        cluster = self.detecting(consecutive5xx=3, consecutiveGatewayFailure=0)
        results = iter([500, 500, 404, 500, 500, 200, 500, 500])
        self.codes["a1:80"] = lambda: next(results)
        self.spread(cluster, 24)
        self.assertFalse(cluster.endpoints[0].ejected)

    def test_clientGoneAndOverflowNotCounted(self) -> None:
        cluster = self.detecting(consecutive5xx=1, consecutiveGatewayFailure=1)
        self.codes["a1:80"] = lambda: CancelledError()
        self.codes["a2:80"] = lambda: Overflow("max_pending_requests")
        self.spread(cluster, 12)
        self.assertEqual([e.ejected for e in cluster.endpoints], [False, False, False])

    def test_stopStopsTheSweep(self) -> None:
        cluster = self.detecting()
        self.assertTrue(self.clock.getDelayedCalls())
        cluster.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SetHostsTests(ClusterCase):
    def test_keepsEndpointsThatStay(self) -> None:
        cluster = self.cluster(config("a1", "a2", "a3"))
        a1, a2, a3 = cluster.endpoints
        a2.ejections = 2
        a2.healthy = False
        upstream1, upstream2, upstream3 = self.upstreams.made
        cluster.setHosts([(urls("a2")[0], 5), (urls("a4")[0], 1), (urls("a1")[0], 1)])
        self.assertEqual([e.key for e in cluster.endpoints], ["a2:80", "a4:80", "a1:80"])
        self.assertIs(cluster.endpoints[0], a2)
        self.assertIs(cluster.endpoints[2], a1)
        self.assertEqual((a2.weight, a2.ejections, a2.healthy), (5, 2, False))
        self.assertIs(a2.upstream, upstream2)
        self.assertEqual([u.closed for u in (upstream1, upstream2, upstream3)], [0, 0, 1])
        self.assertEqual(len(self.upstreams.made), 4)
        # a2 is unhealthy still.
        self.assertEqual(self.spread(cluster, 70), {"a4:80": 35, "a1:80": 35})

    def test_balancerSeesTheNewEndpoints(self) -> None:
        cluster = self.cluster(config("a1", "a2"))
        cluster.setHosts([(urls("b1")[0], 1), (urls("b2")[0], 1)])
        self.assertEqual(self.spread(cluster, 10), {"b1:80": 5, "b2:80": 5})

    def test_schemeMatters(self) -> None:
        cluster = self.cluster(config("a1:8443"))
        (old,) = cluster.endpoints
        cluster.setHosts([(UpstreamURL("https", "a1", 8443), 1)])
        (new,) = cluster.endpoints
        self.assertIsNot(new, old)
        self.assertEqual(old.upstream.closed, 1)

    def test_stopClosesEveryUpstream(self) -> None:
        cluster = self.cluster(config("a1", "a2"))
        self.successResultOf(cluster.stop())
        self.assertEqual([u.closed for u in self.upstreams.made], [1, 1])


class HealthTests(ClusterCase):
    def checked(self, **kw: Any) -> Cluster:
        # Health checks read the whole body before they count.
        self.upstreams.endBodies = True
        check = HealthCheck(**{"path": "/ready", "interval": 5.0, "timeout": 1.0, "unhealthyThreshold": 2, **kw})
        cluster = self.cluster(config("a1:8080", "a2", healthCheck=check))
        cluster.start()
        return cluster

    def test_probe(self) -> None:
        cluster = self.checked()
        self.clock.advance(0.5)
        for upstream, host in zip(self.upstreams.made, (b"a1:8080", b"a2")):
            (sent,) = upstream.sent
            self.assertEqual((sent.request.method, sent.target, sent.host), (b"GET", b"/ready", host))
            self.assertEqual(sent.request.headers.getRawHeaders(b"user-agent"), [b"easymesh-health-check"])
            self.assertIsNone(sent.request.body)
            self.assertEqual(sent.timeout, 1.0)
            # The body is read and dropped, so that the connection is reused.
            assert sent.response is not None
            self.assertEqual(len(sent.response.delivered), 1)
        self.assertTrue(all(e.healthy for e in cluster.endpoints))
        self.clock.advance(5)
        self.assertEqual([len(u.sent) for u in self.upstreams.made], [2, 2])

    def test_probeHost(self) -> None:
        self.checked(host="health.internal")
        self.clock.advance(0.5)
        self.assertEqual([u.sent[0].host for u in self.upstreams.made], [b"health.internal"] * 2)

    def test_unhealthySkipped(self) -> None:
        cluster = self.checked()
        a1, a2 = self.upstreams.made
        a1.answer = lambda request: 503
        a2.answer = lambda request: 200
        self.clock.pump([0.5, 5.0])
        self.assertEqual([e.healthy for e in cluster.endpoints], [False, True])
        self.assertEqual(self.spread(cluster, 10), {"a2:80": 10})

    def test_newEndpointsProbedSoon(self) -> None:
        cluster = self.checked()
        self.clock.advance(0.5)
        cluster.setHosts([(urls("a3")[0], 1)])
        self.clock.advance(0.5)
        self.assertEqual(len(self.upstreams["a3"].sent), 1)
