# -*- test-case-name: tests.test_config -*-
"""
The sidecar's configuration as typed objects.

Flags, a YAML file and (later) a control plane all produce a
L{SidecarConfig}; the rest of easymesh reads only these objects.
"""

from __future__ import annotations

import math
import socket
from typing import TYPE_CHECKING, Any, Mapping, Optional, Tuple

import attrs

from easymesh.config.addresses import UpstreamURL, tcpPortOf

if TYPE_CHECKING:
    from easymesh.config.mesh import MeshConfig

OUTBOUND = "outbound"
INBOUND = "inbound"

#: The cluster each listener forwards to when configured by flags: the
#: peer sidecar (C{--peer}) and the local app (C{--upstream}).
DEFAULT_CLUSTERS = {OUTBOUND: "peer", INBOUND: "local"}

#: Seconds a request or response body may stream with no byte moving either
#: way (Envoy's default stream idle timeout).
STREAM_IDLE_TIMEOUT = 300.0
#: Seconds a tunnel (a WebSocket, say) may carry no byte either way before
#: it is closed, unless its route says otherwise.
TUNNEL_IDLE_TIMEOUT = 3600.0

#: Seconds before its notAfter from which the workload's certificate is
#: warned about (a week).
TLS_EXPIRY_WARNING = 7 * 24 * 3600.0

#: What a listener may do with a request header whose name holds an
#: underscore (Envoy's C{headers_with_underscores_action}).
UNDERSCORE_ACTIONS = ("allow", "drop_header", "reject_request")


