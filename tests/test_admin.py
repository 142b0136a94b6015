"""
Tests for L{easymesh.ops.admin}: every admin path, requested through the
real admin L{Site} over a L{StringTransport}.
"""

from __future__ import annotations

import json
import pkgutil
import random
import re
import socket
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attrs
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from easymesh import __version__
from easymesh.cluster.cluster import Cluster
from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import LEAST_REQUEST, ClusterConfig
from easymesh.config.model import SidecarConfig
from easymesh.errors import CAUSE_TABLE
from easymesh.message import ProxyRequest
from easymesh.message import Response as Answer
from easymesh.ops.admin import AdminResource, adminSite
from easymesh.ops.live import LiveStats
from easymesh.ops.metrics import Metrics
from easymesh.ops.telemetry import Telemetry

KEY_PATH = "/etc/easymesh/very-secret-key.pem"
ADMIN = IPv4Address("TCP", "127.0.0.1", 9901)
LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
LOOPBACK6 = IPv6Address("TCP", "::1", 40000)
MAPPED = IPv6Address("TCP", "::ffff:127.0.0.1", 40000)
REMOTE = IPv4Address("TCP", "10.0.0.1", 40000)
TEXT = b"text/plain; charset=utf-8"


class FakeUpstream:
    """
    An upstream that answers nothing until told to.
    """

    def __init__(self, url: UpstreamURL) -> None:
        self.url = url
        self.requests: List[defer.Deferred[Any]] = []
        self.closed = 0

    def request(self, request: Any, timeout: Optional[float] = None) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.requests.append(d)
        return d

    def close(self) -> defer.Deferred[None]:
        self.closed += 1
        return defer.succeed(None)


def makeUpstream(url: UpstreamURL, pool: Any, reactor: Any, breakers: Any = None) -> FakeUpstream:
    return FakeUpstream(url)


class FakeRuntime:
    def __init__(self, mesh: Any, clusters: Dict[str, Cluster]) -> None:
        self.mesh = mesh
        self.clusters = clusters


class FakeSidecar:
    """
    What the admin resource reads of a L{easymesh.service.SidecarService}.
    """

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.ready = False
        self.draining = False
        self.drains = 0

    def startDrain(self) -> None:
        self.drains += 1
        self.draining = True


@attrs.frozen
class Response:
    code: int
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> Optional[bytes]:
        values = self.headers.getRawHeaders(name)
        if values is None:
            return None
        assert len(values) == 1, values
        return values[0]

    def json(self) -> Any:
        assert self.header(b"content-type") == b"application/json"
        return json.loads(self.body.decode("utf-8"))


def parseResponse(raw: bytes, head: bool = False) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    statusLine, *lines = head.split(b"\r\n")
    version, code, _ = statusLine.split(b" ", 2)
    assert version == b"HTTP/1.1", statusLine
    headers = Headers()
    for line in lines:
        name, _, value = line.partition(b":")
        headers.addRawHeader(name.strip(), value.strip())
    length = headers.getRawHeaders(b"content-length")
    if length is not None and not head:
        assert len(body) == int(length[0]), (length, len(body))
    return Response(int(code), headers, body)


def config() -> SidecarConfig:
    files = dict(tls_cert="/etc/easymesh/cert.pem", tls_key=KEY_PATH, tls_ca="/etc/easymesh/ca.pem")
    orders = ClusterConfig(
        "orders",
        endpoints=(UpstreamURL("http", "10.1.0.1", 80), UpstreamURL("http", "10.1.0.2", 8080)),
        weights=(1, 3),
        lbPolicy=LEAST_REQUEST,
    )
    return SidecarConfig(
        peer="https://peer.example:9443",
        upstream="http://127.0.0.1:5000",
        node_id="web-1",
        meshFile={"clusters": {"orders": orders}},
        **files,
    )


class AdminTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.config = config()
        mesh = self.config.mesh()
        clusters = {
            name: Cluster(c, self.clock, random.Random(0), makeUpstream=makeUpstream)
            for name, c in mesh.clusters.items()
        }
        self.runtime = FakeRuntime(mesh, clusters)
        self.sidecar = FakeSidecar(self.runtime)
        self.metrics = Metrics(processMetrics=False)
        self.live = LiveStats(self.clock, random.Random(0))
        self.telemetry = Telemetry(self.metrics, self.live)
        self.quits: List[float] = []
        self.resource = AdminResource(
            self.sidecar, self.config, self.telemetry, self.clock,
            lambda: self.quits.append(self.clock.seconds()),
        )  # fmt: skip
        self.site = adminSite(self.resource, self.clock)

    def fetch(
        self,
        method: bytes,
        path: bytes,
        headers: Sequence[Tuple[bytes, bytes]] = (),
        peer: Any = LOOPBACK,
        host: Optional[bytes] = b"127.0.0.1:9901",
    ) -> Response:
        """
        Send one request to the admin site, from C{peer}, and read the
        response.
        """
        channel = self.site.buildProtocol(peer)
        transport = StringTransport(hostAddress=ADMIN, peerAddress=peer)
        channel.makeConnection(transport)
        lines = [method + b" " + path + b" HTTP/1.1"]
        if host is not None:
            lines.append(b"Host: " + host)
        lines.append(b"Connection: close")
        if method == b"POST":
            lines.append(b"Content-Length: 0")
        lines.extend(name + b": " + value for name, value in headers)
        channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
        raw = transport.value()
        self.assertTrue(transport.disconnecting, raw)
        channel.connectionLost(Failure(ConnectionDone()))
        response = parseResponse(raw, head=method == b"HEAD")
        self.assertEqual(response.header(b"cache-control"), b"no-store")
        self.assertEqual(response.header(b"x-content-type-options"), b"nosniff")
        return response

    def get(self, path: bytes, **kwargs: Any) -> Response:
        return self.fetch(b"GET", path, **kwargs)

    def pending(self) -> List[Any]:
        """
        The calls an admin request scheduled: all but the listener's
        once-a-second sweep of connection deadlines.
        """
        sweep = self.site.sweeper._sweep
        return [c for c in self.clock.getDelayedCalls() if c.func != sweep]

    def post(self, path: bytes, **kwargs: Any) -> Response:
        return self.fetch(b"POST", path, **kwargs)


class ReadinessTests(AdminTestCase):
    def test_ready(self) -> None:
        """
        /ready is 503 while the sidecar starts, 200 once it is ready, and
        503 again once it drains.
        """
        starting = self.get(b"/ready")
        self.assertEqual((starting.code, starting.header(b"content-type")), (503, TEXT))
        self.assertEqual(starting.body, b"starting\n")
        self.sidecar.ready = True
        ready = self.get(b"/ready")
        self.assertEqual((ready.code, ready.header(b"content-type"), ready.body), (200, TEXT, b"ready\n"))
        self.sidecar.draining = True
        draining = self.get(b"/ready")
        self.assertEqual((draining.code, draining.body), (503, b"draining\n"))

    def test_readyQueryIgnored(self) -> None:
        self.sidecar.ready = True
        self.assertEqual(self.get(b"/ready?verbose=1").code, 200)

    def test_head(self) -> None:
        self.sidecar.ready = True
        response = self.fetch(b"HEAD", b"/ready")
        self.assertEqual((response.code, response.body), (200, b""))

    def test_healthz(self) -> None:
        """
        /healthz answers as long as the process does, starting or draining.
        """
        for ready, draining in [(False, False), (True, False), (True, True)]:
            self.sidecar.ready, self.sidecar.draining = ready, draining
            response = self.get(b"/healthz")
            self.assertEqual((response.code, response.header(b"content-type")), (200, TEXT))
            self.assertEqual(response.body, b"ok\n")

    def test_readableFromAnywhere(self) -> None:
        """
        Reading is not restricted to loopback callers.
        """
        self.sidecar.ready = True
        self.assertEqual(self.get(b"/ready", peer=REMOTE).code, 200)
        self.assertEqual(self.get(b"/clusters", peer=REMOTE).code, 200)


