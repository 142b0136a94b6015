"""
Raw TCP through the pair: a C{tcp} listener on sidecar A joins each
connection to sidecar B's C{tcp} listener, which joins it to the app; in
plaintext, and over mTLS between the sidecars (A originates TLS to a
C{tls://} endpoint, B admits the identities it allows).  The app is
Debian's C{redis-server} driven with C{redis-cli}, and an echo server for
volume, half-close and many connections.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from easymesh.tls.certs import makeCA, makeWorkload
from tests.integration.conftest import Launcher
from tests.integration.harness import closedPort, freePorts, waitUntil

HERE = Path(__file__).parent
WEB = "spiffe://example.org/ns/default/sa/web"
ORDERS = "spiffe://example.org/ns/default/sa/orders"
#: Seconds any one socket operation of a test may take.
IO_TIMEOUT = 30.0


class App:
    """
    A process listening on a port on 127.0.0.1, stopped by L{stop}.
    """

    def __init__(self, argv: List[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        waitUntil(lambda: _accepts(port), 10, f"{argv[0]} accepting on {port}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Pair:
    """
    Sidecar A's tcp listener (C{port}) in front of sidecar B's, in front
    of an app on C{appPort}.
    """

    def __init__(
        self, launch: Launcher, tmp: Path, appPort: int, secure: bool, allow: str = WEB, idle: str = "1m"
    ) -> None:
        self.port, self.hop = freePorts(2)
        a, b = tmp / "a.yaml", tmp / "b.yaml"
        tlsA = tlsB = ""
        scheme, listenerTLS = "tcp", ""
        if secure:
            ca = makeCA(tmp)
            web = makeWorkload(ca, WEB, tmp, "web")
            orders = makeWorkload(ca, ORDERS, tmp, "orders")
            tlsA = f"tls-cert: {web.certPath}\ntls-key: {web.keyPath}\ntls-ca: {ca.certPath}\n"
            tlsB = f"tls-cert: {orders.certPath}\ntls-key: {orders.keyPath}\ntls-ca: {ca.certPath}\n"
            scheme, listenerTLS = "tls", f"    tls: mtls\n    allow: [\"{allow}\"]\n"
        a.write_text(
            tlsA
            + f"""listeners:
  - name: app-out
    address: tcp:{self.port}:interface=127.0.0.1
    protocol: tcp
    cluster: app-peer
    idle_timeout: {idle}
clusters:
  app-peer:
    endpoints: ["{scheme}://127.0.0.1:{self.hop}"]
    connect_timeout: 2s
"""
            + (f"    tls: {{identities: [\"{ORDERS}\"]}}\n" if secure else "")
        )
        b.write_text(
            tlsB
            + f"""listeners:
  - name: app-in
    address: tcp:{self.hop}:interface=127.0.0.1
    protocol: tcp
    cluster: app
{listenerTLS}clusters:
  app:
    endpoints: ["tcp://127.0.0.1:{appPort}"]
    connect_timeout: 2s
