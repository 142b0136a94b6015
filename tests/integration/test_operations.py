"""
Operating a real sidecar: the admin listener's paths after real traffic,
readiness through a drain, drain and quit from loopback only, what the
access log and the admin dumps never show, systemd notifications on a fake
C{NOTIFY_SOCKET}, W3C trace context across two hops, and C{--admin none}.

Most tests share one sidecar (module scope).  Its outbound listener
forwards to its own inbound listener through a recording TCP relay (the
sidecar's C{--peer}), so that tests can see what crossed the middle of the
two hops; its inbound listener routes by a config file to two apps.  Tests
that stop, drain, signal or watch a sidecar start one of their own.  Every
sidecar here runs with the hop over HTTP/1.1, then over HTTP/2.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

import easymesh
from easymesh.ops.metrics import METRIC_DOCS
from easymesh.tls.certs import makeCA, makeWorkload
from tests.integration.app import TestApp
from tests.integration.conftest import HOPS, Launcher, http1HopOnly
from tests.integration.h2raw import PREFACE, sentHeaderBlocks
from tests.integration.harness import POLL, Reply, Sidecar, accepts, portIsFree, request, waitUntil

#: Credentials sent in traffic; none may show anywhere but at the app.
AUTHORIZATION = "Bearer tok-" + uuid.uuid4().hex
COOKIE_VALUE = "sess-" + uuid.uuid4().hex
CREDENTIAL_HEADERS = (("Authorization", AUTHORIZATION), ("Cookie", f"session={COOKIE_VALUE}"))
SECRETS = (AUTHORIZATION, COOKIE_VALUE, AUTHORIZATION.split()[1])

ACCESS_FIELDS = {
    "listener",
    "method",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "route",
    "cluster",
    "upstream",
    "attempts",
    "request_id",
    "error",
}

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@pytest.fixture(scope="module", params=HOPS)
def hop(request: pytest.FixtureRequest) -> str:
    """
    The sidecars these tests start forward from outbound to inbound over
    HTTP/1.1, then over HTTP/2.
    """
    return request.param


#: Why a test runs over one hop only.
ADMIN_ONLY = "only the admin listener is called: there is no hop"
NEVER_SERVES = "the sidecar refuses to start: there is no hop"


# -- a recording TCP relay ----------------------------------------------


class Relay:
    """
    A TCP relay on loopback to C{127.0.0.1:target} that records every byte
    its clients send.  Either side closing closes both.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.lock = threading.Lock()
        #: What each client connection sent, by connection.
        self.received: List[bytearray] = []
        self.sockets: List[socket.socket] = []
        self.closed = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._accept, name="relay", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            received = bytearray()
            with self.lock:
                self.sockets += [client, upstream]
                self.received.append(received)
            for source, sink, record in ((client, upstream, received), (upstream, client, None)):
                threading.Thread(
                    target=self._pipe, args=(source, sink, record), name="relay-pipe", daemon=True
                ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, record: Optional[bytearray]) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if record is not None:
                    with self.lock:
                        record += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown() first: close() alone would not end the other
            # thread's recv() on the same socket, nor send a FIN.
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def heads(self, target: str) -> List[List[Tuple[str, str]]]:
        """
        The header fields of every request for C{target} relayed so far
        (bodiless requests: what the tests send through here), over
        HTTP/1.1 or HTTP/2 (without the pseudo-header fields).
        """
        with self.lock:
            connections = [bytes(r) for r in self.received]
        found = []
        pattern = re.compile(rb"[A-Z]+ (\S+) HTTP/1\.1\r\n(.*?)\r\n\r\n", re.S)
        for data in connections:
            if data.startswith(PREFACE):
                for block in sentHeaderBlocks(data):
                    if (b":path", target.encode("latin-1")) in block:
                        found.append(
                            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in block if n[:1] != b":"]
                        )
                continue
            for match in pattern.finditer(data):
                if match.group(1).decode("latin-1") != target:
                    continue
                fields = []
                for line in match.group(2).split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    fields.append((name.decode("latin-1"), value.strip().decode("latin-1")))
                found.append(fields)
        return found

    def spoken(self) -> Set[str]:
        """
        What the connections relayed so far spoke.
        """
        with self.lock:
            return {"HTTP/2" if r.startswith(PREFACE) else "HTTP/1.1" for r in self.received if r}

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.close()
            except OSError:
                pass
        self.thread.join(2)


# -- helpers -------------------------------------------------------------