class StatsTests(AdminTestCase):
    def test_prometheus(self) -> None:
        self.telemetry.requestDone("outbound", None, 200, 0.01, None, b"GET", b"/")
        response = self.get(b"/stats/prometheus")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.header(b"content-type").startswith(b"text/plain"))
        families = {
            f.name: f for f in text_string_to_metric_families(response.body.decode("utf-8"))
        }
        self.assertIn("easymesh_build_info", families)
        [sample] = families["easymesh_requests"].samples
        self.assertEqual(
            (sample.labels, sample.value),
            ({"listener": "outbound", "route": "none", "cluster": "none", "code_class": "2xx"}, 1.0),
        )

    def test_prometheusOff(self) -> None:
        self.telemetry.metrics = None
        response = self.get(b"/stats/prometheus")
        self.assertEqual((response.code, response.header(b"content-type")), (404, TEXT))

    def test_live(self) -> None:
        """
        /stats/live has the live figures, the clusters' state and the
        sidecar's.
        """
        request = ProxyRequest(b"GET", b"/", Headers())
        request.cluster = "orders"
        self.telemetry.requestDone("outbound", request, 200, 0.01, None, b"GET", b"/")
        self.telemetry.requestDone("outbound", request, 502, 0.02, None, b"GET", b"/a?token=secret")
        self.clock.advance(1)
        self.sidecar.ready = True
        response = self.get(b"/stats/live")
        self.assertEqual(response.code, 200)
        data = response.json()
        self.assertEqual(
            sorted(data),
            [
                "clusters", "clusters_state", "errors", "listeners", "node", "started", "state",
                "time", "total", "version",
            ],
        )  # fmt: skip
        self.assertEqual(data["state"], "ready")
        self.assertEqual(data["time"], 1001)
        self.assertEqual(data["total"], 2)
        self.assertEqual(sorted(data["listeners"]), ["outbound"])
        self.assertEqual(sorted(data["clusters"]), ["orders"])
        outbound = data["listeners"]["outbound"]
        self.assertEqual(sorted(outbound), ["error_rate", "p50", "p99", "rps", "series"])
        self.assertEqual(outbound["error_rate"], 0.5)
        self.assertEqual(len(outbound["series"]), 60)
        self.assertEqual(sorted(data["clusters_state"]), ["local", "orders", "peer"])
        [error] = data["errors"]
        self.assertEqual((error["path"], error["status"]), ("/a", 502))
        self.assertNotIn(b"secret", response.body)

    def test_liveStates(self) -> None:
        self.assertEqual(self.get(b"/stats/live").json()["state"], "starting")
        self.sidecar.ready = True
        self.sidecar.draining = True
        self.assertEqual(self.get(b"/stats/live").json()["state"], "draining")

    def test_liveOff(self) -> None:
        self.telemetry.live = None
        data = self.get(b"/stats/live").json()
        self.assertEqual(sorted(data), ["clusters_state", "node", "started", "state", "version"])

    def test_liveNamesTheSidecar(self) -> None:
        """
        /stats/live names the sidecar (its node id), its version and when it
        started, for the dashboard's header.
        """
        self.clock.advance(75)
        data = self.get(b"/stats/live").json()
        self.assertEqual(
            (data["node"], data["version"], data["started"], data["time"]),
            ("web-1", __version__, 1000, 1075),
        )

    def test_liveDefaultNode(self) -> None:
        """
        Without a C{--node-id} the node is named as in C{Via}: by the host
        name.
        """
        self.resource.config = SidecarConfig()
        node = self.get(b"/stats/live").json()["node"]
        self.assertEqual(node, socket.gethostname().split(".")[0] or "easymesh")
        self.assertTrue(node)