class ConfigError(ValueError):
    """
    A configuration is refused: C{where} names the source and key (and line,
    for a file), C{reason} says what is wrong.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


@attrs.frozen
class FilterSpec:
    """
    A filter named on a listener: the plugin's name and its argument string.
    """

    name: str
    args: str = ""

    @classmethod
    def parse(cls, text: str) -> "FilterSpec":
        name, _, args = text.partition(":")
        return cls(name, args)


@attrs.frozen
class RateLimit:
    """
    A token bucket: C{rate} tokens a second, at most C{burst} saved up; a
    request waits at most C{maxWait} seconds, behind at most C{maxQueue}
    others.
    """

    rate: float
    burst: int
    maxWait: float = 0.0
    maxQueue: int = 1024

    def asArgs(self) -> str:
        return (
            f"rate={self.rate!r},burst={self.burst},"
            f"max_wait={self.maxWait!r},max_queue={self.maxQueue}"
        )


@attrs.frozen
class TLSFiles:
    """
    A workload's certificate (PEM, leaf first), its private key, and the CA
    bundle its peers are verified against.
    """

    cert: str
    key: str
    ca: str


@attrs.frozen
class UpstreamTLS:
    """
    How TLS is originated to C{https://} endpoints: with this workload's
    certificate, verifying the server against the CA bundle and one of the
    C{identities} (patterns: a SPIFFE URI, C{spiffe://domain/prefix/*}, a
    DNS name, or C{*} for any identity the CA vouches for).
    """

    files: TLSFiles
    identities: Tuple[str, ...] = ("*",)


@attrs.frozen
class PoolSettings:
    """
    Upstream connection pooling, timeouts and TLS, shared by a cluster's
    endpoints.

    @ivar tls: For C{https://} endpoints: mTLS with the workload's
        certificate, or L{None} for TLS verified against the system's trust
        store and the URL's host name.
    """

    size: int = 128
    idle: float = 4.0
    connectTimeout: float = 5.0
    responseTimeout: float = 15.0
    tls: Optional[UpstreamTLS] = None
    #: C{http1} or C{http2}: what C{http://} and C{https://} endpoints
    #: speak (C{h2c://} and C{grpc://} speak HTTP/2 whatever this says).
    protocol: str = "http1"


@attrs.frozen
class EdgeLimits:
    """
    Limits on what a client may send, and how slowly.

    @ivar maxRequestLine: Longest request line (then 414).
    @ivar maxHeadSize: Largest request head (then 431).
    @ivar maxHeaders: Most header fields (then 431).
    @ivar maxBody: Largest body, or L{None} for no limit (then 413).
    @ivar headTimeout: Seconds from a request's first byte to its complete
        head (then 408).
    @ivar bodyTimeout: Seconds without a byte while reading a body (then 408).
    @ivar idleTimeout: Seconds a connection may wait for its next request.
    @ivar maxConnections: Most client connections open at once on one
        listener; beyond it, new connections are closed at once.
    @ivar closeTimeout: Seconds a connection that the sidecar closes may
        take to deliver what it is still owed (the end of a response, the
        TLS close alert) before it is aborted.
    @ivar maxConcurrentStreams: Most streams open at once on one HTTP/2
        connection (C{SETTINGS_MAX_CONCURRENT_STREAMS}).
    """

    maxRequestLine: int = 8 * 1024
    maxHeadSize: int = 64 * 1024
    maxHeaders: int = 100
    maxBody: Optional[int] = None
    headTimeout: float = 10.0
    bodyTimeout: float = 30.0
    idleTimeout: float = 60.0
    maxConnections: int = 8192
    maxChunkLine: int = 4 * 1024
    closeTimeout: float = 10.0
    maxConcurrentStreams: int = 100

    def withSidecarHeadroom(self) -> "EdgeLimits":
        """
        These limits, widened by what a sidecar hop adds to a request
        (C{X-Forwarded-For}, C{X-Forwarded-Proto}, C{Via}, C{X-Request-Id}):
        for an inbound listener, so that a request within the limits at the
        caller's outbound is within them here too.
        """
        return attrs.evolve(
            self,
            maxHeaders=self.maxHeaders + SIDECAR_HEADROOM_FIELDS,
            maxHeadSize=self.maxHeadSize + SIDECAR_HEADROOM_BYTES,
        )


#: What one sidecar hop may add to a request head: four fields, and bytes
#: for them (a node name in Via, an address list in X-Forwarded-For).
SIDECAR_HEADROOM_FIELDS = 8
SIDECAR_HEADROOM_BYTES = 1024


_EDGE = EdgeLimits()
_POOL = PoolSettings()


@attrs.frozen
class ListenerConfig:
    """
    One proxy listener: where it listens, where it forwards, and its filters.
    """

    name: str
    endpoint: str
    target: UpstreamURL
    filters: Tuple[FilterSpec, ...] = ()


@attrs.frozen
class SidecarConfig:
    """
    Everything one sidecar process runs with; one attribute per setting in
    L{easymesh.config.settings.SETTINGS}.
    """

    outbound: str = "tcp:8082:interface=127.0.0.1"
    inbound: str = "tcp:8083"
    peer: Optional[str] = None
    upstream: Optional[str] = None
    demo: str = "tcp:6060:interface=127.0.0.1"
    timeout: float = _POOL.responseTimeout
    connect_timeout: float = _POOL.connectTimeout
    pool_size: int = _POOL.size
    pool_idle: float = _POOL.idle
    stream_idle_timeout: float = STREAM_IDLE_TIMEOUT
    tunnel_idle_timeout: float = TUNNEL_IDLE_TIMEOUT
    rate: Optional[float] = None
    burst: Optional[int] = None
    max_wait: float = 0.0
    max_queue: int = 1024
    filter: Tuple[str, ...] = ()
    outbound_filter: Tuple[str, ...] = ()
    inbound_filter: Tuple[str, ...] = ()
    access_log: str = "off"
    drain: float = 5.0
    node_id: Optional[str] = None
    max_request_line: int = _EDGE.maxRequestLine
    max_head_size: int = _EDGE.maxHeadSize
    max_headers: int = _EDGE.maxHeaders
    max_concurrent_streams: int = _EDGE.maxConcurrentStreams
    max_body: Optional[int] = _EDGE.maxBody
    head_timeout: float = _EDGE.headTimeout
    body_timeout: float = _EDGE.bodyTimeout
    idle_timeout: float = _EDGE.idleTimeout
    max_connections: int = _EDGE.maxConnections
    admin: str = "tcp:9901:interface=127.0.0.1"
    otlp_endpoint: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    inbound_tls: str = "off"
    inbound_allow: Tuple[str, ...] = ()
    peer_identity: Tuple[str, ...] = ()
    peer_protocol: str = "http1"
    tls_expiry_warning: float = TLS_EXPIRY_WARNING
    headers_with_underscores_action: str = "drop_header"
    #: What the config file's mesh sections gave: keyword arguments for
    #: L{easymesh.config.mesh.MeshConfig}.
    meshFile: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.burst is not None and self.rate is None:
            raise ConfigError("burst", "needs rate")
        if self.peer is None and tcpPortOf(self.inbound) is None:
            raise ConfigError(
                "peer",
                f"must be given: it cannot be derived from the inbound "
                f"endpoint {self.inbound!r}, which is not tcp:",
            )
        if self.upstream is None and tcpPortOf(self.demo) is None:
            raise ConfigError("demo", "must be a tcp: endpoint")
        given = [self.tls_cert, self.tls_key, self.tls_ca]
        if any(given) and not all(given):
            raise ConfigError("tls-cert", "tls-cert, tls-key and tls-ca go together")
        if self.inbound_tls == "mtls" and self.tlsFiles is None:
            raise ConfigError("inbound-tls", "mtls needs tls-cert, tls-key and tls-ca")
        if self.inbound_allow and self.inbound_tls != "mtls":
            raise ConfigError("inbound-allow", "needs inbound-tls: mtls")
        for name, cluster in self.meshFile.get("clusters", {}).items():
            if cluster.tlsIdentities and self.tlsFiles is None:
                raise ConfigError(
                    "tls-cert", f"cluster {name!r} names tls identities: it needs tls-cert, tls-key and tls-ca"
                )
        if self.peer_identity and (self.tlsFiles is None or not self.peerURL.scheme == "https"):
            raise ConfigError("peer-identity", "needs an https:// peer and tls-cert, tls-key, tls-ca")

    @property
    def tlsFiles(self) -> Optional[TLSFiles]:
        """
        This workload's certificate, key and CA bundle, if configured.
        """
        if self.tls_cert is None or self.tls_key is None or self.tls_ca is None:
            return None
        return TLSFiles(self.tls_cert, self.tls_key, self.tls_ca)

    @property
    def peerURL(self) -> UpstreamURL:
        """
        Where the outbound listener forwards by default.
        """
        if self.peer is not None:
            return UpstreamURL.parse(self.peer)
        return self._loopbackURL(self.inbound)

    @property
    def nodeId(self) -> str:
        """
        This sidecar's name in C{Via} headers: the configured node id, or the
        host name.
        """
        return self.node_id or socket.gethostname().split(".")[0] or "easymesh"

    @property
    def runsDemo(self) -> bool:
        """
        Whether the built-in demo app runs: only when no upstream is given.
        """
        return self.upstream is None

    @property
    def rateLimit(self) -> Optional[RateLimit]:
        if self.rate is None:
            return None
        burst = self.burst if self.burst is not None else max(1, math.ceil(self.rate))
        return RateLimit(self.rate, burst, self.max_wait, self.max_queue)

    @property
    def edgeLimits(self) -> EdgeLimits:
        """
        The limits every listener puts on its clients.
        """
        return EdgeLimits(
            maxRequestLine=self.max_request_line,
            maxHeadSize=self.max_head_size,
            maxHeaders=self.max_headers,
            maxConcurrentStreams=self.max_concurrent_streams,
            maxBody=self.max_body,
            headTimeout=self.head_timeout,
            bodyTimeout=self.body_timeout,
            idleTimeout=self.idle_timeout,
            maxConnections=self.max_connections,
        )

    @property
    def pool(self) -> PoolSettings:
        return PoolSettings(
            self.pool_size, self.pool_idle, self.connect_timeout, self.timeout
        )

    def _loopbackURL(self, endpoint: str) -> UpstreamURL:
        address = tcpPortOf(endpoint)
        assert address is not None
        return UpstreamURL("http", address[0], address[1])

    def listeners(self) -> Tuple[ListenerConfig, ListenerConfig]:
        """
        The outbound and inbound listeners, with their targets and filters.
        """
        peer = self.peerURL
        upstream = (
            UpstreamURL.parse(self.upstream)
            if self.upstream is not None
            else self._loopbackURL(self.demo)
        )
        shared = tuple(FilterSpec.parse(f) for f in self.filter)
        inbound = shared + tuple(FilterSpec.parse(f) for f in self.inbound_filter)
        limit = self.rateLimit
        if limit is not None:
            inbound = (FilterSpec("ratelimit", limit.asArgs()),) + inbound
        return (
            ListenerConfig(
                OUTBOUND,
                self.outbound,
                peer,
                shared + tuple(FilterSpec.parse(f) for f in self.outbound_filter),
            ),
            ListenerConfig(INBOUND, self.inbound, upstream, inbound),
        )

    def mesh(self) -> "MeshConfig":
        """
        Routes and clusters: the file's, over a default cluster per listener
        made from the flags (C{peer} and C{local}) and, for a listener the
        file gives no routes, one route to its default cluster.
        """
        from easymesh.config.mesh import ClusterConfig, MeshConfig, Route, protocolOf

        pool = self.pool
        files = self.tlsFiles
        clusters = {}
        for listener in self.listeners():
            name = DEFAULT_CLUSTERS[listener.name]
            identities = (self.peer_identity or ("*",)) if listener.name == OUTBOUND else ("*",)
            clusters[name] = ClusterConfig(
                name,
                endpoints=(listener.target,),
                weights=(1,),
                connectTimeout=pool.connectTimeout,
                timeout=pool.responseTimeout,
                poolSize=pool.size,
                poolIdle=pool.idle,
                streamIdleTimeout=self.stream_idle_timeout,
                tls=UpstreamTLS(files, identities) if files is not None else None,
                # An h2c:// or grpc:// address speaks HTTP/2 unless a
                # protocol says otherwise (--peer-protocol http1, the
                # default, cannot be told from none).
                protocol=protocolOf(
                    (listener.target,),
                    self.peer_protocol if listener.name == OUTBOUND and self.peer_protocol != "http1" else None,
                ),
            )
        for name, cluster in self.meshFile.get("clusters", {}).items():
            if files is not None and cluster.tls is None:
                # A file's peer cluster replaces the flags' one, but its
                # endpoints must still present a --peer-identity.
                peer = name == DEFAULT_CLUSTERS[OUTBOUND] and self.peer_identity
                identities = cluster.tlsIdentities or (self.peer_identity if peer else ("*",))
                cluster = attrs.evolve(cluster, tls=UpstreamTLS(files, identities))
            clusters[name] = cluster
        routes = {
            listener: (Route(f"{listener}-default", cluster=cluster),)
            for listener, cluster in DEFAULT_CLUSTERS.items()
        }
        routes.update(self.meshFile.get("routes", {}))
        for spec in self.meshFile.get("listeners", ()):
            if spec.protocol == "http" and spec.cluster is not None and spec.name not in routes:
                routes[spec.name] = (Route(f"{spec.name}-default", cluster=spec.cluster),)
        rest = {k: v for k, v in self.meshFile.items() if k not in ("clusters", "routes")}
        rest.setdefault("tunnelIdleTimeout", self.tunnel_idle_timeout)
        return MeshConfig(clusters=clusters, routes=routes, **rest)

