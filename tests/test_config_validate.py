"""
Tests for L{easymesh.config.validate}: the rules of a L{MeshConfig} built
in code (no config file), and L{MeshRuntime.apply} refusing one that
breaks them.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, Tuple

import attrs
import pytest
from twisted.internet.task import Clock

from easymesh.authz import AuthorizationPolicy, AuthorizationRule
from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import (
    Backoff,
    CircuitBreakers,
    ClusterConfig,
    DirectResponse,
    DnsDiscovery,
    HashOn,
    HeaderMatch,
    HealthCheck,
    MeshConfig,
    OutlierDetection,
    PathOptions,
    RateLimitKey,
    RetryBudget,
    RetryPolicy,
    Route,
    RouteMatch,
    RouteRateLimit,
)
from easymesh.config.model import ConfigError, SidecarConfig
from easymesh.config.validate import InvalidConfig, Problem, validateMesh
from easymesh.runtime import MeshRuntime
from tests.meshfakes import Upstreams


def urls(*hosts: str) -> Tuple[UpstreamURL, ...]:
    return tuple(UpstreamURL.parse(f"http://{h}") for h in hosts)


def cluster(name: str, **kw: Any) -> ClusterConfig:
    kw.setdefault("endpoints", urls(f"{name}:8080"))
    kw.setdefault("weights", (1,) * len(kw["endpoints"]))
    return ClusterConfig(name, **kw)


def mesh(*routes: Route, **kw: Any) -> MeshConfig:
    """
    A valid mesh with clusters C{backend}, C{peer} and C{local}, and
    C{routes} (or one default route) on the outbound listener.
    """
    clusters = {c.name: c for c in (cluster("backend"), cluster("peer"), cluster("local"))}
    clusters.update(kw.pop("clusters", {}))
    table = {
        "outbound": routes or (Route("outbound-default", cluster="peer"),),
        "inbound": (Route("inbound-default", cluster="local"),),
    }
    return MeshConfig(clusters=clusters, routes=table, **kw)


def withCluster(**kw: Any) -> MeshConfig:
    return mesh(clusters={"backend": cluster("backend", **kw)})


def withRoute(**kw: Any) -> MeshConfig:
    kw.setdefault("cluster", "backend")
    return mesh(Route("r", **kw))


def withMatch(**kw: Any) -> MeshConfig:
    return withRoute(match=RouteMatch(**kw))


def problems(config: MeshConfig) -> Dict[Tuple[Any, ...], str]:
    return {p.path: p.reason for p in validateMesh(config)}


EVERYTHING = mesh(
    Route(
        "api",
        match=RouteMatch(
            prefix="/api/",
            host="*.example.com",
            headers=(
                HeaderMatch("x-env", exact="prod"),
                HeaderMatch("x-canary", prefix="yes"),
                HeaderMatch("x-trace", regex="[0-9a-f]+"),
                HeaderMatch("x-debug", present=True),
                HeaderMatch("x-empty", exact=""),
            ),
            methods=("GET", "POST"),
        ),
        cluster="backend",
        prefixRewrite="/v2/",
        hostRewrite="api.internal:8443",
        timeout=3.0,
        retryPolicy=RetryPolicy(
            retryOn=("5xx", "reset"),
            retryStatuses=(429,),
            numRetries=0,
            perTryTimeout=0.5,
            backoff=Backoff(0.1, 0.1),
            budget=RetryBudget(100, 0),
        ),
        rateLimit=RouteRateLimit(2.5, 3, RateLimitKey(header="x-user"), maxKeys=1_000_000),
    ),
    Route("split", weightedClusters=(("backend", 0), ("peer", 1))),
    Route("teapot", match=RouteMatch(path="/tea"), directResponse=DirectResponse(418, b"short")),
    Route("empty", match=RouteMatch(regex="/e.*"), directResponse=DirectResponse(204)),
    clusters={
        "backend": cluster(
            "backend",
            endpoints=urls("a:1", "b:2"),
            weights=(1, 3),
            lbPolicy="ring_hash",
            hashOn=HashOn(cookie="session"),
            circuitBreakers=CircuitBreakers(1, 0, 1, 0),
            outlierDetection=OutlierDetection(0, 0, 1.0, 1.0, 0),
            healthCheck=HealthCheck("/ready", host="web.internal"),
            tlsIdentities=("spiffe://example.org/ns/prod/*",),
        ),
        "dns": ClusterConfig("dns", dns=DnsDiscovery("api.internal", 65535, scheme="https")),
    },
    paths=PathOptions(normalize=False, mergeSlashes=True, escapedSlashes="keep"),
    xffNumTrustedHops=2,
    retryBufferLimit=0,
    authorization={
        "inbound": AuthorizationPolicy(
            (AuthorizationRule(RouteMatch(prefix="/admin/"), ("spiffe://example.org/ns/ops/*",)),)
        )
    },
)


class TestValid:
    def test_everything(self) -> None:
        assert validateMesh(EVERYTHING) == []

    def test_defaults(self) -> None:
        assert validateMesh(MeshConfig()) == []
        assert validateMesh(mesh()) == []

    def test_fromFlags(self) -> None:
        """
        What the flags make (a default cluster and route per listener).
        """
        assert validateMesh(SidecarConfig().mesh()) == []


class TestProblem:
    def test_str(self) -> None:
        problem = Problem(("routes", "outbound", 2, "host_rewrite"), "must be a host name")
        assert str(problem) == "routes.outbound.2.host_rewrite: must be a host name"
        assert str(Problem((), "bad")) == "bad"


def test_reportedDefect() -> None:
    """
    The model that was once run without complaint: every problem is found,
    at its path.
    """
    config = mesh(
        Route(
            "evil",
            match=RouteMatch(prefix="/", headers=(HeaderMatch("x-a", exact="1\r\nInjected: 1"),)),
            weightedClusters=(("backend", 0),),
            hostRewrite="evil\r\nInjected: 1",
            prefixRewrite="no-slash\r\n",
        ),
        clusters={"backend": cluster("backend", lbPolicy="ring_hash")},
    )
    assert problems(config) == {
        ("clusters", "backend"): "lb_policy ring_hash needs hash_on",
        ("routes", "outbound", 0, "match", "headers", "x-a", "exact"): (
            "must not contain CR, LF or NUL, not '1\\r\\nInjected: 1'"
        ),
        ("routes", "outbound", 0, "weighted_clusters"): "must give some cluster a weight above 0",
        ("routes", "outbound", 0, "prefix_rewrite"): "must start with /, not 'no-slash\\r\\n'",
        ("routes", "outbound", 0, "host_rewrite"): (
            "must be a host name, not 'evil\\r\\nInjected: 1'"
        ),
    }


C = ("clusters", "backend")
R = ("routes", "outbound", 0)
M = R + ("match",)

#: A model breaking one rule, where and why it is refused.
RULES: Dict[str, Tuple[Callable[[], MeshConfig], Tuple[Any, ...], str]] = {
    # Clusters.
    "endpoints and dns": (
        lambda: withCluster(dns=DnsDiscovery("a", 80)),
        C,
        "must have exactly one of endpoints, dns",
    ),
    "neither endpoints nor dns": (
        lambda: withCluster(endpoints=()),
        C,
        "must have exactly one of endpoints, dns",
    ),
    "endpoint twice": (
        lambda: withCluster(endpoints=urls("a:80", "a")),
        C + ("endpoints", 1),
        "endpoint http://a is given twice",
    ),
    "weights not one per endpoint": (
        lambda: withCluster(endpoints=urls("a", "b"), weights=(1,)),
        C + ("endpoints",),
        "must have as many weights as endpoints",
    ),
    "weight zero": (
        lambda: withCluster(endpoints=urls("a"), weights=(0,)),
        C + ("endpoints", 0, "weight"),
        "must be an integer at least 1, not 0",
    ),
    "dns port": (
        lambda: mesh(clusters={"backend": ClusterConfig("backend", dns=DnsDiscovery("a", 70000))}),
        C + ("dns", "port"),
        "must be a port from 1 to 65535, not 70000",
    ),
    "dns name with a port": (
        lambda: mesh(clusters={"backend": ClusterConfig("backend", dns=DnsDiscovery("a:1", 80))}),
        C + ("dns", "name"),
        "must be a host name without a port, not 'a:1'",
    ),
    "dns refresh": (
        lambda: mesh(
            clusters={"backend": ClusterConfig("backend", dns=DnsDiscovery("a", 80, refresh=0))}
        ),
        C + ("dns", "refresh"),
        "must be above zero",
    ),
    "dns scheme": (
        lambda: mesh(
            clusters={"backend": ClusterConfig("backend", dns=DnsDiscovery("a", 80, scheme="ftp"))}
        ),
        C + ("dns", "scheme"),
        "must be one of http, https, not 'ftp'",
    ),
    "protocol": (
        lambda: withCluster(protocol="http3"),
        C + ("protocol",),
        "must be one of http1, http2, auto, not 'http3'",
    ),
    "h2c endpoint with protocol http1": (
        lambda: withCluster(endpoints=(UpstreamURL.parse("h2c://backend:8080"),), weights=(1,)),
        C + ("endpoints", 0),
        "h2c:// means HTTP/2, which protocol: http1 contradicts",
    ),
    "lb policy": (
        lambda: withCluster(lbPolicy="fastest"),
        C + ("lb_policy",),
        "must be one of round_robin, random, least_request, ewma, ring_hash, not 'fastest'",
    ),
    "ring hash without hash_on": (
        lambda: withCluster(lbPolicy="ring_hash"),
        C,
        "lb_policy ring_hash needs hash_on",
    ),
    "hash_on without ring hash": (
        lambda: withCluster(hashOn=HashOn(sourceIp=True)),
        C + ("hash_on",),
        "is used only with lb_policy: ring_hash",
    ),
    "hash_on two things": (
        lambda: withCluster(lbPolicy="ring_hash", hashOn=HashOn(header="x", cookie="y")),
        C + ("hash_on",),
        "must have exactly one of header, cookie, source_ip",
    ),
    "hash_on nothing": (
        lambda: withCluster(lbPolicy="ring_hash", hashOn=HashOn()),
        C + ("hash_on",),
        "must have exactly one of header, cookie, source_ip",
    ),
    "hash_on header name": (
        lambda: withCluster(lbPolicy="ring_hash", hashOn=HashOn(header="x\r\ny")),
        C + ("hash_on", "header"),
        "not a header name: 'x\\r\\ny'",
    ),
    "connect timeout zero": (
        lambda: withCluster(connectTimeout=0.0),
        C + ("connect_timeout",),
        "must be above zero",
    ),
    "timeout not a number": (
        lambda: withCluster(timeout=float("nan")),
        C + ("timeout",),
        "must be a duration in seconds, not nan",
    ),
    "stream idle timeout negative": (
        lambda: withCluster(streamIdleTimeout=-1),
        C + ("stream_idle_timeout",),
        "must be above zero",
    ),
    "pool size": (
        lambda: withCluster(poolSize=0),
        C + ("pool_size",),
        "must be an integer at least 1, not 0",
    ),
    "max connections": (
        lambda: withCluster(circuitBreakers=CircuitBreakers(maxConnections=0)),
        C + ("circuit_breakers", "max_connections"),
        "must be an integer at least 1, not 0",
    ),
    "max pending requests": (
        lambda: withCluster(circuitBreakers=CircuitBreakers(maxPendingRequests=-1)),
        C + ("circuit_breakers", "max_pending_requests"),
        "must be an integer at least 0, not -1",
    ),
    "ejection percent": (
        lambda: withCluster(outlierDetection=OutlierDetection(maxEjectionPercent=101)),
        C + ("outlier_detection", "max_ejection_percent"),
        "must be a percentage from 0 to 100, not 101",
    ),
    "consecutive 5xx": (
        lambda: withCluster(outlierDetection=OutlierDetection(consecutive5xx=1.5)),
        C + ("outlier_detection", "consecutive_5xx"),
        "must be an integer at least 0, not 1.5",
    ),
    "health check path": (
        lambda: withCluster(healthCheck=HealthCheck(path="healthz")),
        C + ("health_check", "path"),
        "must start with /, not 'healthz'",
    ),
    "health check host": (
        lambda: withCluster(healthCheck=HealthCheck(host="a\r\nb")),
        C + ("health_check", "host"),
        "must be a host name, not 'a\\r\\nb'",
    ),
    "health check threshold": (
        lambda: withCluster(healthCheck=HealthCheck(unhealthyThreshold=0)),
        C + ("health_check", "unhealthy_threshold"),
        "must be an integer at least 1, not 0",
    ),
    "tls identity": (
        lambda: withCluster(tlsIdentities=("",)),
        C + ("tls", "identities", 0),
        "must be text, not ''",
    ),
    "cluster named other than its key": (
        lambda: mesh(clusters={"backend": cluster("front")}),
        C,
        "is named 'front', not by its key",
    ),
    # Routes.
    "route without a name": (
        lambda: mesh(Route("", cluster="peer")),
        R + ("name",),
        "must be text, not ''",
    ),
    "no action": (
        lambda: withRoute(cluster=None),
        R,
        "must have exactly one of cluster, weighted_clusters, direct_response",
    ),
    "two actions": (
        lambda: withRoute(directResponse=DirectResponse(200)),
        R,
        "must have exactly one of cluster, weighted_clusters, direct_response",
    ),
    "unknown cluster": (
        lambda: withRoute(cluster="nope"),
        R + ("cluster",),
        "no cluster named 'nope'",
    ),
    "unknown weighted cluster": (
        lambda: withRoute(cluster=None, weightedClusters=(("backend", 1), ("nope", 1))),
        R + ("weighted_clusters", "nope"),
        "no cluster named 'nope'",
    ),
    "weights all zero": (
        lambda: withRoute(cluster=None, weightedClusters=(("backend", 0), ("peer", 0))),
        R + ("weighted_clusters",),
        "must give some cluster a weight above 0",
    ),
    "negative weight": (
        lambda: withRoute(cluster=None, weightedClusters=(("backend", 2), ("peer", -1))),
        R + ("weighted_clusters", "peer"),
        "must be an integer at least 0, not -1",
    ),
    "direct response status": (
        lambda: withRoute(cluster=None, directResponse=DirectResponse(700)),
        R + ("direct_response", "status"),
        "must be a status code from 200 to 599, not 700",
    ),
    "direct response body without content": (
        lambda: withRoute(cluster=None, directResponse=DirectResponse(304, b"x")),
        R + ("direct_response", "body"),
        "a 304 response has no body",
    ),
    "prefix rewrite not a path": (
        lambda: withRoute(prefixRewrite="v2"),
        R + ("prefix_rewrite",),
        "must start with /, not 'v2'",
    ),
    "prefix rewrite with CRLF": (
        lambda: withRoute(prefixRewrite="/v2\r\nX: 1"),
        R + ("prefix_rewrite",),
        "must be a path of printable ASCII characters",
    ),
    "prefix rewrite of a regex match": (
        lambda: withRoute(match=RouteMatch(regex="/a.*"), prefixRewrite="/b"),
        R + ("prefix_rewrite",),
        "needs a prefix or path match (it replaces what they matched), not regex",
    ),
    "host rewrite": (
        lambda: withRoute(hostRewrite="*.a"),
        R + ("host_rewrite",),
        "must be a host name, not '*.a'",
    ),
    "route timeout": (
        lambda: withRoute(timeout=0),
        R + ("timeout",),
        "must be above zero",
    ),
    "route names twice": (
        lambda: mesh(Route("a", cluster="peer"), Route("a", cluster="backend")),
        ("routes", "outbound", 1),
        "route name 'a' is given twice",
    ),
    "unknown listener": (
        lambda: attrs.evolve(mesh(), routes={"sideways": ()}),
        ("routes", "sideways"),
        "no listener named 'sideways' (listeners: inbound, outbound)",
    ),
    # Matches.
    "two path conditions": (
        lambda: withMatch(prefix="/a", path="/b"),
        M,
        "must have at most one of prefix, path, regex",
    ),
    "prefix not a path": (
        lambda: withMatch(prefix="api"),
        M + ("prefix",),
        "must start with /, not 'api'",
    ),
    "path with a query": (
        lambda: withMatch(path="/a?b=1"),
        M + ("path",),
        "must be a path of printable ASCII characters",
    ),
    "bad regex": (
        lambda: withMatch(regex="/a(["),
        M + ("regex",),
        "not a valid regular expression",
    ),
    "host with a port": (
        lambda: withMatch(host="api.example:8080"),
        M + ("host",),
        "must be a host name without a port, optionally *.suffix, not 'api.example:8080'",
    ),
    "host in upper case": (
        lambda: withMatch(host="API.example"),
        M + ("host",),
        "must be lower case, not 'API.example'",
    ),
    "header name": (
        lambda: withMatch(headers=(HeaderMatch("x a", exact="b"),)),
        M + ("headers", "x a"),
        "not a header name: 'x a'",
    ),
    "header prefix with CRLF": (
        lambda: withMatch(headers=(HeaderMatch("x-a", prefix="a\nb"),)),
        M + ("headers", "x-a", "prefix"),
        "must not contain CR, LF or NUL, not 'a\\nb'",
    ),
    "header value not Latin-1": (
        lambda: withMatch(headers=(HeaderMatch("x-a", exact="\u20ac"),)),
        M + ("headers", "x-a", "exact"),
        "must be Latin-1, as header values are, not '\u20ac'",
    ),
    "header regex with NUL": (
        lambda: withMatch(headers=(HeaderMatch("x-a", regex="a\0"),)),
        M + ("headers", "x-a", "regex"),
        "must not contain CR, LF or NUL",
    ),
    "header regex invalid": (
        lambda: withMatch(headers=(HeaderMatch("x-a", regex="*"),)),
        M + ("headers", "x-a", "regex"),
        "not a valid regular expression",
    ),
    "header match without a condition": (
        lambda: withMatch(headers=(HeaderMatch("x-a"),)),
        M + ("headers", "x-a"),
        "must have exactly one of exact, prefix, regex, present",
    ),
    "header match with two conditions": (
        lambda: withMatch(headers=(HeaderMatch("x-a", exact="b", present=True),)),
        M + ("headers", "x-a"),
        "must have exactly one of exact, prefix, regex, present",
    ),
    "header present not a flag": (
        lambda: withMatch(headers=(HeaderMatch("x-a", present="yes"),)),  # type: ignore[arg-type]
        M + ("headers", "x-a", "present"),
        "must be true or false, not 'yes'",
    ),
    "method": (
        lambda: withMatch(methods=("GET", "P T")),
        M + ("methods", 1),
        "not a header name: 'P T'",
    ),
    # Retries and rate limits.
    "retry condition": (
        lambda: withRoute(retryPolicy=RetryPolicy(retryOn=("refused-stream",))),
        R + ("retry_policy", "retry_on"),
        "must be a status code or one of connect-failure, reset, gateway-error, 5xx, "
        "retriable-4xx, timeout, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, not 'refused-stream'",
    ),
    "retry status": (
        lambda: withRoute(retryPolicy=RetryPolicy(retryStatuses=(600,))),
        R + ("retry_policy", "retry_on"),
        "must be a status code or one of",
    ),
    "num retries": (
        lambda: withRoute(retryPolicy=RetryPolicy(numRetries=-1)),
        R + ("retry_policy", "num_retries"),
        "must be an integer at least 0, not -1",
    ),
    "per try timeout": (
        lambda: withRoute(retryPolicy=RetryPolicy(perTryTimeout=0)),
        R + ("retry_policy", "per_try_timeout"),
        "must be above zero",
    ),
    "backoff max below base": (
        lambda: withRoute(retryPolicy=RetryPolicy(backoff=Backoff(1.0, 0.1))),
        R + ("retry_policy", "backoff"),
        "max must not be below base",
    ),
    "budget percent": (
        lambda: withRoute(retryPolicy=RetryPolicy(budget=RetryBudget(percent=150))),
        R + ("retry_policy", "budget", "percent"),
        "must be a percentage from 0 to 100, not 150",
    ),
    "rate zero": (
        lambda: withRoute(rateLimit=RouteRateLimit(0, 1)),
        R + ("rate_limit", "rate"),
        "must be a number above 0, not 0",
    ),
    "burst zero": (
        lambda: withRoute(rateLimit=RouteRateLimit(1, 0)),
        R + ("rate_limit", "burst"),
        "must be an integer at least 1, not 0",
    ),
    "rate limit key of two things": (
        lambda: withRoute(rateLimit=RouteRateLimit(1, 1, RateLimitKey(sourceIp=True, identity=True))),
        R + ("rate_limit", "key"),
        "must have exactly one of header, source_ip, identity",
    ),
    "rate limit key header": (
        lambda: withRoute(rateLimit=RouteRateLimit(1, 1, RateLimitKey(header="a:b"))),
        R + ("rate_limit", "key", "header"),
        "not a header name: 'a:b'",
    ),
    "rate limit max keys": (
        lambda: withRoute(rateLimit=RouteRateLimit(1, 1, maxKeys=1_000_001)),
        R + ("rate_limit", "max_keys"),
        "must be at most 1000000, not 1000001",
    ),
    # Top-level options.
    "escaped slashes": (
        lambda: mesh(paths=PathOptions(escapedSlashes="drop")),
        ("path_with_escaped_slashes",),
        "must be one of reject, keep, unescape, not 'drop'",
    ),
    "normalize path": (
        lambda: mesh(paths=PathOptions(normalize=1)),  # type: ignore[arg-type]
        ("normalize_path",),
        "must be true or false, not 1",
    ),
    "trusted hops": (
        lambda: mesh(xffNumTrustedHops=-1),
        ("xff_num_trusted_hops",),
        "must be an integer at least 0, not -1",
    ),
    "retry buffer limit": (
        lambda: mesh(retryBufferLimit=1.5),
        ("retry_buffer_limit",),
        "must be an integer at least 0, not 1.5",
    ),
    # Authorization.
    "authorization match": (
        lambda: mesh(
            authorization={
                "inbound": AuthorizationPolicy((AuthorizationRule(RouteMatch(prefix="admin"), ("*",)),))
            }
        ),
        ("authorization", "inbound", "rules", 0, "match", "prefix"),
        "must start with /, not 'admin'",
    ),
    "authorization identity": (
        lambda: mesh(
            authorization={
                "inbound": AuthorizationPolicy((AuthorizationRule(RouteMatch(prefix="/"), ("",)),))
            }
        ),
        ("authorization", "inbound", "rules", 0, "identities", 0),
        "must be text, not ''",
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule(rule: str) -> None:
    """
    Each rule refuses a model that breaks it, and only that: where and why.
    """
    make, path, reason = RULES[rule]
    found = validateMesh(make())
    assert len(found) == 1, found
    assert found[0].path == path
    assert found[0].reason.startswith(reason), found[0].reason


def test_backtrackingPatternWithoutRE2(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Patterns compile through L{easymesh.patterns}: without RE2 one that
    needs backtracking is refused.
    """
    import easymesh.patterns

    monkeypatch.setattr(easymesh.patterns, "_re2", None)
    found = problems(withMatch(regex="/(a+)+"))
    assert list(found) == [M + ("regex",)]
    assert found[M + ("regex",)].startswith("a nested quantifier needs backtracking")


