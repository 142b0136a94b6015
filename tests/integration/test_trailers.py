"""
Trailers end to end on HTTP/1.1: a client's chunked request trailers reach
a real app through both hops, the app's response trailers reach the
client, and C{TE: trailers} is passed on; over plaintext between the hops,
and over mTLS between two sidecars; the hop over HTTP/1.1, then HTTP/2.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.integration.conftest import HOPS
from tests.integration.harness import freePorts
from tests.integration.test_mtls import ORDERS, PKI, bConfig

DEADLINE = 10.0


@pytest.fixture(scope="module", params=HOPS)
def hop(request: pytest.FixtureRequest) -> str:
    """
    The sidecars these tests start forward from outbound to inbound over
    HTTP/1.1, then over HTTP/2.
    """
    return request.param


class TrailerApp:
    """
    An app that reads a chunked request with its trailers and answers
    chunked, with trailers of its own; it records what it read.
    """

    def __init__(self) -> None:
        (self.port,) = freePorts(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: List[Dict[str, Any]] = []
        self.arrived = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(DEADLINE)
        with conn, conn.makefile("rb") as rfile:
            try:
                while self._exchange(conn, rfile):
                    pass
            except (OSError, ValueError):
                return

    def _exchange(self, conn: socket.socket, rfile: Any) -> bool:
        line = rfile.readline(65537)
        if not line:
            return False
        headers = _fields(rfile)
        body = b""
        trailers: List[Tuple[str, str]] = []
        if ("transfer-encoding", "chunked") in [(n.lower(), v.lower()) for n, v in headers]:
            while True:
                size = int(rfile.readline(65537).split(b";")[0], 16)
                if not size:
                    trailers = _fields(rfile)
                    break
                body += rfile.read(size)
                rfile.readline(65537)
        else:
            lengths = [v for n, v in headers if n.lower() == "content-length"]
            if lengths:
                body = rfile.read(int(lengths[0]))
        self.seen.append({"line": line, "headers": headers, "body": body, "trailers": trailers})
        self.arrived.set()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status, x-checksum\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n"
            b"0\r\ngrpc-status: 0\r\nx-checksum: c0ffee\r\ncontent-length: 99\r\n\r\n"
        )
        return True

    def close(self) -> None:
        self._listener.close()


def _fields(rfile: Any) -> List[Tuple[str, str]]:
    fields = []
    while True:
        line = rfile.readline(65537)
        if line in (b"\r\n", b"\n", b""):
            return fields
        name, _, value = line.rstrip(b"\r\n").partition(b":")
        fields.append((name.decode("latin-1"), value.strip().decode("latin-1")))


@pytest.fixture
def trailerApp() -> Iterator[TrailerApp]:
    app = TrailerApp()
    try:
        yield app
    finally:
        app.close()


REQUEST = (
    b"POST /upload HTTP/1.1\r\nHost: app\r\nTE: trailers\r\nTrailer: x-client-sum\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n3\r\ndef\r\n"
    b"0\r\nx-client-sum: 1234\r\nhost: forged.example\r\n\r\n"
)


def _readChunked(sock: socket.socket) -> Tuple[bytes, bytes, Dict[str, str]]:
    """
    One chunked response: its head, its body and its trailers.
    """
    data = b""
    while b"\r\n0\r\n" not in data or not data.endswith(b"\r\n\r\n"):
        piece = sock.recv(65536)
        assert piece, f"connection closed after {data!r}"
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    body = b""
    while True:
        sizeLine, _, rest = rest.partition(b"\r\n")
        size = int(sizeLine.split(b";")[0], 16)
        if not size:
            break
        body += rest[:size]
        rest = rest[size + 2 :]
    trailers = {}
    for line in rest.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            trailers[name.decode().lower()] = value.strip().decode()
    return head, body, trailers


def _check(port: int, app: TrailerApp) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(REQUEST)
        head, body, trailers = _readChunked(sock)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"hello world"
    assert trailers == {"grpc-status": "0", "x-checksum": "c0ffee"}
    [seen] = app.seen
    assert seen["body"] == b"abcdef"
    # The client's trailer reached the app; one that may not be a
    # trailer (Host) was dropped on the way.
    assert [(n.lower(), v) for n, v in seen["trailers"]] == [("x-client-sum", "1234")]
    names = {n.lower(): v for n, v in seen["headers"]}
    assert names.get("te") == "trailers"
    assert names.get("trailer") == "x-client-sum"


def test_trailersThroughBothHopsPlaintext(launch, trailerApp: TrailerApp) -> None:
    sidecar = launch(upstream=trailerApp.url)
    _check(sidecar.ports["outbound"], trailerApp)


def test_trailersThroughBothHopsMutualTLS(launch, trailerApp: TrailerApp, tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = PKI(tmp_path / "pki")
    config = tmp_path / "orders.yaml"
    config.write_text(bConfig(pki), encoding="utf-8")
    b = launch("--config", str(config), "--node-id", "orders", upstream=trailerApp.url)
    a = launch(
        *pki.tlsFlags(pki.web),
        "--peer", f"https://127.0.0.1:{b.inbound}",
        "--peer-identity", ORDERS,
        "--node-id", "web",
        upstream=trailerApp.url,
    )  # fmt: skip
    _check(a.ports["outbound"], trailerApp)


def test_noTrailersWithoutChunkedRequest(launch, trailerApp: TrailerApp) -> None:
    """
    A request with a Content-Length carries no trailers; the response's
    trailers still reach the client.
    """
    sidecar = launch(upstream=trailerApp.url)
    with socket.create_connection(("127.0.0.1", sidecar.ports["outbound"]), timeout=DEADLINE) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: app\r\n\r\n")
        head, body, trailers = _readChunked(sock)
    assert body == b"hello world"
    assert trailers == {"grpc-status": "0", "x-checksum": "c0ffee"}
    [seen] = trailerApp.seen
    assert seen["trailers"] == []
    assert "te" not in {n.lower() for n, _ in seen["headers"]}
