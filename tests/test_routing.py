"""
Tests for L{easymesh.routing.matcher}, L{easymesh.routing.router} (without
retries; see C{test_retry}) and L{easymesh.routing.ratelimit}.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from easymesh.cluster.cluster import Cluster
from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import (
    ClusterConfig,
    DirectResponse,
    HashOn,
    HeaderMatch,
    MeshConfig,
    PathOptions,
    RateLimitKey,
    RetryPolicy,
    Route,
    RouteMatch,
    RouteRateLimit,
)
from easymesh.errors import BadRequest, NoRoute, TooManyRequests, UpstreamTimeout
from easymesh.headers import HeaderPolicy
from easymesh.message import LocalReply, ProxyRequest
from easymesh.routing.matcher import RouteTable, requestHost
from easymesh.routing.ratelimit import KEY_DIGEST_SIZE, KeyedRateLimiter, sourceAddress
from easymesh.routing.router import Router
from tests.meshfakes import Upstreams, makeRequest


def hostHeaders(host: Optional[bytes], *pairs: Tuple[bytes, bytes]) -> Headers:
    headers = Headers()
    if host is not None:
        headers.setRawHeaders(b"host", [host])
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


def matches(match: RouteMatch, path: str = "/", method: bytes = b"GET", headers: Optional[Headers] = None) -> bool:
    table = RouteTable([Route("r", match=match, cluster="a")])
    if headers is None:
        headers = hostHeaders(b"svc")
    return table.match(method, path, headers) is not None


class MatcherTests(SynchronousTestCase):
    """
    L{RouteTable} on normalised paths.
    """

    def test_prefix(self) -> None:
        match = RouteMatch(prefix="/api/")
        self.assertTrue(matches(match, "/api/"))
        self.assertTrue(matches(match, "/api/users/1"))
        self.assertFalse(matches(match, "/api"))
        self.assertFalse(matches(match, "/apix"))
        self.assertFalse(matches(match, "/x/api/"))

    def test_prefixSlashMatchesEverything(self) -> None:
        self.assertTrue(matches(RouteMatch(prefix="/"), "/"))
        self.assertTrue(matches(RouteMatch(), "/anything/at/all"))

    def test_exactPath(self) -> None:
        match = RouteMatch(path="/exact")
        self.assertTrue(matches(match, "/exact"))
        self.assertFalse(matches(match, "/exact/"))
        self.assertFalse(matches(match, "/exactly"))
        self.assertFalse(matches(match, "/Exact"))

    def test_regexMatchesTheWholePath(self) -> None:
        match = RouteMatch(regex=r"/v[0-9]+/.*")
        self.assertTrue(matches(match, "/v2/users"))
        self.assertTrue(matches(match, "/v10/"))
        self.assertFalse(matches(match, "/xv2/users"))
        self.assertFalse(matches(match, "/v2"))
        self.assertFalse(matches(RouteMatch(regex="/a"), "/ab"))

    def test_hostExact(self) -> None:
        match = RouteMatch(host="api.example")
        self.assertTrue(matches(match, headers=hostHeaders(b"api.example")))
        self.assertTrue(matches(match, headers=hostHeaders(b"API.Example:8080")))
        self.assertFalse(matches(match, headers=hostHeaders(b"api.example.org")))
        self.assertFalse(matches(match, headers=hostHeaders(b"xapi.example")))
        self.assertFalse(matches(match, headers=hostHeaders(None)))

    def test_hostSuffix(self) -> None:
        match = RouteMatch(host="*.example.com")
        self.assertTrue(matches(match, headers=hostHeaders(b"a.example.com")))
        self.assertTrue(matches(match, headers=hostHeaders(b"x.y.example.com:443")))
        self.assertFalse(matches(match, headers=hostHeaders(b"example.com")))
        self.assertFalse(matches(match, headers=hostHeaders(b".example.com")))
        self.assertFalse(matches(match, headers=hostHeaders(b"aexample.com")))
        self.assertFalse(matches(match, headers=hostHeaders(b"a.example.com.evil")))

    def test_requestHost(self) -> None:
        self.assertEqual(requestHost(hostHeaders(b"Svc:80")), "svc")
        self.assertEqual(requestHost(hostHeaders(b"[::1]:8080")), "[::1]")
        self.assertEqual(requestHost(hostHeaders(b"[::1]")), "[::1]")
        self.assertEqual(requestHost(hostHeaders(None)), "")
        self.assertTrue(matches(RouteMatch(host="[::1]"), headers=hostHeaders(b"[::1]:8080")))

    def test_headerExact(self) -> None:
        match = RouteMatch(headers=(HeaderMatch("x-env", exact="prod"),))
        self.assertTrue(matches(match, headers=hostHeaders(b"s", (b"X-Env", b"prod"))))
        # Any one of repeated fields may match.
        self.assertTrue(matches(match, headers=hostHeaders(b"s", (b"x-env", b"dev"), (b"x-env", b"prod"))))
        self.assertFalse(matches(match, headers=hostHeaders(b"s", (b"x-env", b"production"))))
        self.assertFalse(matches(match, headers=hostHeaders(b"s", (b"x-env", b"Prod"))))
        self.assertFalse(matches(match, headers=hostHeaders(b"s")))

    def test_headerPrefix(self) -> None:
        match = RouteMatch(headers=(HeaderMatch("user-agent", prefix="curl/"),))
        self.assertTrue(matches(match, headers=hostHeaders(b"s", (b"user-agent", b"curl/8.0"))))
        self.assertFalse(matches(match, headers=hostHeaders(b"s", (b"user-agent", b"Mozilla curl/8"))))
        self.assertFalse(matches(match, headers=hostHeaders(b"s")))

    def test_headerRegex(self) -> None:
        match = RouteMatch(headers=(HeaderMatch("x-trace", regex="[0-9a-f]{4}"),))
        self.assertTrue(matches(match, headers=hostHeaders(b"s", (b"x-trace", b"beef"))))
        self.assertFalse(matches(match, headers=hostHeaders(b"s", (b"x-trace", b"beefy"))))
        self.assertFalse(matches(match, headers=hostHeaders(b"s", (b"x-trace", b"BEEF"))))

    def test_headerPresentAndAbsent(self) -> None:
        present = RouteMatch(headers=(HeaderMatch("x-debug", present=True),))
        absent = RouteMatch(headers=(HeaderMatch("x-debug", present=False),))
        withIt = hostHeaders(b"s", (b"X-Debug", b""))
        without = hostHeaders(b"s")
        self.assertTrue(matches(present, headers=withIt))
        self.assertFalse(matches(present, headers=without))
        self.assertFalse(matches(absent, headers=withIt))
        self.assertTrue(matches(absent, headers=without))

    def test_methods(self) -> None:
        match = RouteMatch(methods=("GET", "HEAD"))
        self.assertTrue(matches(match, method=b"GET"))
        self.assertTrue(matches(match, method=b"HEAD"))
        self.assertFalse(matches(match, method=b"POST"))
        # Methods are case-sensitive (RFC 9110 section 9.1).
        self.assertFalse(matches(match, method=b"get"))

    def test_everyConditionMustHold(self) -> None:
        match = RouteMatch(
            prefix="/api",
            host="api.example",
            methods=("POST",),
            headers=(HeaderMatch("x-a", exact="1"), HeaderMatch("x-b", present=False)),
        )
        good = hostHeaders(b"api.example", (b"x-a", b"1"))
        self.assertTrue(matches(match, "/api/x", b"POST", good))
        self.assertFalse(matches(match, "/other", b"POST", good))
        self.assertFalse(matches(match, "/api/x", b"GET", good))
        self.assertFalse(matches(match, "/api/x", b"POST", hostHeaders(b"web.example", (b"x-a", b"1"))))
        self.assertFalse(matches(match, "/api/x", b"POST", hostHeaders(b"api.example", (b"x-a", b"2"))))
        self.assertFalse(
            matches(match, "/api/x", b"POST", hostHeaders(b"api.example", (b"x-a", b"1"), (b"x-b", b"")))
        )

    def test_firstMatchWins(self) -> None:
        routes = [
            Route("admin", match=RouteMatch(prefix="/admin"), cluster="a"),
            Route("api", match=RouteMatch(prefix="/api"), cluster="a"),
            Route("api-v2", match=RouteMatch(prefix="/api/v2"), cluster="a"),
            Route("all", cluster="a"),
        ]
        table = RouteTable(routes)
        headers = hostHeaders(b"s")
        self.assertEqual(table.match(b"GET", "/api/v2/x", headers), routes[1])
        self.assertEqual(table.match(b"GET", "/admin", headers), routes[0])
        self.assertEqual(table.match(b"GET", "/x", headers), routes[3])

    def test_noMatch(self) -> None:
        table = RouteTable([Route("api", match=RouteMatch(prefix="/api"), cluster="a")])
        self.assertIsNone(table.match(b"GET", "/x", hostHeaders(b"s")))
        self.assertIsNone(RouteTable([]).match(b"GET", "/", hostHeaders(b"s")))


def cluster(name: str, *hosts: str, **kw: Any) -> ClusterConfig:
    urls = tuple(UpstreamURL.parse(f"http://{h}") for h in hosts)
    return ClusterConfig(name, endpoints=urls, weights=(1,) * len(urls), **kw)


class RouterCase(SynchronousTestCase):
    """
    A router over clusters of fake upstreams that answer 200 at once.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.upstreams = Upstreams()
        self.upstreams.answer = lambda request: 200
        self.random = random.Random(4)

    def router(
        self,
        routes: Sequence[Route],
        clusters: Sequence[ClusterConfig] = (),
        listener: str = "outbound",
        **meshArgs: Any,
    ) -> Router:
        configs = list(clusters) or [cluster("a", "a.internal:8080"), cluster("b", "b.internal:8080")]
        built: Dict[str, Cluster] = {
            c.name: Cluster(c, self.clock, self.random, makeUpstream=self.upstreams.make) for c in configs
        }
        mesh = MeshConfig(
            clusters={c.name: c for c in configs}, routes={listener: tuple(routes)}, **meshArgs
        )
        return Router(listener, mesh, built, self.clock, self.random)

    def sentTo(self, authority: str) -> List[bytes]:
        return [s.target for s in self.upstreams[authority].sent]


