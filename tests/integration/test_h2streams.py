"""
Stream resets and GOAWAY end to end, through both hops with the hop
between the listeners on HTTP/2: over h2c (one sidecar, its outbound
forwarding to its own inbound) and over mTLS with ALPN C{h2} (a caller
sidecar and a callee sidecar with an mTLS inbound listener); the client is
a raw frame client (L{RawH2}) or nghttp.

  - RST_STREAM of one stream by the client ends that request across both
    hops while the others on the connection complete;
  - a client's GOAWAY lets its open streams finish, then the connection
    closes;
  - a drain (SIGTERM) sends the two-step GOAWAY to a real client (nghttp)
    whose streams in flight complete, whichever sidecar drains;
  - a reload that retires an HTTP/2 cluster sends GOAWAY on its
    connections, whose streams in flight complete.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from tests.integration.app import SLOW_BODY, TestApp
from tests.integration.conftest import Launcher
from tests.integration.h2raw import RawH2
from tests.integration.harness import Sidecar, request, waitUntil
from tests.integration.test_mtls import ORDERS, PKI, WEB
from tests.integration.test_traffic import writeAtomically

NO_ERROR = 0x0
CANCEL = 0x8
MAX_STREAM_ID = 2**31 - 1

TOPOLOGIES = ["h2c", "mtls"]


class Topology:
    """
    A client's way through two hops to the app, the hop on HTTP/2.

    @ivar edge: The sidecar whose outbound listener the client talks to.
    @ivar callee: The sidecar whose inbound listener the hop reaches (the
        same one over h2c).
    """

    def __init__(self, kind: str, tmp: Path, app: TestApp, launcher: Launcher, *extra: str) -> None:
        self.kind = kind
        self.app = app
        self.pki: Optional[PKI] = None
        if kind == "h2c":
            self.edge = self.callee = launcher(
                "--peer-protocol", "http2", "--access-log", "json", *extra, upstream=app.url
            )
            return
        (tmp / "pki").mkdir()
        pki = self.pki = PKI(tmp / "pki")
        config = tmp / "orders.yaml"
        config.write_text(
            f"""\
