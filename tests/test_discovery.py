"""
Tests for L{easymesh.cluster.discovery}: endpoints found by DNS, through a
fake host name resolver, under a fake clock.
"""

from __future__ import annotations

import random
from typing import Any, List

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from easymesh.cluster.cluster import Cluster
from easymesh.cluster.discovery import RESOLVE_TIMEOUT, DnsHosts, Hosts
from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import ClusterConfig, DnsDiscovery
from tests.meshfakes import FakeResolver, Upstreams, logged, makeRequest


def hosts(*addresses: str, port: int = 9000, scheme: str = "http") -> List[Any]:
    return [(UpstreamURL(scheme, a, port), 1) for a in addresses]


class DnsHostsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = FakeResolver()
        self.updates: List[Hosts] = []
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def dns(self, refresh: float = 5.0, scheme: str = "http") -> DnsHosts:
        discovery = DnsHosts(
            DnsDiscovery("api.internal", 9000, refresh, scheme),
            self.resolver,
            self.clock,
            self.updates.append,
            "api",
        )
        self.addCleanup(discovery.stop)
        return discovery

    def warnings(self) -> List[dict]:
        return logged(self.events, "easymesh.cluster.discovery", "failed")

    def test_resolvesAtStart(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.2", "10.0.0.1"]
        self.dns().start()
        self.assertEqual(self.resolver.calls, [("api.internal", 9000, "TCP")])
        self.assertEqual(self.updates, [hosts("10.0.0.1", "10.0.0.2")])

    def test_refreshInterval(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.dns(refresh=30.0).start()
        self.clock.advance(29.9)
        self.assertEqual(len(self.resolver.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.resolver.calls), 2)
        self.clock.pump([30.0] * 5)
        self.assertEqual(len(self.resolver.calls), 7)
        # Unchanged: reported once only.
        self.assertEqual(self.updates, [hosts("10.0.0.1")])

    def test_changes(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.dns().start()
        self.resolver.answers["api.internal"] = ["10.0.0.1", "10.0.0.3"]
        self.clock.advance(5)
        self.resolver.answers["api.internal"] = ["10.0.0.3"]
        self.clock.advance(5)
        self.assertEqual(
            self.updates, [hosts("10.0.0.1"), hosts("10.0.0.1", "10.0.0.3"), hosts("10.0.0.3")]
        )

    def test_orderAndDuplicatesDoNotMatter(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.2", "10.0.0.1", "10.0.0.2"]
        self.dns().start()
        self.resolver.answers["api.internal"] = ["10.0.0.1", "10.0.0.2"]
        self.clock.advance(5)
        self.assertEqual(self.updates, [hosts("10.0.0.1", "10.0.0.2")])

    def test_ipv6AndScheme(self) -> None:
        self.resolver.answers["api.internal"] = ["fd00::1", "10.0.0.1"]
        self.dns(scheme="https").start()
        (update,) = self.updates
        self.assertEqual(update, hosts("10.0.0.1", "fd00::1", scheme="https"))
        self.assertIn("https://[fd00::1]:9000", [str(url) for url, _ in update])

    def test_emptyKeepsTheLastGoodSet(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.dns().start()
        self.resolver.answers["api.internal"] = []
        self.clock.pump([5.0] * 4)
        self.assertEqual(self.updates, [hosts("10.0.0.1")])
        (warning,) = self.warnings()
        self.assertEqual(warning["reason"], "no addresses")
        self.assertEqual(warning["count"], 1)
        self.assertEqual(warning["cluster"], "api")

    def test_recoveryLoggedAndFailureLoggedAgain(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.dns().start()
        self.resolver.answers["api.internal"] = ValueError("SERVFAIL")
        self.clock.pump([5.0] * 3)
        self.assertEqual(len(self.warnings()), 1)
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.clock.advance(5)
        self.assertEqual(len(logged(self.events, "easymesh.cluster.discovery", "resolves again")), 1)
        # The same set as before the failure: nothing to report.
        self.assertEqual(self.updates, [hosts("10.0.0.1")])
        self.resolver.answers["api.internal"] = []
        self.clock.advance(5)
        self.assertEqual(len(self.warnings()), 2)

    def test_failureBeforeAnySet(self) -> None:
        self.dns().start()
        self.clock.pump([5.0] * 2)
        self.assertEqual(self.updates, [])
        (warning,) = self.warnings()
        self.assertEqual(warning["count"], 0)
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.clock.advance(5)
        self.assertEqual(self.updates, [hosts("10.0.0.1")])

    def test_resolverRaising(self) -> None:
        """
        A resolver that raises is a failed refresh; refreshing goes on.
        """
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.dns().start()
        self.resolver.raiseError = RuntimeError("resolver bug")
        self.clock.pump([5.0] * 2)
        self.assertEqual(len(self.warnings()), 1)
        self.resolver.raiseError = None
        self.resolver.answers["api.internal"] = ["10.0.0.2"]
        self.clock.advance(5)
        self.assertEqual(self.updates, [hosts("10.0.0.1"), hosts("10.0.0.2")])

    def test_updateRaising(self) -> None:
        calls = []

        def update(found: Hosts) -> None:
            calls.append(found)
            raise RuntimeError("update bug")

        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        discovery = DnsHosts(DnsDiscovery("api.internal", 9000, 5.0), self.resolver, self.clock, update, "api")
        self.addCleanup(discovery.stop)
        discovery.start()
        self.flushLoggedErrors(RuntimeError)
        self.resolver.answers["api.internal"] = ["10.0.0.2"]
        self.clock.advance(5)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(calls, [hosts("10.0.0.1"), hosts("10.0.0.2")])

    def test_slowResolutionNotDoubled(self) -> None:
        """
        While a resolution is under way, no other starts.
        """
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.resolver.hold = True
        self.dns().start()
        self.clock.advance(4.9)
        self.assertEqual(len(self.resolver.calls), 1)
        self.resolver.release()
        self.assertEqual(self.updates, [hosts("10.0.0.1")])
        self.clock.advance(5)
        self.assertEqual(len(self.resolver.calls), 2)

    def test_resolutionWithoutAnswerGivenUp(self) -> None:
        """
        A resolution with no answer within the timeout (the refresh period,
        at least L{RESOLVE_TIMEOUT}) counts as failed, once: refreshing goes
        on, the last good set stays, and a late answer is dropped.
        """
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        discovery = self.dns()
        discovery.start()
        self.assertEqual(self.updates, [hosts("10.0.0.1")])
        self.resolver.hold = True
        self.resolver.answers["api.internal"] = ["10.0.0.2"]
        self.clock.advance(5)
        self.assertEqual(len(self.resolver.calls), 2)
        self.clock.advance(RESOLVE_TIMEOUT)
        self.assertEqual(len(self.resolver.calls), 2)
        warnings = [e for e in self.events if "keeping the last" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertIn("no answer for api.internal within 5s", warnings[0]["reason"])
        self.clock.advance(5)
        self.assertEqual(len(self.resolver.calls), 3)
        self.resolver.release()
        self.assertEqual(self.updates, [hosts("10.0.0.1"), hosts("10.0.0.2")])
        discovery.stop()

    def test_stop(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        discovery = self.dns()
        discovery.start()
        discovery.stop()
        self.clock.pump([5.0] * 3)
        self.assertEqual(len(self.resolver.calls), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_resultAfterStopIgnored(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.resolver.hold = True
        discovery = self.dns()
        discovery.start()
        discovery.stop()
        self.resolver.release()
        self.assertEqual(self.updates, [])


class DnsClusterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = FakeResolver()
        self.upstreams = Upstreams()
        self.upstreams.answer = lambda request: 200
        config = ClusterConfig("api", dns=DnsDiscovery("api.internal", 9000, 5.0))
        self.cluster = Cluster(
            config, self.clock, random.Random(1), self.resolver, makeUpstream=self.upstreams.make
        )
        self.addCleanup(self.cluster.stop)

    def test_endpointsAppearAndChange(self) -> None:
        self.assertEqual(self.cluster.endpoints, [])
        self.resolver.answers["api.internal"] = ["10.0.0.1", "10.0.0.2"]
        self.cluster.start()
        self.assertEqual([e.key for e in self.cluster.endpoints], ["10.0.0.1:9000", "10.0.0.2:9000"])
        first = self.cluster.endpoints[1]
        self.resolver.answers["api.internal"] = ["10.0.0.2", "10.0.0.3"]
        self.clock.advance(5)
        self.assertEqual([e.key for e in self.cluster.endpoints], ["10.0.0.2:9000", "10.0.0.3:9000"])
        self.assertIs(self.cluster.endpoints[0], first)
        self.assertEqual([u.closed for u in self.upstreams.made], [1, 0, 0])
        request = makeRequest()
        self.successResultOf(self.cluster.request(request))
        self.assertIn(request.upstreamHost, ("10.0.0.2:9000", "10.0.0.3:9000"))

    def test_failedRefreshKeepsEndpoints(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.cluster.start()
        (endpoint,) = self.cluster.endpoints
        del self.resolver.answers["api.internal"]
        self.clock.pump([5.0] * 3)
        self.assertEqual(self.cluster.endpoints, [endpoint])
        self.assertEqual(self.upstreams.made[0].closed, 0)

    def test_defaultResolverIsTheReactors(self) -> None:
        self.clock.nameResolver = self.resolver  # type: ignore[attr-defined]
        self.resolver.answers["web.internal"] = ["10.0.0.9"]
        cluster = Cluster(
            ClusterConfig("web", dns=DnsDiscovery("web.internal", 80)),
            self.clock,
            makeUpstream=self.upstreams.make,
        )
        cluster.start()
        self.addCleanup(cluster.stop)
        self.assertEqual([e.key for e in cluster.endpoints], ["10.0.0.9:80"])

    def test_stoppedClusterTakesNoNewEndpoints(self) -> None:
        self.resolver.answers["api.internal"] = ["10.0.0.1"]
        self.resolver.hold = True
        self.cluster.start()
        self.cluster.stop()
        self.resolver.release()
        self.assertEqual(self.cluster.endpoints, [])
        self.assertEqual(self.upstreams.made, [])
