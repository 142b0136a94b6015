# -*- test-case-name: tests.test_mesh_config -*-
"""
Read the C{clusters} and C{routes} sections of a config file (and the
path and forwarding options beside them) into L{easymesh.config.mesh}
objects, naming the file, line and key of anything refused.
"""

from __future__ import annotations

from typing import (
    AbstractSet,
    Any,
    Callable,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from easymesh.config.addresses import UpstreamURL
from easymesh.config.durations import parseDuration
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
    ListenerSpec,
    MeshConfig,
    OutlierDetection,
    PathOptions,
    RateLimitKey,
    RetryBudget,
    RetryPolicy,
    Route,
    RouteMatch,
    RouteRateLimit,
    protocolOf,
)
from easymesh.config.model import DEFAULT_CLUSTERS, ConfigError
from easymesh.config.validate import (
    Problem,
    checkChoice,
    checkFlag,
    checkNotNegative,
    checkPercent,
    checkRate,
    checkText,
    checkWeights,
    retryItem,
    validateCluster,
    validateMatch,
    validateOptions,
    validateListener,
    validateRoute,
    validateRouteNames,
)

#: Top-level keys of a config file read by this module.
MESH_KEYS = frozenset(
    (
        "clusters",
        "routes",
        "listeners",
        "xff_num_trusted_hops",
        "normalize_path",
        "merge_slashes",
        "path_with_escaped_slashes",
        "retry_buffer_limit",
    )
)

#: The keys each part of the C{clusters} and C{routes} sections accepts.
CLUSTER_KEYS = frozenset(
    (
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
        "protocol",
    )
)
ENDPOINT_KEYS = frozenset(("url", "weight"))
DNS_KEYS = frozenset(("name", "port", "refresh", "scheme"))
HASH_ON_KEYS = frozenset(("header", "cookie", "source_ip"))
CLUSTER_TLS_KEYS = frozenset(("identities",))
ROUTE_KEYS = frozenset(
    (
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
        "upgrade_types",
        "tunnel_idle_timeout",
        "tunnel_max_lifetime",
    )
)
MATCH_KEYS = frozenset(("prefix", "path", "regex", "host", "headers", "methods"))
HEADER_MATCH_KEYS = frozenset(("exact", "prefix", "regex", "present"))
RETRY_POLICY_KEYS = frozenset(("retry_on", "num_retries", "per_try_timeout", "backoff", "budget"))
BACKOFF_KEYS = frozenset(("base", "max"))
RATE_LIMIT_KEYS = frozenset(("rate", "burst", "key", "max_keys"))
RATE_LIMIT_KEY_KEYS = frozenset(("header", "source_ip", "identity"))
DIRECT_RESPONSE_KEYS = frozenset(("status", "body"))
LISTENER_KEYS = frozenset(("name", "address", "protocol", "cluster", "tls", "allow", "idle_timeout", "filters"))


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

    def mapping(self, allowed: Optional[AbstractSet[str]] = None) -> Dict[str, "Node"]:
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
        value = self.checked(self.value(), checkText)
        if check is not None:
            self.checked(value, check)
        return str(value)

    def duration(self) -> float:
        """
        Seconds for a duration as written (its range is the model's rule).
        """
        return float(self.checked(self.value(), parseDuration))

    def flag(self) -> bool:
        return bool(self.checked(self.value(), checkFlag))

    def choice(self, choices: Tuple[str, ...]) -> str:
        return str(self.checked(self.value(), checkChoice, choices))

    def checked(self, value: Any, rule: Callable[..., Any], *args: Any) -> Any:
        """
        C{value} if C{rule} (one of L{easymesh.config.validate}, say) holds
        for it, or what the rule returns if not L{None}; else an error with
        its reason.
        """
        try:
            result = rule(value, *args)
        except ValueError as e:
            raise self.error(str(e)) from None
        return value if result is None else result

    def find(self, path: Sequence[Union[str, int]]) -> "Node":
        """
        The node at C{path} (keys and list indexes) under this one, or the
        deepest of its ancestors the file has.
        """
        node = self
        for key in path:
            child = node._at(key)
            if child is None:
                break
            node = child
        return node

    def _at(self, key: Union[str, int]) -> Optional["Node"]:
        import yaml

        if isinstance(self.node, yaml.SequenceNode):
            items = self.node.value
            if isinstance(key, int) and 0 <= key < len(items):
                return self._child(items[key], str(key))
            return None
        if not isinstance(self.node, yaml.MappingNode):
            return None
        pairs = [(k.value, v) for k, v in self.node.value if isinstance(k, yaml.ScalarNode)]
        # Header names are lower-cased in the model, not in the file.
        for same in (lambda k: k == str(key), lambda k: str(k).lower() == str(key).lower()):
            for name, value in pairs:
                if same(name):
                    return self._child(value, name)
        return None


