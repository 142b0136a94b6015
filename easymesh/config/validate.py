# -*- test-case-name: tests.test_config_validate -*-
"""
The rules a L{MeshConfig} must follow, however it was made: read from a
file (L{easymesh.config.meshfile} maps each problem to its line) or built
in code (an xDS translator; L{easymesh.runtime.MeshRuntime.apply} refuses
a model with problems).

A problem's path is in the file's own vocabulary:
C{("routes", "outbound", 2, "host_rewrite")} is the C{host_rewrite} of
the third outbound route.  The C{check*} functions are the rules on single
values; they raise L{ValueError} with the reason.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Collection, Iterable, List, Sequence, Tuple, Union

import attrs

from easymesh.config.kinds import isFinite
from easymesh.config.addresses import HTTP2_SCHEMES, TCP_SCHEMES, checkEndpoint
from easymesh.config.mesh import (
    ESCAPED_SLASHES,
    FLAG_LISTENERS,
    HTTP1,
    LISTENER_PROTOCOLS,
    TCP_LISTENER,
    HTTP2,
    LB_POLICIES,
    PROTOCOLS,
    RETRY_CONDITIONS,
    RING_HASH,
    ClusterConfig,
    DirectResponse,
    HashOn,
    HeaderMatch,
    ListenerSpec,
    MeshConfig,
    RateLimitKey,
    RetryPolicy,
    Route,
    RouteMatch,
    RouteRateLimit,
)
from easymesh.config.model import DEFAULT_CLUSTERS, ConfigError
from easymesh.headers import TOKEN

Path = Tuple[Union[str, int], ...]

#: Most buckets one route's rate limit may keep (about a kilobyte each).
MAX_RATE_LIMIT_KEYS = 1_000_000

#: Statuses whose responses have no body.
NO_BODY = frozenset((204, 304))

#: What a route's path, prefix or prefix rewrite may contain: the characters
#: a normalised path is made of (see L{easymesh.routing.paths}).
_PATH = re.compile(r"\A[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*\Z")

_HOST = re.compile(r"\A(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")


@attrs.frozen
class Problem:
    """
    Something a configuration must not have.

    @ivar path: Where, as keys of the config file (names and list indexes).
    @ivar reason: What is wrong, as an error message says it.
    """

    path: Path
    reason: str

    def __str__(self) -> str:
        if not self.path:
            return self.reason
        return f"{'.'.join(str(key) for key in self.path)}: {self.reason}"


class InvalidConfig(ConfigError):
    """
    A configuration built in code is refused.

    @ivar problems: Every L{Problem} found.
    """

    def __init__(self, problems: Sequence[Problem], where: str = "configuration refused") -> None:
        self.problems = tuple(problems)
        super().__init__(where, "; ".join(str(p) for p in self.problems))


# Rules on single values.


def checkText(value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be text, not {value!r}")


def checkNumber(value: Any, minimum: float = 0, integer: bool = False, positive: bool = False) -> None:
    """
    A finite number (an L{int} if C{integer}) of at least C{minimum}, or
    above it if C{positive}.
    """
    ok = (
        isinstance(value, int if integer else (int, float))
        and not isinstance(value, bool)
        and isFinite(value)
    )
    if not ok or value < minimum or (positive and value <= 0):
        kind = "an integer" if integer else "a number"
        bound = f"above {minimum:g}" if positive else f"at least {minimum:g}"
        raise ValueError(f"must be {kind} {bound}, not {value!r}")


def checkRate(value: Any) -> None:
    """
    A rate (per second): above zero.
    """
    checkNumber(value, 0, positive=True)


def checkNotNegative(value: Any) -> None:
    checkNumber(value, 0)


def checkSeconds(value: Any) -> None:
    """
    A duration, in seconds: above zero.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not isFinite(value):
        raise ValueError(f"must be a duration in seconds, not {value!r}")
    if value <= 0:
        raise ValueError("must be above zero")


def checkPercent(value: Any) -> None:
    checkNumber(value, 0)
    if value > 100:
        raise ValueError(f"must be a percentage from 0 to 100, not {value!r}")