class ConfigDumpTests(AdminTestCase):
    def test_redacted(self) -> None:
        """
        The settings and the mesh are shown, but not the private key's path:
        neither the setting nor any cluster's TLS files.
        """
        response = self.get(b"/config_dump")
        self.assertEqual(response.code, 200)
        data = response.json()
        self.assertEqual(sorted(data), ["mesh", "settings"])
        settings = data["settings"]
        self.assertEqual(settings["tls-key"], "[redacted]")
        self.assertEqual(settings["tls-cert"], "/etc/easymesh/cert.pem")
        self.assertEqual(settings["node-id"], "web-1")
        self.assertNotIn("meshFile", settings)
        self.assertNotIn("mesh-file", settings)
        clusters = data["mesh"]["clusters"]
        self.assertEqual(sorted(clusters), ["local", "orders", "peer"])
        for cluster in clusters.values():
            files = cluster["tls"]["files"]
            self.assertEqual(files["key"], "[redacted]")
            self.assertEqual(files["cert"], "/etc/easymesh/cert.pem")
        self.assertEqual(data["mesh"]["routes"]["outbound"][0]["cluster"], "peer")
        self.assertNotIn(KEY_PATH.encode("ascii"), response.body)
        self.assertNotIn(b"very-secret", response.body)

    def test_afterReload(self) -> None:
        """
        After a reload, the settings shown are the reloaded config's.
        """

        class Reloader:
            current = SidecarConfig(node_id="web-1", timeout=2.5)

        self.sidecar.reloader = Reloader()
        settings = self.get(b"/config_dump").json()["settings"]
        self.assertEqual(settings["timeout"], 2.5)

    def test_withoutTLS(self) -> None:
        self.config = SidecarConfig(node_id="web-1")
        self.resource.config = self.config
        self.runtime.mesh = self.config.mesh()
        data = self.get(b"/config_dump").json()
        self.assertIsNone(data["settings"]["tls-key"])
        for cluster in data["mesh"]["clusters"].values():
            self.assertIsNone(cluster["tls"])

    def test_collectorCredentialsRedacted(self) -> None:
        """
        Credentials in the OTLP collector's URL (user and password, or a
        query string) are not shown; the rest of the URL is.
        """
        self.config = SidecarConfig(
            node_id="web-1",
            otlp_endpoint="https://tenant:s3cr3t-token@collector.example:4318/v1/traces?api-key=k3y",
        )
        self.resource.config = self.config
        response = self.get(b"/config_dump")
        self.assertNotIn(b"s3cr3t", response.body)
        self.assertNotIn(b"k3y", response.body)
        self.assertEqual(
            response.json()["settings"]["otlp-endpoint"],
            "https://[redacted]@collector.example:4318/v1/traces?[redacted]",
        )
        self.resource.config = SidecarConfig(otlp_endpoint="http://127.0.0.1:4318/v1/traces")
        self.assertEqual(
            self.get(b"/config_dump").json()["settings"]["otlp-endpoint"],
            "http://127.0.0.1:4318/v1/traces",
        )

    def test_noMesh(self) -> None:
        self.runtime.mesh = None
        data = self.get(b"/config_dump").json()
        self.assertEqual(data["mesh"], {})
        self.assertEqual(data["settings"]["tls-key"], "[redacted]")