class RouterTests(RouterCase):
    def test_routesToTheMatchingCluster(self) -> None:
        router = self.router(
            [Route("api", match=RouteMatch(prefix="/api"), cluster="a"), Route("rest", cluster="b")]
        )
        request = makeRequest(b"/api/x?y=1")
        response = self.successResultOf(router.route(request))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.sentTo("a.internal:8080"), [b"/api/x?y=1"])
        self.assertEqual((request.route, request.cluster), ("api", "a"))
        self.assertEqual(request.upstreamHost, "a.internal:8080")
        self.assertEqual(request.attempts, 1)
        self.successResultOf(router.route(makeRequest(b"/other")))
        self.assertEqual(self.sentTo("b.internal:8080"), [b"/other"])

    def test_noRoute(self) -> None:
        router = self.router([Route("api", match=RouteMatch(prefix="/api"), cluster="a")])
        request = makeRequest(b"/nothing/here")
        failure = self.failureResultOf(router.route(request), NoRoute)
        reply = failure.value.reply()
        self.assertEqual((reply.code, reply.cause), (404, "no_route"))
        self.assertIsNone(request.route)
        self.assertEqual(self.upstreams.allSent(), [])

    def test_noRoutesAtAll(self) -> None:
        router = self.router([], listener="inbound")
        self.failureResultOf(router.route(makeRequest(b"/")), NoRoute)

    def test_normalisedPathMatchedTargetForwardedByteExact(self) -> None:
        """
        The normalised path is matched, but the request goes upstream with
        its target exactly as received.
        """
        router = self.router(
            [
                Route("admin", match=RouteMatch(prefix="/admin"), cluster="a"),
                Route("rest", cluster="b"),
            ]
        )
        for target in (b"/public/../admin/x", b"/%61dmin/x", b"/./admin/x?q=%2F..", b"/admin/%7euser"):
            request = makeRequest(target)
            self.successResultOf(router.route(request))
            self.assertEqual(request.route, "admin", target)
        self.assertEqual(
            self.sentTo("a.internal:8080"),
            [b"/public/../admin/x", b"/%61dmin/x", b"/./admin/x?q=%2F..", b"/admin/%7euser"],
        )
        self.assertEqual(self.upstreams.made[1].sent, [])

    def test_pathOptionsApply(self) -> None:
        router = self.router(
            [Route("admin", match=RouteMatch(prefix="/admin"), cluster="a"), Route("rest", cluster="b")],
            paths=PathOptions(mergeSlashes=True),
        )
        request = makeRequest(b"//admin//x")
        self.successResultOf(router.route(request))
        self.assertEqual(request.route, "admin")
        self.assertEqual(self.sentTo("a.internal:8080"), [b"//admin//x"])

    def test_escapedSlashRefused(self) -> None:
        router = self.router([Route("rest", cluster="b")])
        failure = self.failureResultOf(router.route(makeRequest(b"/a%2Fb")), BadRequest)
        self.assertEqual(failure.value.reply().code, 400)
        self.assertEqual(self.upstreams.allSent(), [])

    def test_prefixRewrite(self) -> None:
        router = self.router(
            [Route("api", match=RouteMatch(prefix="/api/"), cluster="a", prefixRewrite="/v2/")]
        )
        request = makeRequest(b"/api/users/1?x=%2F&y")
        self.successResultOf(router.route(request))
        self.assertEqual(self.sentTo("a.internal:8080"), [b"/v2/users/1?x=%2F&y"])

    def test_prefixRewriteToRoot(self) -> None:
        router = self.router(
            [Route("api", match=RouteMatch(prefix="/api/"), cluster="a", prefixRewrite="/")]
        )
        self.successResultOf(router.route(makeRequest(b"/api/users")))
        self.successResultOf(router.route(makeRequest(b"/api/")))
        self.assertEqual(self.sentTo("a.internal:8080"), [b"/users", b"/"])

    def test_prefixRewriteOfANormalisedPath(self) -> None:
        """
        A rewrite applies to the path that matched: a request that reaches
        the route only once normalised is forwarded rewritten, never with
        the matched prefix left in place.
        """
        router = self.router(
            [
                Route("api", match=RouteMatch(prefix="/api/"), cluster="a", prefixRewrite="/internal/api/"),
                Route("rest", cluster="b"),
            ]
        )
        for target in (b"/x/../api/users?q=1", b"/%61pi/users", b"/api/./users"):
            request = makeRequest(target)
            self.successResultOf(router.route(request))
            self.assertEqual(request.route, "api")
        self.assertEqual(
            self.sentTo("a.internal:8080"),
            [b"/internal/api/users?q=1", b"/internal/api/users", b"/internal/api/users"],
        )

    def test_prefixRewriteOfAnExactPath(self) -> None:
        router = self.router(
            [Route("old", match=RouteMatch(path="/old"), cluster="a", prefixRewrite="/new")]
        )
        self.successResultOf(router.route(makeRequest(b"/old?x=1")))
        self.successResultOf(router.route(makeRequest(b"/old")))
        self.assertEqual(self.sentTo("a.internal:8080"), [b"/new?x=1", b"/new"])

    def test_hostRewrite(self) -> None:
        router = self.router([Route("r", cluster="a", hostRewrite="api.internal:9000")])
        request = makeRequest(b"/x", host=b"public.example")
        self.successResultOf(router.route(request))
        sent = self.upstreams["a.internal:8080"].sent[0]
        self.assertEqual(sent.host, b"api.internal:9000")
        self.assertEqual(request.headers.getRawHeaders(b"host"), [b"api.internal:9000"])

    def test_noRewriteLeavesHost(self) -> None:
        router = self.router([Route("r", cluster="a")])
        self.successResultOf(router.route(makeRequest(b"/x", host=b"public.example")))
        self.assertEqual(self.upstreams["a.internal:8080"].sent[0].host, b"public.example")

    def test_directResponse(self) -> None:
        router = self.router(
            [
                Route("gone", match=RouteMatch(prefix="/old"), directResponse=DirectResponse(410, b"gone\n")),
                Route("empty", match=RouteMatch(prefix="/empty"), directResponse=DirectResponse(204)),
            ]
        )
        request = makeRequest(b"/old/page")
        reply = self.successResultOf(router.route(request))
        self.assertIsInstance(reply, LocalReply)
        self.assertEqual((reply.code, reply.body), (410, b"gone\n"))
        self.assertEqual(reply.headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])
        self.assertEqual(request.route, "gone")
        self.assertIsNone(request.cluster)
        empty = self.successResultOf(router.route(makeRequest(b"/empty")))
        self.assertEqual((empty.code, empty.body), (204, b""))
        self.assertFalse(empty.headers.hasHeader(b"content-type"))
        self.assertEqual(self.upstreams.allSent(), [])

    def test_weightedClusters(self) -> None:
        configs = [cluster(n, f"{n}.internal:80") for n in ("a", "b", "c", "d")]
        router = self.router(
            [Route("split", weightedClusters=(("a", 70), ("b", 20), ("c", 10), ("d", 0)))], configs
        )
        counts: Dict[str, int] = {}
        for _ in range(10000):
            request = makeRequest(b"/")
            self.successResultOf(router.route(request))
            assert request.cluster is not None
            counts[request.cluster] = counts.get(request.cluster, 0) + 1
        self.assertNotIn("d", counts)
        self.assertEqual(sum(counts.values()), 10000)
        for name, share in (("a", 0.7), ("b", 0.2), ("c", 0.1)):
            self.assertLess(abs(counts[name] / 10000 - share), 0.02, counts)

    def test_perTryTimeoutWithoutRetries(self) -> None:
        router = self.router([Route("r", cluster="a", retryPolicy=RetryPolicy(numRetries=0, perTryTimeout=0.5))])
        self.successResultOf(router.route(makeRequest(b"/")))
        self.assertEqual(self.upstreams["a.internal:8080"].sent[0].timeout, 0.5)

    def test_clusterTimeoutByDefault(self) -> None:
        router = self.router([Route("r", cluster="a")])
        self.successResultOf(router.route(makeRequest(b"/")))
        self.assertIsNone(self.upstreams["a.internal:8080"].sent[0].timeout)

    def test_ringHashByHeader(self) -> None:
        config = cluster(
            "h", "h1:80", "h2:80", "h3:80", "h4:80", lbPolicy="ring_hash", hashOn=HashOn(header="x-user")
        )
        router = self.router([Route("r", cluster="h")], [config])
        chosen: Dict[bytes, set] = {}
        for i in range(60):
            user = b"user-%d" % (i % 6,)
            request = makeRequest(b"/", headers=[(b"x-user", user)])
            self.successResultOf(router.route(request))
            chosen.setdefault(user, set()).add(request.upstreamHost)
        self.assertTrue(all(len(hosts) == 1 for hosts in chosen.values()), chosen)
        self.assertGreater(len(set().union(*chosen.values())), 1)

    def test_ringHashByCookie(self) -> None:
        config = cluster(
            "h", "h1:80", "h2:80", "h3:80", "h4:80", lbPolicy="ring_hash", hashOn=HashOn(cookie="sid")
        )
        router = self.router([Route("r", cluster="h")], [config])
        hosts = set()
        for i in range(10):
            cookie = b"theme=dark; sid=abc; other=%d" % (i,)
            request = makeRequest(b"/", headers=[(b"cookie", cookie)])
            self.successResultOf(router.route(request))
            hosts.add(request.upstreamHost)
        self.assertEqual(len(hosts), 1)


