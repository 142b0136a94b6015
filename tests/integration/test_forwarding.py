"""
What goes through both hops (client -> outbound -> inbound -> app) arrives
intact: method, target, headers, bodies, status lines.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re

import pytest

from tests.integration.app import BIG_SIZE, TEAPOT_PHRASE, UNTIL_CLOSE_BODY, bigDigest
from tests.integration.harness import request, send

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _echoed(reply):
    assert reply.status == 200, reply
    return json.loads(reply.body)


def _values(seen, name):
    return [v for n, v in seen["headers"] if n.lower() == name.lower()]


def test_default_path_hello_world(launch):
    """
    With no --upstream the demo app answers through both hops.
    """
    sidecar = launch()
    reply = request(sidecar.outbound, "GET", "/anything?x=1", timeout=5)
    assert reply.status == 200
    assert reply.body == b"hello world\n"
    via = ", ".join(reply.all("via"))
    assert "meshtest.outbound" in via and "meshtest.inbound" in via


@pytest.mark.parametrize(
    "method, target",
    [
        ("GET", "/echo/a/b%3Bc/./d/../e;p=1?x=1&y=%20z&y=2&&flag&q=a%26b%2F"),
        ("PROPFIND", "/echo/odd-method?depth=1"),
        ("DELETE", "/echo/Caps/MiXeD?A=B"),
        ("GET", "/echo//double//slash//?a=//b&c=%7e%7E"),
    ],
)
def test_method_and_target_byte_exact(mesh, method, target):
    sidecar = mesh.sidecar
    seen = _echoed(request(sidecar.outbound, method, target, timeout=5))
    assert seen["method"] == method
    assert seen["target"] == target


def test_encoded_slash_refused_by_default(mesh):
    """
    A path with an encoded slash cannot be matched safely: 400, and the app
    sees nothing.
    """
    sidecar = mesh.sidecar
    before = len(mesh.app.requests)
    reply = request(sidecar.outbound, "GET", "/echo/a%2Fb", timeout=5)
    assert reply.status == 400
    assert reply.header("x-easymesh-error") == "bad_request"
    assert len(mesh.app.requests) == before


def test_empty_query_kept_byte_exact(mesh):
    sidecar = mesh.sidecar
    seen = _echoed(request(sidecar.outbound, "GET", "/echo/x?", timeout=5))
    assert seen["target"] == "/echo/x?"


def test_request_headers_rewritten_as_a_proxy_must(mesh):
    sidecar = mesh.sidecar
    reply = request(
        sidecar.outbound,
        "GET",
        "/echo/headers",
        headers=[
            ("Host", "orders.svc.example:8443"),
            ("Connection", "x-foo"),
            ("X-Foo", "must-not-pass"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "gzip, trailers"),
            ("Upgrade", "websocket"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Easymesh-Error", "spoofed"),
            ("x-easymesh-internal", "spoofed"),
            ("X-Forwarded-For", "10.1.2.3"),
            ("X-Keep", "stays"),
            ("Accept", "text/plain"),
        ],
        timeout=5,
    )
    seen = _echoed(reply)
    names = [n.lower() for n, _ in seen["headers"]]
    assert _values(seen, "host") == ["orders.svc.example:8443"]
    for gone in ("x-foo", "keep-alive", "upgrade", "proxy-connection"):
        assert gone not in names, seen["headers"]
    # TE is hop-by-hop, but "trailers" passes: the sidecar relays them.
    assert _values(seen, "te") == ["trailers"]
    assert not any("x-foo" in v.lower() for v in _values(seen, "connection"))
    assert not [n for n in names if n.startswith("x-easymesh-")], seen["headers"]
    assert _values(seen, "x-keep") == ["stays"]
    assert _values(seen, "accept") == ["text/plain"]
    assert _values(seen, "x-forwarded-for") == ["10.1.2.3, 127.0.0.1, 127.0.0.1"]
    assert _values(seen, "x-forwarded-proto") == ["http"]
    via = ", ".join(_values(seen, "via"))
    assert "meshtest.outbound" in via and "meshtest.inbound" in via, via
    assert via.index("meshtest.outbound") < via.index("meshtest.inbound"), via
    ids = _values(seen, "x-request-id")
    assert len(ids) == 1 and UUID.match(ids[0]), ids


def test_response_hop_by_hop_headers_removed(mesh):
    sidecar = mesh.sidecar
    reply = request(sidecar.outbound, "GET", "/hop-response", timeout=5)
    assert reply.status == 200, reply
    assert reply.all("x-public") == ["yes"]
    assert reply.all("x-resp-private") == []
    assert reply.all("keep-alive") == []
    assert not any("x-resp-private" in v.lower() for v in reply.all("connection"))
    assert reply.body == b"hop\n"


def test_forwarded_for_added_when_absent(mesh):
    sidecar = mesh.sidecar
    seen = _echoed(request(sidecar.outbound, "GET", "/echo/xff", timeout=5))
    assert _values(seen, "x-forwarded-for") == ["127.0.0.1, 127.0.0.1"]


def test_request_id_passed_unchanged(mesh):
    sidecar = mesh.sidecar
    seen = _echoed(
        request(
            sidecar.outbound,
            "GET",
            "/echo/rid",
            headers=[("X-Request-Id", "Req-abc-123_xyz")],
            timeout=5,
        )
    )
    assert _values(seen, "x-request-id") == ["Req-abc-123_xyz"]


def test_status_and_reason_phrase_relayed(mesh):
    """
    The status and its reason phrase are relayed; over an HTTP/2 hop, which
    has no reason phrases, the client gets the status's standard one.
    """
    sidecar = mesh.sidecar
    reply = request(sidecar.outbound, "GET", "/teapot", timeout=5)
    assert reply.status == 418
    assert reply.reason == (TEAPOT_PHRASE if mesh.hop == "http1" else "I'm a Teapot")
    assert reply.body == b"short and stout\n"
    assert reply.header("x-easymesh-error") is None


def test_repeated_headers_keep_their_order(mesh):
    sidecar = mesh.sidecar
    reply = request(sidecar.outbound, "GET", "/repeated", timeout=5)
    assert reply.status == 200
    assert reply.all("set-cookie") == ["first=1; Path=/", "second=2; Path=/; HttpOnly"]
    assert reply.all("x-multi") == ["one", "two", "three"]
    assert reply.all("x-other") == ["between"]
    assert reply.body == b"repeated\n"


def test_app_closing_its_connections_is_not_an_error(mesh):
    """
    A body that ends at close, and Connection: close from the app: complete
    responses, and the next request goes on a new connection.
    """
    sidecar = mesh.sidecar
    for _ in range(2):
        reply = request(sidecar.outbound, "GET", "/until-close", timeout=5)
        assert reply.status == 200, reply
        assert reply.body == UNTIL_CLOSE_BODY
        reply = request(sidecar.outbound, "GET", "/close-after", timeout=5)
        assert reply.status == 200, reply
        assert reply.body == b"closing\n"
        reply = request(sidecar.outbound, "GET", "/echo/next", timeout=5)
        assert reply.status == 200, reply


def test_big_body_streamed_intact(mesh):
    expected = bigDigest()
    sidecar = mesh.sidecar
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.outbound, timeout=20)
    try:
        send(conn, "GET", "/big")
        response = conn.getresponse()
        assert response.status == 200
        digest = hashlib.sha256()
        total = 0
        while True:
            piece = response.read(256 * 1024)
            if not piece:
                break
            digest.update(piece)
            total += len(piece)
    finally:
        conn.close()
    assert total == BIG_SIZE
    assert digest.hexdigest() == expected


@pytest.mark.parametrize("size", [1024 * 1024, 20 * 1024 * 1024])
def test_post_body_forwarded_intact(mesh, size):
    body = os.urandom(size)
    sidecar = mesh.sidecar
    seen = _echoed(
        request(
            sidecar.outbound,
            "POST",
            "/echo/upload",
            headers=[("Content-Type", "application/octet-stream")],
            body=body,
            timeout=30,
        )
    )
    assert seen["method"] == "POST"
    assert seen["body_length"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_post_body_forwarded_intact(mesh):
    body = os.urandom(300 * 1024 + 7)
    sidecar = mesh.sidecar
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.outbound, timeout=15)
    try:
        conn.putrequest("POST", "/echo/chunked", skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", f"127.0.0.1:{sidecar.outbound}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for start in range(0, len(body), 50000):
            piece = body[start : start + 50000]
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        assert response.status == 200
        seen = json.loads(response.read())
    finally:
        conn.close()
    assert seen["body_length"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "method, target, status",
    [("HEAD", "/echo/head", 200), ("GET", "/nobody/204", 204), ("GET", "/nobody/304", 304)],
)
def test_no_body_responses(mesh, method, target, status):
    """
    HEAD, 204 and 304 carry no body: a stray byte would corrupt the next
    response read on the same connection.
    """
    sidecar, app = mesh.sidecar, mesh.app
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.outbound, timeout=5)
    try:
        send(conn, method, target)
        response = conn.getresponse()
        assert response.status == status
        assert response.read() == b""
        send(conn, "GET", "/echo/after")
        after = conn.getresponse()
        assert after.status == 200
        assert json.loads(after.read())["target"] == "/echo/after"
    finally:
        conn.close()
    if method == "HEAD":
        assert [r["method"] for r in app.seen("/echo/head")] == ["HEAD"]