tls-cert: {pki.orders.certPath}
tls-key: {pki.orders.keyPath}
tls-ca: {pki.ca.certPath}
inbound-tls: mtls
inbound-allow: ["{WEB}"]
""",
            encoding="utf-8",
        )
        self.callee = launcher(
            "--config", str(config), "--node-id", "orders", "--access-log", "json", *extra, upstream=app.url
        )
        self.edge = launcher(
            *pki.tlsFlags(pki.web),
            "--peer", f"https://127.0.0.1:{self.callee.inbound}",
            "--peer-identity", ORDERS,
            "--peer-protocol", "http2",
            "--node-id", "web",
            "--access-log", "json",
            *extra,
            upstream=app.url,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.edge.outbound}"

    def client(self) -> RawH2:
        return RawH2(self.edge.outbound)

    def entries(self, sidecar: Sidecar, requestId: str) -> List[Dict[str, Any]]:
        """
        The access log entries of one request in a sidecar's log.
        """
        found = []
        for line in sidecar.log().splitlines():
            marker = line.find("[easymesh.access#info] ")
            if marker >= 0:
                entry = json.loads(line[marker + len("[easymesh.access#info] ") :])
                if entry.get("request_id") == requestId:
                    found.append(entry)
        return found


@pytest.fixture(scope="module", params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """
    One topology shared by the tests that leave its sidecars running.
    """
    tmp = tmp_path_factory.mktemp(f"h2streams-{request.param}")
    app = TestApp()
    launcher = Launcher(tmp)
    try:
        yield Topology(request.param, tmp, app, launcher)
    finally:
        try:
            launcher.closeAll()
        finally:
            app.close()


def newId() -> str:
    return str(uuid.uuid4())


def requestIdField(requestId: str):
    return [(b"x-request-id", requestId.encode())]


def test_resetOneStreamOthersComplete(topology: Topology) -> None:
    """
    Four streams on one connection, each forwarded over the HTTP/2 hop;
    the client resets one once the app has it: that request is ended at
    both listeners (the reset crossed the hop), the other three complete,
    and the connection serves a request after.
    """
    app = topology.app
    with topology.client() as client:
        tag = uuid.uuid4().hex[:12]
        slow = [client.request(f"/slow?d=1&t={tag}-{i}".encode()) for i in range(3)]
        gone = newId()
        hanging = client.request(f"/hang?t={tag}".encode(), extra=requestIdField(gone))
        waitUntil(lambda: app.seenTarget(f"/hang?t={tag}"), 10, "the app has the request to reset")
        client.reset(hanging, CANCEL)
        for streamId in slow:
            answer = client.response(streamId)
            assert answer.status == 200, answer
            assert answer.data == SLOW_BODY, answer
        assert client.streams[hanging].heads == [], client.streams[hanging]

        def ended() -> List[Dict[str, Any]]:
            outbound = [e for e in topology.entries(topology.edge, gone) if e["listener"] == "outbound"]
            inbound = [e for e in topology.entries(topology.callee, gone) if e["listener"] == "inbound"]
            return outbound + inbound if outbound and inbound else []

        for entry in waitUntil(ended, 10, "both listeners logged the reset request"):
            assert entry["error"] == "client_closed", entry
            assert entry["status"] in (0, None), entry
        after = client.response(client.request(f"/echo/after-reset-{tag}".encode()))
        assert after.status == 200, after
        assert client.goAways == []


def test_clientGoAwayLetsOpenStreamsFinish(topology: Topology) -> None:
    """
    A client's GOAWAY while two of its streams are open at the app: both
    complete, then the sidecar closes the connection.
    """
    app = topology.app
    client = topology.client()
    try:
        tag = uuid.uuid4().hex[:12]
        streams = [client.request(f"/slow?d=1&t={tag}-{i}".encode()) for i in range(2)]
        waitUntil(
            lambda: all(app.seenTarget(f"/slow?d=1&t={tag}-{i}") for i in range(2)),
            10,
            "the app has both requests",
        )
        client.goAway(lastStream=0)
        for streamId in streams:
            answer = client.response(streamId)
            assert answer.status == 200, answer
            assert answer.data == SLOW_BODY, answer
        client.untilClosed()
        assert client.goAways == [], client.goAways
    finally:
        client.close()


# Drains: GOAWAY to a real client.

needsNghttp = pytest.mark.skipif(not shutil.which("nghttp"), reason="needs nghttp (Debian: nghttp2-client)")

DRAIN = ("--drain", "10")
SLOW = 2
GOAWAY = re.compile(r"recv GOAWAY frame[^\n]*\n\s*\(last_stream_id=(\d+), error_code=(\w+)")
REQUEST = re.compile(r"send HEADERS frame <[^>]*stream_id=(\d+)>")


def nghttpDuringDrain(
    app: TestApp,
    urls: List[str],
    draining: Sidecar,
    output: Path,
    tlsArgs: List[str] = [],
) -> str:
    """
    Start nghttp fetching C{urls} (slow answers) on one connection; once
    the app has every request, SIGTERM C{draining}; nghttp's verbose output
    after it has exited (with success) and the sidecar has too.
    """
    with open(output, "wb") as out:
        proc = subprocess.Popen(["nghttp", "-nv", *tlsArgs, *urls], stdout=out, stderr=subprocess.STDOUT)
    try:
        targets = [u[u.index("/slow") :] for u in urls]
        waitUntil(lambda: all(app.seenTarget(t) for t in targets), 10, "the app has every request")
        started = time.monotonic()
        draining.signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        text = output.read_text(errors="replace")
        assert code == 0, text
        assert time.monotonic() - started < 10, "the drain waited out its deadline"
        assert draining.wait(timeout=20) == 0, draining.log()
        return text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def assertTwoStepGoAway(text: str, streams: int) -> None:
    """
    nghttp saw the graceful GOAWAY (every stream admitted), then one naming
    its last stream, both C{NO_ERROR}; every stream was answered 200.
    """
    goAways = [(int(last), code) for last, code in GOAWAY.findall(text)]
    requests = [int(n) for n in REQUEST.findall(text)]
    assert len(requests) == streams, text
    assert goAways == [(MAX_STREAM_ID, "NO_ERROR"), (max(requests), "NO_ERROR")], text
    assert text.count(":status: 200") == streams, text
    assert "RST_STREAM" not in text, text


@needsNghttp
@pytest.mark.parametrize(
    "kind, draining",
    # Over h2c one sidecar is both the client's edge and the callee.
    [("h2c", "edge"), ("mtls", "edge"), ("mtls", "callee")],
)
def test_drainWhileStreamsInFlight(launch, app: TestApp, tmp_path: Path, kind: str, draining: str) -> None:
    """
    nghttp has three slow requests in flight through both hops when a
    sidecar is told to stop: every one is answered.  When the client's
    own sidecar drains, nghttp sees the two-step GOAWAY; when the callee
    drains (over mTLS, a sidecar of its own), the hop's GOAWAY is the
    caller's to honour and the client sees none.
    """
    topology = Topology(kind, tmp_path, app, launch, *DRAIN)
    tag = uuid.uuid4().hex[:12]
    urls = [f"{topology.url}/slow?d={SLOW}&t={tag}-{i}" for i in range(3)]
    sidecar = topology.edge if draining == "edge" else topology.callee
    text = nghttpDuringDrain(app, urls, sidecar, tmp_path / "nghttp.out")
    if draining == "edge":
        assertTwoStepGoAway(text, 3)
    else:
        assert "recv GOAWAY" not in text, text
        assert text.count(":status: 200") == 3, text
        assert topology.edge.running


@needsNghttp
def test_drainOfMutualTLSInboundWhileStreamsInFlight(launch, app: TestApp, tmp_path: Path) -> None:
    """
    nghttp over TLS with ALPN C{h2} and a client certificate, straight to
    an mTLS inbound listener, three slow requests in flight when the
    sidecar is told to stop: the two-step GOAWAY, every one answered.
    """
    topology = Topology("mtls", tmp_path, app, launch, *DRAIN)
    pki = topology.pki
    assert pki is not None
    callee = topology.callee
    tag = uuid.uuid4().hex[:12]
    urls = [f"https://127.0.0.1:{callee.inbound}/slow?d={SLOW}&t={tag}-{i}" for i in range(3)]
    tlsArgs = ["--cert", pki.web.certPath, "--key", pki.web.keyPath]
    text = nghttpDuringDrain(app, urls, callee, tmp_path / "nghttp.out", tlsArgs)
    assertTwoStepGoAway(text, 3)


# The sidecar as the client: a reload retires an HTTP/2 cluster.


def hopConfig(inbound: int, connectTimeout: str) -> str:
    return f"""\
