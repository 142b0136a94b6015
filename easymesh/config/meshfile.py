# -*- test-case-name: tests.test_mesh_config -*-
"""
Read the C{clusters} and C{routes} sections of a config file (and the
path and forwarding options beside them) into L{easymesh.config.mesh}
objects, naming the file, line and key of anything refused.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from easymesh.config.addresses import UpstreamURL
from easymesh.config.durations import parseDuration
from easymesh.config.kinds import isFinite
from easymesh.config.mesh import (
    ESCAPED_SLASHES,
    LB_POLICIES,
    RETRY_CONDITIONS,
    RING_HASH,
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
from easymesh.config.model import DEFAULT_CLUSTERS, ConfigError
from easymesh.headers import TOKEN

#: Top-level keys of a config file read by this module.
MESH_KEYS = frozenset(
    (
        "clusters",
        "routes",
        "xff_num_trusted_hops",
        "normalize_path",
        "merge_slashes",
        "path_with_escaped_slashes",
        "retry_buffer_limit",
    )
)


def construct(node: Any, deep: bool = False) -> Any:
    """
    The value of a composed YAML node, as L{yaml.SafeLoader} makes it.

    @raise ValueError: Its tag cannot make it (an unknown tag, a bad
        C{!!timestamp}, C{!!int} or C{!!bool}, an integer of more digits
        than Python converts, a recursive alias), with the reason.
    """
    import yaml

    try:
        return yaml.SafeLoader("").construct_object(node, deep=deep)
    except yaml.MarkedYAMLError as e:
        raise ValueError(f"cannot be read: {e.problem}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise ValueError(f"cannot be read: {e}") from None
    except (TypeError, AttributeError, KeyError):
        # What SafeLoader raises for a bad !!timestamp or !!bool.
        if isinstance(node, yaml.ScalarNode):
            tag = node.tag.rpartition(":")[2]
            raise ValueError(f"cannot be read: not a valid {tag} {node.value!r}") from None
        raise ValueError("cannot be read: an item is not what its tag says") from None


class Node:
    """
    A YAML node, with where it is (file and line) and its dotted key path,
    for error messages.
    """

    def __init__(self, node: Any, file: str, path: str) -> None:
        self.node = node
        self.file = file
        self.path = path

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def error(self, reason: str) -> ConfigError:
        return ConfigError(f"{self.file}:{self.line}", f"{self.path}: {reason}")

    def _child(self, node: Any, key: str) -> "Node":
        return Node(node, self.file, f"{self.path}.{key}" if self.path else key)

    def mapping(self, allowed: Optional[Set[str]] = None) -> Dict[str, "Node"]:
        """
        The entries of a mapping; keys outside C{allowed} are refused.
        """
        import yaml

        if not isinstance(self.node, yaml.MappingNode):
            raise self.error("must be a mapping")
        entries: Dict[str, Node] = {}
        for keyNode, valueNode in self.node.value:
            key = keyNode.value if isinstance(keyNode, yaml.ScalarNode) else None
            where = Node(keyNode, self.file, self.path)
            if not isinstance(key, str):
                raise where.error("keys must be names")
            if allowed is not None and key not in allowed:
                known = ", ".join(sorted(allowed))
                raise where.error(f"unknown key {key!r} (known keys: {known})")
            if key in entries:
                raise where.error(f"key {key!r} is given twice")
            entries[key] = self._child(valueNode, key)
        return entries

    def sequence(self) -> List["Node"]:
        import yaml

        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error("must be a list")
        return [self._child(n, str(i)) for i, n in enumerate(self.node.value)]

    def isScalar(self) -> bool:
        import yaml

        return isinstance(self.node, yaml.ScalarNode)

    def value(self) -> Any:
        import yaml

        if not isinstance(self.node, yaml.ScalarNode):
            raise self.error("must be a single value")
        try:
            return construct(self.node)
        except ValueError as e:
            raise self.error(str(e)) from None

    def scalarOrNone(self) -> Any:
        """
        The value of a scalar node, or L{None} for a mapping or list.
        """
        import yaml

        return self.value() if isinstance(self.node, yaml.ScalarNode) else None

    def written(self) -> Optional[str]:
        """
        A scalar as it is written (C{1.50} stays C{"1.50"}, C{007} stays
        C{"007"}), or L{None} for null, C{true} or C{false}.
        """
        value = self.value()
        if value is None or isinstance(value, bool):
            return None
        return str(self.node.value)

    def text(self, check: Optional[Callable[[str], Any]] = None) -> str:
        value = self.value()
        if not isinstance(value, str) or not value:
            raise self.error(f"must be text, not {value!r}")
        if check is not None:
            try:
                check(value)
            except ValueError as e:
                raise self.error(str(e)) from None
        return value

    def number(self, minimum: float = 0, integer: bool = False, positive: bool = False) -> Any:
        value = self.value()
        ok = (
            isinstance(value, int if integer else (int, float))
            and not isinstance(value, bool)
            and isFinite(value)
        )
        if not ok or value < minimum or (positive and value <= 0):
            kind = "an integer" if integer else "a number"
            bound = f"above {minimum:g}" if positive else f"at least {minimum:g}"
            raise self.error(f"must be {kind} {bound}, not {value!r}")
        return value

    def duration(self, positive: bool = True) -> float:
        value = self.value()
        try:
            seconds = parseDuration(value)
        except ValueError as e:
            raise self.error(str(e)) from None
        if positive and seconds <= 0:
            raise self.error("must be above zero")
        return seconds

    def flag(self) -> bool:
        value = self.value()
        if not isinstance(value, bool):
            raise self.error(f"must be true or false, not {value!r}")
        return value

    def choice(self, choices: Tuple[str, ...]) -> str:
        value = self.value()
        if value not in choices:
            raise self.error(f"must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    def exactlyOne(self, entries: Mapping[str, "Node"], keys: Tuple[str, ...]) -> str:
        given = [k for k in keys if k in entries]
        if len(given) != 1:
            raise self.error(f"must have exactly one of {', '.join(keys)}")
        return given[0]


def _checkHeaderName(text: str) -> None:
    if not TOKEN.issuperset(text.encode("latin-1", "replace")):
        raise ValueError(f"not a header name: {text!r}")


def _checkIdentityPattern(text: str) -> None:
    from easymesh.tls.identity import IdentityPattern

    IdentityPattern.parse(text)


def _checkRegex(text: str) -> None:
    from easymesh.patterns import PatternError, compilePattern

    try:
        compilePattern(text)
    except PatternError as e:
        raise ValueError(str(e)) from None


def _checkPath(text: str) -> None:
    if not text.startswith("/"):
        raise ValueError(f"must start with /, not {text!r}")
    if not _PATH.match(text):
        raise ValueError(
            f"must be a path of printable ASCII characters (percent-encode the rest), "
            f"without a query or fragment, not {text!r}"
        )


#: What a route's path, prefix or prefix rewrite may contain: the characters
#: a normalised path is made of (see L{easymesh.routing.paths}).
#: Most buckets one route's rate limit may keep (about a kilobyte each).
MAX_RATE_LIMIT_KEYS = 1_000_000

_PATH = re.compile(r"\A[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*\Z")

_HOST = re.compile(r"\A(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")


def _checkHost(text: str) -> None:
    """
    A host name or address, with an optional port.
    """
    if not _HOST.match(text):
        raise ValueError(f"must be a host name, not {text!r}")


def _checkHostName(text: str) -> None:
    """
    A host name or address, without a port.
    """
    _checkHost(text)
    if text.rpartition("]")[2].count(":"):
        raise ValueError(f"must be a host name without a port, not {text!r}")


def _checkHostPattern(text: str) -> None:
    """
    A host as routes match it: a name without a port, or C{*.suffix}.
    """
    try:
        _checkHostName(text[2:] if text.startswith("*.") else text)
    except ValueError:
        raise ValueError(
            f"must be a host name without a port, optionally *.suffix, not {text!r}"
        ) from None


def _url(node: Node) -> UpstreamURL:
    text = node.text()
    try:
        return UpstreamURL.parse(text)
    except ValueError as e:
        raise node.error(str(e)) from None


def _readCluster(name: str, node: Node) -> ClusterConfig:
    entries = node.mapping(
        {
            "endpoints",
            "dns",
            "lb_policy",
            "hash_on",
            "connect_timeout",
            "timeout",
            "pool_size",
            "pool_idle",
            "stream_idle_timeout",
            "circuit_breakers",
            "outlier_detection",
            "health_check",
            "tls",
        }
    )
    node.exactlyOne(entries, ("endpoints", "dns"))
    kwargs: Dict[str, Any] = {"name": name}
    if "endpoints" in entries:
        urls, weights = [], []
        items = entries["endpoints"].sequence()
        if not items:
            raise entries["endpoints"].error("must list at least one endpoint")
        for item in items:
            if isinstance(item.scalarOrNone(), str):
                urls.append(_url(item))
                weights.append(1)
            else:
                fields = item.mapping({"url", "weight"})
                if "url" not in fields:
                    raise item.error("needs url")
                urls.append(_url(fields["url"]))
                weights.append(
                    fields["weight"].number(1, integer=True) if "weight" in fields else 1
                )
        for i, url in enumerate(urls):
            if url in urls[:i]:
                raise items[i].error(f"endpoint {url} is given twice")
        kwargs["endpoints"] = tuple(urls)
        kwargs["weights"] = tuple(weights)
    if "dns" in entries:
        fields = entries["dns"].mapping({"name", "port", "refresh", "scheme"})
        for required in ("name", "port"):
            if required not in fields:
                raise entries["dns"].error(f"needs {required}")
        port = fields["port"].number(1, integer=True)
        if port > 65535:
            raise fields["port"].error(f"must be a port from 1 to 65535, not {port}")
        kwargs["dns"] = DnsDiscovery(
            fields["name"].text(_checkHostName),
            port,
            fields["refresh"].duration() if "refresh" in fields else 5.0,
            fields["scheme"].choice(("http", "https")) if "scheme" in fields else "http",
        )
    if "lb_policy" in entries:
        kwargs["lbPolicy"] = entries["lb_policy"].choice(LB_POLICIES)
    if "hash_on" in entries:
        hashNode = entries["hash_on"]
        fields = hashNode.mapping({"header", "cookie", "source_ip"})
        key = hashNode.exactlyOne(fields, ("header", "cookie", "source_ip"))
        if key == "source_ip":
            if not fields[key].flag():
                raise fields[key].error("must be true")
            kwargs["hashOn"] = HashOn(sourceIp=True)
        elif key == "header":
            kwargs["hashOn"] = HashOn(header=fields[key].text(_checkHeaderName).lower())
        else:
            kwargs["hashOn"] = HashOn(cookie=fields[key].text())
        if kwargs.get("lbPolicy") != RING_HASH:
            raise hashNode.error("is used only with lb_policy: ring_hash")
    elif kwargs.get("lbPolicy") == RING_HASH:
        raise node.error("lb_policy ring_hash needs hash_on")
    for key, attribute in (
        ("connect_timeout", "connectTimeout"),
        ("timeout", "timeout"),
        ("pool_idle", "poolIdle"),
        ("stream_idle_timeout", "streamIdleTimeout"),
    ):
        if key in entries:
            kwargs[attribute] = entries[key].duration()
    if "pool_size" in entries:
        kwargs["poolSize"] = entries["pool_size"].number(1, integer=True)
    if "circuit_breakers" in entries:
        kwargs["circuitBreakers"] = _readObject(
            entries["circuit_breakers"],
            CircuitBreakers,
            {
                "max_connections": ("maxConnections", lambda n: n.number(1, integer=True)),
                "max_pending_requests": ("maxPendingRequests", lambda n: n.number(0, integer=True)),
                "max_requests": ("maxRequests", lambda n: n.number(1, integer=True)),
                "max_retries": ("maxRetries", lambda n: n.number(0, integer=True)),
            },
        )
    if "outlier_detection" in entries:
        kwargs["outlierDetection"] = _readObject(
            entries["outlier_detection"],
            OutlierDetection,
            {
                "consecutive_5xx": ("consecutive5xx", lambda n: n.number(0, integer=True)),
                "consecutive_gateway_failure": (
                    "consecutiveGatewayFailure",
                    lambda n: n.number(0, integer=True),
                ),
                "interval": ("interval", Node.duration),
                "base_ejection_time": ("baseEjectionTime", Node.duration),
                "max_ejection_percent": ("maxEjectionPercent", _percent),
            },
        )
    if "health_check" in entries:
        kwargs["healthCheck"] = _readObject(
            entries["health_check"],
            HealthCheck,
            {
                "path": ("path", lambda n: n.text(_checkPath)),
                "interval": ("interval", Node.duration),
                "timeout": ("timeout", Node.duration),
                "healthy_threshold": ("healthyThreshold", lambda n: n.number(1, integer=True)),
                "unhealthy_threshold": ("unhealthyThreshold", lambda n: n.number(1, integer=True)),
                "host": ("host", lambda n: n.text(_checkHost)),
            },
        )
    if "tls" in entries:
        fields = entries["tls"].mapping({"identities"})
        if "identities" in fields:
            patterns = []
            for item in fields["identities"].sequence():
                patterns.append(item.text(_checkIdentityPattern))
            if not patterns:
                raise fields["identities"].error("must list at least one identity pattern")
            kwargs["tlsIdentities"] = tuple(patterns)
    return ClusterConfig(**kwargs)


def _percent(node: Node) -> float:
    value = node.number(0)
    if value > 100:
        raise node.error(f"must be a percentage from 0 to 100, not {value!r}")
    return float(value)


def _readObject(node: Node, cls: Any, fields: Mapping[str, Tuple[str, Callable[[Node], Any]]]) -> Any:
    """
    Read a mapping whose keys each map to one attribute of C{cls}.
    """
    entries = node.mapping(set(fields))
    return cls(**{fields[k][0]: fields[k][1](v) for k, v in entries.items()})


def _headerValue(node: Node) -> str:
    """
    A header value to match, as written; header values are Latin-1.
    """
    text = node.written()
    if text is None:
        raise node.error(
            f"must be a header value or a mapping with one of exact, prefix, regex, "
            f"present, not {node.value()!r}"
        )
    _checkOrRaise(node, text, _checkHeaderValue)
    return text


def _checkHeaderValue(text: str) -> None:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"must be Latin-1, as header values are, not {text!r}") from None
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"must not contain CR, LF or NUL, not {text!r}")


def _readHeaderMatch(name: str, node: Node) -> HeaderMatch:
    _checkOrRaise(node, name, _checkHeaderName)
    name = name.lower()
    if node.isScalar():
        return HeaderMatch(name, exact=_headerValue(node))
    fields = node.mapping({"exact", "prefix", "regex", "present"})
    key = node.exactlyOne(fields, ("exact", "prefix", "regex", "present"))
    if key == "present":
        return HeaderMatch(name, present=fields[key].flag())
    if key == "regex":
        regex = fields[key].text(_checkRegex)
        _checkOrRaise(fields[key], regex, _checkHeaderValue)
        return HeaderMatch(name, regex=regex)
    return HeaderMatch(name, **{key: _headerValue(fields[key])})


def _checkOrRaise(node: Node, value: str, check: Callable[[str], None]) -> None:
    try:
        check(value)
    except ValueError as e:
        raise node.error(str(e)) from None


def _readMatch(node: Node) -> RouteMatch:
    entries = node.mapping({"prefix", "path", "regex", "host", "headers", "methods"})
    kwargs: Dict[str, Any] = {}
    paths = [k for k in ("prefix", "path", "regex") if k in entries]
    if len(paths) > 1:
        raise node.error("must have at most one of prefix, path, regex")
    for key in paths:
        kwargs[key] = entries[key].text(_checkRegex if key == "regex" else _checkPath)
    if "host" in entries:
        kwargs["host"] = entries["host"].text(_checkHostPattern).lower()
    if "headers" in entries:
        kwargs["headers"] = tuple(
            _readHeaderMatch(name, value) for name, value in entries["headers"].mapping().items()
        )
    if "methods" in entries:
        methods = []
        for item in entries["methods"].sequence():
            method = item.text()
            _checkOrRaise(item, method, _checkHeaderName)
            methods.append(method.upper())
        kwargs["methods"] = tuple(methods)
    if not paths:
        kwargs["prefix"] = "/"
    return RouteMatch(**kwargs)


#: Read a C{match} mapping (also used by authorization rules).
readMatch = _readMatch


def _readRetryPolicy(node: Node) -> RetryPolicy:
    entries = node.mapping({"retry_on", "num_retries", "per_try_timeout", "backoff", "budget"})
    kwargs: Dict[str, Any] = {}
    if "retry_on" in entries:
        conditions: List[str] = []
        statuses: List[int] = []
        for item in entries["retry_on"].sequence():
            value = item.value()
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                statuses.append(value)
            elif isinstance(value, str) and value.isdigit() and 100 <= int(value) <= 599:
                statuses.append(int(value))
            elif value in RETRY_CONDITIONS:
                conditions.append(value)
            else:
                raise item.error(
                    f"must be a status code or one of {', '.join(RETRY_CONDITIONS)}, not {value!r}"
                )
        kwargs["retryOn"] = tuple(conditions)
        kwargs["retryStatuses"] = tuple(statuses)
    if "num_retries" in entries:
        kwargs["numRetries"] = entries["num_retries"].number(0, integer=True)
    if "per_try_timeout" in entries:
        kwargs["perTryTimeout"] = entries["per_try_timeout"].duration()
    if "backoff" in entries:
        backoff = _readObject(
            entries["backoff"],
            Backoff,
            {"base": ("base", Node.duration), "max": ("max", Node.duration)},
        )
        if "max" not in entries["backoff"].mapping():
            # As Envoy: the cap is ten times the base unless given.
            backoff = Backoff(backoff.base, 10 * backoff.base)
        kwargs["backoff"] = backoff
        if kwargs["backoff"].max < kwargs["backoff"].base:
            raise entries["backoff"].error("max must not be below base")
    if "budget" in entries:
        kwargs["budget"] = _readObject(
            entries["budget"],
            RetryBudget,
            {
                "percent": ("percent", _percent),
                "min_retries_per_second": ("minRetriesPerSecond", lambda n: float(n.number(0))),
            },
        )
    return RetryPolicy(**kwargs)


def _readRateLimit(node: Node) -> RouteRateLimit:
    entries = node.mapping({"rate", "burst", "key", "max_keys"})
    if "rate" not in entries:
        raise node.error("needs rate")
    rate = float(entries["rate"].number(0, positive=True))
    burst = entries["burst"].number(1, integer=True) if "burst" in entries else max(1, int(-(-rate // 1)))
    key = None
    if "key" in entries:
        keyNode = entries["key"]
        fields = keyNode.mapping({"header", "source_ip", "identity"})
        which = keyNode.exactlyOne(fields, ("header", "source_ip", "identity"))
        if which == "header":
            key = RateLimitKey(header=fields[which].text(_checkHeaderName).lower())
        elif not fields[which].flag():
            raise fields[which].error("must be true")
        else:
            key = RateLimitKey(sourceIp=which == "source_ip", identity=which == "identity")
    maxKeys = 10000
    if "max_keys" in entries:
        maxKeys = entries["max_keys"].number(1, integer=True)
        if maxKeys > MAX_RATE_LIMIT_KEYS:
            raise entries["max_keys"].error(f"must be at most {MAX_RATE_LIMIT_KEYS}, not {maxKeys}")
    return RouteRateLimit(rate, burst, key, maxKeys)


#: Statuses whose responses have no body.
_NO_BODY = frozenset((204, 304))


def _readRoute(listener: str, index: int, node: Node, clusters: Set[str]) -> Route:
    entries = node.mapping(
        {
            "name",
            "match",
            "cluster",
            "weighted_clusters",
            "direct_response",
            "prefix_rewrite",
            "host_rewrite",
            "timeout",
            "retry_policy",
            "rate_limit",
        }
    )
    action = node.exactlyOne(entries, ("cluster", "weighted_clusters", "direct_response"))
    kwargs: Dict[str, Any] = {
        "name": entries["name"].text() if "name" in entries else f"{listener}-{index}"
    }
    if "match" in entries:
        kwargs["match"] = _readMatch(entries["match"])
    if action == "cluster":
        name = entries["cluster"].text()
        if name not in clusters:
            raise entries["cluster"].error(f"no cluster named {name!r}")
        kwargs["cluster"] = name
    elif action == "weighted_clusters":
        weighted = []
        for name, weightNode in entries["weighted_clusters"].mapping().items():
            if name not in clusters:
                raise weightNode.error(f"no cluster named {name!r}")
            weighted.append((name, weightNode.number(0, integer=True)))
        if not weighted or sum(w for _, w in weighted) == 0:
            raise entries["weighted_clusters"].error("must give some cluster a weight above 0")
        kwargs["weightedClusters"] = tuple(weighted)
    else:
        fields = entries["direct_response"].mapping({"status", "body"})
        if "status" not in fields:
            raise entries["direct_response"].error("needs status")
        status = fields["status"].number(200, integer=True)
        if status > 599:
            raise fields["status"].error(f"must be a status code from 200 to 599, not {status}")
        body = ""
        if "body" in fields and fields["body"].value() is not None:
            body = str(fields["body"].node.value)
        if body and status in _NO_BODY:
            raise fields["body"].error(f"a {status} response has no body")
        kwargs["directResponse"] = DirectResponse(status, body.encode("utf-8"))
    if "prefix_rewrite" in entries:
        kwargs["prefixRewrite"] = entries["prefix_rewrite"].text(_checkPath)
        if kwargs.get("match", RouteMatch(prefix="/")).regex is not None:
            raise entries["prefix_rewrite"].error(
                "needs a prefix or path match (it replaces what they matched), not regex"
            )
    if "host_rewrite" in entries:
        kwargs["hostRewrite"] = entries["host_rewrite"].text(_checkHost)
    if "timeout" in entries:
        kwargs["timeout"] = entries["timeout"].duration()
    if "retry_policy" in entries:
        kwargs["retryPolicy"] = _readRetryPolicy(entries["retry_policy"])
    if "rate_limit" in entries:
        kwargs["rateLimit"] = _readRateLimit(entries["rate_limit"])
    return Route(**kwargs)


def readMesh(nodes: Mapping[str, Node]) -> Dict[str, Any]:
    """
    Read the mesh keys of a config file.

    @param nodes: The top-level entries named in L{MESH_KEYS}.
    @return: Keyword arguments for L{MeshConfig} (those given).
    @raise ConfigError: Something is refused; its file, line and key path
        are named.
    """
    result: Dict[str, Any] = {}
    clusters: Dict[str, ClusterConfig] = {}
    if "clusters" in nodes:
        for name, node in nodes["clusters"].mapping().items():
            clusters[name] = _readCluster(name, node)
        result["clusters"] = clusters
    if "routes" in nodes:
        known = set(clusters) | set(DEFAULT_CLUSTERS.values())
        routes: Dict[str, Tuple[Route, ...]] = {}
        for listener, node in nodes["routes"].mapping(set(DEFAULT_CLUSTERS)).items():
            routes[listener] = tuple(
                _readRoute(listener, i, item, known) for i, item in enumerate(node.sequence())
            )
            names = [r.name for r in routes[listener]]
            for i, name in enumerate(names):
                if name in names[:i]:
                    raise node.sequence()[i].error(f"route name {name!r} is given twice")
        result["routes"] = routes
    paths: Dict[str, Any] = {}
    if "normalize_path" in nodes:
        paths["normalize"] = nodes["normalize_path"].flag()
    if "merge_slashes" in nodes:
        paths["mergeSlashes"] = nodes["merge_slashes"].flag()
    if "path_with_escaped_slashes" in nodes:
        paths["escapedSlashes"] = nodes["path_with_escaped_slashes"].choice(ESCAPED_SLASHES)
    if paths:
        result["paths"] = PathOptions(**paths)
    if "xff_num_trusted_hops" in nodes:
        result["xffNumTrustedHops"] = nodes["xff_num_trusted_hops"].number(0, integer=True)
    if "retry_buffer_limit" in nodes:
        result["retryBufferLimit"] = nodes["retry_buffer_limit"].number(0, integer=True)
    return result


__all__ = ["MESH_KEYS", "Node", "readMesh", "MeshConfig"]