def admin(sidecar: Sidecar, method: str, path: str, headers: Sequence[Tuple[str, str]] = ()) -> Reply:
    return request(sidecar.ports["admin"], method, path, headers=headers, timeout=10)


def adminJSON(sidecar: Sidecar, path: str) -> Any:
    reply = admin(sidecar, "GET", path)
    assert reply.status == 200, reply
    assert reply.header("content-type") == "application/json", reply
    return json.loads(reply.body)


Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(sidecar: Sidecar) -> Samples:
    """
    Every sample of C{/stats/prometheus}, parsed by C{prometheus_client},
    by sample name and sorted labels.
    """
    reply = admin(sidecar, "GET", "/stats/prometheus")
    assert reply.status == 200, reply
    assert (reply.header("content-type") or "").startswith("text/plain"), reply
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def headerValues(fields: Sequence[Sequence[str]], name: str) -> List[str]:
    return [v for n, v in fields if n.lower() == name]


def accessEntries(text: str) -> List[Dict[str, Any]]:
    """
    The JSON access log entries in a twistd log; every access log line must
    be one JSON object after twistd's prefix.
    """
    entries = []
    for line in text.splitlines():
        marker = line.find("[easymesh.access#info] ")
        if marker < 0:
            continue
        entry = json.loads(line[marker + len("[easymesh.access#info] ") :])
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def listeningPorts(pid: int) -> Set[int]:
    """
    The TCP ports process C{pid} listens on, from C{/proc}.
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def nonLoopbackAddress() -> Optional[str]:
    """
    An IPv4 address of this machine other than loopback, if it has one.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.255", 9))
        address = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# -- the shared sidecar --------------------------------------------------


class Ops:
    """
    The module's sidecar: C{--peer} the relay (in front of its own inbound
    listener), C{--upstream} L{app}, inbound routes C{second} (prefix
    C{/echo-second}, cluster C{second}: L{second}) and C{app} (the rest,
    cluster C{local}), a workload key configured, JSON access log.
    """

    def __init__(self, tmp: Path, hop: str) -> None:
        self.hop = hop
        self.app = TestApp()
        self.second = TestApp()
        self.launcher = Launcher(tmp, hop)
        ports = self.launcher.ports()
        self.relay = Relay(ports["inbound"])
        tls = tmp / "tls"
        tls.mkdir()
        workload = makeWorkload(makeCA(tls), "spiffe://mesh.test/ns/ops/sa/web", tls, "web")
        self.keyPath = workload.keyPath
        self.config = tmp / "mesh.yaml"
        self.config.write_text(
            f"""\
clusters:
  second:
    endpoints: ["{self.second.url}"]
routes:
  inbound:
    - name: second
      match: {{prefix: /echo-second}}
      cluster: second
    - name: app
      match: {{prefix: /}}
      cluster: local
""",
            encoding="utf-8",
        )
        self.sidecar = self.launcher(
            "--config",
            str(self.config),
            "--peer",
            self.relay.url,
            "--access-log",
            "json",
            "--tls-cert",
            workload.certPath,
            "--tls-key",
            workload.keyPath,
            "--tls-ca",
            str(tls / "ca.pem"),
            upstream=self.app.url,
            ports=ports,
        )
        self.sidecar.waitReady([ports["admin"]])

    def close(self) -> None:
        try:
            self.launcher.closeAll()
        finally:
            self.relay.close()
            self.app.close()
            self.second.close()


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, hop: str) -> Iterator[Ops]:
    shared = Ops(tmp_path_factory.mktemp("ops"), hop)
    try:
        yield shared
    finally:
        shared.close()


# -- admin paths after real traffic --------------------------------------


def test_ready_and_healthz_while_serving(ops):
    sidecar = ops.sidecar
    assert request(sidecar.outbound, "GET", "/echo/ready-check").status == 200
    ready = admin(sidecar, "GET", "/ready")
    assert (ready.status, ready.body) == (200, b"ready\n"), ready
    assert ready.header("cache-control") == "no-store"
    health = admin(sidecar, "GET", "/healthz")
    assert (health.status, health.body) == (200, b"ok\n"), health
    assert admin(sidecar, "GET", "/no-such-page").status == 404
    # Wrong methods change nothing.
    assert admin(sidecar, "GET", "/drain").status == 405
    assert admin(sidecar, "GET", "/quitquitquit").status == 405
    assert admin(sidecar, "POST", "/ready").status == 405
    assert admin(sidecar, "GET", "/ready").status == 200
    assert adminJSON(sidecar, "/stats/live")["state"] == "ready"


