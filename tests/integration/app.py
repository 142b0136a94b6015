"""
A small, deliberately raw HTTP/1.1 app for the integration tests.

It runs in threads of the test process (one per connection) and speaks
HTTP over plain sockets, so that it can do what a well-behaved framework
would not: repeat headers in a chosen order, hang, die in the middle of a
body, or answer with garbage.  Every request it reads is recorded (method,
raw target, raw headers, body digest, connection number) so that tests can
check exactly what the sidecar forwarded.

Routes (by path, query ignored unless said):

  /echo...           200, JSON describing the request (HEAD: headers only)
  /repeated          200 with two Set-Cookie and interleaved repeated headers
  /hop-response      200 with hop-by-hop response headers (Connection-named)
  /until-close       200 without Content-Length: the body ends at close
  /close-after       200 with Connection: close, then close
  /teapot            418 with a custom reason phrase
  /big               20 MB body with Content-Length, written in 64 KiB pieces
  /nobody/204        204, no body
  /nobody/304        304, no body
  /hang              reads the request, never answers
  /die-cl            Content-Length: 1000000, then 1000 bytes, then close
  /die-chunked       chunked, one 1000-byte chunk, then close
  /garbage           garbage instead of a status line, then close
  /slow?d=SECONDS    answers 200 'slow done' after SECONDS (at most 5)

In C{mode="stale"} every connection's first request is answered (as
/echo, keep-alive) and its second is read and then the connection is closed
without an answer: a stale pooled connection.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import socketserver
import struct
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

BIG_SIZE = 20 * 1024 * 1024
PIECE = 64 * 1024
TEAPOT_PHRASE = "I Am A Custom Teapot"
SLOW_BODY = b"slow done\n"
UNTIL_CLOSE_BODY = b"no length, ends at close\n" * 1000

_big: Optional[bytes] = None
_bigLock = threading.Lock()


def bigBody() -> bytes:
    """
    The 20 MB body of C{/big}: deterministic pseudo-random bytes.
    """
    global _big
    with _bigLock:
        if _big is None:
            _big = random.Random(20240601).randbytes(BIG_SIZE)
        return _big


def bigDigest() -> str:
    return hashlib.sha256(bigBody()).hexdigest()


class _Closed(Exception):
    """
    The peer closed the connection, or sent something unparseable.
    """


def _readRequest(rfile: Any) -> Optional[Dict[str, Any]]:
    line = rfile.readline(65537)
    while line in (b"\r\n", b"\n"):
        line = rfile.readline(65537)
    if not line:
        return None
    parts = line.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3:
        raise _Closed(f"bad request line {line!r}")
    method, target, version = parts
    headers: List[Tuple[str, str]] = []
    while True:
        h = rfile.readline(65537)
        if not h:
            raise _Closed("EOF in headers")
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.rstrip(b"\r\n").partition(b":")
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    lower = [(n.lower(), v) for n, v in headers]
    digest = hashlib.sha256()
    length = 0
    te = ",".join(v for n, v in lower if n == "transfer-encoding").lower()
    if "chunked" in te:
        while True:
            sizeLine = rfile.readline(65537)
            if not sizeLine:
                raise _Closed("EOF in chunked body")
            size = int(sizeLine.split(b";")[0].strip(), 16)
            if size == 0:
                while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                break
            data = rfile.read(size)
            if len(data) != size:
                raise _Closed("EOF in chunk")
            digest.update(data)
            length += size
            rfile.readline(65537)
    else:
        cl = [v for n, v in lower if n == "content-length"]
        if cl:
            remaining = int(cl[0])
            while remaining:
                data = rfile.read(min(remaining, PIECE))
                if not data:
                    raise _Closed("EOF in body")
                digest.update(data)
                length += len(data)
                remaining -= len(data)
    return {
        "method": method.decode("latin-1"),
        "target": target.decode("latin-1"),
        "version": version.decode("latin-1"),
        "headers": headers,
        "body_length": length,
        "body_sha256": digest.hexdigest(),
    }


def _head(status: str, headers: List[Tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        app = self.server.app
        sock: socket.socket = self.request
        sock.settimeout(30)
        with app.lock:
            app.connections += 1
            connection = app.connections
            app.sockets.append(sock)
        rfile = sock.makefile("rb")
        index = 0
        try:
            while not app.stopping.is_set():
                try:
                    req = _readRequest(rfile)
                except (_Closed, OSError, ValueError):
                    return
                if req is None:
                    return
                index += 1
                req["connection"] = connection
                req["index"] = index
                with app.lock:
                    app.requests.append(req)
                try:
                    keep = app.respond(sock, req)
                except OSError:
                    return
                if not keep:
                    return
        finally:
            try:
                rfile.close()
                sock.close()
            except OSError:
                pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    app: "TestApp"


class TestApp:
    """
    The app, listening on an ephemeral loopback port until L{close}.

    @ivar requests: Every request read, in arrival order.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, mode: str = "normal") -> None:
        self.mode = mode
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.requests: List[Dict[str, Any]] = []
        self.connections = 0
        self.sockets: List[socket.socket] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.app = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"testapp-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def seen(self, path: str) -> List[Dict[str, Any]]:
        """
        The requests read so far whose target's path is C{path}.
        """
        with self.lock:
            return [r for r in self.requests if r["target"].split("?")[0] == path]

    def seenTarget(self, target: str) -> List[Dict[str, Any]]:
        """
        The requests read so far whose raw target is C{target}.
        """
        with self.lock:
            return [r for r in self.requests if r["target"] == target]

    def waitFor(self, path: str, count: int = 1, timeout: float = 5.0) -> List[Dict[str, Any]]:
        """
        Poll until C{count} requests for C{path} have been read.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.seen(path)
            if len(found) >= count:
                return found
            time.sleep(0.01)
        raise AssertionError(f"app did not see {count} request(s) for {path} in {timeout}s")

    # -- answers -------------------------------------------------------

    def respond(self, sock: socket.socket, req: Dict[str, Any]) -> bool:
        """
        Answer one request; return whether the connection stays open.
        """
        closing = any(
            n.lower() == "connection" and "close" in v.lower() for n, v in req["headers"]
        )
        if self.mode == "stale":
            if req["index"] >= 2:
                sock.shutdown(socket.SHUT_RDWR)
                return False
            return self._echo(sock, req) and not closing
        path, _, query = req["target"].partition("?")
        if path.startswith("/echo"):
            return self._echo(sock, req) and not closing
        if path == "/repeated":
            body = b"repeated\n"
            sock.sendall(
                _head(
                    "200 OK",
                    [
                        ("Set-Cookie", "first=1; Path=/"),
                        ("X-Multi", "one"),
                        ("Set-Cookie", "second=2; Path=/; HttpOnly"),
                        ("X-Multi", "two"),
                        ("X-Other", "between"),
                        ("X-Multi", "three"),
                        ("Content-Length", str(len(body))),
                    ],
                )
                + body
            )
            return not closing
        if path == "/hop-response":
            body = b"hop\n"
            sock.sendall(
                _head(
                    "200 OK",
                    [
                        ("Connection", "x-resp-private"),
                        ("X-Resp-Private", "must-not-pass"),
                        ("Keep-Alive", "timeout=5"),
                        ("X-Public", "yes"),
                        ("Content-Length", str(len(body))),
                    ],
                )
                + body
            )
            return not closing
        if path == "/until-close":
            sock.sendall(_head("200 OK", [("Content-Type", "text/plain")]) + UNTIL_CLOSE_BODY)
            return False
        if path == "/close-after":
            body = b"closing\n"
            sock.sendall(
                _head("200 OK", [("Connection", "close"), ("Content-Length", str(len(body)))])
                + body
            )
            return False
        if path == "/teapot":
            body = b"short and stout\n"
            sock.sendall(
                _head(f"418 {TEAPOT_PHRASE}", [("Content-Length", str(len(body)))]) + body
            )
            return not closing
        if path == "/big":
            data = bigBody()
            sock.sendall(
                _head(
                    "200 OK",
                    [
                        ("Content-Type", "application/octet-stream"),
                        ("Content-Length", str(len(data))),
                    ],
                )
            )
            view = memoryview(data)
            for start in range(0, len(data), PIECE):
                sock.sendall(view[start : start + PIECE])
            return not closing
        if path == "/nobody/204":
            sock.sendall(_head("204 No Content", [("X-Kind", "no-content")]))
            return not closing
        if path == "/nobody/304":
            sock.sendall(_head("304 Not Modified", [("ETag", '"v1"'), ("X-Kind", "not-modified")]))
            return not closing
        if path == "/hang":
            self.stopping.wait(30)
            return False
        if path == "/die-cl":
            sock.sendall(
                _head("200 OK", [("Content-Length", "1000000")]) + b"x" * 1000
            )
            sock.close()
            return False
        if path == "/die-chunked":
            sock.sendall(
                _head("200 OK", [("Transfer-Encoding", "chunked")])
                + b"3e8\r\n"
                + b"y" * 1000
                + b"\r\n"
            )
            sock.close()
            return False
        if path == "/garbage":
            sock.sendall(b"GARBAGE-NOT-HTTP \x01\x02 whatever\r\n\r\n")
            sock.close()
            return False
        if path == "/slow":
            delay = 1.0
            for item in query.split("&"):
                key, _, value = item.partition("=")
                if key == "d":
                    delay = min(5.0, float(value))
            self.stopping.wait(delay)
            sock.sendall(
                _head("200 OK", [("Content-Length", str(len(SLOW_BODY)))]) + SLOW_BODY
            )
            return not closing
        body = b"not found\n"
        sock.sendall(_head("404 Not Found", [("Content-Length", str(len(body)))]) + body)
        return not closing

    def _echo(self, sock: socket.socket, req: Dict[str, Any]) -> bool:
        body = json.dumps(req).encode("utf-8")
        head = _head(
            "200 OK",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        sock.sendall(head if req["method"] == "HEAD" else head + body)
        return True


class NamedApp(TestApp):
    """
    A backend for traffic-management tests that says who it is: every
    answer carries C{X-App: <name>}, and by default it is a 200 whose body
    is the name.  Requests are recorded as by L{TestApp}.

    What it does with a request (other than those below)
    is its L{behaviour}, unless a scripted behaviour is queued
    (L{script}); a behaviour is one of:

      C{"ok"}              200, the name as the body
      an C{int}            that status, the name as the body
      C{"hang"}            no answer until L{release} is set (then 200) or
                           the app closes
      C{"reset"}           the connection is reset (RST) without an answer
      C{("slow", secs)}    200 after C{secs} seconds

    C{/healthz} answers 200 while L{healthy} is true, 503 otherwise; a path
    ending in C{/status/NNN} answers NNN, one ending in C{/sleep/SECONDS}
    answers 200 after that long (at most 5 s).
    """

    def __init__(self, name: str, behaviour: Any = "ok") -> None:
        super().__init__()
        self.name = name
        self.behaviour = behaviour
        self.healthy = True
        self.release = threading.Event()
        self._scripted: List[Any] = []

    def script(self, *behaviours: Any) -> None:
        """
        Answer the next requests (not health checks) with C{behaviours}, in
        order, then with L{behaviour} again.
        """
        with self.lock:
            self._scripted.extend(behaviours)

    def served(self, prefix: str = "/") -> List[Dict[str, Any]]:
        """
        The requests read so far whose target starts with C{prefix},
        health checks left out.
        """
        with self.lock:
            return [
                r
                for r in self.requests
                if r["target"].startswith(prefix) and r["target"].split("?")[0] != "/healthz"
            ]

    def reset(self) -> None:
        """
        Forget the requests read so far and any scripted behaviours.
        """
        with self.lock:
            self.requests.clear()
            self._scripted.clear()

    def _answer(self, sock: socket.socket, status: int, closing: bool) -> bool:
        body = self.name.encode("utf-8")
        reasons = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}
        sock.sendall(
            _head(
                f"{status} {reasons.get(status, 'Status')}",
                [("X-App", self.name), ("Content-Length", str(len(body)))],
            )
            + body
        )
        return not closing

    def respond(self, sock: socket.socket, req: Dict[str, Any]) -> bool:
        closing = any(
            n.lower() == "connection" and "close" in v.lower() for n, v in req["headers"]
        )
        path = req["target"].split("?")[0]
        if path == "/healthz":
            return self._answer(sock, 200 if self.healthy else 503, closing)
        _, marker, code = path.rpartition("/status/")
        if marker and code.isdigit():
            return self._answer(sock, int(code), closing)
        _, marker, seconds = path.rpartition("/sleep/")
        if marker:
            self.stopping.wait(min(5.0, float(seconds)))
            return self._answer(sock, 200, closing)
        with self.lock:
            behaviour = self._scripted.pop(0) if self._scripted else self.behaviour
        if behaviour == "ok":
            return self._answer(sock, 200, closing)
        if isinstance(behaviour, int):
            return self._answer(sock, behaviour, closing)
        if behaviour == "hang":
            deadline = time.monotonic() + 30
            while not self.release.is_set() and not self.stopping.is_set():
                if time.monotonic() > deadline:
                    return False
                self.release.wait(0.05)
            if self.stopping.is_set():
                return False
            return self._answer(sock, 200, closing)
        if behaviour == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return False
        if isinstance(behaviour, tuple) and behaviour[0] == "slow":
            self.stopping.wait(float(behaviour[1]))
            return self._answer(sock, 200, closing)
        raise ValueError(f"unknown behaviour {behaviour!r}")