class ClustersTests(AdminTestCase):
    ENDPOINT_FIELDS = [
        "active_requests",
        "address",
        "available",
        "ejected",
        "ejected_for",
        "failures_in_row",
        "healthy",
        "last_failure",
        "latency_ewma_ms",
        "times_ejected",
        "url",
        "weight",
    ]

    def test_endpoints(self) -> None:
        """
        /clusters lists each cluster's endpoints with their weight, health,
        ejection, load and latency.
        """
        orders = self.runtime.clusters["orders"]
        first, second = orders.endpoints
        request = ProxyRequest(b"GET", b"/", Headers())
        orders.request(request)
        busy = first if first.active else second
        self.assertEqual(busy.active, 1)
        orders.breakers.connectionOpened()
        orders.breakers.overflowed("max_pending_requests")
        first.observe(self.clock.seconds(), 0.05)
        second.ejectedUntil = self.clock.seconds() + 30
        second.ejections = 2
        self.clock.advance(10)

        response = self.get(b"/clusters")
        self.assertEqual(response.code, 200)
        data = response.json()
        self.assertEqual(sorted(data), ["local", "orders", "peer"])
        dumped = data["orders"]
        self.assertEqual(
            {k: v for k, v in dumped.items() if k != "endpoints"},
            {
                "lb_policy": "least_request",
                "active_requests": 1,
                "retries": 0,
                "connections": 1,
                "pending": 0,
                "overflows": {"max_pending_requests": 1},
            },
        )
        a, b = dumped["endpoints"]
        for e in (a, b):
            self.assertEqual(sorted(e), self.ENDPOINT_FIELDS)
        self.assertEqual(
            a,
            {
                "address": "10.1.0.1:80",
                "url": "http://10.1.0.1",
                "weight": 1,
                "healthy": True,
                "ejected": False,
                "ejected_for": 0,
                "times_ejected": 0,
                "available": True,
                "active_requests": first.active,
                # 50 ms, decayed over 10 s by e^-1.
                "latency_ewma_ms": 18.394,
                "failures_in_row": 0,
                "last_failure": None,
            },
        )
        self.assertEqual(
            {k: b[k] for k in ("address", "weight", "ejected", "ejected_for", "times_ejected", "available")},
            {
                "address": "10.1.0.2:8080",
                "weight": 3,
                "ejected": True,
                "ejected_for": 20.0,
                "times_ejected": 2,
                "available": False,
            },
        )
        # It never answered: no latency estimate, rather than 0 ms.
        self.assertIsNone(b["latency_ewma_ms"])
        self.assertEqual(a["active_requests"] + b["active_requests"], 1)

    def test_failing(self) -> None:
        """
        An endpoint that refuses every connection shows how many requests
        in a row got no answer and why, and no latency estimate; an answer
        ends the run.  A client that went away is not the endpoint's fault.
        """
        peer = self.runtime.clusters["peer"]
        [endpoint] = peer.endpoints
        upstream = endpoint.upstream
        for _ in range(3):
            peer.request(ProxyRequest(b"GET", b"/", Headers())).addErrback(lambda f: None)
            self.clock.advance(1)
            upstream.requests.pop().errback(ConnectionRefusedError("refused"))
        peer.request(ProxyRequest(b"GET", b"/", Headers())).addErrback(lambda f: None)
        upstream.requests.pop().errback(defer.CancelledError())
        [dumped] = self.get(b"/clusters").json()["peer"]["endpoints"]
        self.assertEqual(
            {k: dumped[k] for k in ("available", "failures_in_row", "last_failure", "latency_ewma_ms")},
            {
                "available": True,
                "failures_in_row": 3,
                "last_failure": {"time": 1003.0, "cause": "upstream_connect_failure"},
                "latency_ewma_ms": None,
            },
        )
        peer.request(ProxyRequest(b"GET", b"/", Headers()))
        self.clock.advance(0.02)
        upstream.requests.pop().callback(Answer(200, Headers()))
        [dumped] = self.get(b"/clusters").json()["peer"]["endpoints"]
        self.assertEqual((dumped["failures_in_row"], dumped["latency_ewma_ms"]), (0, 20.0))
        self.assertEqual(dumped["last_failure"]["cause"], "upstream_connect_failure")

    def test_ejectionOver(self) -> None:
        """
        An ejection whose time is up, but which the outlier detector has not
        lifted yet, has no time left (never a negative one).
        """
        endpoint = self.runtime.clusters["peer"].endpoints[0]
        endpoint.ejectedUntil = self.clock.seconds() + 5
        endpoint.ejections = 1
        self.clock.advance(7.5)
        [dumped] = self.get(b"/clusters").json()["peer"]["endpoints"]
        self.assertEqual((dumped["ejected"], dumped["ejected_for"]), (True, 0.0))

    def test_unhealthy(self) -> None:
        self.runtime.clusters["peer"].endpoints[0].healthy = False
        [endpoint] = self.get(b"/clusters").json()["peer"]["endpoints"]
        self.assertEqual(
            {k: endpoint[k] for k in ("address", "healthy", "ejected", "available")},
            {"address": "peer.example:9443", "healthy": False, "ejected": False, "available": False},
        )
        self.assertTrue(endpoint["url"].startswith("https://peer.example:9443"))

    def test_none(self) -> None:
        self.runtime.clusters = {}
        self.assertEqual(self.get(b"/clusters").json(), {})