def test_request_counters_match_the_traffic_sent(ops):
    sidecar = ops.sidecar
    requests = "easymesh_requests_total"
    durations = "easymesh_request_duration_seconds_count"
    before = scrape(sidecar)

    # (listener, route, cluster, code_class) -> requests sent below.
    expected: Dict[Tuple[str, str, str, str], int] = {}

    def expect(listener: str, route: str, cluster: str, codeClass: str, n: int) -> None:
        key = (listener, route, cluster, codeClass)
        expected[key] = expected.get(key, 0) + n

    out = ("outbound", "outbound-default", "peer")
    for _ in range(5):
        assert request(sidecar.outbound, "GET", "/echo/count").status == 200
    expect(*out, "2xx", 5)
    expect("inbound", "app", "local", "2xx", 5)
    for _ in range(4):
        assert request(sidecar.outbound, "GET", "/echo-second/count").status == 200
    expect(*out, "2xx", 4)
    expect("inbound", "second", "second", "2xx", 4)
    for _ in range(3):
        assert request(sidecar.outbound, "GET", "/teapot").status == 418
    expect(*out, "4xx", 3)
    expect("inbound", "app", "local", "4xx", 3)
    for _ in range(2):
        reply = request(sidecar.outbound, "GET", "/a%2Fb")
        assert reply.status == 400 and reply.header("x-easymesh-error") == "bad_request", reply
    expect("outbound", "none", "none", "4xx", 2)
    for _ in range(2):
        # Straight to the inbound listener, as a peer sidecar calls it.
        assert request(sidecar.inbound, "GET", "/echo/from-a-peer").status == 200
    expect("inbound", "app", "local", "2xx", 2)
    reply = request(sidecar.outbound, "GET", "/garbage")
    assert reply.status == 502 and reply.header("x-easymesh-error") == "upstream_protocol_error", reply
    expect(*out, "5xx", 1)
    expect("inbound", "app", "local", "5xx", 1)
    outboundConnections = 5 + 4 + 3 + 2 + 1

    def deltas() -> Dict[Tuple[str, str, str, str], float]:
        now = scrape(sidecar)
        found = {}
        for (name, labels), v in now.items():
            if name != requests:
                continue
            d = dict(labels)
            key = (d["listener"], d["route"], d["cluster"], d["code_class"])
            change = v - before.get((name, labels), 0.0)
            if change:
                found[key] = change
        return found

    try:
        waitUntil(lambda: deltas() == expected, 5, "request counters match")
    except AssertionError:
        assert deltas() == expected
    after = scrape(sidecar)
    # One duration observed per request, under the same labels.
    byRoute: Dict[Tuple[str, str, str], int] = {}
    for (listener, route, cluster, _), n in expected.items():
        byRoute[(listener, route, cluster)] = byRoute.get((listener, route, cluster), 0) + n
    for (listener, route, cluster), n in byRoute.items():
        labels = dict(listener=listener, route=route, cluster=cluster)
        change = value(after, durations, **labels) - value(before, durations, **labels)
        assert change == n, (labels, change, n)
    connections = "easymesh_downstream_connections_total"
    assert value(after, connections, listener="outbound") - value(
        before, connections, listener="outbound"
    ) == outboundConnections
    upstream = "easymesh_upstream_request_duration_seconds_count"
    assert value(after, upstream, cluster="second") - value(before, upstream, cluster="second") == 4
    assert value(after, upstream, cluster="local") - value(before, upstream, cluster="local") >= 5 + 3 + 2
    for name in ("easymesh_retries_total", "easymesh_timeouts_total", "easymesh_rate_limited_total"):
        assert not [k for k in after if k[0] == name and after[k] != before.get(k, 0.0)], name
    waitUntil(
        lambda: value(scrape(sidecar), "easymesh_downstream_connections_active", listener="outbound") == 0,
        5,
        "the outbound listener's connections all closed",
    )
    assert value(after, "easymesh_build_info", version=easymesh.__version__, python=_python(after)) == 1
    assert not [k for k in after if k[0].endswith("_created")], "no *_created series"


def test_every_documented_metric_is_exposed(ops):
    reply = admin(ops.sidecar, "GET", "/stats/prometheus")
    families = {f.name: f.type for f in text_string_to_metric_families(reply.body.decode("utf-8"))}
    for name, kind, _, _ in METRIC_DOCS:
        family = name[: -len("_total")] if kind == "counter" else name
        assert families.get(family) == kind, (name, families.get(family))
    assert any(name.startswith("process_") for name in families), sorted(families)


