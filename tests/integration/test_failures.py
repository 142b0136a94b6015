"""
Failures on the path become the documented responses: 503, 504, 502,
429, 508, each with its x-easymesh-error, and a truncated body is never
presented as complete.
"""

from __future__ import annotations

import http.client
import os

import pytest

from tests.integration.conftest import HOPS, http1HopOnly
from tests.integration.harness import closedPort, request, send

#: Why a test that talks to the inbound listener only runs once.
NO_HOP = "the request goes straight to the inbound listener: there is no hop"


@pytest.fixture(scope="module", params=HOPS)
def hop(request: pytest.FixtureRequest) -> str:
    """
    The sidecars these tests start forward from outbound to inbound over
    HTTP/1.1, then over HTTP/2.
    """
    return request.param


@http1HopOnly(NO_HOP)
def test_app_down_is_503_within_2s(launch):
    sidecar = launch(upstream=f"http://127.0.0.1:{closedPort()}")
    reply = request(sidecar.inbound, "GET", "/echo/down", timeout=5)
    assert reply.status == 503, reply
    assert reply.header("x-easymesh-error") == "upstream_connect_failure"
    assert reply.elapsed < 2.0


def test_outbound_relays_the_inbound_error(launch):
    """
    The inbound's error reaches the caller unchanged, and is logged once,
    by the sidecar that made it, with where and why.
    """
    port = closedPort()
    sidecar = launch(upstream=f"http://127.0.0.1:{port}")
    reply = request(sidecar.outbound, "GET", "/echo/down?token=secret", timeout=5)
    assert reply.status == 503, reply
    assert reply.all("x-easymesh-error") == ["upstream_connect_failure"]
    assert reply.elapsed < 2.0
    sidecar.waitForLog(lambda text: "upstream_connect_failure" in text, timeout=5)
    lines = [line for line in sidecar.log().splitlines() if "upstream_connect_failure" in line]
    assert len(lines) == 1, lines
    assert f"inbound GET /echo/down: 503 upstream_connect_failure [route inbound-default, cluster local (127.0.0.1:{port})]" in lines[0]
    assert "secret" not in lines[0]


def test_hanging_app_is_504(launch, app):
    sidecar = launch("--timeout", "1", upstream=app.url)
    reply = request(sidecar.outbound, "GET", "/hang", timeout=10)
    assert reply.status == 504, reply
    assert reply.header("x-easymesh-error") == "upstream_timeout"
    assert 0.9 <= reply.elapsed <= 3.0, reply.elapsed
    assert len(app.seen("/hang")) == 1


def test_hanging_app_is_504_on_a_reused_connection(launch, app):
    sidecar = launch("--timeout", "1", upstream=app.url)
    warm = request(sidecar.outbound, "GET", "/echo/warm", timeout=5)
    assert warm.status == 200
    reply = request(sidecar.outbound, "GET", "/hang", timeout=3.5)
    assert reply.status == 504, reply
    assert reply.header("x-easymesh-error") == "upstream_timeout"
    assert reply.elapsed <= 3.0, reply.elapsed


def test_hanging_app_with_a_request_body_is_504(launch, app):
    sidecar = launch("--timeout", "1", upstream=app.url)
    reply = request(sidecar.outbound, "POST", "/hang", body=b"z" * 1000, timeout=3.5)
    assert reply.status == 504, reply
    assert reply.header("x-easymesh-error") == "upstream_timeout"
    assert reply.elapsed <= 3.0, reply.elapsed
    assert app.seen("/hang")[0]["body_length"] == 1000


