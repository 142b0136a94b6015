"""
Bodies stream through both hops with back-pressure: an upload reaches the
app before the client has finished sending it, nothing is written to a
temporary file, and memory stays bounded whatever the body's size.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from .conftest import HOPS, http1HopOnly
from .harness import POLL, waitUntil


@pytest.fixture(scope="module", params=HOPS)
def hop(request: pytest.FixtureRequest) -> str:
    """
    The sidecars these tests start forward from outbound to inbound over
    HTTP/1.1, then over HTTP/2.
    """
    return request.param

MiB = 1024 * 1024
BODY = 200 * MiB
#: How much peak RSS may grow while 200 MiB stream through: a few buffers on
#: CPython; PyPy's JIT and garbage collector (its nursery, and objects freed
#: only at major collections) take more, still nothing like the body's size.
GROWTH = 64 * MiB if platform.python_implementation() == "PyPy" else 32 * MiB
BLOCK = bytes(range(256)) * 4096  # 1 MiB, not all one byte


def peakRSS(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def regularFilesOpen(pid: int) -> List[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
            found.append(target)
    return found


class StreamApp:
    """
    An app on a raw socket: hashes uploads as they arrive (noting the first
    bytes), and sends downloads of C{BODY} bytes as fast as it is let.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.sent = 0
        self.firstBytes = threading.Event()
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self._exchange(conn)
        except OSError:
            pass  # the sidecar closed or reset a pooled connection
        finally:
            conn.close()

    def _exchange(self, conn: socket.socket) -> None:
        rfile = conn.makefile("rb")
        while True:
            line = rfile.readline(65536)
            if not line:
                return
            method, target, _ = line.split(b" ", 2)
            headers: Dict[bytes, bytes] = {}
            while True:
                line = rfile.readline(65536)
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if method == b"POST":
                digest = hashlib.sha256()
                if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                    if not self._readChunked(rfile, digest):
                        return
                elif not self._read(rfile, int(headers[b"content-length"]), digest):
                    return
                body = digest.hexdigest().encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BODY)
                for _ in range(BODY // len(BLOCK)):
                    conn.sendall(BLOCK)
                    self.sent += len(BLOCK)

    def _read(self, rfile: Any, left: int, digest: Any) -> bool:
        """
        Read C{left} body bytes as they come; whether they all came.
        """
        while left:
            data = rfile.read1(min(left, 65536))
            if not data:
                return False
            left -= len(data)
            self.received += len(data)
            digest.update(data)
            self.firstBytes.set()
        return True

    def _readChunked(self, rfile: Any, digest: Any) -> bool:
        """
        Read a chunked body, each chunk as it comes; whether it all came.
        """
        while True:
            line = rfile.readline(65536)
            if not line:
                return False
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while rfile.readline(65536) not in (b"\r\n", b""):
                    pass
                return True
            if not self._read(rfile, size, digest):
                return False
            rfile.readline(65536)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


@pytest.fixture
def streamApp() -> Iterator[StreamApp]:
    app = StreamApp()
    yield app
    app.close()


def expectedDigest(size: int) -> str:
    digest = hashlib.sha256()
    for _ in range(size // len(BLOCK)):
        digest.update(BLOCK)
    return digest.hexdigest()


def readResponse(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    return rest


def test_uploadStreamsEarlyWithoutTempFiles(launch, streamApp, tmp_path: Path) -> None:
    """
    The first bytes of an upload reach the app while the client still holds
    the rest; a 200 MiB upload through both hops arrives intact, with no
    file opened or created and a bounded peak RSS.
    """
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    sidecar = launch(upstream=f"http://127.0.0.1:{streamApp.port}", env={"TMPDIR": str(tmpdir)})
    pid = sidecar.proc.pid
    baseline = peakRSS(pid)
    with socket.create_connection(("127.0.0.1", sidecar.ports["outbound"]), timeout=30) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % BODY)
        sock.sendall(BLOCK)
        # Only 1 MiB of 200 has been sent: the app must already see bytes.
        assert streamApp.firstBytes.wait(10), "no upload bytes reached the app"
        assert streamApp.received <= len(BLOCK)
        files: List[str] = []
        for _ in range(BODY // len(BLOCK) - 1):
            sock.sendall(BLOCK)
            if not files:
                files = regularFilesOpen(pid)
        digest = readResponse(sock)
    assert digest.decode() == expectedDigest(BODY)
    assert list(tmpdir.iterdir()) == []
    assert [f for f in files if not f.endswith(".log")] == []
    growth = peakRSS(pid) - baseline
    assert growth < GROWTH, f"peak RSS grew by {growth / MiB:.1f} MiB"


def test_slowReaderPausesDownload(launch, streamApp) -> None:
    """
    A client that reads nothing stops the upstream: the app cannot send more
    than the buffers on the way hold, and memory stays bounded; once the
    client reads, all 200 MiB arrive intact.
    """
    sidecar = launch(upstream=f"http://127.0.0.1:{streamApp.port}")
    pid = sidecar.proc.pid
    baseline = peakRSS(pid)
    with socket.create_connection(("127.0.0.1", sidecar.ports["outbound"]), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /download HTTP/1.1\r\nHost: app\r\n\r\n")
        waitUntil(lambda: streamApp.sent > 0, 10, "the app to start sending")

        # Wait until the app is stuck: its sent count stops moving.
        last: Optional[int] = None
        deadline = time.monotonic() + 20
        stable = 0
        while stable < 10:
            assert time.monotonic() < deadline, "the app never stopped sending"
            current = streamApp.sent
            stable = stable + 1 if current == last else 0
            last = current
            time.sleep(POLL * 5)
        assert streamApp.sent < 64 * MiB, f"app sent {streamApp.sent / MiB:.0f} MiB to a reader that read nothing"
        assert peakRSS(pid) - baseline < GROWTH

        digest = hashlib.sha256()
        received = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        head, _, rest = head.partition(b"\r\n\r\n")
        digest.update(rest)
        received += len(rest)
        while received < BODY:
            chunk = sock.recv(1 << 20)
            assert chunk, f"connection closed after {received} bytes"
            digest.update(chunk)
            received += len(chunk)
    assert received == BODY
    assert digest.hexdigest() == expectedDigest(BODY)
    assert peakRSS(pid) - baseline < GROWTH


@http1HopOnly("the route sends the upload straight to the app: there is no hop")
def test_retryRouteStreamsUploadAtOnce(launch, streamApp, tmp_path: Path) -> None:
    """
    On a route with a retry policy a chunked upload is forwarded as it
    arrives too (a copy is kept for a retry, not the whole body first): its
    first chunk reaches the app while the client still holds the rest, and
    the request then completes.
    """
    config = tmp_path / "mesh.yaml"
    config.write_text(
        f"""\
clusters:
  app: {{endpoints: ["http://127.0.0.1:{streamApp.port}"]}}
routes:
  outbound:
    - match: {{prefix: /}}
      cluster: app
      retry_policy: {{num_retries: 1}}
""",
        encoding="utf-8",
    )
    sidecar = launch("--config", str(config), upstream=f"http://127.0.0.1:{streamApp.port}")
    chunks = [bytes([i]) * 1000 for i in range(8)]
    with socket.create_connection(("127.0.0.1", sidecar.ports["outbound"]), timeout=30) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunks[0]), chunks[0]))
        assert streamApp.firstBytes.wait(10), "the first chunk did not reach the app"
        assert streamApp.received == len(chunks[0])
        for chunk in chunks[1:]:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        digest = readResponse(sock)
    assert digest.decode() == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert streamApp.received == sum(map(len, chunks))
