"""
Every way the sidecar ends a client connection, over the plaintext and the
mTLS inbound listener alike: the idle, head and body timeouts, a response
to C{Connection: close} or to HTTP/1.0, a 400, a drain, a stop.  Each case
runs once per transport (the C{edge} fixture is parametrised), so that no
edge path is tested on plaintext only.

The client judges how a connection ended: it must read everything it is
owed and then an orderly end within a bound (over TLS: the server's close
alert, and then the end of the TCP connection itself); a connection still
open at the bound, a reset, or a TLS connection cut without a close alert
fails the case.  The connections gauge on the admin listener must come
back to 0.

Certificates are made here (L{easymesh.tls.certs}); the mTLS listener
accepts any identity from the CA.  Module-scoped sidecars have 1 s
timeouts; the drain and stop cases start sidecars of their own, with the
default (long) idle timeout, so that only the drain or the stop can close.

Every client here talks HTTP/1.1 to the inbound listener itself: no
request crosses the hop between a sidecar's listeners, so none of these
runs over an HTTP/2 hop.  How the HTTP/2 edge closes is tested in
C{tests/test_h1close.py} (both transports) and C{test_h2streams.py}.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from easymesh.tls.certs import makeCA, makeWorkload
from tests.integration.app import BIG_SIZE, SLOW_BODY, TestApp, bigDigest
from tests.integration.conftest import Launcher
from tests.integration.harness import POLL, Sidecar, request, waitUntil

PLAIN, MTLS = "plain", "mtls"
TRANSPORTS = [PLAIN, MTLS]

#: The idle, head and body timeouts of the shared sidecars (seconds).
TIMEOUT = 1
#: How long a close may take: the timeout, a sweep of the deadlines (once a
#: second), and a margin for a loaded machine.
CLOSE_WITHIN = TIMEOUT + 5.0

ORDERS = "spiffe://example.org/ns/default/sa/orders"
WEB = "spiffe://example.org/ns/default/sa/web"


# -- plaintext or mTLS clients -------------------------------------------


class PKI:
    """
    A CA, the sidecar's certificate and a client's, in C{directory}.
    """

    def __init__(self, directory: Path) -> None:
        self.ca = makeCA(directory)
        self.orders = makeWorkload(self.ca, ORDERS, directory, "orders")
        self.web = makeWorkload(self.ca, WEB, directory, "web")

    def sidecarFlags(self) -> List[str]:
        """
        The flags that make a sidecar's inbound listener mTLS only.
        """
        return [
            "--tls-cert", self.orders.certPath,
            "--tls-key", self.orders.keyPath,
            "--tls-ca", self.ca.certPath,
            "--inbound-tls", "mtls",
        ]  # fmt: skip

    def clientContext(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # the sidecar's certificate names a SPIFFE ID
        ctx.load_verify_locations(self.ca.certPath)
        ctx.load_cert_chain(self.web.certPath, self.web.keyPath)
        return ctx


class Edge:
    """
    A sidecar's inbound listener, plaintext or mTLS, and raw client
    connections to it.
    """

    def __init__(self, transport: str, sidecar: Sidecar, pki: PKI) -> None:
        self.transport = transport
        self.sidecar = sidecar
        self.context = pki.clientContext() if transport == MTLS else None

    @property
    def port(self) -> int:
        return self.sidecar.inbound

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """
        A new connection, its TLS handshake (if any) done.
        """
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is None:
            return sock
        # A TLS connection cut without a close alert must show as such.
        return self.context.wrap_socket(sock, suppress_ragged_eofs=False)

    def get(self, target: str, timeout: float = 10.0) -> int:
        """
        One request on a new connection; its status.
        """
        return request(self.port, "GET", target, timeout=timeout, context=self.context).status


def readToEnd(sock: socket.socket, within: float) -> Tuple[bytes, str]:
    """
    Read until the server ends the connection, at most C{within} seconds.

    @return: The bytes, and how the connection ended: C{"closed"} (in
        order: over TLS, a close alert and then the end of the TCP
        connection), C{"reset"}, C{"no close alert"} (a TLS connection
        ended without one), or C{"open"} (not ended within the bound).
    """
    deadline = time.monotonic() + within
    chunks: List[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), "open"
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ssl.SSLEOFError:
            return b"".join(chunks), "no close alert"
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not data:
            break
        chunks.append(data)
    if isinstance(sock, ssl.SSLSocket):
        return b"".join(chunks), _tcpEnd(sock, deadline)
    return b"".join(chunks), "closed"


def _tcpEnd(sock: ssl.SSLSocket, deadline: float) -> str:
    """
    After a TLS close alert, whether the TCP connection under it ends too.
    """
    raw = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        raw.settimeout(max(deadline - time.monotonic(), POLL))
        try:
            data = raw.recv(1)
        except socket.timeout:
            return "open"
        except ConnectionResetError:
            return "reset"
        return "closed" if not data else f"bytes after the close alert: {data!r}"
    finally:
        raw.close()


def readResponse(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """
    One response with a C{Content-Length}, read without waiting for the
    connection to end.
    """
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        head, found, body = data.partition(b"\r\n\r\n")
        if found:
            lengths = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")[1:]
                if line.lower().startswith(b"content-length:")
            ]
            assert lengths, data
            if len(body) >= lengths[0]:
                assert len(body) == lengths[0], data
                return data
        left = deadline - time.monotonic()
        assert left > 0, f"no whole response within {timeout}s: {data!r}"
        sock.settimeout(left)
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response: {data!r}"
        data += chunk


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def headerValues(response: bytes, name: bytes) -> List[bytes]:
    head = response.partition(b"\r\n\r\n")[0]
    return [
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
        if line.split(b":", 1)[0].strip().lower() == name
    ]


def assertClosed(sock: socket.socket, within: float = CLOSE_WITHIN) -> bytes:
    """
    The server ends the connection in order within C{within} seconds.

    @return: What it sent first.
    """
    data, ending = readToEnd(sock, within)
    assert ending == "closed", (
        f"connection {ending} after {within}s, having received {len(data)} bytes: {data[:600]!r}"
    )
    return data


def metric(sidecar: Sidecar, name: str, **labels: str) -> float:
    reply = request(sidecar.ports["admin"], "GET", "/stats/prometheus", timeout=10)
    assert reply.status == 200, reply
    for family in text_string_to_metric_families(reply.body.decode("utf-8")):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


ACTIVE = "easymesh_downstream_connections_active"
OPENED = "easymesh_downstream_connections_total"


# -- fixtures ------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("close-pki"))


def sidecarFlags(transport: str, pki: PKI, timeouts: bool) -> List[str]:
    flags = pki.sidecarFlags() if transport == MTLS else []
    if timeouts:
        for name in ("--idle-timeout", "--head-timeout", "--body-timeout"):
            flags += [name, str(TIMEOUT)]
    return flags


@pytest.fixture(scope="module", params=TRANSPORTS)
def _edge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[Edge]:
    transport = request.param
    app = TestApp()
    launcher = Launcher(tmp_path_factory.mktemp(f"close-{transport}"))
    try:
        sidecar = launcher(*sidecarFlags(transport, pki, timeouts=True), upstream=app.url)
        yield Edge(transport, sidecar, pki)
    finally:
        try:
            launcher.closeAll()
        finally:
            app.close()


@pytest.fixture
def edge(_edge: Edge) -> Iterator[Edge]:
    """
    The module's sidecar for one transport, with 1 s timeouts; it must still
    be running at the end, and its log lines during the test are printed at
    teardown.
    """
    sidecar = _edge.sidecar
    assert sidecar.running, sidecar.log()
    offset = len(sidecar.log())
    try:
        yield _edge
        assert sidecar.running, "the sidecar died:\n" + sidecar.log()[offset:]
    finally:
        print(f"===== {sidecar.logPath} during this test =====\n{sidecar.log()[offset:]}")


# -- timeouts --------------------------------------------------------------


def test_idle_timeout_closes_a_new_connection(edge):
    with edge.connect() as sock:
        assert assertClosed(sock) == b""


def test_idle_timeout_closes_a_kept_alive_connection(edge):
    with edge.connect() as sock:
        sock.sendall(b"GET /echo/kept HTTP/1.1\r\nHost: x\r\n\r\n")
        response = readResponse(sock)
        assert status(response) == 200, response
        assert headerValues(response, b"connection") == []
        assert assertClosed(sock) == b""


def test_head_timeout_408_then_close(edge):
    with edge.connect() as sock:
        sock.sendall(b"GET /echo/slow-head HTTP/1.1\r\nHost: x\r\n")
        data = assertClosed(sock)
    assert status(data) == 408, data
    assert headerValues(data, b"x-easymesh-error") == [b"request_timeout"]
    assert headerValues(data, b"connection") == [b"close"]


def test_body_timeout_408_then_close(edge):
    with edge.connect() as sock:
        sock.sendall(b"POST /echo/slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        data = assertClosed(sock)
    assert status(data) == 408, data
    assert headerValues(data, b"x-easymesh-error") == [b"request_timeout"]


# -- closes after a response -------------------------------------------------


def test_connection_close_response_then_close(edge):
    with edge.connect() as sock:
        sock.sendall(b"GET /echo/cc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = assertClosed(sock, within=5.0)
    assert status(data) == 200, data
    assert headerValues(data, b"connection") == [b"close"]
    assert b'"/echo/cc"' in data


def test_large_connection_close_response_then_close(edge):
    """
    A response far larger than the socket buffers (the app's 20 MB
    C{/big}), whose end finds the connection's writes paused: all of it,
    then the close.
    """
    with edge.connect() as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = assertClosed(sock, within=20.0)
    head, _, body = data.partition(b"\r\n\r\n")
    assert status(head) == 200, head
    assert len(body) == BIG_SIZE
    assert hashlib.sha256(body).hexdigest() == bigDigest()


def test_http10_response_then_close(edge):
    with edge.connect() as sock:
        sock.sendall(b"GET /echo/h10 HTTP/1.0\r\nHost: x\r\n\r\n")
        data = assertClosed(sock, within=5.0)
    assert data.startswith(b"HTTP/1.0 200 "), data
    assert b'"/echo/h10"' in data


def test_framing_error_400_then_close(edge):
    with edge.connect() as sock:
        sock.sendall(b"POST /echo/bad HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        data = assertClosed(sock, within=5.0)
    assert status(data) == 400, data
    assert headerValues(data, b"connection") == [b"close"]


# -- the connections gauge -----------------------------------------------------

IDLE_CLIENTS = 20


def test_connections_gauge_returns_to_zero_after_connections_idle_out(edge):
    sidecar = edge.sidecar
    opened = metric(sidecar, OPENED, listener="inbound")
    socks = [edge.connect() for _ in range(IDLE_CLIENTS)]
    try:
        deadline = time.monotonic() + CLOSE_WITHIN
        for sock in socks:
            data, ending = readToEnd(sock, max(deadline - time.monotonic(), POLL))
            assert (data, ending) == (b"", "closed"), f"connection {ending} after the idle timeout"
    finally:
        for sock in socks:
            sock.close()
    assert metric(sidecar, OPENED, listener="inbound") - opened >= IDLE_CLIENTS
    waitUntil(
        lambda: metric(sidecar, ACTIVE, listener="inbound") == 0,
        5,
        "the inbound listener's connections gauge back to 0",
    )


# -- drain and stop ----------------------------------------------------------

KEPT = 5


@pytest.fixture
def ownApp() -> Iterator[TestApp]:
    server = TestApp()
    try:
        yield server
    finally:
        server.close()


def keptAlive(edge: Edge, count: int, label: str) -> List[socket.socket]:
    """
    C{count} connections, each idle after a request answered on it.
    """
    socks: List[socket.socket] = []
    for i in range(count):
        sock = edge.connect()
        socks.append(sock)
        sock.sendall(f"GET /echo/{label}-{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = readResponse(sock)
        assert status(response) == 200, response
    return socks


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_drain_closes_idle_connections_and_in_flight_ones_after_their_response(transport, launch, ownApp, pki):
    sidecar = launch(*sidecarFlags(transport, pki, timeouts=False), "--drain", "10", upstream=ownApp.url)
    edge = Edge(transport, sidecar, pki)
    idle = keptAlive(edge, KEPT, "drain")
    busy = edge.connect()
    try:
        busy.sendall(b"GET /slow?d=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        ownApp.waitFor("/slow", timeout=5)
        drained = request(sidecar.ports["admin"], "POST", "/drain", timeout=10)
        assert drained.status == 200, drained
        for sock in idle:
            assert assertClosed(sock, within=5.0) == b""
        data = assertClosed(busy, within=10.0)
        assert status(data) == 200, data
        assert headerValues(data, b"connection") == [b"close"]
        assert data.endswith(SLOW_BODY)
        waitUntil(lambda: metric(sidecar, ACTIVE, listener="inbound") == 0, 5, "no inbound connection left")
        assert sidecar.running
    finally:
        for sock in idle + [busy]:
            sock.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sigterm_closes_idle_connections_in_order(transport, launch, ownApp, pki):
    sidecar = launch(*sidecarFlags(transport, pki, timeouts=False), upstream=ownApp.url)
    edge = Edge(transport, sidecar, pki)
    idle = keptAlive(edge, KEPT, "stop")
    try:
        sidecar.signal(signal.SIGTERM)
        for sock in idle:
            assert assertClosed(sock, within=5.0) == b""
    finally:
        for sock in idle:
            sock.close()
    assert sidecar.wait(10) == 0