def test_pool_gauge_counts_idle_connections(ops):
    for _ in range(3):
        assert request(ops.sidecar.outbound, "GET", "/echo/pool").status == 200
    samples = scrape(ops.sidecar)
    idle = {
        dict(labels)["cluster"]: v
        for (name, labels), v in samples.items()
        if name == "easymesh_upstream_pool_connections" and dict(labels)["state"] == "idle"
    }
    assert idle.get("peer", 0) >= 1 and idle.get("local", 0) >= 1, idle


def _python(samples: Samples) -> str:
    for name, labels in samples:
        if name == "easymesh_build_info":
            return dict(labels)["python"]
    raise AssertionError("no easymesh_build_info")


def test_config_dump_and_other_pages_show_no_key_path_or_credentials(ops):
    sidecar = ops.sidecar
    reply = request(sidecar.outbound, "GET", "/echo/with-credentials", headers=CREDENTIAL_HEADERS)
    assert reply.status == 200
    seen = json.loads(reply.body)
    # The app got them: they went through, and are only kept out of the dumps.
    assert AUTHORIZATION in headerValues(seen["headers"], "authorization")
    dump = adminJSON(sidecar, "/config_dump")
    settings = dump["settings"]
    assert settings["tls-key"] == "[redacted]"
    assert settings["tls-cert"].endswith("web.pem")
    assert settings["access-log"] == "json"
    assert settings["peer"] == ops.relay.url
    assert set(dump["mesh"]["clusters"]) == {"peer", "local", "second"}
    for cluster in dump["mesh"]["clusters"].values():
        assert cluster["tls"]["files"]["key"] == "[redacted]", cluster
    assert [r["name"] for r in dump["mesh"]["routes"]["inbound"]] == ["second", "app"]
    keyText = Path(ops.keyPath).read_text()
    keyBody = "".join(keyText.splitlines()[1:-1])[:40]
    for path in ("/config_dump", "/clusters", "/stats/live", "/stats/prometheus", "/", "/dashboard.js"):
        body = admin(sidecar, "GET", path).body.decode("utf-8")
        assert ops.keyPath not in body, path
        assert os.path.basename(ops.keyPath) not in body, path
        assert keyBody not in body, path
        for secret in SECRETS:
            assert secret not in body, (path, secret)


def test_clusters_lists_every_endpoint(ops):
    sidecar = ops.sidecar
    for target in ("/echo/clusters", "/echo-second/clusters"):
        assert request(sidecar.outbound, "GET", target).status == 200
    clusters = adminJSON(sidecar, "/clusters")
    assert set(clusters) == {"peer", "local", "second"}
    where = {
        "peer": f"127.0.0.1:{ops.relay.port}",
        "local": f"127.0.0.1:{ops.app.port}",
        "second": f"127.0.0.1:{ops.second.port}",
    }
    for name, address in where.items():
        cluster = clusters[name]
        assert cluster["lb_policy"] == "round_robin"
        [endpoint] = cluster["endpoints"]
        assert endpoint["address"] == address, cluster
        assert endpoint["url"] == f"http://{address}"
        assert endpoint["healthy"] and endpoint["available"] and not endpoint["ejected"], endpoint
        assert endpoint["latency_ewma_ms"] > 0, endpoint
        assert endpoint["active_requests"] == 0, endpoint
    assert adminJSON(sidecar, "/stats/live")["clusters_state"].keys() == clusters.keys()


def test_json_access_log_has_every_field_and_no_credentials(ops):
    sidecar = ops.sidecar
    target = f"/echo/access-{uuid.uuid4().hex}?q=1"
    reply = request(sidecar.outbound, "GET", target, headers=CREDENTIAL_HEADERS)
    assert reply.status == 200
    appSaw = json.loads(reply.body)
    [requestId] = headerValues(appSaw["headers"], "x-request-id")
    bad = request(sidecar.outbound, "GET", "/a%2Fb", headers=CREDENTIAL_HEADERS)
    assert bad.status == 400

    def mine() -> List[Dict[str, Any]]:
        return [e for e in accessEntries(sidecar.log()) if e["path"] == target]

    waitUntil(lambda: len(mine()) == 2, 5, "both hops logged")
    entries = {e["listener"]: e for e in mine()}
    assert set(entries) == {"outbound", "inbound"}
    for listener, route, cluster, upstream in (
        ("outbound", "outbound-default", "peer", f"127.0.0.1:{ops.relay.port}"),
        ("inbound", "app", "local", f"127.0.0.1:{ops.app.port}"),
    ):
        entry = entries[listener]
        assert ACCESS_FIELDS <= set(entry), entry
        assert entry["method"] == "GET"
        assert entry["status"] == 200
        assert entry["bytes_in"] == 0
        assert entry["bytes_out"] == len(reply.body)
        assert isinstance(entry["duration_ms"], (int, float)) and entry["duration_ms"] >= 0
        assert (entry["route"], entry["cluster"], entry["upstream"]) == (route, cluster, upstream)
        assert entry["attempts"] == 1
        assert entry["request_id"] == requestId
        assert entry["error"] is None
    refused = [e for e in accessEntries(sidecar.log()) if e["path"] == "/a%2Fb"]
    assert refused, "the refused request is logged"
    assert refused[-1]["status"] == 400 and refused[-1]["error"] == "bad_request", refused
    assert (refused[-1]["route"], refused[-1]["cluster"], refused[-1]["upstream"]) == (None, None, None)
    assert refused[-1]["attempts"] == 0
    text = sidecar.log()
    for secret in SECRETS:
        assert secret not in text, secret