class RouteTimeoutTests(RouterCase):
    def setUp(self) -> None:
        super().setUp()
        self.upstreams.answer = None

    def test_timeout(self) -> None:
        router = self.router([Route("r", cluster="a", timeout=2.0)])
        d = router.route(makeRequest(b"/slow"))
        self.assertNoResult(d)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        failure = self.failureResultOf(d, UpstreamTimeout)
        self.assertEqual(failure.value.reply().code, 504)
        sent = self.upstreams["a.internal:8080"].sent[0]
        self.assertTrue(sent.cancelled)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answeredInTime(self) -> None:
        router = self.router([Route("r", cluster="a", timeout=2.0)])
        d = router.route(makeRequest(b"/"))
        self.clock.advance(1.5)
        self.upstreams["a.internal:8080"].sent[0].respond(201)
        self.assertEqual(self.successResultOf(d).code, 201)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failureInTimeIsKept(self) -> None:
        from easymesh.errors import UpstreamReset

        router = self.router([Route("r", cluster="a", timeout=2.0)])
        d = router.route(makeRequest(b"/"))
        self.upstreams["a.internal:8080"].sent[0].fail(UpstreamReset())
        self.failureResultOf(d, UpstreamReset)

    def test_noRouteTimeout(self) -> None:
        router = self.router([Route("r", cluster="a")])
        d = router.route(makeRequest(b"/"))
        self.clock.advance(3600)
        self.assertNoResult(d)


