"""
Tests for L{easymesh.config.mesh}, L{easymesh.config.meshfile} and
L{easymesh.config.durations}: the C{clusters} and C{routes} sections of a
config file, L{SidecarConfig.mesh}, and C{python -m easymesh check-config}.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from typing import Iterator

import pytest

from easymesh.__main__ import main
from easymesh.config.addresses import UpstreamURL
from easymesh.config.durations import parseDuration
from easymesh.config.files import parseConfigText
from easymesh.config.mesh import (
    Backoff,
    CircuitBreakers,
    ClusterConfig,
    DirectResponse,
    DnsDiscovery,
    GrpcHealthCheck,
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
from easymesh.config.settings import buildConfig
from easymesh.config.validate import checkMesh


def parse(text: str, name: str = "mesh.yaml") -> MeshConfig:
    values = parseConfigText(textwrap.dedent(text), name)
    return MeshConfig(**values.mesh)


def refused(text: str, name: str = "mesh.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parseConfigText(textwrap.dedent(text), name)
    return str(info.value)


def sidecar(text: str = "", **flags: object) -> SidecarConfig:
    values = parseConfigText(textwrap.dedent(text), "mesh.yaml")
    values.update(flags)
    return buildConfig(values, "mesh.yaml")


EVERY_KEY = """\
clusters:
  web:
    endpoints:
      - http://10.0.0.1:8080
      - url: http://10.0.0.2:8080
        weight: 3
    lb_policy: ring_hash
    hash_on:
      header: X-User
    connect_timeout: 250ms
    timeout: 2s
    pool_size: 16
    pool_idle: 1m
    circuit_breakers:
      max_connections: 10
      max_pending_requests: 0
      max_requests: 20
      max_retries: 2
    outlier_detection:
      consecutive_5xx: 3
      consecutive_gateway_failure: 2
      interval: 5s
      base_ejection_time: 30s
      max_ejection_percent: 50
    health_check:
      path: /ready
      interval: 10s
      timeout: 500ms
      healthy_threshold: 1
      unhealthy_threshold: 4
      host: web.internal
  api:
    dns:
      name: api.internal
      port: 9000
      refresh: 30s
      scheme: https
    lb_policy: least_request
routes:
  outbound:
    - name: api
      match:
        prefix: /api/
        host: "*.Example.com"
        headers:
          x-env: prod
          X-Canary: {prefix: "yes"}
          x-trace: {regex: "[0-9a-f]+"}
          x-debug: {present: true}
          x-internal: {present: false}
          x-exact: {exact: "1"}
          x-number: 7
        methods: [get, POST]
      cluster: api
      prefix_rewrite: /v2/
      host_rewrite: api.internal
      timeout: 3s
      retry_policy:
        retry_on: [connect-failure, reset, gateway-error, 5xx, retriable-4xx, timeout, 429, "418"]
        num_retries: 3
        per_try_timeout: 500ms
        backoff: {base: 10ms, max: 1s}
        budget: {percent: 25, min_retries_per_second: 5}
      rate_limit:
        rate: 10
        burst: 20
        key: {header: X-User}
        max_keys: 100
    - match: {path: /split}
      weighted_clusters: {web: 90, api: 10, peer: 0}
    - match: {regex: "/static/.*"}
      direct_response: {status: 404, body: gone}
    - match: {prefix: /ip}
      cluster: web
      rate_limit: {rate: 2.5, key: {source_ip: true}}
    - match: {prefix: /who}
      cluster: web
      rate_limit: {rate: 1, key: {identity: true}}
  inbound:
    - cluster: local