# -- a client that goes away -------------------------------------------


class Abandoned:
    """
    A sidecar (C{--peer} its own inbound listener, directly) whose client
    went away before the answer to C{GET /hang}, sent once its upstream
    connections were in the pools (after C{GET /echo/warm}).
    """

    def __init__(self, tmp: Path, hop: str) -> None:
        self.app = TestApp()
        self.launcher = Launcher(tmp, hop)
        self.sidecar = self.launcher("--access-log", "json", upstream=self.app.url)
        self.sidecar.waitReady([self.sidecar.ports["admin"]])
        assert request(self.sidecar.outbound, "GET", "/echo/warm").status == 200
        self.before = scrape(self.sidecar)
        client = socket.create_connection(("127.0.0.1", self.sidecar.outbound), timeout=5)
        try:
            client.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            self.app.waitFor("/hang", timeout=5)
        finally:
            client.close()

    def noResponse(self, listener: str) -> float:
        labels = dict(listener=listener, route=f"{listener}-default", code_class="none")
        labels["cluster"] = "peer" if listener == "outbound" else "local"
        name = "easymesh_requests_total"
        return value(scrape(self.sidecar), name, **labels) - value(self.before, name, **labels)

    def close(self) -> None:
        try:
            self.launcher.closeAll()
        finally:
            self.app.close()


@pytest.fixture(scope="module")
def abandoned(tmp_path_factory: pytest.TempPathFactory, hop: str) -> Iterator[Abandoned]:
    scenario = Abandoned(tmp_path_factory.mktemp("abandoned"), hop)
    try:
        yield scenario
    finally:
        scenario.close()


def test_a_client_gone_before_any_answer_counts_as_none(abandoned):
    waitUntil(lambda: abandoned.noResponse("outbound") == 1, 5, "outbound counts none")
    [entry] = [e for e in accessEntries(abandoned.sidecar.log()) if e["listener"] == "outbound" and e["path"] == "/hang"]
    assert entry["error"] == "client_closed", entry
    assert entry["bytes_out"] == 0, entry


def test_a_client_gone_cancels_the_upstream_request_on_a_reused_connection(abandoned):
    waitUntil(lambda: abandoned.noResponse("inbound") == 1, 3, "the inbound hop gave up too")


def test_a_client_gone_before_any_answer_is_not_logged_as_200(abandoned):
    waitUntil(
        lambda: any(e["path"] == "/hang" for e in accessEntries(abandoned.sidecar.log())),
        5,
        "the outbound hop logged",
    )
    [entry] = [e for e in accessEntries(abandoned.sidecar.log()) if e["listener"] == "outbound" and e["path"] == "/hang"]
    assert entry["status"] in (0, None), entry


# -- trace context across two hops ---------------------------------------


def _traceparent(fields: Sequence[Sequence[str]]) -> Tuple[str, str, str]:
    values = headerValues(fields, "traceparent")
    assert len(values) == 1, fields
    match = TRACEPARENT.fullmatch(values[0])
    assert match is not None, values
    traceId, spanId, flags = match.groups()
    assert traceId != "0" * 32 and spanId != "0" * 16, values
    return traceId, spanId, flags


def _hops(ops: Ops, target: str, headers: Sequence[Tuple[str, str]]):
    """
    Send C{target} through both hops; the header fields the inbound
    listener received (from the relay) and those the app received.
    """
    reply = request(ops.sidecar.outbound, "GET", target, headers=headers)
    assert reply.status == 200, reply
    [middle] = ops.relay.heads(target)
    assert ops.relay.spoken() == {"HTTP/2" if ops.hop == "http2" else "HTTP/1.1"}
    [atApp] = ops.app.seenTarget(target)
    return middle, atApp["headers"]