class DrainAndQuitTests(AdminTestCase):
    def test_drainFromLoopback(self) -> None:
        """
        POST /drain from IPv4 or IPv6 loopback starts the drain.
        """
        for n, peer in enumerate([LOOPBACK, LOOPBACK6, MAPPED], 1):
            response = self.post(b"/drain", peer=peer)
            self.assertEqual((response.code, response.header(b"content-type")), (200, TEXT))
            self.assertEqual(response.body, b"draining\n")
            self.assertEqual(self.sidecar.drains, n)
        self.sidecar.ready = True
        self.assertEqual(self.get(b"/ready").code, 503)
        self.assertEqual(self.quits, [])

    def test_quitFromLoopback(self) -> None:
        """
        POST /quitquitquit answers, then stops the process from the reactor.
        """
        for peer in (LOOPBACK, LOOPBACK6):
            response = self.post(b"/quitquitquit", peer=peer)
            self.assertEqual((response.code, response.header(b"content-type")), (200, TEXT))
            self.assertEqual(response.body, b"draining, then exiting\n")
            self.assertEqual(self.quits, [])
            [call] = self.pending()
            self.assertEqual(call.getTime(), self.clock.seconds())
            self.clock.advance(0)
            self.assertEqual(len(self.quits), 1)
            self.quits.clear()
        self.assertEqual(self.sidecar.drains, 0)

    def assertRefused(self, response: Response) -> None:
        self.assertEqual((response.code, response.header(b"content-type")), (403, TEXT))
        self.assertEqual(self.sidecar.drains, 0)
        self.assertFalse(self.sidecar.draining)
        self.assertEqual(self.pending(), [])
        self.assertEqual(self.quits, [])

    def test_remoteRefused(self) -> None:
        for path in (b"/drain", b"/quitquitquit"):
            response = self.post(path, peer=REMOTE)
            self.assertRefused(response)
            self.assertEqual(response.body, b"only loopback callers may do this\n")
            origin = [(b"Origin", b"http://127.0.0.1:9901")]
            self.assertRefused(self.post(path, peer=REMOTE, headers=origin))
            self.assertRefused(self.post(path, peer=IPv6Address("TCP", "fe80::1", 1)))

    def test_crossSiteRefused(self) -> None:
        """
        A request a web page on another site makes (its C{Origin} names that
        site) is refused, even from loopback.
        """
        for path in (b"/drain", b"/quitquitquit"):
            for origin in (b"http://evil.example", b"null", b"http://127.0.0.1:9902"):
                response = self.post(path, headers=[(b"Origin", origin)])
                self.assertRefused(response)
                self.assertEqual(response.body, b"cross-site requests are refused\n")
            self.assertRefused(self.post(path, headers=[(b"Origin", b"http://evil.example")], peer=LOOPBACK6))
            self.assertRefused(self.post(path, headers=[(b"Origin", b"http://127.0.0.1:9901")], host=b""))

    def test_reboundNameRefused(self) -> None:
        """
        A page on another site whose name was pointed at 127.0.0.1 (DNS
        rebinding) sends a C{Host} and an C{Origin} that agree: a page may
        only drain or quit through a loopback name.
        """
        for host in (b"evil.example:9901", b"127.evil.example:9901", b"localhost.evil.example:9901", b"evil.example"):
            for path in (b"/drain", b"/quitquitquit"):
                origin = b"http://" + host
                self.assertRefused(self.post(path, host=host, headers=[(b"Origin", origin)]))
                self.assertRefused(
                    self.post(path, host=host, peer=LOOPBACK6, headers=[(b"Origin", origin)])
                )

    def test_noOriginForeignHost(self) -> None:
        """
        Even without an C{Origin}, a C{Host} that names another site (a
        DNS-rebinding page's own name) is refused; C{localhost} and loopback
        addresses are not.
        """
        response = self.post(b"/drain", host=b"web-1.example:9901")
        self.assertEqual(response.code, 403)
        self.assertEqual(self.sidecar.drains, 0)
        for host in (b"localhost:9901", b"127.0.0.1", b"[::1]:9901"):
            self.assertEqual(self.post(b"/drain", host=host).code, 200, host)
        self.assertEqual(self.sidecar.drains, 3)

    def test_sameOriginAllowed(self) -> None:
        """
        The dashboard's own page (its C{Origin} is the C{Host} asked for) may
        drain and quit.
        """
        response = self.post(b"/drain", headers=[(b"Origin", b"http://127.0.0.1:9901")])
        self.assertEqual(response.code, 200)
        self.assertEqual(self.sidecar.drains, 1)
        for host in (b"localhost:9901", b"127.0.0.2:9901", b"localhost"):
            response = self.post(b"/drain", host=host, headers=[(b"Origin", b"http://" + host)])
            self.assertEqual(response.code, 200, host)
        self.assertEqual(self.sidecar.drains, 4)
        response = self.post(
            b"/quitquitquit", host=b"[::1]:9901", peer=LOOPBACK6, headers=[(b"Origin", b"http://[::1]:9901")]
        )
        self.assertEqual(response.code, 200)
        self.clock.advance(0)
        self.assertEqual(len(self.quits), 1)