def _refuse(node: Node, problems: Sequence[Problem]) -> None:
    """
    Raise the first of C{problems} (their paths under C{node}) as an error
    naming its line.
    """
    if problems:
        problem = problems[0]
        raise node.find(problem.path).error(problem.reason)


def _real(rule: Callable[[Any], None]) -> Callable[[Node], float]:
    """
    A reader of a number the model keeps as a L{float}, checked by C{rule}
    (one of the model's) before it is converted.
    """
    return lambda node: float(node.checked(node.value(), rule))


def _lower(text: str) -> str:
    """
    C{text} with its ASCII letters lower-cased (others are left for the
    rules to refuse, not folded into ASCII).
    """
    return "".join(c.lower() if c.isascii() else c for c in text)


def _upper(text: str) -> str:
    return "".join(c.upper() if c.isascii() else c for c in text)


def _url(node: Node) -> UpstreamURL:
    text = node.text()
    try:
        return UpstreamURL.parse(text)
    except ValueError as e:
        raise node.error(str(e)) from None


def _readEndpoints(node: Node) -> Dict[str, Any]:
    urls, weights = [], []
    items = node.sequence()
    if not items:
        raise node.error("must list at least one endpoint")
    for item in items:
        if isinstance(item.scalarOrNone(), str):
            urls.append(_url(item))
            weights.append(1)
        else:
            fields = item.mapping(ENDPOINT_KEYS)
            if "url" not in fields:
                raise item.error("needs url")
            urls.append(_url(fields["url"]))
            weights.append(fields["weight"].value() if "weight" in fields else 1)
    return {"endpoints": tuple(urls), "weights": tuple(weights)}


def _readDns(node: Node) -> DnsDiscovery:
    fields = node.mapping(DNS_KEYS)
    for required in ("name", "port"):
        if required not in fields:
            raise node.error(f"needs {required}")
    return DnsDiscovery(
        fields["name"].text(),
        fields["port"].value(),
        fields["refresh"].duration() if "refresh" in fields else 5.0,
        fields["scheme"].value() if "scheme" in fields else "http",
    )


def _readHashOn(node: Node) -> HashOn:
    fields = node.mapping(HASH_ON_KEYS)
    kwargs: Dict[str, Any] = {}
    if "header" in fields:
        kwargs["header"] = _lower(fields["header"].text())
    if "cookie" in fields:
        kwargs["cookie"] = fields["cookie"].text()
    if "source_ip" in fields:
        kwargs["sourceIp"] = _true(fields["source_ip"])
    return HashOn(**kwargs)


def _true(node: Node) -> bool:
    """
    A flag that can only be C{true} (it chooses what to key on).
    """
    if not node.flag():
        raise node.error("must be true")
    return True


def _readCluster(name: str, node: Node) -> ClusterConfig:
    entries = node.mapping(CLUSTER_KEYS)
    kwargs: Dict[str, Any] = {"name": name}
    if "endpoints" in entries:
        kwargs.update(_readEndpoints(entries["endpoints"]))
    given = entries["protocol"].value() if "protocol" in entries else None
    kwargs["protocol"] = protocolOf(kwargs.get("endpoints", ()), given)
    if "dns" in entries:
        kwargs["dns"] = _readDns(entries["dns"])
    if "lb_policy" in entries:
        kwargs["lbPolicy"] = entries["lb_policy"].value()
    if "hash_on" in entries:
        kwargs["hashOn"] = _readHashOn(entries["hash_on"])
    for key, attribute in (
        ("connect_timeout", "connectTimeout"),
        ("timeout", "timeout"),
        ("pool_idle", "poolIdle"),
        ("stream_idle_timeout", "streamIdleTimeout"),
    ):
        if key in entries:
            kwargs[attribute] = entries[key].duration()
    if "pool_size" in entries:
        kwargs["poolSize"] = entries["pool_size"].value()
    if "circuit_breakers" in entries:
        kwargs["circuitBreakers"] = _readObject(
            entries["circuit_breakers"], CircuitBreakers, _CIRCUIT_BREAKER_FIELDS
        )
    if "outlier_detection" in entries:
        kwargs["outlierDetection"] = _readObject(
            entries["outlier_detection"], OutlierDetection, _OUTLIER_DETECTION_FIELDS
        )
    if "health_check" in entries:
        kwargs["healthCheck"] = _readObject(
            entries["health_check"], HealthCheck, _HEALTH_CHECK_FIELDS
        )
    if "tls" in entries:
        fields = entries["tls"].mapping(CLUSTER_TLS_KEYS)
        if "identities" in fields:
            patterns = [item.text() for item in fields["identities"].sequence()]
            if not patterns:
                raise fields["identities"].error("must list at least one identity pattern")
            kwargs["tlsIdentities"] = tuple(patterns)
    cluster = ClusterConfig(**kwargs)
    _refuse(node, validateCluster(cluster))
    return cluster


