# -*- test-case-name: tests.test_mesh_config -*-
"""
Routes and clusters as typed objects, in Envoy's vocabulary.

The YAML file's C{clusters} and C{routes} sections (see
L{easymesh.config.meshfile}) and the flags of the sidecar pair (a single
default cluster per listener) both produce a L{MeshConfig}.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

import attrs

from easymesh.config.addresses import HTTP2_SCHEMES, UpstreamURL
from easymesh.config.model import STREAM_IDLE_TIMEOUT, TUNNEL_IDLE_TIMEOUT, UpstreamTLS

ROUND_ROBIN = "round_robin"
RANDOM = "random"
LEAST_REQUEST = "least_request"
EWMA = "ewma"
RING_HASH = "ring_hash"
LB_POLICIES = (ROUND_ROBIN, RANDOM, LEAST_REQUEST, EWMA, RING_HASH)


@attrs.frozen
class CircuitBreakers:
    """
    Limits past which a cluster fails requests at once (503, C{overflow}).
    """

    maxConnections: int = 1024
    maxPendingRequests: int = 1024
    maxRequests: int = 1024
    maxRetries: int = 3


@attrs.frozen
class OutlierDetection:
    """
    Eject an endpoint after consecutive failures.

    @ivar consecutive5xx: 5xx responses (and gateway failures) in a row
        that eject; 0 disables.
    @ivar consecutiveGatewayFailure: 502/503/504 and connection failures in
        a row that eject; 0 disables.
    @ivar interval: Seconds between sweeps that return ejected endpoints.
    @ivar baseEjectionTime: Seconds of the first ejection; the n-th lasts
        n times as long.
    @ivar maxEjectionPercent: Most of the cluster ever ejected at once.
    """

    consecutive5xx: int = 5
    consecutiveGatewayFailure: int = 5
    interval: float = 10.0
    baseEjectionTime: float = 30.0
    maxEjectionPercent: float = 10.0


#: The path an HTTP health check asks for when none is given.
HEALTH_CHECK_PATH = "/healthz"


@attrs.frozen
class GrpcHealthCheck:
    """
    A gRPC health check (C{grpc.health.v1.Health/Check}) of C{service}
    (C{""}: the server as a whole).
    """

    service: str = ""


@attrs.frozen
class HealthCheck:
    """
    Active health checks of each endpoint every C{interval} seconds: with
    C{grpc}, a gRPC health check that must answer SERVING; otherwise
    C{GET path} (L{HEALTH_CHECK_PATH} if L{None}), which must answer 2xx;
    within C{timeout}.
    """

    path: Optional[str] = None
    interval: float = 5.0
    timeout: float = 1.0
    healthyThreshold: int = 2
    unhealthyThreshold: int = 3
    host: Optional[str] = None
    grpc: Optional[GrpcHealthCheck] = None


@attrs.frozen
class DnsDiscovery:
    """
    Endpoints found by resolving C{name} every C{refresh} seconds.
    """

    name: str
    port: int
    refresh: float = 5.0
    scheme: str = "http"


@attrs.frozen
class HashOn:
    """
    What ring-hash balancing hashes: exactly one of a header, a cookie or
    the source IP.
    """

    header: Optional[str] = None
    cookie: Optional[str] = None
    sourceIp: bool = False


#: Cluster protocols: HTTP/1.1; HTTP/2 (prior-knowledge h2c on plaintext,
#: ALPN h2 over TLS); or auto (over TLS, what the upstream picks by ALPN;
#: HTTP/1.1 on plaintext).
HTTP1, HTTP2, AUTO = "http1", "http2", "auto"
PROTOCOLS = (HTTP1, HTTP2, AUTO)


def protocolOf(endpoints: Sequence[UpstreamURL], given: Optional[str]) -> str:
    """
    A cluster's protocol: the one C{given}; without one, HTTP/2 if every
    endpoint's scheme says so (C{h2c://}, C{grpc://}), HTTP/1.1 otherwise.
    """
    if given is not None:
        return given
    if endpoints and all(url.scheme in HTTP2_SCHEMES for url in endpoints):
        return HTTP2
    return HTTP1


@attrs.frozen
class ClusterConfig:
    """
    A named cluster of endpoints.

    @ivar streamIdleTimeout: Seconds a request's body or its response's may
        stream with no byte moving either way; then the client is answered
        504 (no response head sent yet) or dropped, and the upstream
        connection closed.
    """

    name: str
    endpoints: Tuple[UpstreamURL, ...] = ()
    weights: Tuple[int, ...] = ()
    dns: Optional[DnsDiscovery] = None
    lbPolicy: str = ROUND_ROBIN
    hashOn: Optional[HashOn] = None
    connectTimeout: float = 5.0
    timeout: float = 15.0
    poolSize: int = 128
    poolIdle: float = 4.0
    streamIdleTimeout: float = STREAM_IDLE_TIMEOUT
    circuitBreakers: CircuitBreakers = CircuitBreakers()
    outlierDetection: Optional[OutlierDetection] = None
    healthCheck: Optional[HealthCheck] = None
    #: Identity patterns its C{https://} endpoints must present (with the
    #: workload's certificate; see L{UpstreamTLS}); empty: any the CA
    #: vouches for.
    tlsIdentities: Tuple[str, ...] = ()
    tls: Optional[UpstreamTLS] = None
    #: What its C{http://} and C{https://} endpoints speak (L{PROTOCOLS}).
    protocol: str = HTTP1


@attrs.frozen
class HeaderMatch:
    """
    A condition on a request header: exactly one of C{exact}, C{prefix},
    C{regex} or C{present}.
    """

    name: str
    exact: Optional[str] = None
    prefix: Optional[str] = None
    regex: Optional[str] = None
    present: Optional[bool] = None


@attrs.frozen
class RouteMatch:
    """
    What a request must have for a route to apply; every given condition
    must hold.  C{host} is exact or C{*.suffix}.
    """

    prefix: Optional[str] = None
    path: Optional[str] = None
    regex: Optional[str] = None
    host: Optional[str] = None
    headers: Tuple[HeaderMatch, ...] = ()
    methods: Tuple[str, ...] = ()


@attrs.frozen
class Backoff:
    base: float = 0.025
    max: float = 0.25


@attrs.frozen
class RetryBudget:
    """
    Retries in flight are capped at C{percent} of the cluster's active
    requests, but at least C{minRetriesPerSecond} a second are allowed.
    """

    percent: float = 20.0
    minRetriesPerSecond: float = 10.0


RETRY_CONDITIONS = (
    "connect-failure",
    "reset",
    "gateway-error",
    "5xx",
    "retriable-4xx",
    "timeout",
    # gRPC statuses of a Trailers-Only response, as Envoy names them.
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)


@attrs.frozen
class RetryPolicy:
    """
    When and how often a route's requests are tried again.

    @ivar retryOn: Conditions from L{RETRY_CONDITIONS}.
    @ivar retryStatuses: Status codes that are retried as well.
    """

    retryOn: Tuple[str, ...] = ("connect-failure",)
    retryStatuses: Tuple[int, ...] = ()
    numRetries: int = 1
    perTryTimeout: Optional[float] = None
    backoff: Backoff = Backoff()
    budget: RetryBudget = RetryBudget()


@attrs.frozen
class RateLimitKey:
    """
    What a per-key rate limit counts by: a header, the source IP, or the
    caller's verified identity (exactly one).
    """

    header: Optional[str] = None
    sourceIp: bool = False
    identity: bool = False


@attrs.frozen
class RouteRateLimit:
    """
    Token buckets for a route: one per key (or one for the route, without a
    key), at most C{maxKeys} kept (least recently used dropped first).
    """

    rate: float
    burst: int
    key: Optional[RateLimitKey] = None
    maxKeys: int = 10000


@attrs.frozen
class DirectResponse:
    status: int
    body: bytes = b""


@attrs.frozen
class Route:
    """
    A route: a match and one action (a cluster, weighted clusters or a
    direct response), with optional rewrites, timeout, retries and rate
    limit.

    @ivar name: For logs and metrics; the listener and index by default.
    @ivar timeout: Seconds for the whole request, retries included (then
        504); L{None}: the cluster's per-try timeout only.
    @ivar upgradeTypes: The protocols a request may switch to (HTTP/1.1
        C{Upgrade}, lower case, as Envoy's C{upgrade_configs}); a request
        asking for another is forwarded without the upgrade.
    @ivar tunnelIdleTimeout: Seconds a switched connection (a tunnel) may
        carry no byte either way before it is closed; L{None}: the mesh's
        (C{--tunnel-idle-timeout}).
    @ivar tunnelMaxLifetime: Seconds after which a tunnel is closed
        whatever moves; L{None} for no limit.
    """

    name: str
    match: RouteMatch = RouteMatch(prefix="/")
    cluster: Optional[str] = None
    weightedClusters: Tuple[Tuple[str, int], ...] = ()
    directResponse: Optional[DirectResponse] = None
    prefixRewrite: Optional[str] = None
    hostRewrite: Optional[str] = None
    timeout: Optional[float] = None
    retryPolicy: Optional[RetryPolicy] = None
    rateLimit: Optional[RouteRateLimit] = None
    upgradeTypes: Tuple[str, ...] = ("websocket",)
    tunnelIdleTimeout: Optional[float] = None
    tunnelMaxLifetime: Optional[float] = None

    def clusterNames(self) -> Tuple[str, ...]:
        if self.cluster is not None:
            return (self.cluster,)
        return tuple(name for name, _ in self.weightedClusters)


ESCAPED_SLASHES = ("reject", "keep", "unescape")


@attrs.frozen
class PathOptions:
    """
    How request paths are normalised for matching (Envoy's
    C{normalize_path}, C{merge_slashes} and
    C{path_with_escaped_slashes_action}).
    """

    normalize: bool = True
    mergeSlashes: bool = False
    escapedSlashes: str = "reject"


#: What a listener of the config file speaks: HTTP (both versions, routed
#: as the flags' listeners are), or raw TCP to one cluster.
HTTP_LISTENER, TCP_LISTENER = "http", "tcp"
LISTENER_PROTOCOLS = (HTTP_LISTENER, TCP_LISTENER)

#: The listeners the flags make, whatever the file says.
FLAG_LISTENERS = ("outbound", "inbound")


@attrs.frozen
class ListenerSpec:
    """
    A listener the config file adds beside the flags' C{outbound} and
    C{inbound}.

    @ivar address: A Twisted server endpoint string.
    @ivar cluster: A C{tcp} listener's cluster (its endpoints C{tcp://} or
        C{tls://}); an C{http} listener's default route, if the file gives
        it no routes.
    @ivar tls: C{"mtls"}: callers present a certificate from the CA with
        an identity C{allow} accepts (the workload's certificate and CA
        are the flags'); L{None}: plaintext.
    @ivar idleTimeout: Seconds a connection may carry nothing; L{None} for
        the default (a C{tcp} listener's hour, an C{http} listener's
        C{--idle-timeout}).
    @ivar filters: An C{http} listener's filters, C{NAME[:ARGS]}.
    """

    name: str
    address: str
    protocol: str = HTTP_LISTENER
    cluster: Optional[str] = None
    tls: Optional[str] = None
    allow: Tuple[str, ...] = ()
    idleTimeout: Optional[float] = None
    filters: Tuple[str, ...] = ()


@attrs.frozen
class MeshConfig:
    """
    Every listener's routes and every cluster they use.
    """

    clusters: Mapping[str, ClusterConfig] = attrs.field(factory=dict)
    routes: Mapping[str, Tuple[Route, ...]] = attrs.field(factory=dict)
    paths: PathOptions = PathOptions()
    xffNumTrustedHops: int = 0
    retryBufferLimit: int = 64 * 1024
    #: Seconds a tunnel may be idle when its route does not say.
    tunnelIdleTimeout: float = TUNNEL_IDLE_TIMEOUT
    #: Per listener: an L{easymesh.authz.AuthorizationPolicy}.
    authorization: Mapping[str, Any] = attrs.field(factory=dict)
    #: The file's listeners, beside the flags' (L{FLAG_LISTENERS}).
    listeners: Tuple[ListenerSpec, ...] = ()

    def listenerNames(self) -> Tuple[str, ...]:
        """
        Every listener's name, the flags' first.
        """
        return FLAG_LISTENERS + tuple(spec.name for spec in self.listeners)

    def httpListenerNames(self) -> Tuple[str, ...]:
        """
        The names of the listeners that route HTTP requests.
        """
        return FLAG_LISTENERS + tuple(s.name for s in self.listeners if s.protocol == HTTP_LISTENER)
