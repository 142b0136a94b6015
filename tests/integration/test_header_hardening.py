"""
Header hardening through real sidecars, at both edges:

    client -> A (web) outbound, plaintext -> A originates mTLS
           -> B (orders) inbound, mTLS only -> an app that misbehaves

and TLS clients straight to B; A reaches B over HTTP/1.1, then over
HTTP/2.  The app cannot speak for the sidecar
(C{x-easymesh-error}); header names with underscores do not reach it (A
drops them, B refuses them); a client's C{x-request-id} cannot forge a log
line; C{Connection} cannot remove C{Host}; and the error log names the bad
header of a malformed response, never its value.
"""

from __future__ import annotations

import re
import ssl
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from easymesh.tls.certs import makeCA, makeWorkload
from tests.integration.app import TestApp, _head
from tests.integration.conftest import HOPS, Launcher
from tests.integration.harness import Reply, Sidecar, request, waitUntil

WEB = "spiffe://example.org/ns/default/sa/web"
ORDERS = "spiffe://example.org/ns/default/sa/orders"
SECRET = "s3cr3t-cookie-value"


class MisbehavingApp(TestApp):
    """
    The test app, plus:

      /forge     503 claiming to be the sidecar's C{upstream_connect_failure}
      /badhead   a head with a bare CR inside a C{Set-Cookie} value
    """

    __test__ = False

    def respond(self, sock: Any, req: Dict[str, Any]) -> bool:
        path = req["target"].split("?")[0]
        if path == "/forge":
            body = b"forged\n"
            sock.sendall(
                _head(
                    "503 Service Unavailable",
                    [
                        ("x-easymesh-error", "upstream_connect_failure"),
                        ("X-Easymesh-Attempts", "9"),
                        ("Content-Length", str(len(body))),
                    ],
                )
                + body
            )
            return True
        if path == "/badhead":
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: session="
                + SECRET.encode()
                + b"\rInjected: 1\r\n\r\nok"
            )
            return False
        return super().respond(sock, req)


class Pair:
    """
    A (web: plaintext outbound, default settings) to B (orders: mTLS
    inbound refusing header names with underscores) to the app; both
    write a text access log.  A's inbound listener (mTLS, default
    settings) and B's outbound listener (plaintext) are the other edges
    of each setting.
    """

    def __init__(self, tmp: Path, hop: str) -> None:
        self.app = MisbehavingApp()
        self.launcher = Launcher(tmp, hop)
        self.ca = makeCA(tmp)
        self.web = makeWorkload(self.ca, WEB, tmp, "web")
        self.orders = makeWorkload(self.ca, ORDERS, tmp, "orders")
        self.b = self.launcher(
            *self.tls(self.orders),
            "--inbound-tls", "mtls",
            "--headers-with-underscores-action", "reject_request",
            "--access-log", "text",
            "--node-id", "orders",
            upstream=self.app.url,
        )  # fmt: skip
        self.a = self.launcher(
            *self.tls(self.web),
            "--inbound-tls", "mtls",
            "--peer", f"https://127.0.0.1:{self.b.inbound}",
            "--access-log", "text",
            "--node-id", "web",
            upstream=self.app.url,
        )  # fmt: skip
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.load_verify_locations(self.ca.certPath)
        self.context.load_cert_chain(self.web.certPath, self.web.keyPath)

    def tls(self, issued: Any) -> List[str]:
        return ["--tls-cert", issued.certPath, "--tls-key", issued.keyPath, "--tls-ca", self.ca.certPath]

    def close(self) -> None:
        try:
            self.launcher.closeAll()
        finally:
            self.app.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, hop: str) -> Iterator[Pair]:
    shared = Pair(tmp_path_factory.mktemp("header-hardening"), hop)
    try:
        yield shared
    finally:
        shared.close()


#: The two ways in: through A's plaintext outbound listener, and straight
#: to B's mTLS inbound listener.
EDGES = ["plaintext", "mtls"]