def _readGrpcHealthCheck(node: Node) -> GrpcHealthCheck:
    fields = node.mapping({"service"})
    if "service" in fields:
        return GrpcHealthCheck(fields["service"].text())
    return GrpcHealthCheck()


_Fields = Mapping[str, Tuple[str, Callable[[Node], Any]]]


def _readObject(node: Node, cls: Any, fields: _Fields) -> Any:
    """
    Read a mapping whose keys each map to one attribute of C{cls}.
    """
    entries = node.mapping(set(fields))
    return cls(**{fields[k][0]: fields[k][1](v) for k, v in entries.items()})


#: Mappings read by L{_readObject}: each key, its attribute and its reader.
_CIRCUIT_BREAKER_FIELDS: _Fields = {
    "max_connections": ("maxConnections", Node.value),
    "max_pending_requests": ("maxPendingRequests", Node.value),
    "max_requests": ("maxRequests", Node.value),
    "max_retries": ("maxRetries", Node.value),
}
_OUTLIER_DETECTION_FIELDS: _Fields = {
    "consecutive_5xx": ("consecutive5xx", Node.value),
    "consecutive_gateway_failure": ("consecutiveGatewayFailure", Node.value),
    "interval": ("interval", Node.duration),
    "base_ejection_time": ("baseEjectionTime", Node.duration),
    "max_ejection_percent": ("maxEjectionPercent", _real(checkPercent)),
}
_HEALTH_CHECK_FIELDS: _Fields = {
    "path": ("path", Node.text),
    "interval": ("interval", Node.duration),
    "timeout": ("timeout", Node.duration),
    "healthy_threshold": ("healthyThreshold", Node.value),
    "unhealthy_threshold": ("unhealthyThreshold", Node.value),
    "host": ("host", Node.text),
    "grpc": ("grpc", _readGrpcHealthCheck),
}
_BUDGET_FIELDS: _Fields = {
    "percent": ("percent", _real(checkPercent)),
    "min_retries_per_second": ("minRetriesPerSecond", _real(checkNotNegative)),
}


def _headerValue(node: Node) -> str:
    """
    A header value to match, as written.
    """
    text = node.written()
    if text is None:
        raise node.error(
            f"must be a header value or a mapping with one of exact, prefix, regex, "
            f"present, not {node.value()!r}"
        )
    return text


def _readHeaderMatch(name: str, node: Node) -> HeaderMatch:
    name = _lower(name)
    if node.isScalar():
        return HeaderMatch(name, exact=_headerValue(node))
    kwargs: Dict[str, Any] = {}
    for key, field in node.mapping(HEADER_MATCH_KEYS).items():
        if key == "present":
            kwargs[key] = field.flag()
        elif key == "regex":
            kwargs[key] = field.text()
        else:
            kwargs[key] = _headerValue(field)
    return HeaderMatch(name, **kwargs)


def _readMatch(node: Node) -> RouteMatch:
    entries = node.mapping(MATCH_KEYS)
    kwargs: Dict[str, Any] = {}
    for key in ("prefix", "path", "regex"):
        if key in entries:
            kwargs[key] = entries[key].text()
    if "host" in entries:
        kwargs["host"] = _lower(entries["host"].text())
    if "headers" in entries:
        kwargs["headers"] = tuple(
            _readHeaderMatch(name, value) for name, value in entries["headers"].mapping().items()
        )
    if "methods" in entries:
        kwargs["methods"] = tuple(_upper(item.text()) for item in entries["methods"].sequence())
    if not any(key in entries for key in ("prefix", "path", "regex")):
        kwargs["prefix"] = "/"
    match = RouteMatch(**kwargs)
    _refuse(node, validateMatch(match))
    return match


#: Read a C{match} mapping (also used by authorization rules).
readMatch = _readMatch