def prepared(
    client: str, forwardedFor: Optional[bytes] = None, host: bytes = b"svc", listener: str = "inbound"
) -> ProxyRequest:
    """
    A request as the router sees it: its headers prepared by the listener
    (the peer appended to X-Forwarded-For).
    """
    request = makeRequest(b"/", host=host, clientAddress=client, listener=listener)
    if forwardedFor is not None:
        request.headers.setRawHeaders(b"x-forwarded-for", [forwardedFor])
    HeaderPolicy("node", listener).prepareRequest(request.headers, client, b"http", b"1.1")
    return request


class SourceAddressTests(SynchronousTestCase):
    def test_noTrustedHops(self) -> None:
        self.assertEqual(sourceAddress(prepared("10.0.0.1"), 0), "10.0.0.1")
        # What the client claims is ignored.
        self.assertEqual(sourceAddress(prepared("10.0.0.1", b"1.2.3.4"), 0), "10.0.0.1")

    def test_oneTrustedHop(self) -> None:
        # A trusted proxy (10.0.0.2) appended the client it saw (9.9.9.9).
        request = prepared("10.0.0.2", b"9.9.9.9")
        self.assertEqual(sourceAddress(request, 1), "9.9.9.9")

    def test_oneTrustedHopSpoofed(self) -> None:
        # The client sent its own X-Forwarded-For to the trusted proxy; only
        # what the proxy appended counts.
        request = prepared("10.0.0.2", b"1.1.1.1, 2.2.2.2, 9.9.9.9")
        self.assertEqual(sourceAddress(request, 1), "9.9.9.9")
        # Repeated fields are one list: the proxy appended to the last.
        request = makeRequest(b"/", clientAddress="10.0.0.2")
        request.headers.addRawHeader(b"x-forwarded-for", b"1.1.1.1")
        request.headers.addRawHeader(b"x-forwarded-for", b"3.3.3.3")
        HeaderPolicy("node", "inbound").prepareRequest(request.headers, "10.0.0.2", b"http", b"1.1")
        self.assertEqual(sourceAddress(request, 1), "3.3.3.3")

    def test_oneTrustedHopButNoProxy(self) -> None:
        self.assertEqual(sourceAddress(prepared("10.0.0.1"), 1), "10.0.0.1")

    def test_twoTrustedHops(self) -> None:
        request = prepared("10.0.0.3", b"6.6.6.6, 9.9.9.9, 10.0.0.2")
        self.assertEqual(sourceAddress(request, 2), "9.9.9.9")
        self.assertEqual(sourceAddress(prepared("10.0.0.3", b"10.0.0.2"), 2), "10.0.0.3")


