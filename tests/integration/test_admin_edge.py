"""
The admin listener of a real sidecar: request bodies are refused from the
head, a slow head is timed out, connections are capped, a C{Host} that
names another site (a DNS-rebinding page) reads nothing, and the dashboard
outlives its package's files.  Only the admin listener is called: no
request crosses the hop between the listeners, so nothing here runs over
an HTTP/2 hop.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

from tests.integration.harness import REPO, request, waitUntil


def readAll(sock: socket.socket, deadline: float = 15.0) -> bytes:
    """
    Read until the server closes, within C{deadline} seconds.
    """
    sock.settimeout(deadline)
    out = b""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        data = sock.recv(65536)
        if not data:
            return out
        out += data
    raise AssertionError(f"not closed within {deadline}s: {out[:200]!r}")


def test_admin_edge(launch) -> None:
    sidecar = launch()
    port = sidecar.ports["admin"]

    # A body announced in the head is refused before it is read; the
    # connection closes, whatever the client goes on sending.
    for framing in (b"Content-Length: 10000000000", b"Transfer-Encoding: chunked"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing + b"\r\n\r\n")
            reply = readAll(sock)
        assert reply.startswith(b"HTTP/1.1 413 "), reply

    # DNS rebinding: a foreign Host reads nothing, on GETs too.
    for path in ("/config_dump", "/clusters", "/stats/live"):
        refused = request(port, "GET", path, headers=[("Host", "attacker.example")], timeout=10)
        assert refused.status == 403, (path, refused)
        assert b"upstream" not in refused.body
    assert request(port, "GET", "/config_dump", timeout=10).status == 200

    # At most 64 connections: the 65th is closed at once, and once some
    # close, new ones are served again.
    held = []
    try:
        for _ in range(64):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        waitUntil(lambda: _refused(port), 10, "a 65th admin connection is not refused")
    finally:
        for sock in held:
            sock.close()
    waitUntil(lambda: _served(port), 10, "admin not serving after the connections closed")


def _served(port: int) -> bool:
    # Until the listener has seen the held connections close, a new one is
    # still over the cap, and is closed at once (a reset, often).
    try:
        return request(port, "GET", "/healthz", timeout=5).status == 200
    except OSError:
        return False


def _refused(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            return readAll(sock, 5) == b""
        except (ConnectionResetError, AssertionError):
            return True


def test_dashboard_outlives_its_files(launch, app, tmp_path) -> None:
    """
    The dashboard's files are read once, at start: when the package is
    reinstalled or upgraded in place under a running sidecar (which removes
    them for a while), the page it started with is still served.
    """
    site = tmp_path / "site"
    shutil.copytree(
        REPO / "easymesh", site / "easymesh", ignore=shutil.ignore_patterns("__pycache__")
    )
    static = site / "easymesh" / "ops" / "static"
    # Marked, to show that the sidecar runs from this copy.
    page = (static / "dashboard.html").read_bytes() + b"<!-- the copy -->\n"
    (static / "dashboard.html").write_bytes(page)
    script = (static / "dashboard.js").read_bytes()
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    sidecar = launch(upstream=app.url, env={"PYTHONPATH": path})
    port = sidecar.ports["admin"]
    sidecar.waitReady([port])

    shutil.rmtree(static)
    for target, body in (("/", page), ("/dashboard.js", script)):
        reply = request(port, "GET", target)
        assert (reply.status, reply.body) == (200, body), reply