def _readRetryPolicy(node: Node) -> RetryPolicy:
    entries = node.mapping(RETRY_POLICY_KEYS)
    kwargs: Dict[str, Any] = {}
    if "retry_on" in entries:
        items = [item.checked(item.value(), retryItem) for item in entries["retry_on"].sequence()]
        kwargs["retryOn"] = tuple(i for i in items if isinstance(i, str))
        kwargs["retryStatuses"] = tuple(i for i in items if isinstance(i, int))
    if "num_retries" in entries:
        kwargs["numRetries"] = entries["num_retries"].value()
    if "per_try_timeout" in entries:
        kwargs["perTryTimeout"] = entries["per_try_timeout"].duration()
    if "backoff" in entries:
        fields = entries["backoff"].mapping(BACKOFF_KEYS)
        base = fields["base"].duration() if "base" in fields else Backoff().base
        # As Envoy: the cap is ten times the base unless given.
        cap = fields["max"].duration() if "max" in fields else 10 * base
        kwargs["backoff"] = Backoff(base, cap)
    if "budget" in entries:
        kwargs["budget"] = _readObject(entries["budget"], RetryBudget, _BUDGET_FIELDS)
    return RetryPolicy(**kwargs)


def _readRateLimit(node: Node) -> RouteRateLimit:
    entries = node.mapping(RATE_LIMIT_KEYS)
    if "rate" not in entries:
        raise node.error("needs rate")
    rate = _real(checkRate)(entries["rate"])
    kwargs: Dict[str, Any] = {"rate": rate}
    if "burst" in entries:
        kwargs["burst"] = entries["burst"].value()
    else:
        # Enough for one second at the rate.
        kwargs["burst"] = max(1, int(-(-rate // 1)))
    if "key" in entries:
        fields = entries["key"].mapping(RATE_LIMIT_KEY_KEYS)
        key: Dict[str, Any] = {}
        if "header" in fields:
            key["header"] = _lower(fields["header"].text())
        if "source_ip" in fields:
            key["sourceIp"] = _true(fields["source_ip"])
        if "identity" in fields:
            key["identity"] = _true(fields["identity"])
        kwargs["key"] = RateLimitKey(**key)
    if "max_keys" in entries:
        kwargs["maxKeys"] = entries["max_keys"].value()
    return RouteRateLimit(**kwargs)


def _readDirectResponse(node: Node) -> DirectResponse:
    fields = node.mapping(DIRECT_RESPONSE_KEYS)
    if "status" not in fields:
        raise node.error("needs status")
    body = ""
    if "body" in fields and fields["body"].value() is not None:
        body = str(fields["body"].node.value)
    return DirectResponse(fields["status"].value(), body.encode("utf-8"))


def _readRoute(listener: str, index: int, node: Node, clusters: Set[str]) -> Route:
    entries = node.mapping(ROUTE_KEYS)
    kwargs: Dict[str, Any] = {
        "name": entries["name"].text() if "name" in entries else f"{listener}-{index}"
    }
    if "match" in entries:
        kwargs["match"] = _readMatch(entries["match"])
    if "cluster" in entries:
        kwargs["cluster"] = entries["cluster"].text()
    if "weighted_clusters" in entries:
        weightsNode = entries["weighted_clusters"]
        weighted = tuple((name, w.value()) for name, w in weightsNode.mapping().items())
        if not weighted:
            weightsNode.checked((), checkWeights)
        kwargs["weightedClusters"] = weighted
    if "direct_response" in entries:
        kwargs["directResponse"] = _readDirectResponse(entries["direct_response"])
    for key, attribute in (("prefix_rewrite", "prefixRewrite"), ("host_rewrite", "hostRewrite")):
        if key in entries:
            kwargs[attribute] = entries[key].text()
    if "timeout" in entries:
        kwargs["timeout"] = entries["timeout"].duration()
    if "retry_policy" in entries:
        kwargs["retryPolicy"] = _readRetryPolicy(entries["retry_policy"])
    if "rate_limit" in entries:
        kwargs["rateLimit"] = _readRateLimit(entries["rate_limit"])
    if "upgrade_types" in entries:
        kwargs["upgradeTypes"] = tuple(
            item.text().lower() for item in entries["upgrade_types"].sequence()
        )
    for key, attribute in (
        ("tunnel_idle_timeout", "tunnelIdleTimeout"),
        ("tunnel_max_lifetime", "tunnelMaxLifetime"),
    ):
        if key in entries:
            kwargs[attribute] = entries[key].duration()
    route = Route(**kwargs)
    _refuse(node, validateRoute(route, clusters))
    return route


#: Top-level options: their key and the L{MeshConfig} or L{PathOptions}
#: attribute each sets.
_OPTIONS = (
    ("normalize_path", "paths", "normalize"),
    ("merge_slashes", "paths", "mergeSlashes"),
    ("path_with_escaped_slashes", "paths", "escapedSlashes"),
    ("xff_num_trusted_hops", None, "xffNumTrustedHops"),
    ("retry_buffer_limit", None, "retryBufferLimit"),
)


def _readOptions(nodes: Mapping[str, Node]) -> Dict[str, Any]:
    paths = {a: nodes[k].value() for k, within, a in _OPTIONS if within and k in nodes}
    result: Dict[str, Any] = {"paths": PathOptions(**paths)} if paths else {}
    for key, within, attribute in _OPTIONS:
        if not within and key in nodes:
            result[attribute] = nodes[key].value()
    for problem in validateOptions(MeshConfig(**result))[:1]:
        first, *rest = problem.path
        raise nodes[str(first)].find(tuple(rest)).error(problem.reason)
    return result


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
    listeners: Tuple[ListenerSpec, ...] = ()
    if "listeners" in nodes:
        listeners = result["listeners"] = _readListeners(nodes["listeners"])
    if "routes" in nodes:
        known = set(clusters) | set(DEFAULT_CLUSTERS.values())
        routed = MeshConfig(listeners=listeners).httpListenerNames()
        routes: Dict[str, Tuple[Route, ...]] = {}
        for listener, node in nodes["routes"].mapping(frozenset(routed)).items():
            routes[listener] = tuple(
                _readRoute(listener, i, item, known) for i, item in enumerate(node.sequence())
            )
            _refuse(node, validateRouteNames(routes[listener]))
        result["routes"] = routes
    result.update(_readOptions(nodes))
    return result


def _readListeners(node: Node) -> Tuple[ListenerSpec, ...]:
    """
    The C{listeners} list, each entry checked by the model's rules.
    """
    specs = []
    for item in node.sequence():
        entries = item.mapping(LISTENER_KEYS)
        for required in ("name", "address"):
            if required not in entries:
                raise item.error(f"a listener needs {required!r}")
        kwargs: Dict[str, Any] = {"name": entries["name"].text(), "address": entries["address"].text()}
        for key in ("protocol", "cluster", "tls"):
            if key in entries:
                kwargs[key] = entries[key].text()
        if "allow" in entries:
            kwargs["allow"] = tuple(i.text() for i in entries["allow"].sequence())
        if "filters" in entries:
            kwargs["filters"] = tuple(i.text() for i in entries["filters"].sequence())
        if "idle_timeout" in entries:
            kwargs["idleTimeout"] = entries["idle_timeout"].duration()
        spec = ListenerSpec(**kwargs)
        for problem in validateListener(spec, ())[:1]:
            raise item.find(problem.path[2:]).error(problem.reason)
        specs.append(spec)
    names = [s.name for s in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise node.sequence()[i].error(f"listener {name!r} is given twice")
    return tuple(specs)


#: Every part of the C{clusters} and C{routes} sections, by where it is in a
#: file (C{NAME} for a name the file chooses, C{[]} for a list's items),
#: and the keys it accepts.
MESH_SECTIONS: Mapping[str, FrozenSet[str]] = {
    "clusters.NAME": CLUSTER_KEYS,
    "clusters.NAME.endpoints[]": ENDPOINT_KEYS,
    "clusters.NAME.dns": DNS_KEYS,
    "clusters.NAME.hash_on": HASH_ON_KEYS,
    "clusters.NAME.circuit_breakers": frozenset(_CIRCUIT_BREAKER_FIELDS),
    "clusters.NAME.outlier_detection": frozenset(_OUTLIER_DETECTION_FIELDS),
    "clusters.NAME.health_check": frozenset(_HEALTH_CHECK_FIELDS),
    "clusters.NAME.tls": CLUSTER_TLS_KEYS,
    "routes": frozenset(DEFAULT_CLUSTERS),
    "listeners[]": LISTENER_KEYS,
    "routes.LISTENER[]": ROUTE_KEYS,
    "routes.LISTENER[].match": MATCH_KEYS,
    "routes.LISTENER[].match.headers.NAME": HEADER_MATCH_KEYS,
    "routes.LISTENER[].retry_policy": RETRY_POLICY_KEYS,
    "routes.LISTENER[].retry_policy.backoff": BACKOFF_KEYS,
    "routes.LISTENER[].retry_policy.budget": frozenset(_BUDGET_FIELDS),
    "routes.LISTENER[].rate_limit": RATE_LIMIT_KEYS,
    "routes.LISTENER[].rate_limit.key": RATE_LIMIT_KEY_KEYS,
    "routes.LISTENER[].direct_response": DIRECT_RESPONSE_KEYS,
}


__all__ = ["MESH_KEYS", "MESH_SECTIONS", "Node", "readMesh", "MeshConfig"]