def test_traceparent_gets_a_new_span_per_hop(ops):
    traceId, clientSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    b3 = [
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
        ("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124"),
        ("X-B3-SpanId", "a2fb4a1d1a96d312"),
        ("X-B3-Sampled", "1"),
    ]
    target = f"/echo/trace-{uuid.uuid4().hex}"
    middle, atApp = _hops(
        ops,
        target,
        [("traceparent", f"00-{traceId}-{clientSpan}-01"), ("tracestate", tracestate)] + b3,
    )
    # Hop 1 (outbound) sent its own span as the parent id...
    middleTrace, outboundSpan, middleFlags = _traceparent(middle)
    assert middleTrace == traceId
    assert outboundSpan != clientSpan
    assert middleFlags == "01"
    # ...and hop 2 (inbound) received it and sent another one.
    appTrace, inboundSpan, appFlags = _traceparent(atApp)
    assert appTrace == traceId
    assert inboundSpan not in (clientSpan, outboundSpan)
    assert appFlags == "01"
    for fields in (middle, atApp):
        assert headerValues(fields, "tracestate") == [tracestate]
        for name, sent in b3:
            assert headerValues(fields, name.lower()) == [sent], (name, fields)


def test_a_trace_starts_when_the_client_sends_none(ops):
    target = f"/echo/new-trace-{uuid.uuid4().hex}"
    # A tracestate without a traceparent is dropped with it.
    middle, atApp = _hops(ops, target, [("tracestate", "vendor=ignored")])
    middleTrace, outboundSpan, middleFlags = _traceparent(middle)
    appTrace, inboundSpan, appFlags = _traceparent(atApp)
    assert appTrace == middleTrace
    assert inboundSpan != outboundSpan
    assert (middleFlags, appFlags) == ("00", "00")
    assert headerValues(middle, "tracestate") == headerValues(atApp, "tracestate") == []
    # Another request is another trace.
    again = f"/echo/new-trace-{uuid.uuid4().hex}"
    _, atAppAgain = _hops(ops, again, [])
    assert _traceparent(atAppAgain)[0] != appTrace
    # So is a request with an invalid traceparent (upper-case hex).
    invalid = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"
    third = f"/echo/new-trace-{uuid.uuid4().hex}"
    _, atAppThird = _hops(ops, third, [("traceparent", invalid)])
    thirdTrace, _, thirdFlags = _traceparent(atAppThird)
    assert thirdTrace not in (appTrace, invalid.split("-")[1].lower())
    assert thirdFlags == "00"


# -- --admin none -------------------------------------------------------


def test_admin_none_binds_nothing_extra(launch, ops):
    # The shared sidecar (admin on) listens on its listeners and admin port.
    shared = ops.sidecar
    assert listeningPorts(shared.proc.pid) == {shared.outbound, shared.inbound, shared.ports["admin"]}
    sidecar = launch("--admin", "none")
    assert request(sidecar.outbound, "GET", "/", timeout=5).status == 200
    ports = sidecar.ports
    assert listeningPorts(sidecar.proc.pid) == {ports["outbound"], ports["inbound"], ports["demo"]}
    assert portIsFree(ports["admin"])


# -- drain and quit over the admin listener ------------------------------