def checkPort(value: Any) -> None:
    checkNumber(value, 1, integer=True)
    if value > 65535:
        raise ValueError(f"must be a port from 1 to 65535, not {value}")


def checkStatus(value: Any) -> None:
    """
    A status a direct response may have.
    """
    checkNumber(value, 200, integer=True)
    if value > 599:
        raise ValueError(f"must be a status code from 200 to 599, not {value}")


def checkMaxKeys(value: Any) -> None:
    checkNumber(value, 1, integer=True)
    if value > MAX_RATE_LIMIT_KEYS:
        raise ValueError(f"must be at most {MAX_RATE_LIMIT_KEYS}, not {value}")


def checkChoice(value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")


def checkFlag(value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")


def checkHeaderName(text: Any) -> None:
    """
    A header name (or a method, also a token).
    """
    checkText(text)
    if not TOKEN.issuperset(text.encode("latin-1", "replace")):
        raise ValueError(f"not a header name: {text!r}")


def checkUpgradeType(text: Any) -> None:
    """
    An upgrade protocol's name, as C{Upgrade} carries it: a token in lower
    case (C{websocket}), without a version.
    """
    checkText(text)
    if not text or text != text.lower() or not all(
        c.isascii() and ord(c) in TOKEN and c != "/" for c in text
    ):
        raise ValueError(f"{text!r} is not a protocol name (a token in lower case, e.g. websocket)")


def checkHeaderValue(text: Any) -> None:
    """
    What a header value may be: Latin-1, without CR, LF or NUL.
    """
    if not isinstance(text, str):
        raise ValueError(f"must be text, not {text!r}")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"must be Latin-1, as header values are, not {text!r}") from None
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"must not contain CR, LF or NUL, not {text!r}")


def checkRegex(text: Any) -> None:
    """
    A pattern L{easymesh.patterns} compiles (linear time).
    """
    from easymesh.patterns import PatternError, compilePattern

    checkText(text)
    try:
        compilePattern(text)
    except PatternError as e:
        raise ValueError(str(e)) from None


def checkPath(text: Any) -> None:
    """
    A path as routes match and rewrite it.
    """
    checkText(text)
    if not text.startswith("/"):
        raise ValueError(f"must start with /, not {text!r}")
    if not _PATH.match(text):
        raise ValueError(
            f"must be a path of printable ASCII characters (percent-encode the rest), "
            f"without a query or fragment, not {text!r}"
        )


def checkHost(text: Any) -> None:
    """
    A host name or address, with an optional port.
    """
    if not isinstance(text, str) or not _HOST.match(text):
        raise ValueError(f"must be a host name, not {text!r}")


def checkHostName(text: Any) -> None:
    """
    A host name or address, without a port.
    """
    checkHost(text)
    if text.rpartition("]")[2].count(":"):
        raise ValueError(f"must be a host name without a port, not {text!r}")


def checkHostPattern(text: Any) -> None:
    """
    A host as routes match it: a name without a port, or C{*.suffix}.
    """
    try:
        checkHostName(text[2:] if isinstance(text, str) and text.startswith("*.") else text)
    except ValueError:
        raise ValueError(
            f"must be a host name without a port, optionally *.suffix, not {text!r}"
        ) from None


def checkIdentityPattern(text: Any) -> None:
    from easymesh.tls.identity import IdentityPattern

    checkText(text)
    IdentityPattern.parse(text)


def checkWeights(weights: Sequence[Any]) -> None:
    """
    Weighted clusters' weights: some above zero.
    """
    if not weights or sum(w for w in weights if isinstance(w, int)) == 0:
        raise ValueError("must give some cluster a weight above 0")


def retryItem(value: Any) -> Union[str, int]:
    """
    One item of a C{retry_on} list: a condition or a status code.
    """
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    if isinstance(value, str) and value.isdigit() and 100 <= int(value) <= 599:
        return int(value)
    if value in RETRY_CONDITIONS:
        return str(value)
    raise ValueError(
        f"must be a status code or one of {', '.join(RETRY_CONDITIONS)}, not {value!r}"
    )


# Rules on the model's objects.


