# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics, through C{prometheus_client}.

Import this module only when metrics are on: it imports C{prometheus_client}
(but never C{prometheus_client.twisted}, which imports the reactor).  Each
L{Metrics} owns its own registry, never the library's global one.

Label values are whatever the caller passes, and every distinct value is a
new time series kept for the life of the process.  Pass only names from the
configuration (listener, route, cluster, breaker): never a raw request path,
a host name taken from a request, or any id.

Counters and histograms are exposed without their C{*_created} series.
"""

from __future__ import annotations

from bisect import bisect_left
import platform
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import REGISTRY, CollectorRegistry
from twisted.logger import Logger

from easymesh import __version__

_log = Logger()

#: Each metric: name, type, label names, help.  Registration and
#: the table of docs/operations.md (L{markdownTable}) are both made from it.
METRIC_DOCS: List[Tuple[str, str, Tuple[str, ...], str]] = [
    (
        "easymesh_requests_total",
        "counter",
        ("listener", "route", "cluster", "code_class"),
        "Requests finished, by response status class (2xx, ...; none: no response was sent).",
    ),
    (
        "easymesh_grpc_requests_total",
        "counter",
        ("listener", "route", "cluster", "grpc_status"),
        "gRPC calls finished, by grpc-status name (OK, UNAVAILABLE, ...; other: a value "
        "grpc does not define; -: none was sent). Their easymesh_requests_total code_class is "
        "that of the HTTP status that stands for the grpc-status (UNAVAILABLE: 5xx), as Envoy "
        "counts them.",
    ),
    (
        "easymesh_tcp_connections_total",
        "counter",
        ("listener", "cluster", "ended"),
        "Connections of tcp listeners closed, by how they ended (client_closed, upstream_closed, client_reset, "
        "upstream_reset, idle_timeout, drained, upstream_connect_failure, no_healthy_upstream, overflow, caller_refused).",
    ),
    (
        "easymesh_tcp_bytes_total",
        "counter",
        ("listener", "cluster", "direction"),
        "Bytes carried by tcp listeners, from the client (received) and to it (sent).",
    ),
    (
        "easymesh_request_duration_seconds",
        "histogram",
        ("listener", "route", "cluster"),
        "Time from a request's arrival to the end of its response.",
    ),
    (
        "easymesh_upstream_request_duration_seconds",
        "histogram",
        ("cluster",),
        "Time an upstream took to answer a request.",
    ),
    (
        "easymesh_downstream_connections_active",
        "gauge",
        ("listener",),
        "Client connections open now.",
    ),
    (
        "easymesh_downstream_connections_total",
        "counter",
        ("listener",),
        "Client connections accepted.",
    ),
    (
        "easymesh_upstream_connections_active",
        "gauge",
        ("cluster",),
        "Upstream connections open now.",
    ),
    (
        "easymesh_upstream_connections_total",
        "counter",
        ("cluster",),
        "Upstream connections opened.",
    ),
    (
        "easymesh_upstream_pool_connections",
        "gauge",
        ("cluster", "state"),
        "Upstream pool connections when scraped, idle or active.",
    ),
    (
        "easymesh_tunnels_active",
        "gauge",
        ("listener",),
        "Tunnels (WebSocket connections, switched by an HTTP/1.1 upgrade) open now.",
    ),
    (
        "easymesh_tunnels_total",
        "counter",
        ("listener", "end"),
        "Tunnels ended, by how (client_closed, upstream_closed, client_reset, upstream_reset, "
        "idle_timeout, max_lifetime, drained).",
    ),
    (
        "easymesh_tunnel_bytes_total",
        "counter",
        ("listener", "direction"),
        "Bytes relayed by tunnels that have ended, by direction (from_client, from_upstream).",
    ),
    (
        "easymesh_rate_limited_total",
        "counter",
        ("listener", "route"),
        "Requests refused by a rate limit.",
    ),
    (
        "easymesh_retries_total",
        "counter",
        ("cluster",),
        "Upstream requests retried.",
    ),
    (
        "easymesh_timeouts_total",
        "counter",
        ("cluster",),
        "Upstream requests timed out: no response head in time, or a body stalled too long.",
    ),
    (
        "easymesh_ejections_total",
        "counter",
        ("cluster",),
        "Upstream hosts ejected from load balancing.",
    ),
    (
        "easymesh_overflow_total",
        "counter",
        ("cluster", "breaker"),
        "Requests refused because a circuit breaker was full.",
    ),
    (
        "easymesh_config_reloads_total",
        "counter",
        ("result",),
        "Configuration reloads, by result (success or failure).",
    ),
    (
        "easymesh_tls_certificate_expiry_seconds",
        "gauge",
        ("cert",),
        "Seconds until the notAfter of the workload certificate in use, by "
        "certificate file (negative once expired).",
    ),
    (
        "easymesh_build_info",
        "gauge",
        ("version", "python"),
        "Always 1; the labels name the easymesh and Python versions.",
    ),
]

#: Read from L{Metrics.setPoolSource}'s callable at collection time.
POOL_METRIC = "easymesh_upstream_pool_connections"

#: Read from L{Metrics.setCertificateSource}'s callable at collection time.
CERTIFICATE_METRIC = "easymesh_tls_certificate_expiry_seconds"

_SOURCED = (POOL_METRIC, CERTIFICATE_METRIC)

#: Histogram buckets, in seconds.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

_DOCS = {name: (kind, labels, text) for name, kind, labels, text in METRIC_DOCS}
_CODE_CLASSES = {n: f"{n}xx" for n in range(1, 10)}

PoolSource = Callable[[], Iterable[Tuple[str, int, int]]]
CertificateSource = Callable[[], Iterable[Tuple[str, float]]]


def markdownTable() -> str:
    """
    The metrics as a Markdown table, for docs/operations.md.
    """
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, kind, labels, text in METRIC_DOCS:
        names = ", ".join(f"`{label}`" for label in labels)
        lines.append(f"| `{name}` | {kind} | {names} | {text} |")
    return "\n".join(lines) + "\n"


def codeClass(status: Optional[int]) -> str:
    """
    C{"2xx"} for 200 and the like; C{"none"} when no response was sent.
    """
    if status is None or not 100 <= status <= 999:
        return "none"
    return _CODE_CLASSES[status // 100]


class _Store:
    """
    Every metric of L{METRIC_DOCS} (but those read from a source) as plain
    numbers keyed by label values, turned into metric families only when
    scraped.

    Updating a C{prometheus_client} metric takes a lock and several calls;
    a sidecar updates several per request, so here an update is a dict
    lookup and an addition, and the work moves to the scrape.
    """

    def __init__(self) -> None:
        self.values: Dict[str, Dict[Tuple[str, ...], Any]] = {
            name: {} for name, _, _, _ in METRIC_DOCS if name not in _SOURCED
        }

    def add(self, name: str, labels: Tuple[str, ...], amount: float = 1.0) -> None:
        table = self.values[name]
        table[labels] = table.get(labels, 0.0) + amount

    def set(self, name: str, labels: Tuple[str, ...], value: float) -> None:
        self.values[name][labels] = value

    def observe(self, name: str, labels: Tuple[str, ...], value: float) -> None:
        table = self.values[name]
        entry = table.get(labels)
        if entry is None:
            entry = table[labels] = [[0] * (len(DURATION_BUCKETS) + 1), 0.0]
        entry[0][bisect_left(DURATION_BUCKETS, value)] += 1
        entry[1] += value

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for name, kind, labels, text in METRIC_DOCS:
            if name in _SOURCED:
                continue
            table = self.values[name]
            if kind == "counter":
                family: Union[CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily]
                family = CounterMetricFamily(name, text, labels=labels)
                for key, value in table.items():
                    family.add_metric(key, value)
            elif kind == "gauge":
                family = GaugeMetricFamily(name, text, labels=labels)
                for key, value in table.items():
                    family.add_metric(key, value)
            else:
                family = HistogramMetricFamily(name, text, labels=labels)
                for key, (counts, total) in table.items():
                    buckets = []
                    running = 0
                    for bound, count in zip(_BOUNDS, counts):
                        running += count
                        buckets.append((bound, running))
                    family.add_metric(key, buckets, total)
            yield family


_BOUNDS = tuple(floatToGoString(b) for b in DURATION_BUCKETS) + ("+Inf",)


class _ScrapedGauge:
    """
    A gauge family read from a callable on each scrape: C{source()} gives
    its samples, turned into C{(labels, value)} rows by C{rows}; a failing
    source is logged and gives no samples.
    """

    def __init__(
        self,
        name: str,
        what: str,
        rows: Callable[[Any], Iterable[Tuple[Tuple[str, ...], float]]],
    ) -> None:
        self.name = name
        self.what = what
        self.rows = rows
        self.source: Optional[Callable[[], Any]] = None

    def _family(self) -> GaugeMetricFamily:
        _, labels, text = _DOCS[self.name]
        return GaugeMetricFamily(self.name, text, labels=labels)

    def describe(self) -> List[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        if self.source is not None:
            try:
                rows = list(self.rows(self.source()))
            except Exception:
                _log.failure("Reading {what} for metrics", what=self.what)
                rows = []
            for labels, sample in rows:
                family.add_metric(labels, sample)
        yield family


def _poolRows(pools: Any) -> Iterable[Tuple[Tuple[str, ...], float]]:
    for cluster, idle, active in pools:
        yield (str(cluster), "idle"), float(idle)
        yield (str(cluster), "active"), float(active)


def _certificateRows(certificates: Any) -> Iterable[Tuple[Tuple[str, ...], float]]:
    for cert, left in certificates:
        yield (str(cert),), float(left)


class Metrics:
    """
    The sidecar's metrics, fed by the event methods below.

    @param registry: Where to register; a new registry if L{None}.  Never
        C{prometheus_client}'s global one, which other code shares.
    @param processMetrics: Also expose C{process_*} (CPU, memory, open
        files) on Linux.
    """

    def __init__(
        self, registry: Optional[CollectorRegistry] = None, processMetrics: bool = True
    ) -> None:
        if registry is REGISTRY:
            raise ValueError("Metrics needs a registry of its own")
        self.registry = registry if registry is not None else CollectorRegistry()
        self._store = store = _Store()
        self.registry.register(store)
        self._pools = _ScrapedGauge(POOL_METRIC, "upstream pool sizes", _poolRows)
        self.registry.register(self._pools)
        self._certificates = _ScrapedGauge(
            CERTIFICATE_METRIC, "certificate expiries", _certificateRows
        )
        self.registry.register(self._certificates)
        if processMetrics:
            ProcessCollector(registry=self.registry)
        for result in ("success", "failure"):
            store.add("easymesh_config_reloads_total", (result,), 0)
        python = f"{platform.python_implementation()} {platform.python_version()}"
        store.set("easymesh_build_info", (__version__, python), 1)
        self._add = store.add
        self._observe = store.observe

    def requestFinished(
        self, listener: str, route: str, cluster: str, status: Optional[int], duration: float
    ) -> None:
        """
        A request is done after C{duration} seconds; C{status} is the
        response's status code, or L{None} (or 0) if none was sent.
        """
        self._add("easymesh_requests_total", (listener, route, cluster, codeClass(status)))
        self._observe("easymesh_request_duration_seconds", (listener, route, cluster), duration)

    def grpcFinished(self, listener: str, route: str, cluster: str, status: str) -> None:
        """
        A gRPC call is done with C{status}, a name from
        L{easymesh.grpc.statusName}.
        """
        self._add("easymesh_grpc_requests_total", (listener, route, cluster, status))

    def tcpConnectionDone(self, listener: str, cluster: str, ended: str, bytesIn: int, bytesOut: int) -> None:
        self._add("easymesh_tcp_connections_total", (listener, cluster, ended))
        self._add("easymesh_tcp_bytes_total", (listener, cluster, "received"), bytesIn)
        self._add("easymesh_tcp_bytes_total", (listener, cluster, "sent"), bytesOut)

    def upstreamRequest(self, cluster: str, duration: float) -> None:
        """
        An upstream of C{cluster} answered a request in C{duration} seconds.
        """
        self._observe("easymesh_upstream_request_duration_seconds", (cluster,), duration)

    def downstreamConnectionOpened(self, listener: str) -> None:
        self._add("easymesh_downstream_connections_active", (listener,))
        self._add("easymesh_downstream_connections_total", (listener,))

    def downstreamConnectionClosed(self, listener: str) -> None:
        self._add("easymesh_downstream_connections_active", (listener,), -1)

    def upstreamConnectionOpened(self, cluster: str) -> None:
        self._add("easymesh_upstream_connections_active", (cluster,))
        self._add("easymesh_upstream_connections_total", (cluster,))

    def upstreamConnectionClosed(self, cluster: str) -> None:
        self._add("easymesh_upstream_connections_active", (cluster,), -1)

    def tunnelOpened(self, listener: str) -> None:
        self._add("easymesh_tunnels_active", (listener,))

    def tunnelClosed(self, listener: str, how: str, fromClient: int, fromUpstream: int) -> None:
        self._add("easymesh_tunnels_active", (listener,), -1)
        self._add("easymesh_tunnels_total", (listener, how))
        self._add("easymesh_tunnel_bytes_total", (listener, "from_client"), fromClient)
        self._add("easymesh_tunnel_bytes_total", (listener, "from_upstream"), fromUpstream)

    def setPoolSource(self, source: Optional[PoolSource]) -> None:
        """
        Read C{(cluster, idle, active)} for each upstream pool from
        C{source()} at every scrape; L{None} to stop.
        """
        self._pools.source = source

    def setCertificateSource(self, source: Optional[CertificateSource]) -> None:
        """
        Read C{(certificate file, seconds until its notAfter)} for each
        workload certificate in use from C{source()} at every scrape;
        L{None} to stop.
        """
        self._certificates.source = source

    def requestRateLimited(self, listener: str, route: str) -> None:
        self._add("easymesh_rate_limited_total", (listener, route))

    def upstreamRetried(self, cluster: str) -> None:
        self._add("easymesh_retries_total", (cluster,))

    def upstreamTimedOut(self, cluster: str) -> None:
        self._add("easymesh_timeouts_total", (cluster,))

    def hostEjected(self, cluster: str) -> None:
        self._add("easymesh_ejections_total", (cluster,))

    def breakerOverflowed(self, cluster: str, breaker: str) -> None:
        self._add("easymesh_overflow_total", (cluster, breaker))

    def configReloaded(self, success: bool) -> None:
        self._add("easymesh_config_reloads_total", ("success" if success else "failure",))

    def exposition(self) -> Tuple[bytes, str]:
        """
        The metrics in Prometheus' text format, and its content type.
        """
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