def test_drain_and_quit_only_from_loopback_and_this_site(launch, app):
    ports = launch.ports()
    adminPort = ports["admin"]
    # On every interface, so that a caller from another address can try.
    sidecar = launch(
        "--admin", f"tcp:{adminPort}:interface=0.0.0.0", upstream=app.url, ports=ports
    )
    sidecar.waitReady([adminPort])
    own = f"127.0.0.1:{adminPort}"
    for path in ("/drain", "/quitquitquit"):
        for origin in ("http://evil.example", f"http://evil.example:{adminPort}", "null"):
            refused = admin(sidecar, "POST", path, headers=[("Origin", origin)])
            assert refused.status == 403, (path, origin, refused)
            assert refused.body == b"cross-site requests are refused\n"
    remote = nonLoopbackAddress()
    if remote is not None:
        for path in ("/drain", "/quitquitquit"):
            refused = _from(remote, adminPort, "POST", path)
            assert refused.status == 403, (path, refused)
            assert refused.body == b"only loopback callers may do this\n"
        assert _from(remote, adminPort, "GET", "/ready").status == 200
    else:
        print("no non-loopback address here: the loopback-only check was not run")
    assert admin(sidecar, "GET", "/ready").status == 200
    assert request(sidecar.outbound, "GET", "/echo/still-serving").status == 200

    # Same-site (or no Origin at all, as from curl) is accepted.
    drained = admin(sidecar, "POST", "/drain", headers=[("Origin", f"http://{own}")])
    assert (drained.status, drained.body) == (200, b"draining\n"), drained
    ready = admin(sidecar, "GET", "/ready")
    assert (ready.status, ready.body) == (503, b"draining\n"), ready
    assert adminJSON(sidecar, "/stats/live")["state"] == "draining"
    waitUntil(
        lambda: not accepts(sidecar.outbound, 0.2) and not accepts(sidecar.inbound, 0.2),
        5,
        "the listeners stop accepting",
    )
    # The process and its admin listener keep running past the drain period.
    time.sleep(1.5)
    assert sidecar.running
    assert admin(sidecar, "GET", "/healthz").status == 200
    assert admin(sidecar, "POST", "/drain").status == 200
    assert admin(sidecar, "GET", "/ready").status == 503

    quit = admin(sidecar, "POST", "/quitquitquit")
    assert (quit.status, quit.body) == (200, b"draining, then exiting\n"), quit
    assert sidecar.wait(timeout=10) == 0, sidecar.log()
    assert "Traceback" not in sidecar.log()


def _from(address: str, port: int, method: str, path: str) -> Reply:
    """
    One request to C{address:port} from C{address}.
    """
    import http.client

    conn = http.client.HTTPConnection(address, port, timeout=10, source_address=(address, 0))
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return Reply(response, response.read(), 0.0)
    finally:
        conn.close()


@http1HopOnly(ADMIN_ONLY)
def test_a_foreign_site_rebound_to_loopback_is_refused(launch):
    # A page on another site whose name now resolves to 127.0.0.1 (DNS
    # rebinding) sends a Host and an Origin that agree, both its own.
    sidecar = launch()
    sidecar.waitReady([sidecar.ports["admin"]])
    site = f"evil.example:{sidecar.ports['admin']}"
    for path in ("/drain", "/quitquitquit"):
        reply = admin(sidecar, "POST", path, headers=[("Host", site), ("Origin", f"http://{site}")])
        assert reply.status == 403, reply
    assert admin(sidecar, "GET", "/ready").status == 200
    # The same with a loopback name is this site.
    own = f"localhost:{sidecar.ports['admin']}"
    reply = admin(sidecar, "POST", "/drain", headers=[("Host", own), ("Origin", f"http://{own}")])
    assert reply.status == 200, reply
    assert admin(sidecar, "GET", "/ready").status == 503


# -- systemd notifications -----------------------------------------------