class _Problems(List[Problem]):
    def check(self, path: Path, rule: Callable[..., Any], value: Any, *args: Any) -> bool:
        """
        Apply C{rule} to C{value}; note its reason at C{path} if it fails.

        @return: Whether it holds.
        """
        try:
            rule(value, *args)
        except ValueError as e:
            self.append(Problem(path, str(e)))
            return False
        return True

    def exactlyOne(self, path: Path, given: Iterable[bool], names: Tuple[str, ...]) -> None:
        if sum(given) != 1:
            self.append(Problem(path, f"must have exactly one of {', '.join(names)}"))


def validateCluster(cluster: ClusterConfig, at: Path = ()) -> List[Problem]:
    """
    The problems of one cluster, at paths under C{at}.
    """
    p = _Problems()
    p.exactlyOne(at, (bool(cluster.endpoints), cluster.dns is not None), ("endpoints", "dns"))
    for i, url in enumerate(cluster.endpoints):
        if url in cluster.endpoints[:i]:
            p.append(Problem(at + ("endpoints", i), f"endpoint {url} is given twice"))
    if cluster.weights and len(cluster.weights) != len(cluster.endpoints):
        p.append(Problem(at + ("endpoints",), "must have as many weights as endpoints"))
    for i, weight in enumerate(cluster.weights):
        p.check(at + ("endpoints", i, "weight"), checkNumber, weight, 1, True)
    if cluster.dns is not None:
        dns = at + ("dns",)
        p.check(dns + ("port",), checkPort, cluster.dns.port)
        p.check(dns + ("name",), checkHostName, cluster.dns.name)
        p.check(dns + ("refresh",), checkSeconds, cluster.dns.refresh)
        p.check(dns + ("scheme",), checkChoice, cluster.dns.scheme, ("http", "https"))
    p.check(at + ("lb_policy",), checkChoice, cluster.lbPolicy, LB_POLICIES)
    if p.check(at + ("protocol",), checkChoice, cluster.protocol, PROTOCOLS):
        for i, url in enumerate(cluster.endpoints):
            if url.scheme in HTTP2_SCHEMES and cluster.protocol == HTTP1:
                p.append(
                    Problem(
                        at + ("endpoints", i),
                        f"{url.scheme}:// means HTTP/2, which protocol: {cluster.protocol} "
                        "contradicts",
                    )
                )
    kinds = {url.scheme in TCP_SCHEMES for url in cluster.endpoints}
    if len(kinds) > 1:
        p.append(Problem(at + ("endpoints",), "mixes tcp:// or tls:// endpoints with HTTP ones"))
    if cluster.hashOn is not None:
        p.extend(_hashOn(cluster.hashOn, at + ("hash_on",)))
        if cluster.lbPolicy != RING_HASH:
            p.append(Problem(at + ("hash_on",), "is used only with lb_policy: ring_hash"))
    elif cluster.lbPolicy == RING_HASH:
        p.append(Problem(at, "lb_policy ring_hash needs hash_on"))
    for key, seconds in (
        ("connect_timeout", cluster.connectTimeout),
        ("timeout", cluster.timeout),
        ("pool_idle", cluster.poolIdle),
        ("stream_idle_timeout", cluster.streamIdleTimeout),
    ):
        p.check(at + (key,), checkSeconds, seconds)
    p.check(at + ("pool_size",), checkNumber, cluster.poolSize, 1, True)
    breakers = at + ("circuit_breakers",)
    for key, value, minimum in (
        ("max_connections", cluster.circuitBreakers.maxConnections, 1),
        ("max_pending_requests", cluster.circuitBreakers.maxPendingRequests, 0),
        ("max_requests", cluster.circuitBreakers.maxRequests, 1),
        ("max_retries", cluster.circuitBreakers.maxRetries, 0),
    ):
        p.check(breakers + (key,), checkNumber, value, minimum, True)
    if cluster.outlierDetection is not None:
        p.extend(_outlierDetection(cluster.outlierDetection, at + ("outlier_detection",)))
    if cluster.healthCheck is not None:
        p.extend(_healthCheck(cluster.healthCheck, at + ("health_check",)))
        if cluster.healthCheck.grpc is not None and not _speaksHTTP2(cluster):
            p.append(
                Problem(
                    at + ("health_check", "grpc"),
                    "needs a cluster that speaks HTTP/2 (protocol: http2, or h2c:// or grpc:// endpoints)",
                )
            )
        if isTCPCluster(cluster):
            for key in ("path", "grpc", "host"):
                if getattr(cluster.healthCheck, key) is not None:
                    p.append(
                        Problem(at + ("health_check", key), "a tcp:// or tls:// cluster's check is a connect: no " + key)
                    )
    for i, pattern in enumerate(cluster.tlsIdentities):
        p.check(at + ("tls", "identities", i), checkIdentityPattern, pattern)
    return p