clusters:
  hop:
    endpoints: ["h2c://127.0.0.1:{inbound}"]
    connect_timeout: {connectTimeout}
routes:
  outbound:
    - match: {{prefix: /}}
      cluster: hop
"""


def test_reloadRetiringAnHTTP2ClusterLetsItsStreamsFinish(launch, app: TestApp, tmp_path: Path) -> None:
    """
    Three requests in flight on an HTTP/2 cluster's connection when a
    reload replaces the cluster: the retired connection says GOAWAY, and
    every one of them is answered whole; the next request goes through the
    new cluster.
    """
    ports = launch.ports()
    config = tmp_path / "mesh.yaml"
    config.write_text(hopConfig(ports["inbound"], "1s"), encoding="utf-8")
    sidecar = launch("--config", str(config), upstream=app.url, ports=ports)
    assert request(sidecar.outbound, "GET", "/echo/warm").status == 200
    tag = uuid.uuid4().hex[:12]
    targets = [f"/slow?d={SLOW}&t={tag}-{i}" for i in range(3)]
    with ThreadPoolExecutor(len(targets)) as pool:
        replies = [pool.submit(request, sidecar.outbound, "GET", t, (), None, 20) for t in targets]
        waitUntil(lambda: all(app.seenTarget(t) for t in targets), 10, "the app has every request")
        writeAtomically(config, hopConfig(ports["inbound"], "2s"))
        sidecar.waitForLog(lambda text: "Config reloaded" in text)
        for reply in replies:
            answer = reply.result(timeout=20)
            assert (answer.status, answer.body) == (200, SLOW_BODY), (answer, sidecar.log())
    assert request(sidecar.outbound, "GET", "/echo/after-reload").status == 200
    assert "Traceback" not in sidecar.log()