class NotifySocket:
    """
    A fake C{$NOTIFY_SOCKET}: an C{AF_UNIX} datagram socket that collects
    the messages, each as a dict of its fields and when it arrived.
    """

    def __init__(self, directory: Path) -> None:
        path = directory / "notify"
        if len(os.fsencode(path)) > 100:  # AF_UNIX paths are short
            path = Path(tempfile.mkdtemp(prefix="sdn")) / "notify"
        self.path = str(path)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.messages: List[Tuple[float, Dict[str, str]]] = []

    def receive(self, timeout: float) -> Optional[Dict[str, str]]:
        self.socket.settimeout(max(0.001, timeout))
        try:
            data = self.socket.recv(65536)
        except socket.timeout:
            return None
        fields = dict(line.split("=", 1) for line in data.decode("utf-8").split("\n") if line)
        self.messages.append((time.monotonic(), fields))
        return fields

    def waitFor(self, key: str, timeout: float, sidecar: Optional[Sidecar] = None) -> Dict[str, str]:
        """
        The next message with C{key}=1, skipping others (kept in
        L{messages}); fail if the sidecar exits first.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {key}=1 within {timeout}s; got {[m for _, m in self.messages]}"
                    + (f"\n{sidecar.log()}" if sidecar is not None else "")
                )
            message = self.receive(min(left, 0.2))
            if message is not None and message.get(key) == "1":
                return message
            if message is None and sidecar is not None and sidecar.proc.poll() is not None:
                raise AssertionError(f"sidecar exited waiting for {key}=1:\n{sidecar.log()}")

    def keys(self, start: int = 0, skip: str = "") -> List[str]:
        """
        The C{KEY=1} fields of the messages from the C{start}th on, in
        order, C{skip} left out.
        """
        return [k for _, m in self.messages[start:] for k in m if m[k] == "1" and k != skip]

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no AF_UNIX sockets")
    receiver = NotifySocket(tmp_path)
    try:
        yield receiver
    finally:
        receiver.close()


def _monotonicUsec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_notify_ready_once_serving_watchdog_reload_and_quit(launch, notify):
    sidecar = launch(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"}, ready=False)
    ready = notify.waitFor("READY", 20, sidecar)
    # At the moment READY=1 arrives, every port accepts.
    ports = sidecar.ports
    accepting = {name: accepts(port, timeout=1.0) for name, port in ports.items()}
    assert accepting == {name: True for name in ports}, accepting
    assert ready.get("STATUS"), ready
    assert notify.keys() == ["READY"], notify.messages

    # WATCHDOG_USEC=1000000: a ping every half second, from READY on.
    started = time.monotonic()
    while time.monotonic() - started < 1.8:
        notify.receive(0.2)
    pings = [t for t, m in notify.messages if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 3, notify.messages
    gaps = sorted(b - a for a, b in zip(pings, pings[1:]))
    assert 0.3 <= gaps[len(gaps) // 2] <= 0.8, gaps

    # SIGHUP: RELOADING=1 (with MONOTONIC_USEC, as Type=notify-reload wants),
    # then READY=1 again.
    count = len(notify.messages)
    sidecar.signal(signal.SIGHUP)
    reloading = notify.waitFor("RELOADING", 5, sidecar)
    assert abs(int(reloading["MONOTONIC_USEC"]) - _monotonicUsec()) < 5_000_000, reloading
    notify.waitFor("READY", 5, sidecar)
    assert notify.keys(count, skip="WATCHDOG") == ["RELOADING", "READY"], notify.messages
    assert request(sidecar.outbound, "GET", "/", timeout=5).status == 200
    assert admin(sidecar, "GET", "/ready").status == 200

    assert admin(sidecar, "POST", "/quitquitquit").status == 200
    notify.waitFor("STOPPING", 5, sidecar)
    assert sidecar.wait(timeout=10) == 0, sidecar.log()
    assert notify.keys(skip="WATCHDOG") == ["READY", "RELOADING", "READY", "STOPPING"], notify.messages


def test_sigterm_drain_says_stopping_and_is_not_ready(launch, app, notify):
    sidecar = launch("--drain", "5", upstream=app.url, env={"NOTIFY_SOCKET": notify.path})
    notify.waitFor("READY", 20, sidecar)
    sidecar.waitReady([sidecar.ports["admin"]])
    assert admin(sidecar, "GET", "/ready").status == 200
    result: Dict[str, Any] = {}

    def client() -> None:
        try:
            result["reply"] = request(sidecar.outbound, "GET", "/slow?d=2", timeout=10)
        except Exception as e:  # reported by the assertions below
            result["error"] = e

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    app.waitFor("/slow", timeout=5)
    sidecar.signal(signal.SIGTERM)
    notify.waitFor("STOPPING", 5, sidecar)
    deadline = time.monotonic() + 3
    ready = admin(sidecar, "GET", "/ready")
    while ready.status == 200 and time.monotonic() < deadline:
        time.sleep(POLL)
        ready = admin(sidecar, "GET", "/ready")
    # Not ready while the slow request is still being served.
    assert (ready.status, ready.body) == (503, b"draining\n"), ready
    assert thread.is_alive()
    thread.join(10)
    assert "error" not in result, result.get("error")
    assert result["reply"].status == 200 and result["reply"].body == b"slow done\n"
    assert sidecar.wait(timeout=10) == 0, sidecar.log()
    assert notify.keys() == ["READY", "STOPPING"], notify.messages


@http1HopOnly(NEVER_SERVES)
def test_a_port_that_cannot_be_bound_stops_the_start(launch, notify):
    """
    A port already taken: the sidecar says so and exits non-zero, without
    ever telling systemd it is ready, rather than running half up.
    """
    ports = launch.ports()
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", ports["inbound"]))
    taken.listen(1)
    try:
        sidecar = launch(env={"NOTIFY_SOCKET": notify.path}, ports=ports, ready=False)
        code = sidecar.wait(timeout=15)
        output = sidecar.log()
        assert code not in (0, None), output
        assert "Couldn't listen" in output, output
        assert str(ports["inbound"]) in output, output
        assert "Traceback" not in output, output
        assert "READY" not in notify.keys()
    finally:
        taken.close()