class MethodTests(AdminTestCase):
    def test_getOnPost(self) -> None:
        for method in (b"GET", b"HEAD", b"PUT", b"DELETE"):
            for path in (b"/drain", b"/quitquitquit"):
                response = self.fetch(method, path)
                self.assertEqual(response.code, 405, (method, path))
                self.assertEqual(response.header(b"content-type"), TEXT)
        self.assertEqual(self.sidecar.drains, 0)
        self.assertEqual(self.pending(), [])

    def test_postOnGet(self) -> None:
        for path in (b"/ready", b"/healthz", b"/clusters", b"/config_dump", b"/", b"/stats/live", b"/causes"):
            self.assertEqual(self.post(path).code, 405, path)

    def test_otherMethods(self) -> None:
        for method in (b"PUT", b"DELETE", b"OPTIONS"):
            self.assertEqual(self.fetch(method, b"/ready").code, 405, method)

    def test_unknown(self) -> None:
        for path in (b"/nope", b"/ready/", b"/stats", b"/drain/x", b"/dashboard.html", b"//ready"):
            response = self.get(path)
            self.assertEqual((response.code, response.header(b"content-type")), (404, TEXT), path)
            self.assertEqual(response.body, b"not found\n")
        self.assertEqual(self.post(b"/nope").code, 404)


class DashboardTests(AdminTestCase):
    def test_readOnceAtStart(self) -> None:
        """
        The dashboard's files are read when the admin listener is made:
        once the package's files are gone (reinstalled or upgraded in
        place), a running sidecar still serves the page it started with.
        """
        reads: List[str] = []
        original = pkgutil.get_data

        def getData(package: str, resource: str) -> Optional[bytes]:
            reads.append(resource)
            return original(package, resource)

        self.patch(pkgutil, "get_data", getData)
        resource = AdminResource(self.sidecar, self.config, self.telemetry, self.clock, lambda: None)
        self.assertEqual(sorted(reads), ["static/dashboard.html", "static/dashboard.js"])

        def gone(package: str, resource: str) -> Optional[bytes]:
            raise FileNotFoundError(resource)

        self.patch(pkgutil, "get_data", gone)
        self.resource = resource
        self.site = adminSite(resource, self.clock)
        for path, name in ((b"/", "dashboard.html"), (b"/dashboard.js", "dashboard.js")):
            response = self.get(path)
            self.assertEqual((response.code, response.body), (200, original("easymesh.ops", f"static/{name}")))

    def test_missingFileStopsTheStart(self) -> None:
        """
        A package without its dashboard files is found out at start, not
        at the first page view.
        """
        self.patch(pkgutil, "get_data", lambda package, resource: None)
        with self.assertRaises(OSError):
            AdminResource(self.sidecar, self.config, self.telemetry, self.clock, lambda: None)

    def test_files(self) -> None:
        for name in ("dashboard.html", "dashboard.js"):
            data = pkgutil.get_data("easymesh.ops", f"static/{name}")
            self.assertTrue(data, name)

    def test_served(self) -> None:
        page = self.get(b"/")
        self.assertEqual(page.code, 200)
        self.assertEqual(page.header(b"content-type"), b"text/html; charset=utf-8")
        self.assertEqual(page.body, pkgutil.get_data("easymesh.ops", "static/dashboard.html"))
        self.assertIn(b"<html", page.body)
        script = self.get(b"/dashboard.js")
        self.assertEqual(script.code, 200)
        self.assertEqual(script.header(b"content-type"), b"text/javascript; charset=utf-8")
        self.assertEqual(script.body, pkgutil.get_data("easymesh.ops", "static/dashboard.js"))

    def test_nothingExternal(self) -> None:
        """
        The page loads nothing from another site: its only script is the
        admin listener's own, and it fetches its own paths.
        """
        page = self.get(b"/").body
        script = self.get(b"/dashboard.js").body
        for body in (page, script):
            self.assertNotIn(b"http://", body)
            self.assertNotIn(b"https://", body)
            self.assertNotRegex(body, rb"[\"'(]//[a-zA-Z]")
        sources = re.findall(rb"<script[^>]*\bsrc\s*=\s*[\"']([^\"']*)", page)
        self.assertEqual(sources, [b"dashboard.js"])
        self.assertEqual(re.findall(rb"<link[^>]*>", page), [])
        self.assertIn(b'fetch("stats/live"', script)

    def test_causesServed(self) -> None:
        """
        C{GET /causes} serves the cause table: each cause's statuses, gRPC
        status, body and the words the dashboard shows.
        """
        response = self.get(b"/causes")
        self.assertEqual((response.code, response.header(b"content-type")), (200, b"application/json"))
        served = json.loads(response.body)
        self.assertEqual(list(served), [c.name for c in CAUSE_TABLE])
        for cause in CAUSE_TABLE:
            entry = served[cause.name]
            self.assertEqual(entry["words"], cause.words)
            self.assertEqual(entry["status"], cause.status)
            self.assertEqual(entry["statuses"], list(cause.statuses))
            self.assertEqual((entry["grpc_status"], entry["grpc_code"]), (cause.grpc.name, cause.grpc.value))
            self.assertEqual(entry["message"], cause.message)

    def test_scriptHoldsNoCauses(self) -> None:
        """
        The dashboard takes its words for causes from C{GET /causes}: its
        script names no cause and holds none of their words.
        """
        script = self.get(b"/dashboard.js").body.decode("utf-8")
        self.assertIn('fetch("causes"', script)
        for cause in CAUSE_TABLE:
            self.assertNotIn(cause.name, script)
            self.assertNotIn(cause.words, script)