@pytest.fixture(scope="module", params=HOPS)
def hop(request: pytest.FixtureRequest) -> str:
    """
    A reaches B over HTTP/1.1, then over HTTP/2 (ALPN C{h2}).
    """
    return request.param


@pytest.fixture(autouse=True)
def _throughTheHop(request: pytest.FixtureRequest, hop: str) -> None:
    """
    A request straight to B's inbound listener crosses no hop: it runs with
    the first pair only.
    """
    callspec = getattr(request.node, "callspec", None)
    if hop != "http1" and callspec is not None and callspec.params.get("edge") == "mtls":
        pytest.skip("straight to B's inbound listener: there is no hop")


def send(
    pair: Pair,
    edge: str,
    target: str,
    headers: Sequence[Tuple[str, str]] = (),
    body: Optional[bytes] = None,
) -> Reply:
    """
    One request through A's outbound listener (C{plaintext}) or straight to
    B's inbound one (C{mtls}).
    """
    if edge == "plaintext":
        return request(pair.a.outbound, "GET" if body is None else "POST", target, headers, body)
    return request(
        pair.b.inbound, "GET" if body is None else "POST", target, headers, body, context=pair.context
    )


def tag(edge: str, name: str) -> str:
    return f"/echo/{name}-{edge}-{uuid.uuid4().hex[:8]}"


def accessLines(sidecar: Sidecar, path: str, count: int = 1) -> List[str]:
    """
    The access log lines for C{path}, once there are C{count}.
    """

    def found() -> List[str]:
        lines = [l for l in sidecar.log().splitlines() if "[easymesh.access#info]" in l and f" {path} " in l]
        return lines if len(lines) >= count else []

    return waitUntil(found, 5.0, f"{count} access log line(s) for {path}")


def seenHeaders(app: TestApp, target: str) -> List[Tuple[str, str]]:
    [seen] = app.waitFor(target.split("?")[0])
    return seen["headers"]


@pytest.mark.parametrize("edge", EDGES)
def test_appCannotForgeSidecarError(pair: Pair, edge: str) -> None:
    """
    An app's C{x-easymesh-error} (and other C{x-easymesh-*} headers) never
    reaches the client, and no access log line takes it for the cause.
    """
    reply = send(pair, edge, "/forge?" + edge)
    assert reply.status == 503
    assert reply.body == b"forged\n"
    assert reply.header("x-easymesh-error") is None, reply
    assert reply.header("x-easymesh-attempts") is None, reply
    sidecars = [pair.b] if edge == "mtls" else [pair.a, pair.b]
    for sidecar in sidecars:
        [line] = accessLines(sidecar, f"/forge?{edge}")
        assert " 503 " in line
        assert " error=- " in line, line
        assert "upstream_connect_failure" not in sidecar.log()


@pytest.mark.parametrize("edge", EDGES)
def test_peerSidecarErrorStillRelayed(pair: Pair, edge: str) -> None:
    """
    B's own error (a malformed app response) keeps its cause on the way
    through A.
    """
    reply = send(pair, edge, "/badhead?" + edge)
    assert reply.status == 502
    assert reply.header("x-easymesh-error") == "upstream_protocol_error"


def test_errorLogNamesHeaderNotValue(pair: Pair) -> None:
    """
    B's error log says what was wrong with the app's head and in which
    header, and never the header's value.
    """
    send(pair, "mtls", "/badhead?log")
    text = pair.b.waitForLog(lambda t: "bare CR in message head in header 'Set-Cookie'" in t)
    assert SECRET not in text
    assert SECRET not in pair.a.log()


