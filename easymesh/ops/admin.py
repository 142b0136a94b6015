# -*- test-case-name: tests.test_admin -*-
"""
The admin listener: readiness and health, Prometheus metrics, the running
config, clusters and error causes as JSON, drain and quit, and a live
dashboard.

It reads the data path's state and never changes it, except through
C{POST /drain} and C{POST /quitquitquit}, which only loopback callers may
send (and no web page: a request with an C{Origin} header naming another
site is refused).
"""

from __future__ import annotations

import ipaddress
import json
import pkgutil
from typing import Any, Callable, Dict, Optional, Tuple, cast
from urllib.parse import urlsplit, urlunsplit

import attrs
from twisted.logger import Logger
from twisted.web import server
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from easymesh import __version__
from easymesh.config.model import EdgeLimits
from easymesh.errors import causesJSON
from easymesh.listener import ProxySite
from easymesh.message import Request

_log = Logger()

#: Settings whose values are never shown.
REDACTED = frozenset(("tls_key",))

#: Settings that are URLs shown without their credentials (user, password
#: and query string).
URL_CREDENTIALS = frozenset(("otlp_endpoint",))


def _withoutCredentials(url: str) -> str:
    """
    C{url} with any user and password, and any query, replaced by
    C{[redacted]}.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "[redacted]@" + netloc.rpartition("@")[2]
    query = "[redacted]" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _jsonable(value: Any) -> Any:
    if attrs.has(type(value)):
        return {f.name: _jsonable(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def configDump(config: Any, mesh: Any) -> Dict[str, Any]:
    """
    The running config as JSON-ready data: settings (secrets, key paths and
    credentials in URLs redacted) and the routes and clusters in force.
    """
    settings = {}
    for field in attrs.fields(type(config)):
        if field.name == "meshFile":
            continue
        value = getattr(config, field.name)
        if field.name in REDACTED and value is not None:
            value = "[redacted]"
        elif field.name in URL_CREDENTIALS and value is not None:
            value = _withoutCredentials(value)
        settings[field.name.replace("_", "-")] = _jsonable(value)
    dumped = _jsonable(mesh) if mesh is not None else {}
    for cluster in dumped.get("clusters", {}).values():
        tls = cluster.get("tls")
        if tls:
            tls["files"]["key"] = "[redacted]"
    return {"settings": settings, "mesh": dumped}


def clustersDump(runtime: Any, now: float) -> Dict[str, Any]:
    """
    Every cluster's endpoints with their health, ejection and load.
    """
    out = {}
    for name, cluster in sorted(runtime.clusters.items()):
        breakers = cluster.breakers
        out[name] = {
            "lb_policy": cluster.config.lbPolicy,
            "active_requests": cluster.active,
            "retries": cluster.retries,
            "connections": breakers.connections,
            "pending": breakers.pending,
            "overflows": dict(breakers.overflows),
            "endpoints": [
                {
                    "address": e.key,
                    "url": str(e.url),
                    "weight": e.weight,
                    "healthy": e.healthy,
                    "ejected": e.ejected,
                    # An ejection whose time is up lasts until the outlier
                    # detector's next sweep, with no time left.
                    "ejected_for": (
                        round(max(0.0, e.ejectedUntil - now), 3) if e.ejectedUntil is not None else 0
                    ),
                    "times_ejected": e.ejections,
                    "available": e.available,
                    "active_requests": e.active,
                    # None until it has answered: no estimate, not 0 ms.
                    "latency_ewma_ms": round(e.ewma(now) * 1000, 3) if e.answered else None,
                    "failures_in_row": e.failures,
                    "last_failure": (
                        {"time": e.lastFailure[0], "cause": e.lastFailure[1]}
                        if e.lastFailure is not None
                        else None
                    ),
                }
                for e in cluster.endpoints
            ],
        }
    return out


def _isLoopback(host: str) -> bool:
    return host == "::1" or host.startswith("127.") or host.startswith("::ffff:127.")


def _namesLoopback(hostHeader: bytes) -> bool:
    """
    Whether a C{Host} header names this machine as C{localhost} or by a
    loopback address.  A page on another site that has pointed its own name
    at 127.0.0.1 (DNS rebinding) sends a C{Host} and an C{Origin} that
    agree, both naming that site: only a loopback name tells them apart.
    """
    text = hostHeader.decode("ascii", "replace").lower()
    if text.startswith("["):
        name, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            return False
    else:
        name = text.partition(":")[0]
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _hostAllowed(request: Any) -> bool:
    """
    Whether an admin request's C{Host} names this machine: C{localhost}, a
    loopback address, or the address the connection arrived on (a scraper
    that reaches the admin listener on the pod's address).  A DNS-rebinding
    page sends a name of its own, which none of these is.
    """
    host = request.getHeader(b"host") or b""
    if _namesLoopback(host):
        return True
    local = getattr(request.getHost(), "host", None)
    if not local or not host:
        return False
    name = host[1:].partition(b"]")[0] if host[:1] == b"[" else host.partition(b":")[0]
    try:
        return ipaddress.ip_address(name.decode("ascii")) == ipaddress.ip_address(local)
    except ValueError:
        return False


class AdminResource(Resource):
    """
    The admin paths.

    @param sidecar: The L{easymesh.service.SidecarService}: C{ready},
        C{draining}, C{startDrain()}, C{runtime}.
    @param config: The L{easymesh.config.model.SidecarConfig} it started
        with.
    @param telemetry: The L{easymesh.ops.telemetry.Telemetry}.
    @param quit: Stops the process (after its drain).

    @ivar started: When it was made, as the sidecar started (POSIX seconds).
    """

    isLeaf = True

    def __init__(
        self, sidecar: Any, config: Any, telemetry: Any, clock: Any, quit: Callable[[], None]
    ) -> None:
        super().__init__()
        self.sidecar = sidecar
        self.config = config
        self.telemetry = telemetry
        self.clock = clock
        self.quit = quit
        self.started = clock.seconds()
        self._assets = dashboardAssets()
        self._gets: Dict[bytes, Callable[[Any], Tuple[int, bytes, bytes]]] = {
            b"/": self._dashboard,
            b"/dashboard.js": self._script,
            b"/ready": self._ready,
            b"/healthz": lambda r: (200, b"text/plain; charset=utf-8", b"ok\n"),
            b"/stats/prometheus": self._prometheus,
            b"/stats/live": self._live,
            b"/config_dump": self._configDump,
            b"/clusters": self._clusters,
            b"/causes": lambda r: self._json(causesJSON()),
        }
        self._posts: Dict[bytes, Callable[[Any], Tuple[int, bytes, bytes]]] = {
            b"/drain": self._drain,
            b"/quitquitquit": self._quit,
        }

    def render(self, request: server.Request) -> bytes:
        path = request.path
        method = request.method
        table = self._posts if method == b"POST" else self._gets
        handler = table.get(path)
        if not _hostAllowed(request):
            # A page whose name was rebound to 127.0.0.1 sends its own name.
            status, kind, body = (
                403,
                b"text/plain; charset=utf-8",
                b"the admin API answers only requests whose Host is localhost, "
                b"a loopback address or the address it was reached on\n",
            )
        elif handler is None:
            known = path in self._gets or path in self._posts
            status, kind, body = (
                (405, b"text/plain; charset=utf-8", b"method not allowed\n")
                if known
                else (404, b"text/plain; charset=utf-8", b"not found\n")
            )
        elif method not in (b"GET", b"HEAD", b"POST") or (method == b"POST") != (table is self._posts):
            status, kind, body = 405, b"text/plain; charset=utf-8", b"method not allowed\n"
        else:
            status, kind, body = handler(request)
        request.setResponseCode(status)
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return body

    # GET

    def _dashboard(self, request: Any) -> Tuple[int, bytes, bytes]:
        return 200, b"text/html; charset=utf-8", self._assets["dashboard.html"]

    def _script(self, request: Any) -> Tuple[int, bytes, bytes]:
        return 200, b"text/javascript; charset=utf-8", self._assets["dashboard.js"]

    def _ready(self, request: Any) -> Tuple[int, bytes, bytes]:
        if self.sidecar.draining:
            return 503, b"text/plain; charset=utf-8", b"draining\n"
        if not self.sidecar.ready:
            return 503, b"text/plain; charset=utf-8", b"starting\n"
        return 200, b"text/plain; charset=utf-8", b"ready\n"

    def _prometheus(self, request: Any) -> Tuple[int, bytes, bytes]:
        metrics = self.telemetry.metrics
        if metrics is None:
            return 404, b"text/plain; charset=utf-8", b"metrics are off\n"
        body, kind = metrics.exposition()
        return 200, kind.encode("ascii"), body

    def _json(self, data: Any) -> Tuple[int, bytes, bytes]:
        return 200, b"application/json", json.dumps(data, indent=1).encode("utf-8")

    def _live(self, request: Any) -> Tuple[int, bytes, bytes]:
        live = self.telemetry.live
        snapshot = live.snapshot() if live is not None else {}
        snapshot["clusters_state"] = clustersDump(self.sidecar.runtime, self.clock.seconds())
        snapshot["state"] = (
            "draining" if self.sidecar.draining else "ready" if self.sidecar.ready else "starting"
        )
        snapshot["node"] = self.config.nodeId
        snapshot["version"] = __version__
        snapshot["started"] = self.started
        return self._json(snapshot)

    def _configDump(self, request: Any) -> Tuple[int, bytes, bytes]:
        reloader = getattr(self.sidecar, "reloader", None)
        config = reloader.current if reloader is not None else self.config
        return self._json(configDump(config, self.sidecar.runtime.mesh))

    def _clusters(self, request: Any) -> Tuple[int, bytes, bytes]:
        return self._json(clustersDump(self.sidecar.runtime, self.clock.seconds()))

    # POST, from loopback only

    def _refusal(self, request: Any) -> Optional[Tuple[int, bytes, bytes]]:
        host = getattr(request.getClientAddress(), "host", "")
        if not _isLoopback(host):
            return 403, b"text/plain; charset=utf-8", b"only loopback callers may do this\n"
        origin = request.getHeader(b"origin")
        if origin is not None:
            ownHost = request.getHeader(b"host") or b""
            if origin.split(b"://", 1)[-1] != ownHost or not _namesLoopback(ownHost):
                return 403, b"text/plain; charset=utf-8", b"cross-site requests are refused\n"
        return None

    def _drain(self, request: Any) -> Tuple[int, bytes, bytes]:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        self.sidecar.startDrain()
        return 200, b"text/plain; charset=utf-8", b"draining\n"

    def _quit(self, request: Any) -> Tuple[int, bytes, bytes]:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        # Answer first; the drain runs as the process stops.
        self.clock.callLater(0, self.quit)
        return 200, b"text/plain; charset=utf-8", b"draining, then exiting\n"


#: The dashboard's files, in C{easymesh/ops/static}.
DASHBOARD_FILES = ("dashboard.html", "dashboard.js")


def dashboardAssets() -> Dict[str, bytes]:
    """
    The dashboard's files, read from the package, once, when the admin
    listener is made: a package reinstalled or upgraded in place under a
    running sidecar does not break its dashboard.

    @raise OSError: A file cannot be read (the package is incomplete).
    """
    assets = {}
    for name in DASHBOARD_FILES:
        data = pkgutil.get_data("easymesh.ops", f"static/{name}")
        if not data:
            raise OSError(f"the dashboard file easymesh/ops/static/{name} is missing or empty")
        assets[name] = data
    return assets


#: The admin listener's limits: every admin request is a bodyless GET or
#: POST, so any body is refused (413) as soon as the head announces one;
#: heads and idle connections are timed out, and connections capped, so
#: that a neighbour on loopback cannot fill the sidecar's disk or
#: descriptors.
ADMIN_LIMITS = EdgeLimits(
    maxRequestLine=8 * 1024,
    maxHeadSize=32 * 1024,
    maxHeaders=64,
    maxBody=0,
    headTimeout=10.0,
    bodyTimeout=10.0,
    idleTimeout=60.0,
    maxConnections=64,
)


class _AdminRequest:
    """
    An admin request as L{AdminResource.render} reads and answers it (the
    parts of L{server.Request} it uses).
    """

    def __init__(self, request: Request, channel: Any) -> None:
        self.method = request.method
        self.path = request.target.split(b"?", 1)[0]
        self.requestHeaders = request.headers
        self._channel = channel
        self.code = 200
        self.responseHeaders = Headers()

    def getHeader(self, name: bytes) -> Optional[bytes]:
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def getHost(self) -> Any:
        return self._channel.getHost()

    def getClientAddress(self) -> Any:
        return self._channel.getPeer()

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders.setRawHeaders(name, [value])


class _AdminExchange:
    """
    One admin request, answered at once and whole.
    """

    def __init__(self, resource: "AdminResource", request: Request, responder: Any) -> None:
        self._resource = resource
        self._request = request
        self._responder = responder

    def start(self) -> None:
        request = _AdminRequest(self._request, self._responder)
        try:
            # It has the parts of server.Request that render uses.
            body = self._resource.render(cast(server.Request, request))
        except Exception:
            _log.failure("Admin request {path!r} failed", path=request.path)
            request.responseHeaders = Headers()
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            body = b"internal error\n"
        request.setHeader(b"content-length", b"%d" % (len(body),))
        responder = self._responder
        responder.sendHead(request.code, b"", request.responseHeaders)
        responder.sendData(body)
        responder.finish(None)

    def done(self, reason: Any = None) -> None:
        pass


class AdminSite(ProxySite):
    """
    The admin listener: the data listeners' strict HTTP/1.1 edge with
    L{ADMIN_LIMITS}, no connection counts of its own in the traffic
    metrics, no logging (admin scrapes are not traffic).
    """

    countsConnections = False

    def handle(self, request: Request, responder: Any, target: bytes) -> _AdminExchange:
        return _AdminExchange(self.resource, request, responder)


def adminSite(resource: AdminResource, clock: Any) -> server.Site:
    """
    The admin listener's site.
    """
    return AdminSite(resource, ADMIN_LIMITS, reactor=clock)