class AdminEdgeTests(AdminTestCase):
    """
    The admin listener's own edge: no request bodies, a head timeout, a
    connection cap, and C{Host} checked on every request.
    """

    def connect(self, peer: Any = LOOPBACK) -> Tuple[Any, StringTransport]:
        channel = self.site.buildProtocol(peer)
        transport = StringTransport(hostAddress=ADMIN, peerAddress=peer)
        channel.makeConnection(transport)
        return channel, transport

    def test_bodyRefusedFromTheHead(self) -> None:
        """
        A request announcing a body, by length or chunked, gets 413 before
        any of the body is read, and the connection closes.
        """
        for framing in (b"Content-Length: 10000000000", b"Content-Length: 1", b"Transfer-Encoding: chunked"):
            channel, transport = self.connect()
            channel.dataReceived(b"POST /drain HTTP/1.1\r\nHost: 127.0.0.1:9901\r\n" + framing + b"\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value())
            self.assertTrue(transport.disconnecting)
            channel.dataReceived(b"x" * 65536)
            channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.sidecar.drains, 0)

    def test_headTimeout(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"GET /ready HTTP/1.1\r\nX: ")
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(Failure(ConnectionDone()))

    def test_connectionCap(self) -> None:
        """
        At most 64 connections are open at once; more are refused.
        """
        opened = [self.connect() for _ in range(64)]
        self.assertIsNone(self.site.buildProtocol(LOOPBACK))
        channel, _ = opened.pop()
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.site.buildProtocol(LOOPBACK))
        for channel, _ in opened:
            channel.connectionLost(Failure(ConnectionDone()))

    def test_foreignHostRefusedOnGets(self) -> None:
        """
        A DNS-rebinding page reads nothing: every GET whose C{Host} names
        another site is refused.
        """
        for path in (b"/config_dump", b"/clusters", b"/stats/live", b"/stats/prometheus", b"/", b"/ready"):
            response = self.get(path, host=b"attacker.example:9901")
            self.assertEqual(response.code, 403, path)
        self.assertEqual(self.get(b"/config_dump", host=b"localhost:9901").code, 200)

    def test_hostOfTheListenerAddressAllowed(self) -> None:
        """
        A scraper that reaches the admin listener on its address (bound
        beyond loopback) names that address, which is allowed.
        """
        bound = IPv4Address("TCP", "10.1.2.3", 9901)
        for host, code in ((b"10.1.2.3:9901", b"200"), (b"10.1.2.4:9901", b"403"), (b"pod.example", b"403")):
            channel = self.site.buildProtocol(LOOPBACK)
            transport = StringTransport(hostAddress=bound, peerAddress=LOOPBACK)
            channel.makeConnection(transport)
            channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 " + code + b" "), (host, transport.value()))
            channel.connectionLost(Failure(ConnectionDone()))
