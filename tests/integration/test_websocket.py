"""
WebSocket through both hops of real sidecars, with the C{websockets}
library as client and as app (L{tests.integration.wsapp}, a process of its
own):

    client -> outbound -> inbound -> app

over plaintext (one sidecar, its outbound forwarding to its own inbound)
and over mTLS (A's outbound originating mTLS to B's inbound), each with an
HTTP/1.1 and an HTTP/2 hop between the listeners (upgrades then ride
HTTP/1.1 connections to the same peer).

The inbound listener's routes: C{/idle...} has a tunnel idle timeout of
two seconds, C{/no-upgrade...} allows no upgrade, the rest the default.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.integration.app import TestApp
from tests.integration.conftest import Launcher
from tests.integration.harness import REPO, Sidecar, waitUntil
from tests.integration.test_mtls import ORDERS, PKI, WEB

MIB = 1024 * 1024

ROUTES = """\
routes:
  inbound:
    - match: {prefix: /idle}
      cluster: local
      tunnel_idle_timeout: 2s
    - match: {prefix: /no-upgrade}
      cluster: local
      upgrade_types: []
    - match: {prefix: /}
      cluster: local
"""


class WSApp:
    """
    The WebSocket app, a process of its own; L{kill} ends it abruptly.
    """

    def __init__(self, directory: Path) -> None:
        self.state = directory / f"flood-{id(self)}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.wsapp", str(self.state)],
            stdout=subprocess.PIPE,
            cwd=str(REPO),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), f"the WebSocket app did not start: {line!r}"
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"

    def sent(self) -> int:
        """
        Bytes C{/flood} has sent so far.
        """
        try:
            return int(self.state.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class Mesh:
    """
    A WebSocket app behind the sidecars: C{client} is the sidecar whose
    outbound a client connects to, C{sidecars} every one of them.
    """

    def __init__(self, tmp: Path, secure: bool, hop: str, pki: Optional[PKI]) -> None:
        self.secure = secure
        self.hop = hop
        tmp.mkdir(parents=True, exist_ok=True)
        self.app = WSApp(tmp)
        self.launcher = Launcher(tmp)
        routes = tmp / "routes.yaml"
        routes.write_text(ROUTES, encoding="utf-8")
        try:
            if not secure:
                self.client = self.launcher(
                    "--config", str(routes), "--peer-protocol", hop, "--access-log", "text",
                    upstream=self.app.url,
                )  # fmt: skip
                self.sidecars = [self.client]
            else:
                assert pki is not None
                config = tmp / "orders.yaml"
                config.write_text(
                    ROUTES
                    + f"tls-cert: {pki.orders.certPath}\ntls-key: {pki.orders.keyPath}\n"
                    + f"tls-ca: {pki.ca.certPath}\ninbound-tls: mtls\ninbound-allow: ['{WEB}']\n",
                    encoding="utf-8",
                )
                b = self.launcher(
                    "--config", str(config), "--node-id", "orders", "--access-log", "text",
                    upstream=self.app.url,
                )  # fmt: skip
                self.client = self.launcher(
                    *pki.tlsFlags(pki.web),
                    "--peer", f"https://127.0.0.1:{b.inbound}",
                    "--peer-identity", ORDERS,
                    "--peer-protocol", hop,
                    "--node-id", "web",
                    "--access-log", "text",
                    upstream=self.app.url,
                )  # fmt: skip
                self.sidecars = [self.client, b]
        except BaseException:
            self.close()
            raise

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.client.outbound}{path}"

    def connect(self, path: str, **kwargs: Any) -> ClientConnection:
        kwargs.setdefault("max_size", None)
        kwargs.setdefault("open_timeout", 10)
        kwargs.setdefault("close_timeout", 10)
        return connect(self.url(path), **kwargs)

    def close(self) -> None:
        try:
            self.launcher.closeAll()
        finally:
            self.app.kill()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("ws-pki"))


@pytest.fixture(
    scope="module",
    params=[(False, "http1"), (False, "http2"), (True, "http1"), (True, "http2")],
    ids=["plain-hop-http1", "plain-hop-http2", "mtls-hop-http1", "mtls-hop-http2"],
)
def _mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: PKI
) -> Iterator[Mesh]:
    secure, hop = request.param
    mesh = Mesh(tmp_path_factory.mktemp("ws-mesh"), secure, hop, pki)
    try:
        yield mesh
    finally:
        mesh.close()


@pytest.fixture
def mesh(_mesh: Mesh) -> Iterator[Mesh]:
    """
    The shared mesh; its sidecars' log lines written during the test are
    printed at teardown (and so shown if it fails).
    """
    for sidecar in _mesh.sidecars:
        assert sidecar.running, sidecar.log()
    offsets = {s.logPath: len(s.log()) for s in _mesh.sidecars}
    try:
        yield _mesh
    finally:
        for sidecar in _mesh.sidecars:
            print(f"===== {sidecar.logPath} =====\n{sidecar.log()[offsets[sidecar.logPath]:]}")


def accessLines(sidecar: Sidecar, path: str) -> List[str]:
    return [line for line in sidecar.log().splitlines() if f" GET {path} " in line and "easymesh.access" in line]


def test_text_and_binary_echo(mesh: Mesh) -> None:
    with mesh.connect("/echo") as ws:
        ws.send("hello, mesh")
        assert ws.recv(timeout=10) == "hello, mesh"
        ws.send(b"\x00\x01\xfe\xff")
        assert ws.recv(timeout=10) == b"\x00\x01\xfe\xff"
        headers = json.loads(_ask(ws, "headers?"))
    # The app saw the upgrade, the sidecars' own headers, and over mTLS
    # the caller's verified identity.
    fields: dict = {}
    for name, value in headers:
        fields.setdefault(name.lower(), []).append(value)
    assert [v.lower() for v in fields["upgrade"]] == ["websocket"]
    assert [v.lower() for v in fields["connection"]] == ["upgrade"]
    assert len(fields["x-request-id"]) == 1
    vias = ", ".join(fields["via"])
    assert ".outbound" in vias and ".inbound" in vias
    if mesh.secure:
        assert fields["x-easymesh-peer-identity"] == [WEB]


def _ask(ws: ClientConnection, question: str) -> Any:
    ws.send(question)
    return ws.recv(timeout=10)


def test_sixteen_mib_message(mesh: Mesh) -> None:
    message = os.urandom(16 * MIB)
    with mesh.connect("/echo", compression=None) as ws:
        ws.send(message)
        assert ws.recv(timeout=60) == message


def test_ping_pong(mesh: Mesh) -> None:
    with mesh.connect("/echo", ping_interval=None) as ws:
        for _ in range(3):
            pong = ws.ping(b"are you there")
            assert pong.wait(timeout=10)


def test_server_initiated_messages(mesh: Mesh) -> None:
    with mesh.connect("/push") as ws:
        assert [ws.recv(timeout=10) for _ in range(3)] == ["push-1", "push-2", "push-3"]


def test_close_code_and_reason_from_server(mesh: Mesh) -> None:
    with mesh.connect("/echo") as ws:
        ws.send("close:4001:server says bye")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert ws.close_code == 4001
    assert ws.close_reason == "server says bye"


def test_close_code_and_reason_from_client(mesh: Mesh) -> None:
    with mesh.connect("/echo") as ws:
        ws.close(4002, "client says bye")
    # The app heard them: it says so on a new connection.
    with mesh.connect("/last-close") as ws:
        seen = json.loads(_ask(ws, "?"))
    assert seen == {"code": 4002, "reason": "client says bye"}


def test_permessage_deflate_end_to_end(mesh: Mesh) -> None:
    with mesh.connect("/echo") as ws:
        offered = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in offered
        assert json.loads(_ask(ws, "extensions?")) == ["permessage-deflate"]
        text = "compressible " * 10000
        assert _ask(ws, text) == text


def test_tunnel_logged_and_counted(mesh: Mesh) -> None:
    with mesh.connect("/echo?logged", compression=None) as ws:
        assert _ask(ws, "x" * 1000) == "x" * 1000
    for sidecar in mesh.sidecars:
        lines = sidecar.waitForLog(
            lambda text: text.count("GET /echo?logged ") >= (2 if not mesh.secure else 1),
            timeout=10,
        )
        entries = [l for l in lines.splitlines() if "GET /echo?logged " in l]
        for entry in entries:
            assert " 101 " in entry
            # The app closes the TCP connection first, as RFC 6455 has
            # servers do after the close handshake.
            assert "tunnel=upstream_closed" in entry
            inBytes = int(entry.split(" in=")[1].split("B")[0])
            outBytes = int(entry.split(" out=")[1].split("B")[0])
            assert inBytes > 1000 and outBytes > 1000
    if not mesh.secure:
        metrics = _metrics(mesh.client)
        assert 'easymesh_tunnels_total{end="upstream_closed",listener="outbound"}' in metrics
        assert 'easymesh_tunnels_active{listener="outbound"} 0.0' in metrics


def _metrics(sidecar: Sidecar) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.ports["admin"], timeout=10)
    conn.request("GET", "/stats/prometheus")
    return conn.getresponse().read().decode()


def test_upgrade_not_allowed_is_forwarded_without_it(mesh: Mesh) -> None:
    """
    A route that allows no upgrade forwards the request without Upgrade:
    the app refuses it as a plain request, and the client is told so.
    """
    with pytest.raises(InvalidStatus) as caught:
        mesh.connect("/no-upgrade")
    assert caught.value.response.status_code == 426


def test_tunnel_idle_timeout(mesh: Mesh) -> None:
    with mesh.connect("/idle") as ws:
        assert _ask(ws, "still here") == "still here"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=15)
        waited = time.monotonic() - started
    assert 1.5 <= waited <= 6, waited
    inbound = mesh.sidecars[-1]
    inbound.waitForLog(lambda text: "tunnel=idle_timeout" in text, timeout=10)


class _OneFile:
    """
    A socket stand-in whose every makefile() is one buffered file, so that
    responses are read one after the other from the same bytes.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def makefile(self, *args: Any, **kwargs: Any) -> Any:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def close(self) -> None:
        # A response read whole closes its file: the next one reads on.
        pass