@pytest.mark.parametrize("listener", ["inbound", "outbound"])
@pytest.mark.parametrize("path", ["/die-cl", "/die-chunked"])
def test_app_dying_mid_body_gives_an_incomplete_response(mesh, path, listener):
    """
    The app promises more body than it sends and closes: the client must
    never see a clean, complete response with the truncated body.

    Acceptable: the connection dropped before or during the body.  Through
    the outbound listener also a 502 upstream_reset, when the inbound's
    abort reached the outbound before the relayed headers did (easymesh
    aborts, so the bytes it had queued for the client are discarded).
    """
    sidecar, app = mesh.sidecar, mesh.app
    target = f"{path}?via={listener}"
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.ports[listener], timeout=10)
    received = b""
    try:
        send(conn, "GET", target)
        try:
            response = conn.getresponse()
        except (http.client.HTTPException, ConnectionError):
            response = None  # dropped before the headers: incomplete
        if response is not None and listener == "outbound" and response.status == 502:
            assert response.getheader("x-easymesh-error") == "upstream_reset"
        elif response is not None:
            assert response.status == 200
            with pytest.raises((http.client.IncompleteRead, ConnectionError)):
                while True:
                    piece = response.read1(65536)
                    if not piece:
                        break
                    received += piece
                # A clean end of body: the truncation was hidden.
                pytest.fail(f"clean end of body after {len(received)} bytes")
    finally:
        conn.close()
    assert len(received) <= 1000
    assert len(app.seenTarget(target)) == 1


def test_garbage_response_is_502(mesh):
    sidecar = mesh.sidecar
    reply = request(sidecar.outbound, "GET", "/garbage", timeout=5)
    assert reply.status == 502, reply
    assert reply.header("x-easymesh-error") == "upstream_protocol_error"
    assert b"GARBAGE" not in reply.body


@http1HopOnly(NO_HOP)
def test_rate_limit_on_inbound(launch, app):
    sidecar = launch("--rate", "1", "--burst", "2", upstream=app.url)
    replies = [request(sidecar.inbound, "GET", f"/echo/r{i}", timeout=5) for i in range(5)]
    statuses = [r.status for r in replies]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[:2] == [200, 200], statuses
    limited = [r for r in replies if r.status == 429]
    assert limited, statuses
    for r in limited:
        assert r.reason == "Too Many Requests", r
        assert r.header("x-easymesh-error") == "rate_limited"
        retry = r.header("retry-after")
        assert retry is not None and retry.isdigit() and int(retry) >= 1, retry
    assert len(app.requests) == statuses.count(200)


def test_loop_is_508(launch):
    launcher = launch
    ports = launcher.ports()
    sidecar = launcher(
        "--peer", f"http://127.0.0.1:{ports['outbound']}", ports=ports
    )
    reply = request(sidecar.outbound, "GET", "/loop", timeout=5)
    assert reply.status == 508, reply
    assert reply.reason == "Loop Detected", reply
    assert reply.header("x-easymesh-error") == "loop_detected"


@http1HopOnly(NO_HOP)
def test_stale_pooled_connection_get_is_retried(launch, staleApp):
    sidecar = launch(upstream=staleApp.url)
    first = request(sidecar.inbound, "GET", "/warm", timeout=5)
    assert first.status == 200, first
    again = request(sidecar.inbound, "GET", "/again", timeout=5)
    assert again.status == 200, again
    seen = staleApp.seen("/again")
    assert len(seen) == 2, seen
    assert seen[0]["connection"] != seen[1]["connection"]
    assert seen[0]["connection"] == staleApp.seen("/warm")[0]["connection"]
    assert [r["index"] for r in seen] == [2, 1]


@http1HopOnly(NO_HOP)
def test_stale_pooled_connection_post_is_not_retried(launch, staleApp):
    sidecar = launch(upstream=staleApp.url)
    first = request(sidecar.inbound, "GET", "/warm", timeout=5)
    assert first.status == 200, first
    body = os.urandom(4096)
    reply = request(sidecar.inbound, "POST", "/post", body=body, timeout=5)
    assert reply.status == 502, reply
    assert reply.header("x-easymesh-error") in ("upstream_reset", "upstream_protocol_error")
    seen = staleApp.seen("/post")
    assert len(seen) == 1, seen
    assert seen[0]["body_length"] == len(body)
