"""
The stream idle timeout with real sidecars, sockets and an app that goes
silent, on the inbound listener in plaintext and over mTLS:

- an app that sends its head and part of its body, then nothing: the
  client connection is aborted about a second later (it never gets a body
  that passes for complete), and the sidecar closes its connection to the
  app;
- a client that sends part of its request body, then nothing: it is
  answered 504 C{stream_idle_timeout} and the connection is closed, and so
  is the sidecar's connection to the app.

The plaintext sidecar takes the timeout from C{--stream-idle-timeout 1};
the mTLS one from its config file's C{local} cluster
(C{stream_idle_timeout: 1s}).  Both keep the default body timeout (30 s),
so the stream idle timeout is the one that fires.

Both cases run through both hops too (the client calls the outbound
listener), the hop over HTTP/1.1 and over HTTP/2, where the end of the
stream on one side of the hop must reach the other.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest

from easymesh.tls.certs import makeCA, makeWorkload
from tests.integration.conftest import HOPS, Launcher
from tests.integration.harness import Sidecar

ORDERS = "spiffe://example.org/ns/default/sa/orders"
WEB = "spiffe://example.org/ns/default/sa/web"

#: What the silent app declares, and how much of it it sends.
DECLARED = 100_000
SENT = 1000
#: Bounds on every wait here.
DEADLINE = 15.0


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(DEADLINE * 2)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = sock.recv(65536)
                if not data:
                    return
                head += data
            target = head.split(b" ", 2)[1].decode("ascii")
            if target.startswith("/silent-body/"):
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % DECLARED + b"x" * SENT
                )
            # Then nothing: read until the sidecar closes the connection.
            while sock.recv(65536):
                pass
            how = "closed"
        except socket.timeout:
            how = "timed out"
        except OSError:
            how = "closed"
        self.server.app.ended(target, how)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    app: "SilentApp"


class SilentApp:
    """
    An app that reads a request head, then, for C{/silent-body/...}, sends a
    head declaring C{DECLARED} bytes and only C{SENT} of them; for any
    other target sends nothing.  Either way it then waits for the sidecar
    to close the connection, and records how each connection ended.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._ends: Dict[str, str] = {}
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.app = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def ended(self, target: str, how: str) -> None:
        with self._lock:
            self._ends[target] = how
            self._lock.notify_all()

    def waitEnded(self, target: str) -> str:
        """
        How the app's connection for C{target} ended, once it has.
        """
        with self._lock:
            if self._lock.wait_for(lambda: target in self._ends, timeout=DEADLINE):
                return self._ends[target]
        raise AssertionError(f"the app's connection for {target} is still open")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class Setup:
    """
    The app, a plaintext sidecar and an mTLS one in front of it, and a
    client TLS context for the latter.
    """

    def __init__(self, tmp: Path) -> None:
        self.app = SilentApp()
        self.launcher = Launcher(tmp)
        ca = makeCA(tmp)
        orders = makeWorkload(ca, ORDERS, tmp, "orders")
        web = makeWorkload(ca, WEB, tmp, "web")
        self.plain = self.launcher(
            "--stream-idle-timeout", "1", "--access-log", "json", upstream=self.app.url
        )
        config = tmp / "orders.yaml"
        config.write_text(
            f"""\
tls-cert: {orders.certPath}
tls-key: {orders.keyPath}
tls-ca: {ca.certPath}
inbound-tls: mtls
access-log: json
clusters:
  local:
    endpoints: ["{self.app.url}"]
    stream_idle_timeout: 1s
""",
            encoding="utf-8",
        )
        self.mtls = self.launcher("--config", str(config), upstream=self.app.url)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.load_verify_locations(ca.certPath)
        self.context.load_cert_chain(web.certPath, web.keyPath)

    def close(self) -> None:
        try:
            self.launcher.closeAll()
        finally:
            self.app.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    shared = Setup(tmp_path_factory.mktemp("stream-idle"))
    try:
        yield shared
    finally:
        shared.close()


def exchange(port: int, context: Optional[ssl.SSLContext], data: bytes) -> Tuple[bytes, float, Optional[BaseException]]:
    """
    Send C{data} to 127.0.0.1:port (over TLS with C{context}) and read
    until the connection ends.

    @return: What was received, the seconds from the last byte received
        (or from the send) to the end, and the error that ended it, if any.
    """
    sock: Any = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    received = b""
    error: Optional[BaseException] = None
    try:
        if context is not None:
            sock = context.wrap_socket(sock)
        sock.sendall(data)
        last = time.monotonic()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            last = time.monotonic()
    except socket.timeout:
        raise AssertionError(f"the connection was still open after {DEADLINE}s: {received[:300]!r}")
    except (ssl.SSLError, OSError) as e:
        error = e
    finally:
        sock.close()
    return received, time.monotonic() - last, error