def _readResponse(reader: _OneFile) -> Tuple[int, http.client.HTTPMessage, bytes]:
    response = http.client.HTTPResponse(reader)  # type: ignore[arg-type]
    response.begin()
    return response.status, response.headers, response.read()


UPGRADE = (
    "GET /refuse HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def test_failed_upgrade_stays_http(mesh: Mesh) -> None:
    """
    The app refuses the upgrade (403): what the client sends after it on
    the same connection is read as requests, by each sidecar, never
    tunnelled to the app: a request the app would answer arrives with the
    sidecars' headers, and one the sidecar refuses is refused by it.
    """
    after = "GET /echo?second HTTP/1.1\r\nHost: app\r\n\r\n" + "GET /x HTTP/1.1\r\nHost: a b\r\n\r\n"
    with socket.create_connection(("127.0.0.1", mesh.client.outbound), timeout=10) as sock:
        sock.sendall((UPGRADE + after).encode())
        reader = _OneFile(sock)
        status, headers, body = _readResponse(reader)
        assert status == 403
        assert body == b"no upgrade here\n"
        status, headers, body = _readResponse(reader)
        # The app's answer to a plain request (no upgrade), relayed.
        assert status == 426
        assert len(headers.get_all("Via") or []) >= 1
        status, headers, body = _readResponse(reader)
        assert status == 400
        assert headers["x-easymesh-error"] == "bad_request"


def test_unsolicited_switch_from_app_is_not_relayed(tmp_path: Path, launch: Launcher) -> None:
    """
    An app that answers 101 to a request that did not ask to upgrade is a
    protocol error (502), never a tunnel.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    import threading

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nraw")
            time.sleep(0.5)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        sidecar = launch(upstream=f"http://127.0.0.1:{port}")
        conn = http.client.HTTPConnection("127.0.0.1", sidecar.inbound, timeout=10)
        conn.request("GET", "/plain")
        response = conn.getresponse()
        assert response.status == 502
        assert response.getheader("x-easymesh-error") == "upstream_protocol_error"
    finally:
        thread.join(timeout=5)
        server.close()


def _rss(sidecar: Sidecar) -> int:
    assert sidecar.proc is not None
    for line in Path(f"/proc/{sidecar.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_client_that_stops_reading_bounds_memory(mesh: Mesh) -> None:
    """
    The app sends 200 MiB to a client that reads nothing: back-pressure
    reaches the app (it is blocked long before the end), and no sidecar
    grows by more than a few MiB; then the client reads it all.
    """
    before = {s.logPath: _rss(s) for s in mesh.sidecars}
    with mesh.connect("/flood?mib=200", compression=None, max_queue=2) as ws:
        # Wait until the app stops making progress.
        last, stableSince = -1, time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() - stableSince < 2.0:
            assert time.monotonic() < deadline, "the app never stopped sending"
            sent = mesh.app.sent()
            if sent != last:
                last, stableSince = sent, time.monotonic()
            time.sleep(0.1)
        assert 0 < last < 100 * MIB, last
        for sidecar in mesh.sidecars:
            grown = _rss(sidecar) - before[sidecar.logPath]
            assert grown < 16 * MIB, (sidecar.logPath, grown)
        received = 0
        while received < 200 * MIB:
            message = ws.recv(timeout=30)
            received += len(message)
        assert received == 200 * MIB
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1000


def test_backend_death_seen_by_client(tmp_path: Path, pki: PKI) -> None:
    """
    The app dies abruptly (SIGKILL) with a WebSocket open: the client sees
    its connection close within a few seconds, over plaintext and mTLS.
    """
    for secure in (False, True):
        mesh = Mesh(tmp_path / ("mtls" if secure else "plain"), secure, "http1", pki)
        try:
            with mesh.connect("/echo") as ws:
                assert _ask(ws, "ping?") == "ping?"
                mesh.app.kill()
                started = time.monotonic()
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=10)
                assert time.monotonic() - started < 5
        finally:
            mesh.close()
