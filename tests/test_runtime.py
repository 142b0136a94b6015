"""
Tests for L{easymesh.runtime}: building clusters and routers from a
L{MeshConfig}, and replacing them on reload.
"""

from __future__ import annotations

import random
from typing import Any, Dict

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import (
    ClusterConfig,
    DnsDiscovery,
    MeshConfig,
    OutlierDetection,
    RateLimitKey,
    Route,
    RouteMatch,
    RouteRateLimit,
)
from easymesh.config.model import SidecarConfig
from easymesh.errors import TooManyRequests
from easymesh.routing.router import Router
from easymesh.runtime import MeshRuntime
from tests.meshfakes import FakeResolver, Upstreams, makeRequest


def cluster(name: str, *hosts: str, **kw: Any) -> ClusterConfig:
    urls = tuple(UpstreamURL.parse(f"http://{h}") for h in hosts)
    return ClusterConfig(name, endpoints=urls, weights=(1,) * len(urls), **kw)


def mesh(*clusters: ClusterConfig, **routes: Any) -> MeshConfig:
    byName = {c.name: c for c in clusters}
    byName.setdefault("peer", cluster("peer", "peer:8083"))
    byName.setdefault("local", cluster("local", "local:6060"))
    table: Dict[str, Any] = {
        "outbound": (Route("outbound-default", cluster="peer"),),
        "inbound": (Route("inbound-default", cluster="local"),),
    }
    table.update(routes)
    return MeshConfig(clusters=byName, routes=table)


class RuntimeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = FakeResolver()
        self.upstreams = Upstreams()
        self.upstreams.answer = lambda request: 200
        self.runtime = MeshRuntime(
            self.clock, random.Random(1), self.resolver, makeUpstream=self.upstreams.make
        )
        self.addCleanup(self.runtime.stop)

    def test_applyBuildsClustersAndRouters(self) -> None:
        config = mesh(cluster("api", "api1", "api2"))
        self.runtime.apply(config)
        self.assertIs(self.runtime.mesh, config)
        self.assertEqual(sorted(self.runtime.clusters), ["api", "local", "peer"])
        self.assertEqual(
            [e.key for e in self.runtime.clusters["api"].endpoints], ["api1:80", "api2:80"]
        )
        self.assertEqual(sorted(self.runtime.routers), ["inbound", "outbound"])
        for name, router in self.runtime.routers.items():
            self.assertIsInstance(router, Router)
            self.assertEqual(router.listener, name)
            self.assertIs(router.clusters, self.runtime.clusters)
        request = makeRequest(b"/")
        self.successResultOf(self.runtime.routers["outbound"].route(request))
        self.assertEqual((request.cluster, request.upstreamHost), ("peer", "peer:8083"))

    def test_fromSidecarConfig(self) -> None:
        self.runtime.apply(SidecarConfig().mesh())
        request = makeRequest(b"/", listener="inbound")
        self.successResultOf(self.runtime.routers["inbound"].route(request))
        self.assertEqual(request.upstreamHost, "127.0.0.1:6060")

    def test_keepsUnchangedReplacesChangedStopsRemoved(self) -> None:
        self.runtime.apply(mesh(cluster("a", "a1"), cluster("b", "b1"), cluster("c", "c1")))
        self.runtime.start()
        old = dict(self.runtime.clusters)
        oldRouters = dict(self.runtime.routers)
        self.runtime.apply(mesh(cluster("a", "a1"), cluster("b", "b1", "b2"), cluster("d", "d1")))
        new = self.runtime.clusters
        self.assertIs(new["a"], old["a"])
        self.assertIs(new["peer"], old["peer"])
        self.assertIsNot(new["b"], old["b"])
        self.assertEqual([e.key for e in new["b"].endpoints], ["b1:80", "b2:80"])
        self.assertNotIn("c", new)
        self.assertIn("d", new)
        # The kept cluster keeps its upstreams; the replaced and removed
        # ones close theirs.
        self.assertEqual(self.upstreams["a1"].closed, 0)
        self.assertEqual(old["b"].endpoints[0].upstream.closed, 1)
        self.assertEqual(self.upstreams["c1"].closed, 1)
        for listener in ("inbound", "outbound"):
            self.assertIsNot(self.runtime.routers[listener], oldRouters[listener])

    def test_newClustersStartedWhenRunning(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.runtime.apply(mesh())
        self.runtime.start()
        self.runtime.apply(mesh(ClusterConfig("api", dns=DnsDiscovery("api.internal", 80))))
        self.assertEqual([e.key for e in self.runtime.clusters["api"].endpoints], ["10.0.0.1:80"])

    def test_notStartedBeforeStart(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.runtime.apply(mesh(ClusterConfig("api", dns=DnsDiscovery("api.internal", 80))))
        self.assertEqual(self.resolver.calls, [])
        self.runtime.start()
        self.assertEqual(len(self.resolver.calls), 1)

    def test_retiredBeforeStartAreClosed(self) -> None:
        self.runtime.apply(mesh(cluster("a", "a1")))
        self.runtime.apply(mesh())
        self.assertEqual(self.upstreams["a1"].closed, 1)

    def test_stopStopsEverything(self) -> None:
        detection = OutlierDetection()
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.runtime.apply(
            mesh(
                cluster("a", "a1", outlierDetection=detection),
                ClusterConfig("api", dns=DnsDiscovery("api.internal", 80)),
            )
        )
        self.runtime.start()
        self.assertTrue(self.clock.getDelayedCalls())
        self.successResultOf(self.runtime.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual([u.closed for u in self.upstreams.made], [1] * len(self.upstreams.made))
        self.assertFalse(self.runtime.running)

    def test_inFlightRequestOnOldRouterCompletes(self) -> None:
        self.upstreams.answer = None
        self.runtime.apply(mesh(cluster("peer", "old-peer:8083")))
        self.runtime.start()
        router = self.runtime.routers["outbound"]
        request = makeRequest(b"/slow")
        d = router.route(request)
        self.assertNoResult(d)
        self.runtime.apply(mesh(cluster("peer", "new-peer:8083")))
        self.assertIsNot(self.runtime.routers["outbound"], router)
        # The old cluster is retired: its idle connections are closed, but
        # the request in flight is answered.
        old = self.upstreams["old-peer:8083"]
        self.assertEqual(old.closed, 1)
        old.sent[0].respond(200)
        self.assertEqual(self.successResultOf(d).code, 200)
        # New requests go to the new cluster.
        self.upstreams.answer = lambda request: 200
        self.upstreams["new-peer:8083"].answer = self.upstreams.answer
        later = makeRequest(b"/")
        self.successResultOf(self.runtime.routers["outbound"].route(later))
        self.assertEqual(later.upstreamHost, "new-peer:8083")

    def test_unknownClusterRefusedAndNothingChanged(self) -> None:
        self.runtime.apply(mesh(cluster("a", "a1")))
        before = (self.runtime.mesh, dict(self.runtime.clusters), dict(self.runtime.routers))
        made = len(self.upstreams.made)
        bad = mesh(cluster("b", "b1"), outbound=(Route("r", cluster="nope"),))
        self.assertRaises(ValueError, self.runtime.apply, bad)
        self.assertEqual((self.runtime.mesh, self.runtime.clusters, self.runtime.routers), before)
        self.assertEqual(len(self.upstreams.made), made)

    def test_failedBuildClosesWhatWasBuilt(self) -> None:
        self.runtime.apply(mesh())
        before = dict(self.runtime.clusters)

        def make(url: UpstreamURL, *args: Any) -> Any:
            if url.host == "boom":
                raise KeyError("no such scheme")
            return self.upstreams.make(url, *args)

        self.runtime._makeUpstream = make
        self.assertRaises(KeyError, self.runtime.apply, mesh(cluster("a", "a1"), cluster("z", "boom")))
        self.assertEqual(self.runtime.clusters, before)
        self.assertEqual(self.upstreams["a1"].closed, 1)

    def test_rateLimitsSurviveAReload(self) -> None:
        limit = RouteRateLimit(1.0, 1, RateLimitKey(header="x-user"))
        routes = (Route("limited", cluster="peer", rateLimit=limit),)
        self.runtime.apply(mesh(outbound=routes))

        def admitted() -> bool:
            d = self.runtime.routers["outbound"].route(makeRequest(headers=[(b"x-user", b"u")]))
            result: list = []
            d.addCallbacks(lambda _: result.append(True), lambda f: result.append(f.check(TooManyRequests) is None))
            return result[0]

        self.assertTrue(admitted())
        self.assertFalse(admitted())
        # Another cluster changes; the route and its limit do not.
        self.runtime.apply(mesh(cluster("x", "x1"), outbound=routes))
        self.assertFalse(admitted())
        # The limit changes: new buckets.
        changed = (Route("limited", cluster="peer", rateLimit=attrs.evolve(limit, burst=2)),)
        self.runtime.apply(mesh(outbound=changed))
        self.assertEqual([admitted(), admitted(), admitted()], [True, True, False])

    def test_routerWithoutRoutes(self) -> None:
        self.runtime.apply(mesh(inbound=()))
        from easymesh.errors import NoRoute

        self.failureResultOf(self.runtime.routers["inbound"].route(makeRequest()), NoRoute)

    def test_routesByMatch(self) -> None:
        routes = (
            Route("api", match=RouteMatch(prefix="/api"), cluster="api"),
            Route("rest", cluster="peer"),
        )
        self.runtime.apply(mesh(cluster("api", "api1"), outbound=routes))
        request = makeRequest(b"/api/x")
        self.successResultOf(self.runtime.routers["outbound"].route(request))
        self.assertEqual(request.upstreamHost, "api1:80")