def _hashOn(hashOn: HashOn, at: Path) -> List[Problem]:
    p = _Problems()
    given = (hashOn.header is not None, hashOn.cookie is not None, hashOn.sourceIp is True)
    p.exactlyOne(at, given, ("header", "cookie", "source_ip"))
    if hashOn.header is not None:
        p.check(at + ("header",), checkHeaderName, hashOn.header)
    if hashOn.cookie is not None:
        p.check(at + ("cookie",), checkText, hashOn.cookie)
    return p


def _outlierDetection(detection: Any, at: Path) -> List[Problem]:
    p = _Problems()
    p.check(at + ("consecutive_5xx",), checkNumber, detection.consecutive5xx, 0, True)
    p.check(
        at + ("consecutive_gateway_failure",),
        checkNumber,
        detection.consecutiveGatewayFailure,
        0,
        True,
    )
    p.check(at + ("interval",), checkSeconds, detection.interval)
    p.check(at + ("base_ejection_time",), checkSeconds, detection.baseEjectionTime)
    p.check(at + ("max_ejection_percent",), checkPercent, detection.maxEjectionPercent)
    return p


def _speaksHTTP2(cluster: ClusterConfig) -> bool:
    """
    Whether every endpoint of C{cluster} is spoken to over HTTP/2.
    """
    if cluster.protocol == HTTP2:
        return True
    return bool(cluster.endpoints) and all(url.scheme in HTTP2_SCHEMES for url in cluster.endpoints)


def _healthCheck(check: Any, at: Path) -> List[Problem]:
    p = _Problems()
    if check.path is not None:
        p.check(at + ("path",), checkPath, check.path)
        if check.grpc is not None:
            p.append(Problem(at + ("grpc",), "cannot be used with path (a gRPC check asks no path)"))
    p.check(at + ("interval",), checkSeconds, check.interval)
    p.check(at + ("timeout",), checkSeconds, check.timeout)
    p.check(at + ("healthy_threshold",), checkNumber, check.healthyThreshold, 1, True)
    p.check(at + ("unhealthy_threshold",), checkNumber, check.unhealthyThreshold, 1, True)
    if check.host is not None:
        p.check(at + ("host",), checkHost, check.host)
    return p


def validateMatch(match: RouteMatch, at: Path = ()) -> List[Problem]:
    """
    The problems of a route's (or an authorization rule's) match.
    """
    p = _Problems()
    paths = [k for k in ("prefix", "path", "regex") if getattr(match, k) is not None]
    if len(paths) > 1:
        p.append(Problem(at, "must have at most one of prefix, path, regex"))
    for key in paths:
        p.check(at + (key,), checkRegex if key == "regex" else checkPath, getattr(match, key))
    if match.host is not None and p.check(at + ("host",), checkHostPattern, match.host):
        if match.host != match.host.lower():
            p.append(Problem(at + ("host",), f"must be lower case, not {match.host!r}"))
    for header in match.headers:
        p.extend(_headerMatch(header, at + ("headers", header.name)))
    for i, method in enumerate(match.methods):
        p.check(at + ("methods", i), checkHeaderName, method)
    return p


