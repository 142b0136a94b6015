"""
Run C{twistd easymesh} as a subprocess on free loopback ports, and talk
HTTP to it with bounded waits.

Nothing here sleeps in place of synchronisation: readiness and exit are
polled with a short interval under a hard deadline.
"""

from __future__ import annotations

import http.client
import ssl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
TACFILE = REPO / "tapfiles" / "easymesh.tac"
THIRDPARTY = REPO / "tests" / "fixtures" / "thirdparty"

POLL = 0.02
START_DEADLINE = 20.0
STOP_DEADLINE = 10.0


def freePorts(count: int) -> List[int]:
    """
    Ports free on 127.0.0.1 right now: bound to port 0 all at once, so they
    are distinct, then released.
    """
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def closedPort() -> int:
    """
    A loopback port with nothing listening on it.
    """
    return freePorts(1)[0]


def accepts(port: int, timeout: float = 0.5) -> bool:
    """
    Whether a TCP connection to 127.0.0.1:port is accepted.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def portIsFree(port: int) -> bool:
    """
    Whether 127.0.0.1:port can be bound (nothing listens on it).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def twistdCommand() -> List[str]:
    """
    How to run twistd with this interpreter: the C{twistd} script beside
    it, or the same entry point through C{-c}.
    """
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [sys.executable, str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
    ]


class Sidecar:
    """
    One C{twistd} process, its output captured in C{logPath}.

    @ivar ports: C{outbound}, C{inbound} and C{demo} port numbers.
    """

    def __init__(
        self,
        argv: Sequence[str],
        logPath: Path,
        cwd: Path,
        ports: Mapping[str, int],
        env: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.argv = list(argv)
        self.logPath = logPath
        self.cwd = cwd
        self.ports = dict(ports)
        self.env = dict(env) if env is not None else None
        self.proc: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None

    # -- life ----------------------------------------------------------

    def start(self) -> "Sidecar":
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("EASYMESH_ARGS", None)
        env.pop("EASYMESH_CONFIG", None)
        if self.env:
            env.update(self.env)
        with open(self.logPath, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.cwd),
                env=env,
            )
        return self

    def waitReady(self, ports: Optional[Iterable[int]] = None, timeout: float = START_DEADLINE) -> None:
        """
        Poll until every port accepts connections; fail at once, with the
        log, if the process exits first.
        """
        assert self.proc is not None
        waiting = list(ports if ports is not None else self.ports.values())
        deadline = time.monotonic() + timeout
        while waiting:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"sidecar exited with {self.proc.returncode} before listening:\n"
                    + self.log()
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"ports {waiting} not accepting after {timeout}s:\n" + self.log()
                )
            if accepts(waiting[0], timeout=0.2):
                waiting.pop(0)
            else:
                time.sleep(POLL)

    def wait(self, timeout: float) -> int:
        """
        Wait for the process to exit; its return code.
        """
        assert self.proc is not None
        self.returncode = self.proc.wait(timeout=timeout)
        return self.returncode

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> Optional[int]:
        """
        SIGTERM, then SIGKILL if it is still there after the deadline.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_DEADLINE)
        self.returncode = self.proc.returncode
        return self.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- output --------------------------------------------------------

    def log(self) -> str:
        try:
            return self.logPath.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def waitForLog(self, predicate, timeout: float = 5.0) -> str:
        """
        Poll the log until C{predicate(text)} holds; the text.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"log condition not met in {timeout}s:\n{text}")
            time.sleep(POLL)

    # -- addresses -----------------------------------------------------

    @property
    def outbound(self) -> int:
        return self.ports["outbound"]

    @property
    def inbound(self) -> int:
        return self.ports["inbound"]


def sidecarArgs(
    ports: Mapping[str, int],
    extra: Sequence[str] = (),
    nodeId: Optional[str] = "meshtest",
) -> List[str]:
    """
    The C{easymesh} plugin arguments for a sidecar on C{ports}, all on
    loopback; C{--drain 1} unless C{extra} sets a drain; the admin listener
    on C{ports["admin"]}, or off if no port is given for it; no
    C{--node-id} if C{nodeId} is L{None}.
    """
    args = [
        "--outbound",
        str(ports["outbound"]),
        "--inbound",
        f"tcp:{ports['inbound']}:interface=127.0.0.1",
        "--demo",
        str(ports["demo"]),
    ]
    if nodeId is not None:
        args += ["--node-id", nodeId]
    if "--admin" not in extra:
        args += ["--admin", str(ports["admin"]) if "admin" in ports else "none"]
    if "--drain" not in extra:
        args += ["--drain", "1"]
    return args + list(extra)


def waitUntil(predicate: Any, timeout: float, what: str, interval: float = POLL) -> Any:
    """
    Poll C{predicate} until it returns something true, at most C{timeout}
    seconds; that value.

    @raise AssertionError: It did not, naming C{what}.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)


# -- a bounded HTTP client --------------------------------------------


class Reply:
    """
    A complete response: status, reason, headers and body.
    """

    def __init__(self, response: http.client.HTTPResponse, body: bytes, elapsed: float) -> None:
        self.status = response.status
        self.reason = response.reason
        self.headers = response.msg
        self.body = body
        self.elapsed = elapsed

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name)

    def all(self, name: str) -> List[str]:
        return self.headers.get_all(name) or []

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.reason!r} {dict(self.headers)!r} {self.body[:200]!r}>"


def send(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    headers: Sequence[Tuple[str, str]] = (),
    body: Optional[bytes] = None,
) -> None:
    """
    Send a request byte for byte: no Host, Accept-Encoding or other header
    unless given (a Host for the connection is added if none is).
    """
    conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    if not any(n.lower() == "host" for n, _ in headers):
        conn.putheader("Host", f"{conn.host}:{conn.port}")
    for name, value in headers:
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)


def request(
    port: int,
    method: str,
    target: str,
    headers: Sequence[Tuple[str, str]] = (),
    body: Optional[bytes] = None,
    timeout: float = 10.0,
    context: Optional[ssl.SSLContext] = None,
) -> Reply:
    """
    One request on a new connection to 127.0.0.1:port, read to the end;
    over TLS with C{context}, if given.
    """
    started = time.monotonic()
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        send(conn, method, target, headers, body)
        response = conn.getresponse()
        data = response.read()
        return Reply(response, data, time.monotonic() - started)
    finally:
        conn.close()


class Session:
    """
    Requests on one keep-alive connection to 127.0.0.1:port, opened again
    whenever the previous one was closed (by either side or by an error).
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: Optional[http.client.HTTPConnection] = None

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[Tuple[str, str]] = (),
        body: Optional[bytes] = None,
    ) -> Reply:
        """
        One request, read to the end; on an error the connection is closed
        and the error raised.
        """
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        started = time.monotonic()
        try:
            send(self._conn, method, target, headers, body)
            response = self._conn.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return Reply(response, data, time.monotonic() - started)

    def get(self, target: str, headers: Sequence[Tuple[str, str]] = ()) -> Reply:
        return self.request("GET", target, headers)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