class RateLimitTests(RouterCase):
    def limited(self, key: Optional[RateLimitKey], rate: float = 1.0, burst: int = 2, maxKeys: int = 10000, **mesh: Any) -> Router:
        return self.router(
            [Route("limited", cluster="a", rateLimit=RouteRateLimit(rate, burst, key, maxKeys))],
            listener="inbound",
            **mesh,
        )

    def admitted(self, router: Router, request: ProxyRequest) -> bool:
        results: List[bool] = []

        def refused(failure: Any) -> None:
            failure.trap(TooManyRequests)
            results.append(False)

        router.route(request).addCallbacks(lambda _: results.append(True), refused)
        self.assertEqual(len(results), 1)
        return results[0]

    def test_oneBucketWithoutKey(self) -> None:
        router = self.limited(None)
        self.assertEqual(
            [self.admitted(router, makeRequest(clientAddress=f"10.0.0.{i}")) for i in range(4)],
            [True, True, False, False],
        )
        self.clock.advance(1)
        self.assertTrue(self.admitted(router, makeRequest()))
        self.assertFalse(self.admitted(router, makeRequest()))

    def test_refusalIs429WithRetryAfter(self) -> None:
        router = self.limited(None, rate=0.1, burst=1)
        self.assertTrue(self.admitted(router, makeRequest()))
        failure = self.failureResultOf(router.route(makeRequest()), TooManyRequests)
        reply = failure.value.reply()
        self.assertEqual((reply.code, reply.cause), (429, "rate_limited"))
        self.assertEqual(reply.headers.getRawHeaders(b"retry-after"), [b"10"])
        self.clock.advance(9.5)
        failure = self.failureResultOf(router.route(makeRequest()), TooManyRequests)
        self.assertEqual(failure.value.reply().headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertEqual(len(self.upstreams.allSent()), 1)

    def test_byHeader(self) -> None:
        router = self.limited(RateLimitKey(header="x-user"))

        def user(name: Optional[bytes]) -> ProxyRequest:
            return makeRequest(headers=[(b"X-User", name)] if name is not None else [])

        self.assertEqual([self.admitted(router, user(b"alice")) for _ in range(3)], [True, True, False])
        self.assertEqual([self.admitted(router, user(b"bob")) for _ in range(3)], [True, True, False])
        # Without the header: one shared bucket.
        self.assertEqual([self.admitted(router, user(None)) for _ in range(3)], [True, True, False])
        self.clock.advance(1)
        self.assertTrue(self.admitted(router, user(b"alice")))
        self.assertFalse(self.admitted(router, user(b"alice")))

    def test_bySourceIp(self) -> None:
        router = self.limited(RateLimitKey(sourceIp=True))
        self.assertEqual(
            [self.admitted(router, prepared("10.0.0.1", b"%d.0.0.1" % (i,))) for i in range(3)],
            [True, True, False],
        )
        self.assertTrue(self.admitted(router, prepared("10.0.0.2")))

    def test_bySourceIpBehindATrustedProxy(self) -> None:
        router = self.limited(RateLimitKey(sourceIp=True), xffNumTrustedHops=1)
        # Two clients behind one proxy (10.0.0.2) have a bucket each.
        self.assertEqual(
            [self.admitted(router, prepared("10.0.0.2", b"9.9.9.9")) for _ in range(3)],
            [True, True, False],
        )
        self.assertTrue(self.admitted(router, prepared("10.0.0.2", b"8.8.8.8")))
        # A client cannot get a fresh bucket by claiming other addresses.
        for spoof in (b"1.1.1.1, 9.9.9.9", b"2.2.2.2,9.9.9.9", b"unknown, 9.9.9.9"):
            self.assertFalse(self.admitted(router, prepared("10.0.0.2", spoof)))

    def test_spoofedForwardedForWithoutTrustedHops(self) -> None:
        router = self.limited(RateLimitKey(sourceIp=True))
        results = [
            self.admitted(router, prepared("10.0.0.1", b"%d.%d.%d.%d" % (i, i, i, i))) for i in range(1, 5)
        ]
        self.assertEqual(results, [True, True, False, False])

    def test_byIdentity(self) -> None:
        router = self.limited(RateLimitKey(identity=True), burst=1)
        a = "spiffe://mesh/ns/default/sa/a"
        b = "spiffe://mesh/ns/default/sa/b"
        self.assertTrue(self.admitted(router, makeRequest(peerIdentity=a)))
        self.assertFalse(self.admitted(router, makeRequest(peerIdentity=a)))
        self.assertTrue(self.admitted(router, makeRequest(peerIdentity=b)))
        # Callers without an identity share one bucket.
        self.assertTrue(self.admitted(router, makeRequest()))
        self.assertFalse(self.admitted(router, makeRequest()))

    def test_rateLimitBeforeDirectResponse(self) -> None:
        router = self.router(
            [Route("d", directResponse=DirectResponse(200, b"ok"), rateLimit=RouteRateLimit(1, 1))]
        )
        self.assertEqual(self.successResultOf(router.route(makeRequest())).code, 200)
        self.failureResultOf(router.route(makeRequest()), TooManyRequests)

    def test_limitsArePerRoute(self) -> None:
        limit = RouteRateLimit(1, 1)
        router = self.router(
            [
                Route("one", match=RouteMatch(prefix="/one"), cluster="a", rateLimit=limit),
                Route("two", match=RouteMatch(prefix="/two"), cluster="a", rateLimit=limit),
                Route("free", cluster="a"),
            ]
        )
        self.successResultOf(router.route(makeRequest(b"/one")))
        self.failureResultOf(router.route(makeRequest(b"/one")), TooManyRequests)
        self.successResultOf(router.route(makeRequest(b"/two")))
        for _ in range(5):
            self.successResultOf(router.route(makeRequest(b"/free")))


class KeyedRateLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_leastRecentlyUsedDropped(self) -> None:
        limiter = KeyedRateLimiter(
            RouteRateLimit(1.0, 1, RateLimitKey(header="x-k"), maxKeys=2), self.clock
        )

        def check(key: bytes) -> bool:
            return limiter.check(makeRequest(headers=[(b"x-k", key)])) is None

        self.assertTrue(check(b"a"))
        self.assertTrue(check(b"b"))
        self.assertFalse(check(b"a"))  # a is now the most recently used
        self.assertTrue(check(b"c"))  # b is dropped
        self.assertEqual(len(limiter), 2)
        self.assertFalse(check(b"a"))  # a kept its empty bucket
        self.assertTrue(check(b"b"))  # b starts afresh; c is dropped
        self.assertTrue(check(b"c"))
        self.assertEqual(len(limiter), 2)

    def test_capHolds(self) -> None:
        limiter = KeyedRateLimiter(
            RouteRateLimit(1.0, 1, RateLimitKey(header="x-k"), maxKeys=100), self.clock
        )
        for i in range(1000):
            self.assertIsNone(limiter.check(makeRequest(headers=[(b"x-k", b"%d" % (i,))])))
        self.assertEqual(len(limiter), 100)

    def test_waitReported(self) -> None:
        limiter = KeyedRateLimiter(RouteRateLimit(2.0, 1), self.clock)
        self.assertIsNone(limiter.check(makeRequest()))
        refused = limiter.check(makeRequest())
        assert refused is not None
        self.assertAlmostEqual(refused.retryAfter, 0.5)

    def test_keyOf(self) -> None:
        def keyOf(key: Optional[RateLimitKey], request: ProxyRequest, hops: int = 0) -> str:
            return KeyedRateLimiter(RouteRateLimit(1, 1, key), self.clock, hops).keyOf(request)

        self.assertEqual(keyOf(None, makeRequest()), "")
        self.assertEqual(keyOf(RateLimitKey(header="x-k"), makeRequest(headers=[(b"X-K", b"v1"), (b"x-k", b"v2")])), "v1")
        self.assertEqual(keyOf(RateLimitKey(sourceIp=True), makeRequest(clientAddress="10.1.1.1")), "10.1.1.1")
        self.assertEqual(keyOf(RateLimitKey(identity=True), makeRequest(peerIdentity="id")), "id")
        self.assertEqual(keyOf(RateLimitKey(identity=True), makeRequest()), "")


class ChainedTimeoutTests(RouterCase):
    def test_timeoutWhileChained(self) -> None:
        """
        The route timeout holds when the upstream's L{Deferred} has been
        called already but waits on another (a pooled connection was ready
        at once; the response is still to come).
        """
        from twisted.internet.defer import Deferred, succeed

        inner: Deferred[Any] = Deferred()
        cancelled: List[bool] = []
        inner.addErrback(lambda f: cancelled.append(True) or f)
        router = self.router([Route("r", cluster="a", timeout=2.0)])
        upstream = self.upstreams["a.internal:8080"]
        upstream.request = lambda request, timeout=None: succeed(None).addCallback(lambda _: inner)  # type: ignore[assignment]
        d = router.route(makeRequest(b"/"))
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.failureResultOf(d, UpstreamTimeout)
        self.assertEqual(cancelled, [True])


class RateLimitKeyMemoryTests(SynchronousTestCase):
    """
    What a keyed rate limit keeps does not grow with the size of the keys
    clients send.
    """

    def test_bucketsKeptUnderFixedSizeDigest(self) -> None:
        limiter = KeyedRateLimiter(
            RouteRateLimit(1.0, 1, RateLimitKey(header="x-k"), maxKeys=100), Clock()
        )
        for i in range(50):
            value = b"%d-" % (i,) + b"k" * 60000
            self.assertIsNone(limiter.check(makeRequest(headers=[(b"x-k", value)])))
        keys = limiter.keys()
        self.assertEqual(len(keys), 50)
        self.assertEqual({len(k) for k in keys}, {KEY_DIGEST_SIZE})

    def test_longKeysStayDistinct(self) -> None:
        limiter = KeyedRateLimiter(RouteRateLimit(1.0, 1, RateLimitKey(header="x-k")), Clock())
        long = b"k" * 60000
        self.assertIsNone(limiter.check(makeRequest(headers=[(b"x-k", long + b"a")])))
        self.assertIsNone(limiter.check(makeRequest(headers=[(b"x-k", long + b"b")])))
        self.assertIsNotNone(limiter.check(makeRequest(headers=[(b"x-k", long + b"a")])))

    def test_memoryBoundedByCount(self) -> None:
        """
        A thousand 60 KB keys cost what a thousand short ones do, about a
        kilobyte each, not the 60 MB of their values.
        """
        import tracemalloc

        limiter = KeyedRateLimiter(
            RouteRateLimit(1.0, 1, RateLimitKey(header="x-k"), maxKeys=1000), Clock()
        )
        requests = [makeRequest(headers=[(b"x-k", b"%d-" % (i,) + b"k" * 60000)]) for i in range(1000)]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for request in requests:
                limiter.check(request)
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual(len(limiter), 1000)
        self.assertLess(kept, 2_000_000)