def _headerMatch(match: HeaderMatch, at: Path) -> List[Problem]:
    p = _Problems()
    p.check(at, checkHeaderName, match.name)
    given = [k for k in ("exact", "prefix", "regex", "present") if getattr(match, k) is not None]
    p.exactlyOne(at, (True for _ in given), ("exact", "prefix", "regex", "present"))
    for key in given:
        value = getattr(match, key)
        if key == "present":
            p.check(at + (key,), checkFlag, value)
        elif key != "regex" or p.check(at + (key,), checkRegex, value):
            p.check(at + (key,), checkHeaderValue, value)
    return p


def validateRetryPolicy(policy: RetryPolicy, at: Path = ()) -> List[Problem]:
    p = _Problems()
    for condition in policy.retryOn:
        if p.check(at + ("retry_on",), retryItem, condition) and not isinstance(condition, str):
            p.append(Problem(at + ("retry_on",), f"must be a retry condition, not {condition!r}"))
    for status in policy.retryStatuses:
        if p.check(at + ("retry_on",), retryItem, status) and not isinstance(status, int):
            p.append(Problem(at + ("retry_on",), f"must be a status code, not {status!r}"))
    p.check(at + ("num_retries",), checkNumber, policy.numRetries, 0, True)
    if policy.perTryTimeout is not None:
        p.check(at + ("per_try_timeout",), checkSeconds, policy.perTryTimeout)
    backoff = at + ("backoff",)
    base = p.check(backoff + ("base",), checkSeconds, policy.backoff.base)
    if p.check(backoff + ("max",), checkSeconds, policy.backoff.max) and base:
        if policy.backoff.max < policy.backoff.base:
            p.append(Problem(backoff, "max must not be below base"))
    budget = at + ("budget",)
    p.check(budget + ("percent",), checkPercent, policy.budget.percent)
    p.check(budget + ("min_retries_per_second",), checkNotNegative, policy.budget.minRetriesPerSecond)
    return p


def validateRateLimit(limit: RouteRateLimit, at: Path = ()) -> List[Problem]:
    p = _Problems()
    p.check(at + ("rate",), checkRate, limit.rate)
    p.check(at + ("burst",), checkNumber, limit.burst, 1, True)
    if limit.key is not None:
        p.extend(_rateLimitKey(limit.key, at + ("key",)))
    p.check(at + ("max_keys",), checkMaxKeys, limit.maxKeys)
    return p


def _rateLimitKey(key: RateLimitKey, at: Path) -> List[Problem]:
    p = _Problems()
    given = (key.header is not None, key.sourceIp is True, key.identity is True)
    p.exactlyOne(at, given, ("header", "source_ip", "identity"))
    if key.header is not None:
        p.check(at + ("header",), checkHeaderName, key.header)
    return p


def _directResponse(response: DirectResponse, at: Path) -> List[Problem]:
    p = _Problems()
    if p.check(at + ("status",), checkStatus, response.status):
        if response.body and response.status in NO_BODY:
            p.append(Problem(at + ("body",), f"a {response.status} response has no body"))
    return p


def isTCPCluster(cluster: ClusterConfig) -> bool:
    """
    Whether a cluster's endpoints are raw TCP (C{tcp://}, C{tls://}).
    """
    return any(url.scheme in TCP_SCHEMES for url in cluster.endpoints)


def validateListener(spec: ListenerSpec, clusters: Any, at: Path = ("listeners", 0)) -> List[Problem]:
    """
    The problems of one listener of the config file.

    @param clusters: The clusters by name, to check the one it names; an
        empty collection skips that check (the file's clusters are checked
        together later).
    """
    p = _Problems()
    if p.check(at + ("name",), checkText, spec.name) and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", spec.name):
        p.append(Problem(at + ("name",), f"must be lower-case letters, digits, - and _, not {spec.name!r}"))
    if spec.name in FLAG_LISTENERS:
        p.append(
            Problem(at + ("name",), f"{spec.name!r} is made by the flags (--{spec.name}); choose another name")
        )
    p.check(at + ("address",), checkEndpoint, spec.address)
    p.check(at + ("protocol",), checkChoice, spec.protocol, LISTENER_PROTOCOLS)
    if spec.tls is not None:
        p.check(at + ("tls",), checkChoice, spec.tls, ("mtls",))
    elif spec.allow:
        p.append(Problem(at + ("allow",), "is for a tls: mtls listener"))
    for i, pattern in enumerate(spec.allow):
        p.check(at + ("allow", i), checkIdentityPattern, pattern)
    if spec.idleTimeout is not None:
        p.check(at + ("idle_timeout",), checkSeconds, spec.idleTimeout)
    if spec.protocol == TCP_LISTENER:
        if spec.cluster is None:
            p.append(Problem(at, "a tcp listener needs a cluster"))
        if spec.filters:
            p.append(Problem(at + ("filters",), "filters are for http listeners"))
    if spec.cluster is not None and clusters:
        cluster = clusters.get(spec.cluster)
        if cluster is None:
            p.append(Problem(at + ("cluster",), f"no cluster named {spec.cluster!r}"))
        elif isTCPCluster(cluster) != (spec.protocol == TCP_LISTENER):
            kind = "tcp:// or tls://" if spec.protocol == TCP_LISTENER else "HTTP"
            p.append(Problem(at + ("cluster",), f"a {spec.protocol} listener's cluster needs {kind} endpoints"))
    return p