xff_num_trusted_hops: 1
normalize_path: false
merge_slashes: true
path_with_escaped_slashes: unescape
retry_buffer_limit: 1024
"""


class TestEveryKey:
    """
    Every key of the mesh sections becomes the right object.
    """

    @pytest.fixture
    def mesh(self) -> MeshConfig:
        return parse(EVERY_KEY)

    def test_staticCluster(self, mesh: MeshConfig) -> None:
        assert mesh.clusters["web"] == ClusterConfig(
            name="web",
            endpoints=(
                UpstreamURL("http", "10.0.0.1", 8080),
                UpstreamURL("http", "10.0.0.2", 8080),
            ),
            weights=(1, 3),
            lbPolicy="ring_hash",
            hashOn=HashOn(header="x-user"),
            connectTimeout=0.25,
            timeout=2.0,
            poolSize=16,
            poolIdle=60.0,
            circuitBreakers=CircuitBreakers(
                maxConnections=10, maxPendingRequests=0, maxRequests=20, maxRetries=2
            ),
            outlierDetection=OutlierDetection(
                consecutive5xx=3,
                consecutiveGatewayFailure=2,
                interval=5.0,
                baseEjectionTime=30.0,
                maxEjectionPercent=50.0,
            ),
            healthCheck=HealthCheck(
                path="/ready",
                interval=10.0,
                timeout=0.5,
                healthyThreshold=1,
                unhealthyThreshold=4,
                host="web.internal",
            ),
        )

    def test_dnsCluster(self, mesh: MeshConfig) -> None:
        assert mesh.clusters["api"] == ClusterConfig(
            name="api",
            dns=DnsDiscovery("api.internal", 9000, 30.0, "https"),
            lbPolicy="least_request",
        )

    def test_fullRoute(self, mesh: MeshConfig) -> None:
        route = mesh.routes["outbound"][0]
        assert route == Route(
            name="api",
            match=RouteMatch(
                prefix="/api/",
                host="*.example.com",
                headers=(
                    HeaderMatch("x-env", exact="prod"),
                    HeaderMatch("x-canary", prefix="yes"),
                    HeaderMatch("x-trace", regex="[0-9a-f]+"),
                    HeaderMatch("x-debug", present=True),
                    HeaderMatch("x-internal", present=False),
                    HeaderMatch("x-exact", exact="1"),
                    HeaderMatch("x-number", exact="7"),
                ),
                methods=("GET", "POST"),
            ),
            cluster="api",
            prefixRewrite="/v2/",
            hostRewrite="api.internal",
            timeout=3.0,
            retryPolicy=RetryPolicy(
                retryOn=(
                    "connect-failure",
                    "reset",
                    "gateway-error",
                    "5xx",
                    "retriable-4xx",
                    "timeout",
                ),
                retryStatuses=(429, 418),
                numRetries=3,
                perTryTimeout=0.5,
                backoff=Backoff(0.01, 1.0),
                budget=RetryBudget(25.0, 5.0),
            ),
            rateLimit=RouteRateLimit(10.0, 20, RateLimitKey(header="x-user"), 100),
        )
        assert route.clusterNames() == ("api",)

    def test_weightedClusters(self, mesh: MeshConfig) -> None:
        route = mesh.routes["outbound"][1]
        assert route.name == "outbound-1"
        assert route.match == RouteMatch(path="/split")
        assert route.weightedClusters == (("web", 90), ("api", 10), ("peer", 0))
        assert route.cluster is None
        assert route.clusterNames() == ("web", "api", "peer")

    def test_directResponse(self, mesh: MeshConfig) -> None:
        route = mesh.routes["outbound"][2]
        assert route.match == RouteMatch(regex="/static/.*")
        assert route.directResponse == DirectResponse(404, b"gone")
        assert route.clusterNames() == ()

    def test_rateLimitKeys(self, mesh: MeshConfig) -> None:
        ip, who = mesh.routes["outbound"][3:5]
        # Without burst: the rate, rounded up.
        assert ip.rateLimit == RouteRateLimit(2.5, 3, RateLimitKey(sourceIp=True), 10000)
        assert who.rateLimit == RouteRateLimit(1.0, 1, RateLimitKey(identity=True), 10000)

    def test_defaultsOfARoute(self, mesh: MeshConfig) -> None:
        route = mesh.routes["inbound"][0]
        assert route == Route(name="inbound-0", match=RouteMatch(prefix="/"), cluster="local")

    def test_topLevelOptions(self, mesh: MeshConfig) -> None:
        assert mesh.paths == PathOptions(normalize=False, mergeSlashes=True, escapedSlashes="unescape")
        assert mesh.xffNumTrustedHops == 1
        assert mesh.retryBufferLimit == 1024

    def test_defaults(self) -> None:
        mesh = parse("clusters: {a: {endpoints: [http://a]}}\n")
        assert mesh.clusters["a"] == ClusterConfig(
            "a", endpoints=(UpstreamURL("http", "a", 80),), weights=(1,)
        )
        assert mesh.paths == PathOptions()
        assert mesh.xffNumTrustedHops == 0
        assert mesh.retryBufferLimit == 64 * 1024
        assert mesh.routes == {}

    def test_retryPolicyDefaults(self) -> None:
        mesh = parse(
            """\
            routes:
              outbound:
                - cluster: peer
                  retry_policy: {}
            """
        )
        assert mesh.routes["outbound"][0].retryPolicy == RetryPolicy()

    def test_backoffMaxDefaultsToTenTimesBase(self) -> None:
        mesh = parse(
            """\
            routes:
              outbound:
                - cluster: peer
                  retry_policy: {backoff: {base: 1s}}
            """
        )
        policy = mesh.routes["outbound"][0].retryPolicy
        assert policy is not None
        assert policy.backoff == Backoff(1.0, 10.0)

    def test_hashOnCookieAndSourceIp(self) -> None:
        mesh = parse(
            """\
            clusters:
              a: {endpoints: [http://a], lb_policy: ring_hash, hash_on: {cookie: session}}
              b: {endpoints: [http://b], lb_policy: ring_hash, hash_on: {source_ip: true}}
            """
        )
        assert mesh.clusters["a"].hashOn == HashOn(cookie="session")
        assert mesh.clusters["b"].hashOn == HashOn(sourceIp=True)

    def test_everyLbPolicy(self) -> None:
        for policy in ("round_robin", "random", "least_request", "ewma"):
            mesh = parse(f"clusters: {{a: {{endpoints: [http://a], lb_policy: {policy}}}}}\n")
            assert mesh.clusters["a"].lbPolicy == policy

    def test_matchWithoutPathConditionIsPrefixSlash(self) -> None:
        mesh = parse(
            """\
            routes:
              outbound:
                - match: {host: api.example}
                  cluster: peer
            """
        )
        assert mesh.routes["outbound"][0].match == RouteMatch(prefix="/", host="api.example")

    def test_directResponseWithoutBody(self) -> None:
        mesh = parse(
            """\
            routes:
              outbound:
                - direct_response: {status: 503}
                - direct_response: {status: 200, body: }
            """
        )
        assert [r.directResponse for r in mesh.routes["outbound"]] == [
            DirectResponse(503, b""),
            DirectResponse(200, b""),
        ]

    def test_headerValuesAsWritten(self) -> None:
        mesh = parse(
            """\
            routes:
              outbound:
                - cluster: peer
                  match:
                    headers:
                      x-a: 1.50
                      x-b: 007
                      x-c: {prefix: 12}
                      x-d: {exact: ""}
                      x-e: "caf\u00e9"
                - direct_response: {status: 200, body: 1.50}
            """
        )
        first, second = mesh.routes["outbound"]
        assert first.match.headers == (
            HeaderMatch("x-a", exact="1.50"),
            HeaderMatch("x-b", exact="007"),
            HeaderMatch("x-c", prefix="12"),
            HeaderMatch("x-d", exact=""),
            HeaderMatch("x-e", exact="caf\u00e9"),
        )
        assert second.directResponse == DirectResponse(200, b"1.50")

    def test_retryOnStatusesOnly(self) -> None:
        mesh = parse(
            """\
            routes:
              outbound:
                - cluster: peer
                  retry_policy: {retry_on: [503]}
            """
        )
        policy = mesh.routes["outbound"][0].retryPolicy
        assert policy is not None
        assert (policy.retryOn, policy.retryStatuses) == ((), (503,))


class TestDurations:
    @pytest.mark.parametrize(
        "text, seconds",
        [
            ("250ms", 0.25),
            ("2s", 2.0),
            ("1m", 60.0),
            ("1h", 3600.0),
            ("1.5s", 1.5),
            ("3", 3.0),
            (" 2s ", 2.0),
            (7, 7.0),
            (0.5, 0.5),
            (0, 0.0),
        ],
    )
    def test_accepted(self, text: object, seconds: float) -> None:
        assert parseDuration(text) == seconds

    @pytest.mark.parametrize(
        "value",
        ["", "s", "2 s", "2x", "-1s", "1e3", "2sec", "1m30s", True, None, [1], -1,
         float("nan"), float("inf"), "nan", "inf"],
    )
    def test_refused(self, value: object) -> None:
        with pytest.raises(ValueError):
            parseDuration(value)

    def test_message(self) -> None:
        with pytest.raises(ValueError, match=r"must be a duration such as 250ms, 2s or 1m, not 'soon'"):
            parseDuration("soon")

    def test_fromTheFile(self) -> None:
        mesh = parse(
            """\
            clusters:
              a: {endpoints: [http://a], timeout: 250ms, connect_timeout: 2s, pool_idle: 1m}
              b: {endpoints: [http://b], timeout: 3, connect_timeout: 0.5}
            """
        )
        a, b = mesh.clusters["a"], mesh.clusters["b"]
        assert (a.timeout, a.connectTimeout, a.poolIdle) == (0.25, 2.0, 60.0)
        assert (b.timeout, b.connectTimeout) == (3.0, 0.5)


BASE = """\
clusters:
  web:
    endpoints: [http://10.0.0.1:8080]
"""


class TestRefused:
    """
    Errors name the file, the line and the dotted key path.
    """

    def test_unknownClusterKey(self) -> None:
        error = refused(BASE + "    bogus: 1\n")
        assert error.startswith("mesh.yaml:4: clusters.web: unknown key 'bogus' (known keys: ")
        assert "endpoints" in error and "health_check" in error

    def test_unknownNestedKey(self) -> None:
        error = refused(BASE + "    circuit_breakers:\n      max_request: 3\n")
        assert error.startswith("mesh.yaml:5: clusters.web.circuit_breakers: unknown key 'max_request'")

    def test_unknownRouteKey(self) -> None:
        error = refused(
            """\
            routes:
              outbound:
                - cluster: peer
                  matches: {prefix: /}
            """
        )
        assert error.startswith("mesh.yaml:4: routes.outbound.0: unknown key 'matches'")

    def test_unknownMatchKey(self) -> None:
        error = refused(
            """\
            routes:
              inbound:
                - cluster: local
                - cluster: local
                  match:
                    suffix: /x
            """
        )
        assert error.startswith("mesh.yaml:6: routes.inbound.1.match: unknown key 'suffix'")

    def test_unknownListener(self) -> None:
        error = refused("routes:\n  sideways: []\n")
        assert error.startswith("mesh.yaml:2: routes: unknown key 'sideways' (known keys: inbound, outbound)")

    def test_unknownTopLevelKey(self) -> None:
        error = refused("cluster: {}\n")
        assert error.startswith("mesh.yaml:1: unknown key 'cluster'")
        assert "clusters" in error and "routes" in error

    def test_keyGivenTwice(self) -> None:
        error = refused(BASE + "    timeout: 1s\n    timeout: 2s\n")
        assert error == "mesh.yaml:5: clusters.web: key 'timeout' is given twice"

    def test_sectionGivenTwice(self) -> None:
        error = refused(BASE + "clusters: {}\n")
        assert error == "mesh.yaml:4: key 'clusters' is given twice"

    @pytest.mark.parametrize(
        "line, expected",
        [
            ("pool_size: many", "clusters.web.pool_size: must be an integer at least 1, not 'many'"),
            ("pool_size: 0", "clusters.web.pool_size: must be an integer at least 1, not 0"),
            ("pool_size: 1.5", "clusters.web.pool_size: must be an integer at least 1, not 1.5"),
            ("pool_size: true", "clusters.web.pool_size: must be an integer at least 1, not True"),
            ("pool_size: .nan", "clusters.web.pool_size: must be an integer at least 1"),
            ("lb_policy: fastest", "clusters.web.lb_policy: must be one of round_robin, random, "
             "least_request, ewma, ring_hash, not 'fastest'"),
            ("circuit_breakers: 5", "clusters.web.circuit_breakers: must be a mapping"),
            ("circuit_breakers: {max_requests: -1}",
             "clusters.web.circuit_breakers.max_requests: must be an integer at least 1, not -1"),
            ("outlier_detection: {max_ejection_percent: 101}",
             "clusters.web.outlier_detection.max_ejection_percent: must be a percentage from 0 to 100, not 101"),
            ("health_check: {path: healthz}", "clusters.web.health_check.path: must start with /, not 'healthz'"),
            ("health_check: {host: 'a b'}", "clusters.web.health_check.host: must be a host name"),
            ("health_check: {unhealthy_threshold: 0}",
             "clusters.web.health_check.unhealthy_threshold: must be an integer at least 1, not 0"),
        ],
    )
    def test_wrongTypes(self, line: str, expected: str) -> None:
        error = refused(BASE + "    " + line + "\n")
        assert error.startswith("mesh.yaml:4: " + expected), error

    @pytest.mark.parametrize(
        "value, reason",
        [
            ("soon", "must be a duration such as 250ms, 2s or 1m, not 'soon'"),
            ("2 s", "must be a duration such as 250ms, 2s or 1m, not '2 s'"),
            ("-1s", "must be a duration such as 250ms, 2s or 1m, not '-1s'"),
            ("-1", "must not be negative, not -1"),
            ("0s", "must be above zero"),
            ("0", "must be above zero"),
            (".nan", "must be a duration"),
            (".inf", "must be a duration"),
            ("[1s]", "must be a single value"),
        ],
    )
    def test_badDurations(self, value: str, reason: str) -> None:
        error = refused(BASE + f"    timeout: {value}\n")
        assert error.startswith(f"mesh.yaml:4: clusters.web.timeout: {reason}"), error

    def test_badDurationDeepInARoute(self) -> None:
        error = refused(
            """\
            routes:
              outbound:
                - cluster: peer
                  retry_policy:
                    backoff:
                      base: 10 ms
            """
        )
        assert error.startswith(
            "mesh.yaml:6: routes.outbound.0.retry_policy.backoff.base: must be a duration"
        )

    def test_unknownCluster(self) -> None:
        error = refused(
            BASE
            + """\
routes:
  outbound:
    - cluster: web
    - match: {prefix: /x}
      cluster: webb
"""
        )
        assert error == "mesh.yaml:8: routes.outbound.1.cluster: no cluster named 'webb'"

    def test_unknownWeightedCluster(self) -> None:
        error = refused(
            BASE
            + """\
routes:
  inbound:
    - weighted_clusters:
        web: 1
        nope: 1
"""
        )
        assert error == "mesh.yaml:8: routes.inbound.0.weighted_clusters.nope: no cluster named 'nope'"

    def test_weightedClustersAllZero(self) -> None:
        error = refused(
            BASE + "routes:\n  inbound:\n    - weighted_clusters: {web: 0, local: 0}\n"
        )
        assert error == (
            "mesh.yaml:6: routes.inbound.0.weighted_clusters: must give some cluster a weight above 0"
        )

    def test_flagClustersMayBeReferenced(self) -> None:
        mesh = parse("routes:\n  inbound:\n    - cluster: peer\n  outbound:\n    - cluster: local\n")
        assert [r.cluster for r in mesh.routes["inbound"] + mesh.routes["outbound"]] == ["peer", "local"]

    def test_missingAction(self) -> None:
        error = refused("routes:\n  outbound:\n    - match: {prefix: /}\n")
        assert error == (
            "mesh.yaml:3: routes.outbound.0: must have exactly one of "
            "cluster, weighted_clusters, direct_response"
        )

    def test_twoActions(self) -> None:
        error = refused(
            "routes:\n  outbound:\n    - cluster: peer\n      direct_response: {status: 200}\n"
        )
        assert error == (
            "mesh.yaml:3: routes.outbound.0: must have exactly one of "
            "cluster, weighted_clusters, direct_response"
        )

    def test_ringHashWithoutHashOn(self) -> None:
        error = refused(BASE + "    lb_policy: ring_hash\n")
        assert error == "mesh.yaml:3: clusters.web: lb_policy ring_hash needs hash_on"

    def test_hashOnWithoutRingHash(self) -> None:
        error = refused(BASE + "    hash_on: {header: x-user}\n")
        assert error == "mesh.yaml:4: clusters.web.hash_on: is used only with lb_policy: ring_hash"

    def test_hashOnTwoThings(self) -> None:
        error = refused(BASE + "    lb_policy: ring_hash\n    hash_on: {header: x, cookie: y}\n")
        assert error.startswith("mesh.yaml:5: clusters.web.hash_on: must have exactly one of header, cookie, source_ip")

    def test_hashOnSourceIpFalse(self) -> None:
        error = refused(BASE + "    lb_policy: ring_hash\n    hash_on: {source_ip: false}\n")
        assert error == "mesh.yaml:5: clusters.web.hash_on.source_ip: must be true"

    def test_badRegex(self) -> None:
        error = refused("routes:\n  outbound:\n    - match: {regex: '/a(['}\n      cluster: peer\n")
        assert error.startswith(
            "mesh.yaml:3: routes.outbound.0.match.regex: not a valid regular expression"
        )

    def test_badHeaderRegex(self) -> None:
        error = refused(
            "routes:\n  outbound:\n    - cluster: peer\n      match:\n"
            "        headers:\n          x-a: {regex: '*'}\n"
        )
        assert error.startswith(
            "mesh.yaml:6: routes.outbound.0.match.headers.x-a.regex: not a valid regular expression"
        )

    def test_badHeaderName(self) -> None:
        error = refused(
            "routes:\n  outbound:\n    - cluster: peer\n      match:\n"
            "        headers:\n          'x a': b\n"
        )
        assert error == "mesh.yaml:6: routes.outbound.0.match.headers.x a: not a header name: 'x a'"

    def test_headerMatchTwoKinds(self) -> None:
        error = refused(
            "routes:\n  outbound:\n    - cluster: peer\n      match:\n"
            "        headers:\n          x-a: {exact: b, prefix: c}\n"
        )
        assert error.startswith(
            "mesh.yaml:6: routes.outbound.0.match.headers.x-a: must have exactly one of exact, prefix, regex, present"
        )

    @pytest.mark.parametrize(
        "value, reason",
        [
            ("true", "must be a header value or a mapping with one of exact, prefix, regex, present, not True"),
            ("", "must be a header value or a mapping with one of exact, prefix, regex, present, not None"),
            ("{exact: null}", "exact: must be a header value"),
            ("\"\u20ac\"", "must be Latin-1, as header values are, not '\u20ac'"),
            ("{prefix: \"\u20ac\"}", "prefix: must be Latin-1"),
            ("{regex: \"\u20ac+\"}", "regex: must be Latin-1"),
            ("\"a\\nb\"", "must not contain CR, LF or NUL"),
        ],
    )
    def test_badHeaderValues(self, value: str, reason: str) -> None:
        error = refused(
            "routes:\n  outbound:\n    - cluster: peer\n      match:\n"
            f"        headers:\n          x-a: {value}\n"
        )
        assert error.startswith("mesh.yaml:6: routes.outbound.0.match.headers.x-a"), error
        assert reason in error, error

    def test_twoPathConditions(self) -> None:
        error = refused("routes:\n  outbound:\n    - match: {prefix: /a, path: /b}\n      cluster: peer\n")
        assert error == "mesh.yaml:3: routes.outbound.0.match: must have at most one of prefix, path, regex"

    @pytest.mark.parametrize(
        "match, reason",
        [
            ("{prefix: api}", "prefix: must start with /, not 'api'"),
            ("{path: 'x'}", "path: must start with /, not 'x'"),
            ("{prefix: '/a b'}", "prefix: "),
            ("{prefix: '/caf\u00e9'}", "prefix: "),
            ("{path: '/a?b=1'}", "path: "),
            ("{host: 'a b'}", "host: must be a host name"),
            ("{host: 'api.example:8080'}", "host: "),
            ("{methods: [GET, 'P T']}", "methods.1: not a header name"),
        ],
    )
    def test_badMatches(self, match: str, reason: str) -> None:
        error = refused(f"routes:\n  outbound:\n    - match: {match}\n      cluster: peer\n")
        assert error.startswith("mesh.yaml:3: routes.outbound.0.match." + reason), error

    def test_duplicateRouteNames(self) -> None:
        error = refused(
            """\
            routes:
              outbound:
                - name: a
                  cluster: peer
                - name: b
                  cluster: peer
                - name: a
                  cluster: peer
            """
        )
        assert error == "mesh.yaml:7: routes.outbound.2: route name 'a' is given twice"

    def test_sameRouteNameOnTwoListeners(self) -> None:
        mesh = parse(
            "routes:\n  outbound:\n    - {name: a, cluster: peer}\n"
            "  inbound:\n    - {name: a, cluster: local}\n"
        )
        assert mesh.routes["outbound"][0].name == mesh.routes["inbound"][0].name == "a"

    def test_endpointsAndDns(self) -> None:
        error = refused(BASE + "    dns: {name: web, port: 80}\n")
        assert error == "mesh.yaml:3: clusters.web: must have exactly one of endpoints, dns"

    def test_neitherEndpointsNorDns(self) -> None:
        error = refused("clusters:\n  web:\n    timeout: 1s\n")
        assert error == "mesh.yaml:3: clusters.web: must have exactly one of endpoints, dns"

    def test_noEndpoints(self) -> None:
        error = refused("clusters:\n  web:\n    endpoints: []\n")
        assert error == "mesh.yaml:3: clusters.web.endpoints: must list at least one endpoint"

    def test_badEndpointURL(self) -> None:
        error = refused("clusters:\n  web:\n    endpoints:\n      - http://a\n      - ftp://b\n")
        assert error.startswith("mesh.yaml:5: clusters.web.endpoints.1: invalid URL 'ftp://b'")

    def test_endpointWithoutURL(self) -> None:
        error = refused("clusters:\n  web:\n    endpoints:\n      - weight: 2\n")
        assert error == "mesh.yaml:4: clusters.web.endpoints.0: needs url"

    def test_duplicateEndpoint(self) -> None:
        error = refused(
            "clusters:\n  web:\n    endpoints:\n      - http://a:80\n      - url: http://a\n"
        )
        assert error.startswith("mesh.yaml:5: clusters.web.endpoints.1: ")
        assert "twice" in error

    def test_dnsNeedsNameAndPort(self) -> None:
        assert refused("clusters:\n  web:\n    dns: {name: a}\n") == (
            "mesh.yaml:3: clusters.web.dns: needs port"
        )
        assert refused("clusters:\n  web:\n    dns: {port: 1}\n") == (
            "mesh.yaml:3: clusters.web.dns: needs name"
        )

    def test_dnsNameNotAWildcard(self) -> None:
        error = refused("clusters:\n  web:\n    dns: {name: '*.a', port: 1}\n")
        assert error.startswith("mesh.yaml:3: clusters.web.dns.name: ")

    def test_unknownRetryCondition(self) -> None:
        error = refused(
            "routes:\n  outbound:\n    - cluster: peer\n      retry_policy:\n"
            "        retry_on: [5xx, refused-stream]\n"
        )
        assert error.startswith(
            "mesh.yaml:5: routes.outbound.0.retry_policy.retry_on.1: must be a status code or one of "
            "connect-failure, reset, gateway-error, 5xx, retriable-4xx, timeout, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, not 'refused-stream'"
        )

    def test_retryOnStatusOutOfRange(self) -> None:
        error = refused(
            "routes:\n  outbound:\n    - cluster: peer\n      retry_policy:\n        retry_on: [600]\n"
        )
        assert error.startswith("mesh.yaml:5: routes.outbound.0.retry_policy.retry_on.0: must be a status code")

    def test_backoffMaxBelowBase(self) -> None:
        error = refused(
            "routes:\n  outbound:\n    - cluster: peer\n      retry_policy:\n"
            "        backoff: {base: 1s, max: 100ms}\n"
        )
        assert error == "mesh.yaml:5: routes.outbound.0.retry_policy.backoff: max must not be below base"

    def test_rateLimitNeedsRate(self) -> None:
        error = refused("routes:\n  outbound:\n    - cluster: peer\n      rate_limit: {burst: 3}\n")
        assert error == "mesh.yaml:4: routes.outbound.0.rate_limit: needs rate"

    def test_rateLimitZeroRate(self) -> None:
        error = refused("routes:\n  outbound:\n    - cluster: peer\n      rate_limit: {rate: 0}\n")
        assert error == "mesh.yaml:4: routes.outbound.0.rate_limit.rate: must be a number above 0, not 0"

    def test_rateLimitKeyFalse(self) -> None:
        error = refused(
            "routes:\n  outbound:\n    - cluster: peer\n      rate_limit: {rate: 1, key: {identity: false}}\n"
        )
        assert error == "mesh.yaml:4: routes.outbound.0.rate_limit.key.identity: must be true"

    def test_directResponseStatus(self) -> None:
        error = refused("routes:\n  outbound:\n    - direct_response: {status: 700}\n")
        assert error == (
            "mesh.yaml:3: routes.outbound.0.direct_response.status: must be a status code from 200 to 599, not 700"
        )
        error = refused("routes:\n  outbound:\n    - direct_response: {body: x}\n")
        assert error == "mesh.yaml:3: routes.outbound.0.direct_response: needs status"

    def test_directResponseBodyWithoutContent(self) -> None:
        error = refused("routes:\n  outbound:\n    - direct_response: {status: 204, body: x}\n")
        assert error.startswith("mesh.yaml:3: routes.outbound.0.direct_response.body: ")

    def test_prefixRewriteWithRegex(self) -> None:
        error = refused(
            "routes:\n  outbound:\n    - cluster: peer\n      match: {regex: '/a.*'}\n"
            "      prefix_rewrite: /b\n"
        )
        assert error.startswith("mesh.yaml:5: routes.outbound.0.prefix_rewrite: ")

    def test_badRewrites(self) -> None:
        error = refused("routes:\n  outbound:\n    - cluster: peer\n      prefix_rewrite: 'v2'\n")
        assert error == "mesh.yaml:4: routes.outbound.0.prefix_rewrite: must start with /, not 'v2'"
        error = refused("routes:\n  outbound:\n    - cluster: peer\n      host_rewrite: '*.a'\n")
        assert error.startswith("mesh.yaml:4: routes.outbound.0.host_rewrite: ")

    def test_topLevelOptionTypes(self) -> None:
        assert refused("xff_num_trusted_hops: -1\n") == (
            "mesh.yaml:1: xff_num_trusted_hops: must be an integer at least 0, not -1"
        )
        assert refused("normalize_path: yes please\n") == (
            "mesh.yaml:1: normalize_path: must be true or false, not 'yes please'"
        )
        assert refused("path_with_escaped_slashes: drop\n") == (
            "mesh.yaml:1: path_with_escaped_slashes: must be one of reject, keep, unescape, not 'drop'"
        )
        assert refused("retry_buffer_limit: 1.5\n") == (
            "mesh.yaml:1: retry_buffer_limit: must be an integer at least 0, not 1.5"
        )

    def test_sectionsMustBeMappings(self) -> None:
        assert refused("clusters: [a]\n") == "mesh.yaml:1: clusters: must be a mapping"
        assert refused("routes:\n  outbound: {cluster: peer}\n") == (
            "mesh.yaml:2: routes.outbound: must be a list"
        )


class TestSidecarMesh:
    """
    L{SidecarConfig.mesh}: a default cluster per listener from the flags,
    under the file's.
    """

    def test_defaults(self) -> None:
        mesh = SidecarConfig().mesh()
        assert set(mesh.clusters) == {"peer", "local"}
        assert mesh.clusters["peer"] == ClusterConfig(
            "peer", endpoints=(UpstreamURL("http", "127.0.0.1", 8083),), weights=(1,)
        )
        assert mesh.clusters["local"] == ClusterConfig(
            "local", endpoints=(UpstreamURL("http", "127.0.0.1", 6060),), weights=(1,)
        )
        assert mesh.routes == {
            "outbound": (Route("outbound-default", cluster="peer"),),
            "inbound": (Route("inbound-default", cluster="local"),),
        }
        assert mesh.paths == PathOptions()
        assert mesh.xffNumTrustedHops == 0

    def test_flags(self) -> None:
        mesh = SidecarConfig(
            peer="http://10.1.1.1:9000",
            upstream="https://app.local",
            timeout=3.0,
            connect_timeout=1.0,
            pool_size=5,
            pool_idle=2.0,
        ).mesh()
        expected = dict(connectTimeout=1.0, timeout=3.0, poolSize=5, poolIdle=2.0, weights=(1,))
        assert mesh.clusters["peer"] == ClusterConfig(
            "peer", endpoints=(UpstreamURL("http", "10.1.1.1", 9000),), **expected  # type: ignore[arg-type]
        )
        assert mesh.clusters["local"] == ClusterConfig(
            "local", endpoints=(UpstreamURL("https", "app.local", 443),), **expected  # type: ignore[arg-type]
        )

    def test_fileClustersOverrideFlags(self) -> None:
        config = sidecar(
            """\
            clusters:
              local:
                endpoints: [http://10.0.0.5:7000, http://10.0.0.6:7000]
              extra:
                endpoints: [http://10.0.0.7]
            """,
            upstream="http://127.0.0.1:1234",
        )
        mesh = config.mesh()
        assert set(mesh.clusters) == {"peer", "local", "extra"}
        assert mesh.clusters["local"].endpoints == (
            UpstreamURL("http", "10.0.0.5", 7000),
            UpstreamURL("http", "10.0.0.6", 7000),
        )
        assert mesh.clusters["peer"].endpoints == (UpstreamURL("http", "127.0.0.1", 8083),)
        # Neither listener has routes in the file: each keeps its default.
        assert mesh.routes["inbound"] == (Route("inbound-default", cluster="local"),)

    def test_fileRoutesReplaceOneListenersDefault(self) -> None:
        config = sidecar(
            """\
            clusters:
              api: {endpoints: [http://10.0.0.7]}
            routes:
              outbound:
                - match: {prefix: /api}
                  cluster: api
                - cluster: peer
            merge_slashes: true
            xff_num_trusted_hops: 2
            retry_buffer_limit: 10
            """
        )
        mesh = config.mesh()
        assert [r.name for r in mesh.routes["outbound"]] == ["outbound-0", "outbound-1"]
        assert mesh.routes["inbound"] == (Route("inbound-default", cluster="local"),)
        assert mesh.paths == PathOptions(mergeSlashes=True)
        assert mesh.xffNumTrustedHops == 2
        assert mesh.retryBufferLimit == 10

    def test_fileSettingsBeside(self) -> None:
        config = sidecar("timeout: 7\nclusters:\n  a: {endpoints: [http://a]}\n")
        assert config.timeout == 7
        assert config.mesh().clusters["peer"].timeout == 7


@pytest.fixture
def tempdir() -> Iterator[str]:
    path = tempfile.mkdtemp()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write(directory: str, text: str, name: str = "mesh.yaml") -> str:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))
    return path


class TestCheckConfig:
    def test_valid(self, tempdir: str, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tempdir, EVERY_KEY)
        assert main(["check-config", path]) == 0
        out, err = capsys.readouterr()
        assert out == f"{path}: valid (4 cluster(s), 6 route(s))\n"
        assert err == ""

    def test_emptyFileIsValid(self, tempdir: str, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tempdir, "")
        assert main(["check-config", path]) == 0
        assert capsys.readouterr().out == f"{path}: valid (2 cluster(s), 2 route(s))\n"

    def test_invalid(self, tempdir: str, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tempdir, BASE + "    timeout: soon\n")
        assert main(["check-config", path]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (
            f"{path}:4: clusters.web.timeout: must be a duration such as 250ms, 2s or 1m, not 'soon'\n"
        )

    def test_invalidSetting(self, tempdir: str, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tempdir, "pool_size: -3\n")
        assert main(["check-config", path]) == 1
        assert capsys.readouterr().err.startswith(f"{path}:1: ")

    def test_invalidFilter(self, tempdir: str, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tempdir, "filter: [no-such-filter]\n")
        assert main(["check-config", path]) == 1
        assert "no-such-filter" in capsys.readouterr().err

    def test_notYAML(self, tempdir: str, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tempdir, "clusters: [\n")
        assert main(["check-config", path]) == 1
        assert capsys.readouterr().err.startswith(f"{path}:2: not valid YAML")

    def test_missingFile(self, tempdir: str, capsys: pytest.CaptureFixture[str]) -> None:
        path = os.path.join(tempdir, "absent.yaml")
        assert main(["check-config", path]) == 1
        assert capsys.readouterr().err.startswith(f"{path}: cannot read the file")

    @pytest.mark.parametrize("args", [[], ["a", "b"], ["--nope"]])
    def test_usage(self, args: list, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["check-config"] + args) == 2
        assert capsys.readouterr().err == "usage: python -m easymesh check-config FILE\n"

    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["check-config", "--help"]) == 0
        assert capsys.readouterr() == ("usage: python -m easymesh check-config FILE\n", "")

    def test_unknownCommand(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["frobnicate"]) == 2
        assert "check-config FILE" in capsys.readouterr().err


def test_rate_limit_max_keys_bounded() -> None:
    """
    A route's rate limit keeps at most a million buckets: more is refused
    with the file and line.
    """
    import textwrap as _textwrap

    from easymesh.config.files import parseConfigText as _parse
    from easymesh.config.model import ConfigError as _ConfigError

    text = _textwrap.dedent(
        """\
        routes:
          outbound:
            - match: {prefix: /}
              direct_response: {status: 200, body: ok}
              rate_limit: {rate: 100, burst: 200, key: {header: x-client-id}, max_keys: 100000000000000000000000000000}
        """
    )
    try:
        _parse(text, "rl.yaml")
    except _ConfigError as e:
        assert "rl.yaml:5" in str(e) and "max_keys: must be at most 1000000" in str(e), str(e)
    else:
        raise AssertionError("accepted")


def test_clusterProtocol() -> None:
    mesh = parse(
        """
        clusters:
          grpc-backend:
            endpoints: ["h2c://10.0.0.5:50051"]
            protocol: http2
          h1:
            endpoints: ["http://10.0.0.6:80"]
        """
    )
    assert mesh.clusters["grpc-backend"].protocol == "http2"
    assert mesh.clusters["h1"].protocol == "http1"
    assert "mesh.yaml:4" in refused(
        """
        clusters:
          backend:
            endpoints: ["h2c://10.0.0.5:50051"]
            protocol: http1
        """
    ) or "mesh.yaml:3" in refused(
        """
        clusters:
          backend:
            endpoints: ["h2c://10.0.0.5:50051"]
            protocol: http1
        """
    )
    assert "protocol: must be one of http1, http2" in refused(
        """
        clusters:
          backend:
            endpoints: ["http://10.0.0.5:80"]
            protocol: quic
        """
    )


def test_grpcHealthCheck() -> None:
    """
    C{health_check: {grpc: {service: NAME}}} asks for a gRPC health
    check (C{grpc: {}}: of the whole server) on an HTTP/2 cluster.
    """
    mesh = parse(
        """
        clusters:
          orders:
            endpoints: ["grpc://10.0.0.5:50051"]
            protocol: http2
            health_check: {grpc: {service: orders.v1.Orders}, interval: 2s}
          billing:
            endpoints: ["http://10.0.0.6:50051"]
            protocol: http2
            health_check: {grpc: {}}
        """
    )
    orders = mesh.clusters["orders"].healthCheck
    assert orders is not None and orders.grpc == GrpcHealthCheck("orders.v1.Orders")
    assert orders.interval == 2.0 and orders.path is None
    billing = mesh.clusters["billing"].healthCheck
    assert billing is not None and billing.grpc == GrpcHealthCheck("")


def test_grpcHealthCheckRefused() -> None:
    """
    A gRPC health check with a C{path}, or on a cluster that does not
    speak HTTP/2, is refused with the line that says so.
    """
    both = refused(
        """
        clusters:
          orders:
            endpoints: ["grpc://10.0.0.5:50051"]
            protocol: http2
            health_check:
              path: /healthz
              grpc: {service: orders}
        """
    )
    assert "mesh.yaml:8" in both and "cannot be used with path" in both, both
    for protocol in ("http1", "auto"):
        http1 = refused(
            f"""
            clusters:
              orders:
                endpoints: ["http://10.0.0.5:8080"]
                protocol: {protocol}
                health_check:
                  grpc: {{service: orders}}
            """
        )
        assert "mesh.yaml:7" in http1 and "needs a cluster that speaks HTTP/2" in http1, http1
    unknown = refused(
        """
        clusters:
          orders:
            endpoints: ["grpc://10.0.0.5:50051"]
            protocol: http2
            health_check: {grpc: {name: orders}}
        """
    )
    assert "mesh.yaml:6" in unknown and "name" in unknown, unknown


def test_flagURLsSayHTTP2() -> None:
    """
    An C{--upstream grpc://} or C{--peer h2c://} URL makes its cluster
    speak HTTP/2, without C{protocol} (which the flags cannot give the
    local cluster), and the mesh is accepted.
    """
    config = sidecar(upstream="grpc://127.0.0.1:50051", peer="h2c://127.0.0.1:8083")
    mesh = config.mesh()
    assert mesh.clusters["local"].protocol == "http2"
    assert mesh.clusters["peer"].protocol == "http2"
    checkMesh(mesh)
    plain = sidecar(upstream="http://127.0.0.1:6060").mesh()
    assert plain.clusters["local"].protocol == "http1"


def test_peerProtocolFlag() -> None:
    config = sidecar("peer-protocol: http2\n")
    assert config.mesh().clusters["peer"].protocol == "http2"
    assert config.mesh().clusters["local"].protocol == "http1"


def test_http2SchemesNeedNoProtocol() -> None:
    """
    A cluster whose endpoints all say C{h2c://} or C{grpc://}, and a
    C{--peer h2c://} address, speak HTTP/2 without a C{protocol}: only one
    written as C{http1} contradicts them.
    """
    mesh = parse(
        """
        clusters:
          grpc-backend:
            endpoints: ["h2c://10.0.0.5:50051", "grpc://10.0.0.6:50051"]
        """
    )
    assert mesh.clusters["grpc-backend"].protocol == "http2"
    config = sidecar("peer: h2c://127.0.0.1:9\n")
    assert config.mesh().clusters["peer"].protocol == "http2"
    assert config.mesh().clusters["local"].protocol == "http1"