def test_everyProblemIsReported() -> None:
    """
    Not only the first.
    """
    config = mesh(
        Route("a", cluster="nope", hostRewrite="a b"),
        clusters={"backend": cluster("backend", poolSize=0, timeout=0)},
    )
    assert set(problems(config)) == {
        C + ("timeout",),
        C + ("pool_size",),
        R + ("cluster",),
        R + ("host_rewrite",),
    }


class TestRuntime:
    """
    L{MeshRuntime.apply} runs only a valid model.
    """

    @pytest.fixture
    def runtime(self) -> MeshRuntime:
        upstreams = Upstreams()
        runtime = MeshRuntime(Clock(), random.Random(1), makeUpstream=upstreams.make)
        runtime.apply(mesh())
        runtime.start()
        return runtime

    def test_refused(self, runtime: MeshRuntime) -> None:
        running = (runtime.mesh, dict(runtime.clusters), dict(runtime.routers))
        evil = mesh(
            Route("evil", cluster="backend", hostRewrite="evil\r\nInjected: 1"),
            clusters={"backend": cluster("backend", lbPolicy="ring_hash"), "new": cluster("new")},
        )
        with pytest.raises(InvalidConfig) as info:
            runtime.apply(evil)
        error = info.value
        assert isinstance(error, ConfigError)
        assert [p.path for p in error.problems] == [
            ("clusters", "backend"),
            ("routes", "outbound", 0, "host_rewrite"),
        ]
        assert str(error) == (
            "configuration refused: clusters.backend: lb_policy ring_hash needs hash_on; "
            "routes.outbound.0.host_rewrite: must be a host name, not 'evil\\r\\nInjected: 1'"
        )
        assert (runtime.mesh, runtime.clusters, runtime.routers) == running
        assert "new" not in runtime.clusters

    def test_unknownCluster(self, runtime: MeshRuntime) -> None:
        with pytest.raises(InvalidConfig, match="routes.outbound.0.cluster: no cluster named 'nope'"):
            runtime.apply(withRoute(cluster="nope"))

    def test_validAfterRefused(self, runtime: MeshRuntime) -> None:
        with pytest.raises(InvalidConfig):
            runtime.apply(withCluster(lbPolicy="ring_hash"))
        config = withCluster(lbPolicy="ring_hash", hashOn=HashOn(sourceIp=True))
        runtime.apply(config)
        assert runtime.mesh is config
        assert runtime.clusters["backend"].config.lbPolicy == "ring_hash"


def test_http2ProtocolAccepted() -> None:
    assert validateMesh(withCluster(protocol="http2")) == []
    grpc = withCluster(endpoints=(UpstreamURL.parse("grpc://b:50051"),), weights=(1,), protocol="http2")
    assert validateMesh(grpc) == []


def test_autoProtocolAccepted() -> None:
    assert validateMesh(withCluster(protocol="auto")) == []
    h2c = withCluster(endpoints=(UpstreamURL.parse("h2c://b:80"),), weights=(1,), protocol="auto")
    assert validateMesh(h2c) == []