def validateRoute(route: Route, clusters: Collection[str], at: Path = ()) -> List[Problem]:
    """
    The problems of one route.

    @param clusters: The names of the clusters it may use.
    """
    p = _Problems()
    p.check(at + ("name",), checkText, route.name)
    p.extend(validateMatch(route.match, at + ("match",)))
    given = (route.cluster is not None, bool(route.weightedClusters), route.directResponse is not None)
    p.exactlyOne(at, given, ("cluster", "weighted_clusters", "direct_response"))
    if route.cluster is not None and route.cluster not in clusters:
        p.append(Problem(at + ("cluster",), f"no cluster named {route.cluster!r}"))
    if route.weightedClusters:
        p.extend(_weightedClusters(route.weightedClusters, clusters, at + ("weighted_clusters",)))
    if route.directResponse is not None:
        p.extend(_directResponse(route.directResponse, at + ("direct_response",)))
    if route.prefixRewrite is not None:
        p.check(at + ("prefix_rewrite",), checkPath, route.prefixRewrite)
        if route.match.regex is not None:
            p.append(
                Problem(
                    at + ("prefix_rewrite",),
                    "needs a prefix or path match (it replaces what they matched), not regex",
                )
            )
    if route.hostRewrite is not None:
        p.check(at + ("host_rewrite",), checkHost, route.hostRewrite)
    if route.timeout is not None:
        p.check(at + ("timeout",), checkSeconds, route.timeout)
    if route.retryPolicy is not None:
        p.extend(validateRetryPolicy(route.retryPolicy, at + ("retry_policy",)))
    if route.rateLimit is not None:
        p.extend(validateRateLimit(route.rateLimit, at + ("rate_limit",)))
    for index, kind in enumerate(route.upgradeTypes):
        p.check(at + ("upgrade_types", index), checkUpgradeType, kind)
    if len(set(route.upgradeTypes)) != len(route.upgradeTypes):
        p.append(Problem(at + ("upgrade_types",), "names a protocol twice"))
    if route.tunnelIdleTimeout is not None:
        p.check(at + ("tunnel_idle_timeout",), checkSeconds, route.tunnelIdleTimeout)
    if route.tunnelMaxLifetime is not None:
        p.check(at + ("tunnel_max_lifetime",), checkSeconds, route.tunnelMaxLifetime)
    return p


def _weightedClusters(
    weighted: Tuple[Tuple[str, int], ...], clusters: Collection[str], at: Path
) -> List[Problem]:
    p = _Problems()
    for name, weight in weighted:
        if name not in clusters:
            p.append(Problem(at + (name,), f"no cluster named {name!r}"))
        p.check(at + (name,), checkNumber, weight, 0, True)
    p.check(at, checkWeights, [w for _, w in weighted])
    return p


def validateRouteNames(routes: Sequence[Route], at: Path = ()) -> List[Problem]:
    """
    One listener's routes must have distinct names.
    """
    names = [r.name for r in routes]
    return [
        Problem(at + (i,), f"route name {name!r} is given twice")
        for i, name in enumerate(names)
        if name in names[:i]
    ]