def sidecarOf(setup: Setup, tls: bool) -> Tuple[Sidecar, Optional[ssl.SSLContext]]:
    return (setup.mtls, setup.context) if tls else (setup.plain, None)


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "mtls"])
def test_silent_upstream_mid_body(setup: Setup, tls: bool) -> None:
    """
    The app stops in the middle of its body: about a second later the
    client's connection is cut (the body is short of its declared length,
    and never ended cleanly), the app's connection is closed, and the
    cause is in the access and error logs.
    """
    sidecar, context = sidecarOf(setup, tls)
    target = f"/silent-body/{'mtls' if tls else 'plaintext'}"
    offset = len(sidecar.log())
    received, silence, _ = exchange(
        sidecar.inbound, context, f"GET {target} HTTP/1.1\r\nHost: orders\r\n\r\n".encode("ascii")
    )
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), received[:300]
    assert b"content-length: %d" % DECLARED in head.lower()
    assert len(body) == SENT
    assert 0.8 <= silence < 8, silence
    assert setup.app.waitEnded(target) == "closed"
    text = sidecar.waitForLog(lambda t: f'"path":"{target}"' in t[offset:])[offset:]
    assert '"error":"stream_idle_timeout"' in text
    assert (
        f"GET {target}: 200 stream_idle_timeout [route inbound-default, cluster local" in text
    )
    assert "no body bytes moved either way for 1s" in text


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "mtls"])
def test_client_stalls_request_body(setup: Setup, tls: bool) -> None:
    """
    The client stops in the middle of its request body, before any
    response: about a second later it is answered 504 naming the cause,
    its connection is closed, and so is the app's.
    """
    sidecar, context = sidecarOf(setup, tls)
    target = f"/stalled-upload/{'mtls' if tls else 'plaintext'}"
    offset = len(sidecar.log())
    received, _, error = exchange(
        sidecar.inbound,
        context,
        f"POST {target} HTTP/1.1\r\nHost: orders\r\nContent-Length: 1000\r\n\r\n".encode("ascii")
        + b"y" * 10,
    )
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504 "), (received[:300], error)
    lowered = head.lower()
    assert b"x-easymesh-error: stream_idle_timeout" in lowered
    assert b"connection: close" in lowered
    assert body.startswith(b"stream idle timeout")
    assert setup.app.waitEnded(target) == "closed"
    text = sidecar.waitForLog(lambda t: f'"path":"{target}"' in t[offset:])[offset:]
    assert '"status":504' in text and '"error":"stream_idle_timeout"' in text


# Through both hops.


@pytest.mark.parametrize("hop", HOPS)
def test_silent_upstream_mid_body_through_both_hops(setup: Setup, launch: Launcher, hop: str) -> None:
    """
    The app stops in the middle of its body behind both hops: about a
    second later the client's connection is cut, short of the declared
    length, and the app's connection is closed.
    """
    sidecar = launch("--stream-idle-timeout", "1", "--access-log", "json", upstream=setup.app.url)
    target = f"/silent-body/hops-{hop}"
    received, silence, _ = exchange(
        sidecar.outbound, None, f"GET {target} HTTP/1.1\r\nHost: orders\r\n\r\n".encode("ascii")
    )
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), received[:300]
    assert b"content-length: %d" % DECLARED in head.lower()
    assert len(body) == SENT
    assert 0.8 <= silence < 8, silence
    assert setup.app.waitEnded(target) == "closed"
    text = sidecar.waitForLog(lambda t: t.count(f'"path":"{target}"') == 2)
    assert '"error":"stream_idle_timeout"' in text, text


@pytest.mark.parametrize("hop", HOPS)
def test_client_stalls_request_body_through_both_hops(setup: Setup, launch: Launcher, hop: str) -> None:
    """
    The client stops in the middle of its request body in front of both
    hops: about a second later it is answered 504 naming the cause, and
    the app's connection (behind the hop) is closed.
    """
    sidecar = launch("--stream-idle-timeout", "1", "--access-log", "json", upstream=setup.app.url)
    target = f"/stalled-upload/hops-{hop}"
    received, _, error = exchange(
        sidecar.outbound,
        None,
        f"POST {target} HTTP/1.1\r\nHost: orders\r\nContent-Length: 1000\r\n\r\n".encode("ascii")
        + b"y" * 10,
    )
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504 "), (received[:300], error)
    assert b"x-easymesh-error: stream_idle_timeout" in head.lower()
    assert setup.app.waitEnded(target) == "closed"