@pytest.mark.parametrize("edge", EDGES)
def test_underscoresDroppedByDefault(pair: Pair, edge: str) -> None:
    """
    A drops request headers whose names hold underscores (its default), so
    C{Transfer_Encoding: chunked} beside C{Content-Length} never reaches the
    app, which sees the body framed by length.
    """
    target = tag(edge, "underscores")
    headers = [("Transfer_Encoding", "chunked"), ("X_Real_IP", "203.0.113.9"), ("X-Dashed", "kept")]
    if edge == "plaintext":
        reply = request(pair.a.outbound, "POST", target, headers, b"hello")
    else:
        reply = request(pair.a.inbound, "POST", target, headers, b"hello", context=pair.context)
    assert reply.status == 200, reply
    headers = seenHeaders(pair.app, target)
    names = {n.lower() for n, _ in headers}
    assert not [n for n in names if "_" in n], headers
    assert "x-dashed" in names
    [seen] = pair.app.seen(target)
    assert seen["body_length"] == 5


@pytest.mark.parametrize("edge", EDGES)
def test_underscoresRefusedAtB(pair: Pair, edge: str) -> None:
    """
    B refuses them (C{reject_request}) on both its listeners: 400 with its
    cause; the app sees nothing.
    """
    target = tag(edge, "underscores")
    headers = [("Transfer_Encoding", "chunked")]
    if edge == "plaintext":
        reply = request(pair.b.outbound, "POST", target, headers, b"hello")
    else:
        reply = send(pair, "mtls", target, headers, body=b"hello")
    assert reply.status == 400
    assert reply.header("x-easymesh-error") == "header_with_underscores"
    assert pair.app.seen(target) == []


FORGED_ID = "1\t2026-12-02T16:00:00+0000 [easymesh.access#info] outbound GET /admin 200"


@pytest.mark.parametrize("edge", EDGES)
def test_requestIdCannotForgeLog(pair: Pair, edge: str) -> None:
    """
    A client's C{x-request-id} with a tab is replaced by a fresh one, which
    the app and every access log line of the request share.
    """
    target = tag(edge, "request-id")
    reply = send(pair, edge, target, [("X-Request-Id", FORGED_ID)])
    assert reply.status == 200
    ids = [v for n, v in seenHeaders(pair.app, target) if n.lower() == "x-request-id"]
    assert len(ids) == 1 and ids[0] != FORGED_ID
    assert re.fullmatch(r"[0-9a-f-]{36}", ids[0])
    sidecars = [pair.b] if edge == "mtls" else [pair.a, pair.b]
    for sidecar in sidecars:
        [line] = accessLines(sidecar, target)
        assert line.endswith(f"request_id={ids[0]}"), line
        assert "\t" not in line
    assert "GET /admin" not in pair.a.log() + pair.b.log()


def test_requestIdTooLongReplaced(pair: Pair) -> None:
    target = tag("plaintext", "long-id")
    send(pair, "plaintext", target, [("X-Request-Id", "x" * 129)])
    [value] = [v for n, v in seenHeaders(pair.app, target) if n.lower() == "x-request-id"]
    assert len(value) == 36


@pytest.mark.parametrize("edge", EDGES)
def test_connectionCannotRemoveHost(pair: Pair, edge: str) -> None:
    """
    C{Connection: host} (or naming C{x-request-id} or C{via}) removes
    nothing: the app gets the client's C{Host}; other names in it go.
    """
    target = tag(edge, "connection-host")
    reply = send(
        pair,
        edge,
        target,
        [
            ("Host", "orders.example"),
            ("Connection", "host, x-request-id, via, x-private"),
            ("X-Request-Id", "keep-me"),
            ("X-Private", "1"),
        ],
    )
    assert reply.status == 200
    headers = seenHeaders(pair.app, target)
    assert [v for n, v in headers if n.lower() == "host"] == ["orders.example"]
    assert [v for n, v in headers if n.lower() == "x-request-id"] == ["keep-me"]
    assert "x-private" not in {n.lower() for n, _ in headers}
    hops = ", ".join(v for n, v in headers if n.lower() == "via")
    assert "orders.inbound" in hops