def validateOptions(mesh: MeshConfig) -> List[Problem]:
    """
    The problems of the top-level options (path handling and forwarding).
    """
    p = _Problems()
    p.check(("normalize_path",), checkFlag, mesh.paths.normalize)
    p.check(("merge_slashes",), checkFlag, mesh.paths.mergeSlashes)
    p.check(("path_with_escaped_slashes",), checkChoice, mesh.paths.escapedSlashes, ESCAPED_SLASHES)
    p.check(("xff_num_trusted_hops",), checkNumber, mesh.xffNumTrustedHops, 0, True)
    p.check(("retry_buffer_limit",), checkNumber, mesh.retryBufferLimit, 0, True)
    p.check(("tunnel_idle_timeout",), checkSeconds, mesh.tunnelIdleTimeout)
    return p


def validateAuthorization(policies: Any, listeners: Collection[str] = tuple(DEFAULT_CLUSTERS)) -> List[Problem]:
    """
    The problems of the C{authorization} section: listeners, identity
    patterns and matches.

    @param listeners: The names of the HTTP listeners.
    """
    p = _Problems()
    for listener, policy in policies.items():
        at: Path = ("authorization", listener)
        if listener not in listeners:
            p.append(Problem(at, _unknownListener(listener, listeners)))
        for i, rule in enumerate(getattr(policy, "rules", ())):
            for j, pattern in enumerate(rule.identities):
                p.check(at + ("rules", i, "identities", j), checkIdentityPattern, pattern)
            p.extend(validateMatch(rule.match, at + ("rules", i, "match")))
    return p


def _unknownListener(name: str, names: Collection[str] = tuple(DEFAULT_CLUSTERS)) -> str:
    return f"no listener named {name!r} (listeners: {', '.join(sorted(names))})"


def validateMesh(mesh: MeshConfig) -> List[Problem]:
    """
    Every problem of a mesh configuration; none if it may be run.
    """
    p = _Problems()
    for name, cluster in mesh.clusters.items():
        if cluster.name != name:
            p.append(Problem(("clusters", name), f"is named {cluster.name!r}, not by its key"))
        p.extend(validateCluster(cluster, ("clusters", name)))
    httpListeners = mesh.httpListenerNames()
    names = [spec.name for spec in mesh.listeners]
    for i, spec in enumerate(mesh.listeners):
        p.extend(validateListener(spec, mesh.clusters, ("listeners", i)))
        if spec.name in names[:i]:
            p.append(Problem(("listeners", i, "name"), f"listener {spec.name!r} is given twice"))
        if spec.protocol != TCP_LISTENER and spec.cluster is None and not mesh.routes.get(spec.name):
            p.append(Problem(("listeners", i), "an http listener needs routes (under routes:) or a cluster"))
    tcpClusters = {name for name, c in mesh.clusters.items() if isTCPCluster(c)}
    for listener, routes in mesh.routes.items():
        if listener not in httpListeners:
            p.append(Problem(("routes", listener), _unknownListener(listener, httpListeners)))
        for i, route in enumerate(routes):
            p.extend(validateRoute(route, mesh.clusters, ("routes", listener, i)))
            used = [n for n, _ in route.weightedClusters] + ([route.cluster] if route.cluster else [])
            for name in used:
                if name in tcpClusters:
                    p.append(
                        Problem(("routes", listener, i), f"cluster {name!r} has tcp:// or tls:// endpoints, not HTTP ones")
                    )
        p.extend(validateRouteNames(routes, ("routes", listener)))
    p.extend(validateOptions(mesh))
    p.extend(validateAuthorization(mesh.authorization, httpListeners))
    return p


def checkMesh(mesh: MeshConfig) -> None:
    """
    @raise InvalidConfig: C{mesh} has problems; all are listed.
    """
    problems = validateMesh(mesh)
    if problems:
        raise InvalidConfig(problems)


__all__ = [
    "InvalidConfig",
    "MAX_RATE_LIMIT_KEYS",
    "Problem",
    "checkMesh",
    "validateCluster",
    "validateMatch",
    "validateMesh",
    "validateRoute",
]