"""
        )
        self.b = launch("--config", str(b), "--access-log", "json")
        self.b.waitReady([self.hop])
        self.a = launch("--config", str(a), "--access-log", "json")
        self.a.waitReady([self.port])

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT)


@pytest.fixture(params=["plaintext", "mtls"])
def secure(request: pytest.FixtureRequest) -> bool:
    return request.param == "mtls"


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[App]:
    [port] = freePorts(1)
    app = App([sys.executable, str(HERE / "tcp_echo.py"), str(port)], port, tmp_path / "echo.log")
    yield app
    app.stop()


@pytest.fixture
def pair(launch: Launcher, tmp_path: Path, echo: App, secure: bool) -> Pair:
    return Pair(launch, tmp_path, echo.port, secure)


def receiveAll(sock: socket.socket, limit: int) -> bytes:
    """
    What C{sock} receives until it is closed, or reset (a connection the
    far side aborted is passed on aborted), at most C{limit} bytes.
    """
    chunks = []
    total = 0
    while total <= limit:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (Debian: redis-server)")
def test_redisThroughThePair(launch: Launcher, tmp_path: Path, secure: bool) -> None:
    """
    redis-cli talks to redis-server through both sidecars: commands,
    replies and a pipeline of a thousand commands.
    """
    [port] = freePorts(1)
    redis = App(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        port,
        tmp_path / "redis.log",
    )
    try:
        pair = Pair(launch, tmp_path, port, secure)

        def cli(*args: str, stdin: Optional[bytes] = None) -> str:
            out = subprocess.run(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(pair.port), *args],
                input=stdin, capture_output=True, timeout=IO_TIMEOUT, check=True,
            )  # fmt: skip
            return out.stdout.decode().strip()

        assert cli("PING") == "PONG"
        assert cli("SET", "greeting", "hello mesh") == "OK"
        assert cli("GET", "greeting") == "hello mesh"
        commands = b"".join(b"SET key:%d %d\r\n" % (i, i) for i in range(1000))
        assert "errors: 0, replies: 1000" in cli("--pipe", stdin=commands)
        assert cli("DBSIZE") == "1001"
        assert cli("GET", "key:999") == "999"
    finally:
        redis.stop()


def receiveExactly(sock: socket.socket, size: int) -> "hashlib._Hash":
    """
    The sha256 of the next C{size} bytes C{sock} receives.
    """
    digest = hashlib.sha256()
    left = size
    while left:
        data = sock.recv(min(left, 1 << 20))
        assert data, f"closed with {left} bytes to come"
        digest.update(data)
        left -= len(data)
    return digest


@pytest.mark.slow
def test_hundredMebibytesEchoed(pair: Pair) -> None:
    """
    100 MiB sent through both hops comes back whole (sha256), while the
    client writes and reads at once; the access logs count the bytes.
    """
    size = 100 << 20
    block = os.urandom(1 << 20)
    sent = hashlib.sha256()
    sock = pair.connect()
    got: List[str] = []
    reader = threading.Thread(target=lambda: got.append(receiveExactly(sock, size).hexdigest()))
    reader.start()
    for _ in range(size // len(block)):
        sock.sendall(block)
        sent.update(block)
    reader.join(IO_TIMEOUT * 4)
    assert not reader.is_alive()
    sock.close()
    assert got == [sent.hexdigest()]

    def logged() -> Any:
        lines = [json.loads(l.split("] ", 1)[1]) for l in pair.a.log().splitlines() if '"protocol":"TCP"' in l]
        # (The sidecars' readiness probes are logged too, carrying nothing.)
        lines = [line for line in lines if line["bytes_in"]]
        return lines[-1] if lines else None

    line = waitUntil(logged, 10, "the access log line of the connection")
    # (The echo's farewell may follow the client's close.)
    assert line["bytes_in"] == size and line["bytes_out"] in (size, size + 4)
    assert line["ended"] in ("client_closed", "upstream_closed") and line["cluster"] == "app-peer"


def test_halfClose(pair: Pair, secure: bool) -> None:
    """
    A client that closes its sending half still receives: the app's
    answer to the end of its input comes back through both hops.  Over
    the mTLS hop, a half-close closes the hop's connection (Twisted's TLS
    ends both directions on a close alert): the app sees the end of its
    input, and the client the end of the connection, but not what the app
    sends after.
    """
    if secure:
        sock = pair.connect()
        sock.sendall(b"last words\n")
        assert receiveExactly(sock, 11).hexdigest() == hashlib.sha256(b"last words\n").hexdigest()
        sock.shutdown(socket.SHUT_WR)
        assert receiveAll(sock, 1 << 10) in (b"", b"BYE\n")
        sock.close()
        return
    sock = pair.connect()
    sock.sendall(b"last words\n")
    sock.shutdown(socket.SHUT_WR)
    assert receiveAll(sock, 1 << 10) == b"last words\nBYE\n"
    sock.close()


def test_manyConnections(pair: Pair) -> None:
    """
    500 connections open at once each get their own bytes back.
    """
    socks = [pair.connect() for _ in range(500)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"connection %d\n" % i)
        for i, sock in enumerate(socks):
            expected = b"connection %d\n" % i
            data = b""
            while len(data) < len(expected):
                chunk = sock.recv(64)
                assert chunk, f"connection {i} closed early"
                data += chunk
            assert data == expected
    finally:
        for sock in socks:
            sock.close()


def test_idleTimeout(launch: Launcher, tmp_path: Path, echo: App, secure: bool) -> None:
    """
    A connection that carries nothing for its listener's idle timeout
    (2 s here) is closed, and logged so.
    """
    pair = Pair(launch, tmp_path, echo.port, secure, idle="2s")
    sock = pair.connect()
    sock.sendall(b"hello\n")
    assert sock.recv(64) == b"hello\n"
    started = time.monotonic()
    assert receiveAll(sock, 1 << 10) == b""
    assert 1.5 < time.monotonic() - started < 10
    sock.close()
    pair.a.waitForLog(lambda text: '"ended":"idle_timeout"' in text, 10)


def test_upstreamRefused(launch: Launcher, tmp_path: Path, secure: bool) -> None:
    """
    An app that refuses connections: the client's connection is closed
    within a second or two, and the cause logged.
    """
    pair = Pair(launch, tmp_path, closedPort(), secure)
    sock = pair.connect()
    started = time.monotonic()
    assert receiveAll(sock, 1 << 10) == b""
    assert time.monotonic() - started < 3
    pair.b.waitForLog(lambda text: '"ended":"upstream_connect_failure"' in text, 10)


def test_callerRefused(launch: Launcher, tmp_path: Path, echo: App) -> None:
    """
    B admits only another identity: A's connection to it is closed by B,
    which logs the refusal; the client's connection is closed too.
    """
    pair = Pair(launch, tmp_path, echo.port, True, allow="spiffe://example.org/ns/default/sa/billing")
    sock = pair.connect()
    sock.sendall(b"hello\n")
    assert receiveAll(sock, 1 << 10) == b""
    pair.b.waitForLog(lambda text: "Refused mTLS client" in text and "is not allowed" in text, 10)
