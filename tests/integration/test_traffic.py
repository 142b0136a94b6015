"""
Traffic management from the config file, end to end: a real sidecar
routes its outbound listener's requests to clusters of real backends
(L{NamedApp}s, each naming itself in an C{X-App} header) and balances,
splits, retries, breaks, ejects, health-checks, rewrites, rate-limits and
reloads as its C{clusters} and C{routes} say.

Most tests share one sidecar (module scope) whose config holds every
cluster and route they need, each test on its own path prefix; a backend
whose behaviour a test changes serves no other test's assertions.  They
run twice: with the routes on the outbound listener, and with them on the
inbound listener behind an HTTP/2 hop from the outbound one, so that what
each feature answers crosses that hop.  Reloading and the C{keep} path
option run their own sidecars, routing on the outbound listener only.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from tests.integration.app import NamedApp
from tests.integration.conftest import Launcher
from tests.integration.harness import REPO, Reply, Session, closedPort, request, send, waitUntil

#: Backends of the shared sidecar, by name.  C{a}, C{b} and C{c} only ever
#: answer 200 and are shared by several clusters; the others are changed
#: by the one test that uses them.
APP_NAMES = (
    "a",
    "b",
    "c",
    "fast",
    "slow",
    "flaky",
    "hanger",
    "hanger2",
    "bad",
    "good",
    "sick",
    "well",
)

SLOW_SECONDS = 0.3


def _url(app: NamedApp) -> str:
    return json.dumps(app.url)


def sharedConfig(apps: Dict[str, NamedApp], closed: int, listener: str = "outbound") -> str:
    """
    The shared sidecar's config: a cluster and a route per feature under
    test, and no catch-all route, the routes those of C{listener}.
    """
    a, b, c = _url(apps["a"]), _url(apps["b"]), _url(apps["c"])
    return f"""\
clusters:
  rr:
    endpoints: [{a}, {b}, {c}]
    lb_policy: round_robin
  wrr:
    endpoints: [{{url: {a}, weight: 1}}, {{url: {b}, weight: 3}}]
  rand:
    endpoints: [{a}, {b}, {c}]
    lb_policy: random
  least:
    endpoints: [{_url(apps["fast"])}, {_url(apps["slow"])}]
    lb_policy: least_request
  ewma:
    endpoints: [{_url(apps["fast"])}, {_url(apps["slow"])}]
    lb_policy: ewma
  ring:
    endpoints: [{a}, {b}, {c}]
    lb_policy: ring_hash
    hash_on: {{header: x-user-id}}
  solo-a:
    endpoints: [{a}]
  solo-b:
    endpoints: [{b}]
  flaky:
    endpoints: [{_url(apps["flaky"])}]
    connect_timeout: 1s
    timeout: 5s
  timed-fresh:
    endpoints: [{_url(apps["flaky"])}]
  half-closed:
    endpoints: ["http://127.0.0.1:{closed}", {a}]
    connect_timeout: 1s
  dead:
    endpoints: ["http://127.0.0.1:{closed}"]
    connect_timeout: 1s
  dns-a:
    dns: {{name: localhost, port: {apps["a"].port}, refresh: 1s}}
  breaker:
    endpoints: [{_url(apps["hanger"])}]
    timeout: 10s
    circuit_breakers: {{max_connections: 1024, max_pending_requests: 1024, max_requests: 2, max_retries: 3}}
  one-connection:
    endpoints: [{_url(apps["hanger2"])}]
    timeout: 10s
    circuit_breakers: {{max_connections: 1}}
  outlier:
    endpoints: [{_url(apps["bad"])}, {_url(apps["good"])}]
    outlier_detection:
      consecutive_5xx: 3
      consecutive_gateway_failure: 0
      interval: 1s
      base_ejection_time: 30s
      max_ejection_percent: 50
  checked:
    endpoints: [{_url(apps["sick"])}, {_url(apps["well"])}]
    health_check: {{path: /healthz, interval: 100ms, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 2}}
routes:
  {listener}:
    - match: {{prefix: /direct}}
      direct_response: {{status: 200, body: ok}}
    - match: {{prefix: /rr/}}
      cluster: rr
    - match: {{prefix: /wrr/}}
      cluster: wrr
    - match: {{prefix: /random/}}
      cluster: rand
    - match: {{prefix: /least/}}
      cluster: least
    - match: {{prefix: /ewma/}}
      cluster: ewma
    - match: {{prefix: /one-connection/}}
      cluster: one-connection
    - match: {{prefix: /ring/}}
      cluster: ring
    - match: {{prefix: /split/}}
      weighted_clusters: {{solo-a: 10, solo-b: 90}}
    - match: {{prefix: /retry/}}
      cluster: flaky
      retry_policy:
        retry_on: [connect-failure, reset, 503, gateway-error]
        num_retries: 2
        per_try_timeout: 2s
        backoff: {{base: 5ms, max: 20ms}}
    - match: {{prefix: /retry-narrow/}}
      cluster: flaky
      retry_policy: {{retry_on: [connect-failure], num_retries: 2}}
    - match: {{prefix: /retry-connect/}}
      cluster: half-closed
      retry_policy: {{retry_on: [connect-failure], num_retries: 2, backoff: {{base: 5ms, max: 20ms}}}}
    - match: {{prefix: /retry-dead/}}
      cluster: dead
      retry_policy: {{retry_on: [connect-failure], num_retries: 2, backoff: {{base: 5ms, max: 20ms}}}}
    - match: {{prefix: /retry-timeout/}}
      cluster: flaky
      retry_policy: {{retry_on: [gateway-error], num_retries: 1, per_try_timeout: 300ms, backoff: {{base: 5ms, max: 20ms}}}}
    - match: {{prefix: /timed/}}
      cluster: flaky
      timeout: 300ms
    - match: {{prefix: /timed-fresh/}}
      cluster: timed-fresh
      timeout: 300ms
    - match: {{prefix: /dns/}}
      cluster: dns-a
    - match: {{prefix: /breaker/}}
      cluster: breaker
      timeout: 10s
    - match: {{prefix: /outlier/}}
      cluster: outlier
    - match: {{prefix: /health/}}
      cluster: checked
    - match: {{prefix: /rewrite/}}
      prefix_rewrite: /inner/
      cluster: solo-a
    - match: {{prefix: /match/, headers: {{x-canary: "1"}}, methods: [GET]}}
      cluster: solo-b
    - match: {{prefix: /match/}}
      cluster: solo-a
    - match: {{prefix: /hosted/, host: orders.internal}}
      cluster: solo-b
    - match: {{prefix: /limited/}}
      cluster: solo-a
      rate_limit: {{rate: 0.2, burst: 3, key: {{header: x-client-id}}}}
"""


#: Where the shared sidecar routes: on its outbound listener (straight to
#: the backends), or on its inbound one, behind the hop from its outbound
#: listener over HTTP/2, so that every feature's answers (the errors
#: included) cross that hop.
ROUTING = [
    pytest.param("outbound", id="routes-outbound"),
    pytest.param("inbound", id="routes-inbound-hop-http2"),
]


class Shared:
    """
    The backends and the sidecar in front of them, for the whole module.

    @param routing: Which listener's routes the config holds (the other
        listener forwards as usual).
    """

    def __init__(self, tmp: Path, routing: str = "outbound") -> None:
        self.apps: Dict[str, NamedApp] = {}
        self.launcher = Launcher(tmp, "http2" if routing == "inbound" else "http1")
        try:
            for name in APP_NAMES:
                self.apps[name] = NamedApp(name)
            self.apps["slow"].behaviour = ("slow", SLOW_SECONDS)
            self.apps["bad"].behaviour = 500
            self.apps["hanger"].behaviour = "hang"
            self.apps["hanger2"].behaviour = "hang"
            self.config = tmp / "mesh.yaml"
            self.config.write_text(sharedConfig(self.apps, closedPort(), routing), encoding="utf-8")
            self.sidecar = self.launcher("--config", str(self.config), upstream=self.apps["a"].url)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self.launcher.closeAll()
        finally:
            for app in self.apps.values():
                app.close()


@pytest.fixture(scope="module", params=ROUTING)
def _sharedTraffic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    shared = Shared(tmp_path_factory.mktemp("traffic"), request.param)
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def mesh(_sharedTraffic: Shared) -> Iterator[Shared]:
    """
    The shared sidecar and backends; the sidecar's log lines written during
    the test are printed at teardown (and so shown if it fails).
    """
    sidecar = _sharedTraffic.sidecar
    assert sidecar.running, sidecar.log()
    offset = len(sidecar.log())
    try:
        yield _sharedTraffic
    finally:
        print(f"===== {sidecar.logPath} during this test =====\n{sidecar.log()[offset:]}")


def names(
    port: int,
    target: str,
    count: int,
    headers: Sequence[Tuple[str, str]] = (),
) -> List[str]:
    """
    Send C{count} GETs one after another on one connection; the C{X-App}
    of each answer (every one must be a 200).
    """
    seen = []
    with Session(port) as session:
        for _ in range(count):
            reply = session.get(target, headers)
            assert reply.status == 200, reply
            seen.append(reply.header("x-app"))
    return seen


def concurrently(port: int, targets: Sequence[str], threads: int) -> List[Tuple[int, Optional[str]]]:
    """
    Send GETs for C{targets} from C{threads} threads, each on its own
    keep-alive connection and each taking the next target as soon as it is
    done with one (so that as many are in flight until the end); the status
    and C{X-App} of every answer.
    """
    queue = iter(targets)
    lock = threading.Lock()

    def run() -> List[Tuple[int, Optional[str]]]:
        out = []
        with Session(port) as session:
            while True:
                with lock:
                    target = next(queue, None)
                if target is None:
                    return out
                reply = session.get(target)
                out.append((reply.status, reply.header("x-app")))

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(run) for _ in range(threads)]
        return [item for future in futures for item in future.result()]


def lineOf(text: str, fragment: str) -> int:
    """
    The 1-based number of the only line of C{text} containing C{fragment}.
    """
    found = [i + 1 for i, line in enumerate(text.splitlines()) if fragment in line]
    assert len(found) == 1, (fragment, found)
    return found[0]


# -- 1. balancing -------------------------------------------------------


def test_round_robin_rotates_exactly(mesh):
    seen = names(mesh.sidecar.outbound, "/rr/x", 300)
    assert collections.Counter(seen) == {"a": 100, "b": 100, "c": 100}
    for i in range(len(seen) - 2):
        assert len(set(seen[i : i + 3])) == 3, (i, seen[i : i + 3])


def test_round_robin_honours_endpoint_weights(mesh):
    seen = names(mesh.sidecar.outbound, "/wrr/x", 400)
    counts = collections.Counter(seen)
    assert set(counts) == {"a", "b"}, counts
    assert abs(counts["a"] - 100) <= 1, counts
    # Smooth: every run of four picks (the total weight) has exactly one a.
    for i in range(len(seen) - 3):
        assert seen[i : i + 4].count("a") == 1, (i, seen[i : i + 4])


def test_random_spreads_over_every_endpoint(mesh):
    seen = names(mesh.sidecar.outbound, "/random/x", 600)
    counts = collections.Counter(seen)
    assert set(counts) == {"a", "b", "c"}, counts
    # 200 each expected, standard deviation about 11.5: five of them.
    for name in "abc":
        assert 140 <= counts[name] <= 260, counts
    # Not a rotation: the same endpoint twice in a row happens.
    assert any(x == y for x, y in zip(seen, seen[1:])), seen[:30]


def test_least_request_sends_less_to_a_slow_backend(mesh):
    fast, slow = mesh.apps["fast"], mesh.apps["slow"]
    before = len(fast.served("/least/")), len(slow.served("/least/"))
    started = time.monotonic()
    results = concurrently(mesh.sidecar.outbound, ["/least/x"] * 200, threads=4)
    elapsed = time.monotonic() - started
    print(f"least_request: {dict(collections.Counter(n for _, n in results))} in {elapsed:.2f}s")
    assert all(status == 200 for status, _ in results), results
    counts = collections.Counter(name for _, name in results)
    assert counts["fast"] + counts["slow"] == 200, counts
    # Rotation or a random choice would give each half.  With the fewest
    # requests in flight winning, the slow one gets a request only when it
    # has none in flight (or as few as the fast one), while the other
    # threads go through the rest on the fast one.
    assert 1 <= counts["slow"] < 0.15 * 200, (counts, elapsed)
    assert len(fast.served("/least/")) - before[0] == counts["fast"]
    assert len(slow.served("/least/")) - before[1] == counts["slow"]


def test_ewma_avoids_a_slow_backend_once_measured(mesh):
    slow = mesh.apps["slow"]
    before = len(slow.served("/ewma/"))
    seen = names(mesh.sidecar.outbound, "/ewma/x", 50)
    counts = collections.Counter(seen)
    assert counts["fast"] + counts["slow"] == 50, counts
    # One request to learn how slow it is (two if the first pick of each
    # is a tie), then its latency estimate keeps it out for seconds.
    assert counts["slow"] <= 5, seen
    assert len(slow.served("/ewma/")) - before == counts["slow"]


def test_ring_hash_keeps_a_user_on_one_backend(mesh):
    users = [f"user-{i}" for i in range(30)]
    where: Dict[str, set] = collections.defaultdict(set)
    with Session(mesh.sidecar.outbound) as session:
        for _ in range(3):
            for user in users:
                reply = session.get("/ring/x", [("x-user-id", user)])
                assert reply.status == 200, reply
                where[user].add(reply.header("x-app"))
    assert all(len(apps) == 1 for apps in where.values()), dict(where)
    spread = collections.Counter(next(iter(apps)) for apps in where.values())
    assert set(spread) == {"a", "b", "c"}, spread


# -- 2. weighted split --------------------------------------------------


def test_weighted_clusters_split_10_90_over_10000_requests(mesh):
    a, b = mesh.apps["a"], mesh.apps["b"]
    before = len(a.served("/split/")), len(b.served("/split/"))
    started = time.monotonic()
    results = concurrently(mesh.sidecar.outbound, ["/split/x"] * 10_000, threads=4)
    elapsed = time.monotonic() - started
    print(f"10000 requests in {elapsed:.2f}s")
    statuses = collections.Counter(status for status, _ in results)
    assert statuses == {200: 10_000}, statuses
    counts = collections.Counter(name for _, name in results)
    # 1000 expected for solo-a, standard deviation 30: five of them.
    assert 850 <= counts["a"] <= 1150, counts
    assert counts["a"] + counts["b"] == 10_000, counts
    assert len(a.served("/split/")) - before[0] == counts["a"]
    assert len(b.served("/split/")) - before[1] == counts["b"]


# -- 3. retries ---------------------------------------------------------


@pytest.fixture
def flaky(mesh) -> Iterator[NamedApp]:
    app = mesh.apps["flaky"]
    app.reset()
    try:
        yield app
    finally:
        app.reset()


def test_retry_503_then_200(mesh, flaky):
    flaky.script(503)
    reply = request(mesh.sidecar.outbound, "GET", "/retry/once")
    assert reply.status == 200, reply
    assert reply.body == b"flaky"
    assert reply.header("x-easymesh-attempts") == "2", reply
    assert len(flaky.seenTarget("/retry/once")) == 2


def test_retry_reset_then_200(mesh, flaky):
    flaky.script("reset")
    reply = request(mesh.sidecar.outbound, "POST", "/retry/reset", body=b"small body")
    assert reply.status == 200, reply
    assert reply.header("x-easymesh-attempts") == "2", reply
    assert len(flaky.seenTarget("/retry/reset")) == 2


def test_retry_connect_failure_to_a_closed_port(mesh):
    a = mesh.apps["a"]
    before = len(a.served("/retry-connect/"))
    attempts = []
    with Session(mesh.sidecar.outbound) as session:
        for _ in range(6):
            reply = session.get("/retry-connect/x")
            assert reply.status == 200, reply
            assert reply.header("x-app") == "a", reply
            attempts.append(reply.header("x-easymesh-attempts"))
    assert set(attempts) <= {"1", "2"}, attempts
    assert "2" in attempts, attempts
    assert len(a.served("/retry-connect/")) - before == 6


def test_no_retry_on_404(mesh, flaky):
    reply = request(mesh.sidecar.outbound, "GET", "/retry/status/404")
    assert reply.status == 404, reply
    assert reply.header("x-easymesh-attempts") == "1", reply
    assert len(flaky.seenTarget("/retry/status/404")) == 1


def test_no_retry_when_retry_on_lacks_the_condition(mesh, flaky):
    flaky.script(503)
    reply = request(mesh.sidecar.outbound, "GET", "/retry-narrow/x")
    assert reply.status == 503, reply
    assert reply.body == b"flaky"
    assert reply.header("x-easymesh-error") is None, reply
    assert reply.header("x-easymesh-attempts") == "1", reply
    assert len(flaky.seenTarget("/retry-narrow/x")) == 1


def test_large_post_is_not_retried(mesh, flaky):
    body = random.Random(1).randbytes(1024 * 1024)
    flaky.script(503, 503, 503)
    reply = request(mesh.sidecar.outbound, "POST", "/retry/big", body=body, timeout=15)
    assert reply.status == 503, reply
    assert reply.body == b"flaky"
    seen = flaky.seenTarget("/retry/big")
    assert len(seen) == 1, seen
    assert seen[0]["body_length"] == len(body)
    assert seen[0]["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_small_post_body_is_replayed_byte_exact(mesh, flaky):
    body = bytes(range(256)) * 4 + b"\r\n\r\n0\r\n\r\n"
    flaky.script(503)
    reply = request(mesh.sidecar.outbound, "POST", "/retry/small", body=body)
    assert reply.status == 200, reply
    assert reply.header("x-easymesh-attempts") == "2", reply
    seen = flaky.seenTarget("/retry/small")
    assert len(seen) == 2, seen
    for attempt in seen:
        assert attempt["body_length"] == len(body)
        assert attempt["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_retries_exhausted_on_503_say_how_many(mesh, flaky):
    flaky.script(503, 503, 503)
    reply = request(mesh.sidecar.outbound, "GET", "/retry/thrice")
    assert reply.status == 503, reply
    assert reply.body == b"flaky"
    assert reply.header("x-easymesh-attempts") == "3", reply
    assert len(flaky.seenTarget("/retry/thrice")) == 3


def test_retries_exhausted_on_connect_failure_say_how_many(mesh):
    reply = request(mesh.sidecar.outbound, "GET", "/retry-dead/x", timeout=10)
    assert reply.status == 503, reply
    assert reply.header("x-easymesh-error") == "upstream_connect_failure", reply
    assert reply.header("x-easymesh-attempts") == "3", reply


def test_per_try_timeout_is_retried(mesh, flaky):
    flaky.script(("slow", 2))
    reply = request(mesh.sidecar.outbound, "GET", "/retry-timeout/x", timeout=10)
    assert reply.status == 200, reply
    assert reply.header("x-easymesh-attempts") == "2", reply
    assert reply.elapsed < 1.5, reply.elapsed
    assert len(flaky.seenTarget("/retry-timeout/x")) == 2


def test_route_timeout_is_504(mesh, flaky):
    # The first request of its cluster: on a new upstream connection.
    reply = request(mesh.sidecar.outbound, "GET", "/timed-fresh/sleep/2", timeout=10)
    assert reply.status == 504, reply
    assert reply.header("x-easymesh-error") == "upstream_timeout", reply
    assert 0.25 <= reply.elapsed < 1.5, reply.elapsed


def test_route_timeout_is_504_on_a_reused_connection(mesh, flaky):
    with Session(mesh.sidecar.outbound) as session:
        warm = session.get("/timed/warm")
        assert warm.status == 200, warm
        reply = session.get("/timed/sleep/2")
    assert reply.status == 504, reply
    assert reply.header("x-easymesh-error") == "upstream_timeout", reply
    assert 0.25 <= reply.elapsed < 1.5, reply.elapsed


def chunkedPost(port: int, target: str, body: bytes, piece: int = 10_000) -> Reply:
    """
    POST C{body} with chunked framing, in pieces of C{piece} bytes.
    """
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        send(conn, "POST", target, [("Transfer-Encoding", "chunked")])
        for start in range(0, len(body), piece):
            data = body[start : start + piece]
            conn.send(b"%x\r\n%s\r\n" % (len(data), data))
        conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        return Reply(response, response.read(), time.monotonic() - started)
    finally:
        conn.close()


def test_small_chunked_post_is_replayed_byte_exact(mesh, flaky):
    body = random.Random(2).randbytes(5000)
    flaky.script(503)
    reply = chunkedPost(mesh.sidecar.outbound, "/retry/small-chunked", body, piece=1000)
    assert reply.status == 200, reply
    assert reply.header("x-easymesh-attempts") == "2", reply
    seen = flaky.seenTarget("/retry/small-chunked")
    assert len(seen) == 2, seen
    for attempt in seen:
        assert attempt["body_length"] == len(body)
        assert attempt["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_large_chunked_post_is_forwarded_whole_and_not_retried(mesh, flaky):
    body = random.Random(3).randbytes(1024 * 1024)
    reply = chunkedPost(mesh.sidecar.outbound, "/retry/big-chunked-ok", body)
    assert reply.status == 200, reply
    seen = flaky.seenTarget("/retry/big-chunked-ok")
    assert len(seen) == 1, seen
    assert seen[0]["body_length"] == len(body)
    assert seen[0]["body_sha256"] == hashlib.sha256(body).hexdigest()

    flaky.script(503, 503, 503)
    reply = chunkedPost(mesh.sidecar.outbound, "/retry/big-chunked-503", body)
    assert reply.status == 503, reply
    seen = flaky.seenTarget("/retry/big-chunked-503")
    assert len(seen) == 1, seen
    assert seen[0]["body_length"] == len(body)
    assert seen[0]["body_sha256"] == hashlib.sha256(body).hexdigest()


# -- 4. circuit breaker -------------------------------------------------


def test_max_requests_overflow_is_503_at_once(mesh):
    hanger = mesh.apps["hanger"]
    port = mesh.sidecar.outbound
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(request, port, "GET", f"/breaker/held-{i}", (), None, 15) for i in range(2)]
        try:
            waitUntil(lambda: len(hanger.served("/breaker/held-")) == 2, 5, "two requests held")
            for i in range(3):
                reply = request(port, "GET", f"/breaker/extra-{i}", timeout=5)
                assert reply.status == 503, reply
                assert reply.header("x-easymesh-error") == "overflow", reply
                assert reply.elapsed < 1.0, reply.elapsed
            assert hanger.served("/breaker/extra-") == []
        finally:
            hanger.release.set()
        for future in held:
            reply = future.result(timeout=15)
            assert reply.status == 200, reply
    # The breaker closes again once they are done.
    reply = request(port, "GET", "/breaker/after", timeout=5)
    assert reply.status == 200, reply


def test_max_connections_overflow_is_503_at_once(mesh):
    hanger = mesh.apps["hanger2"]
    port = mesh.sidecar.outbound
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(request, port, "GET", "/one-connection/held", (), None, 15)
        try:
            waitUntil(lambda: hanger.served("/one-connection/held"), 5, "one request held")
            reply = request(port, "GET", "/one-connection/extra", timeout=5)
            assert reply.status == 503, reply
            assert reply.header("x-easymesh-error") == "overflow", reply
            assert reply.elapsed < 1.0, reply.elapsed
            assert hanger.served("/one-connection/extra") == []
        finally:
            hanger.release.set()
        first = held.result(timeout=15)
        assert first.status == 200, first
    # The one connection is free again, and reused.
    reply = request(port, "GET", "/one-connection/after", timeout=5)
    assert reply.status == 200, reply
    assert hanger.served("/one-connection/after")[0]["connection"] == 1


# -- 5. outlier detection -----------------------------------------------


def test_consecutive_5xx_ejects_the_backend(mesh):
    bad = mesh.apps["bad"]
    replies = []
    with Session(mesh.sidecar.outbound) as session:
        for _ in range(30):
            reply = session.get("/outlier/x")
            replies.append((reply.status, reply.header("x-app")))
    assert len(bad.served("/outlier/")) == 3, replies
    assert replies.count((500, "bad")) == 3, replies
    assert all(r == (200, "good") for r in replies[6:]), replies
    assert "ejected" in mesh.sidecar.log()


# -- 6. health checks ---------------------------------------------------


def test_failing_health_check_leaves_rotation_and_recovery_returns(mesh):
    sick = mesh.apps["sick"]
    port = mesh.sidecar.outbound
    assert set(names(port, "/health/x", 10)) == {"sick", "well"}
    sick.healthy = False
    try:
        waitUntil(
            lambda: "sick" not in names(port, "/health/x", 10), 5, "sick out of rotation", 0.1
        )
        assert set(names(port, "/health/x", 20)) == {"well"}
        assert re.search(r"127\.0\.0\.1:%d is unhealthy" % sick.port, mesh.sidecar.log())
    finally:
        sick.healthy = True
    waitUntil(lambda: "sick" in names(port, "/health/x", 4), 5, "sick back in rotation", 0.1)
    assert re.search(r"127\.0\.0\.1:%d is healthy again" % sick.port, mesh.sidecar.log())


# -- 7. routes ----------------------------------------------------------


def test_direct_response(mesh):
    reply = request(mesh.sidecar.outbound, "GET", "/direct")
    assert reply.status == 200, reply
    assert reply.body == b"ok"
    assert reply.header("x-app") is None
    assert all(app.served("/direct") == [] for app in mesh.apps.values())


def test_prefix_rewrite_reaches_the_app(mesh):
    reply = request(mesh.sidecar.outbound, "GET", "/rewrite/x/y?q=1&r=%2F")
    assert reply.status == 200, reply
    assert reply.header("x-app") == "a"
    assert len(mesh.apps["a"].seenTarget("/inner/x/y?q=1&r=%2F")) == 1
    assert mesh.apps["a"].served("/rewrite/") == []


def test_prefix_rewrite_applies_to_an_encoded_form_of_the_prefix(mesh):
    """
    The route is matched on the normalised path (/%72ewrite/ is /rewrite/),
    so the rewrite applies too: the app never sees the old prefix.
    """
    reply = request(mesh.sidecar.outbound, "GET", "/%72ewrite/enc?id=77")
    assert reply.status == 200, reply
    assert reply.header("x-app") == "a"
    seen = [r["target"] for r in mesh.apps["a"].served() if r["target"].endswith("?id=77")]
    assert len(seen) == 1, seen
    assert seen[0].startswith("/inner/"), seen


def test_header_method_and_host_matches(mesh):
    port = mesh.sidecar.outbound
    assert names(port, "/match/x", 1, [("x-canary", "1")]) == ["b"]
    assert names(port, "/match/x", 1, [("x-canary", "2")]) == ["a"]
    assert names(port, "/match/x", 1) == ["a"]
    post = request(port, "POST", "/match/x", [("x-canary", "1")], body=b"")
    assert post.header("x-app") == "a", post
    assert names(port, "/hosted/x", 1, [("Host", "orders.internal")]) == ["b"]
    assert names(port, "/hosted/x", 1, [("Host", "Orders.Internal:8080")]) == ["b"]
    other = request(port, "GET", "/hosted/x", [("Host", "elsewhere.internal")])
    assert other.status == 404, other
    assert other.header("x-easymesh-error") == "no_route"


def test_no_route_is_404(mesh):
    reply = request(mesh.sidecar.outbound, "GET", "/nowhere/at/all")
    assert reply.status == 404, reply
    assert reply.header("x-easymesh-error") == "no_route"
    assert all(app.served("/nowhere/") == [] for app in mesh.apps.values())


@pytest.mark.parametrize("target", ["/rr/a%2Fb", "/rr/a%2fb", "/rr/a%5Cb"])
def test_encoded_slash_is_400_by_default(mesh, target):
    reply = request(mesh.sidecar.outbound, "GET", target)
    assert reply.status == 400, reply
    assert reply.header("x-easymesh-error") == "bad_request"
    assert all(app.seenTarget(target) == [] for app in mesh.apps.values())


def test_encoded_slash_kept_is_forwarded_byte_exact(launch, tmp_path):
    app = NamedApp("kept")
    try:
        config = tmp_path / "keep.yaml"
        config.write_text(
            f"""\
path_with_escaped_slashes: keep
clusters:
  kept: {{endpoints: [{_url(app)}]}}
routes:
  outbound:
    - match: {{prefix: /files/}}
      cluster: kept
""",
            encoding="utf-8",
        )
        sidecar = launch("--config", str(config), upstream=app.url)
        for target in ["/files/a%2Fb", "/files/a%2fb%5Cc?x=%2F", "/files/%2F%2F"]:
            reply = request(sidecar.outbound, "GET", target)
            assert reply.status == 200, reply
            assert reply.header("x-app") == "kept"
            assert len(app.seenTarget(target)) == 1, (target, app.served())
    finally:
        app.close()


def test_dns_cluster_resolves_localhost(mesh):
    seen = waitUntil(
        lambda: (lambda r: r.status == 200 and r)(request(mesh.sidecar.outbound, "GET", "/dns/x")),
        5,
        "the dns cluster answers",
        0.1,
    )
    assert seen.header("x-app") == "a", seen
    assert names(mesh.sidecar.outbound, "/dns/x", 10) == ["a"] * 10


# -- 8. rate limits -----------------------------------------------------


def test_per_key_rate_limit(mesh):
    port = mesh.sidecar.outbound
    alice = [("x-client-id", "alice")]
    bob = [("x-client-id", "bob")]
    with Session(port) as session:
        for _ in range(3):
            reply = session.get("/limited/alice", alice)
            assert reply.status == 200, reply
        limited = session.get("/limited/alice", alice)
        assert limited.status == 429, limited
        assert limited.header("x-easymesh-error") == "rate_limited"
        retry = limited.header("retry-after")
        assert retry is not None and retry.isdigit() and int(retry) >= 1, retry
        for _ in range(3):
            reply = session.get("/limited/bob", bob)
            assert reply.status == 200, reply
    assert len(mesh.apps["a"].seenTarget("/limited/alice")) == 3
    assert len(mesh.apps["a"].seenTarget("/limited/bob")) == 3


# -- 9. reload ----------------------------------------------------------


class LoadLoop:
    """
    GETs in a thread on keep-alive connections, until stopped, C{limit}
    requests or C{deadline} seconds; every outcome is kept (an exception is
    an outcome too).
    """

    def __init__(self, port: int, target: str, limit: int, deadline: float) -> None:
        self.port = port
        self.target = target
        self.limit = limit
        self.deadline = deadline
        self.outcomes: List[Tuple[object, Optional[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ends = time.monotonic() + self.deadline
        with Session(self.port) as session:
            while not self._stop.is_set() and len(self.outcomes) < self.limit and time.monotonic() < ends:
                try:
                    reply = session.get(self.target)
                    self.outcomes.append((reply.status, reply.header("x-app")))
                except Exception as e:  # recorded, and so fails the test
                    self.outcomes.append((repr(e), None))

    def start(self) -> "LoadLoop":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.deadline + 15)
        assert not self._thread.is_alive()


def reloadConfig(apps: Dict[str, NamedApp], route: str) -> str:
    """
    A config with a cluster per app and one outbound route for /svc/.
    """
    clusters = "".join(f"  {name}: {{endpoints: [{_url(app)}]}}\n" for name, app in apps.items())
    return (
        "clusters:\n"
        + clusters
        + "routes:\n"
        + "  outbound:\n"
        + "    - match: {prefix: /svc/}\n"
        + f"      {route}\n"
    )


def writeAtomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def test_reload_under_load_without_a_failed_request(launch, tmp_path):
    apps = {name: NamedApp(name) for name in ("blue", "green", "red")}
    try:
        _reloadUnderLoad(launch, tmp_path, apps)
    finally:
        for app in apps.values():
            app.close()


def _reloadUnderLoad(launch, tmp_path: Path, apps: Dict[str, NamedApp]) -> None:
    blue, green, red = apps["blue"], apps["green"], apps["red"]
    config = tmp_path / "live.yaml"
    config.write_text(reloadConfig({"blue": blue, "green": green}, "cluster: blue"), encoding="utf-8")
    sidecar = launch("--config", str(config), upstream=blue.url)
    started = len(sidecar.log())
    port = sidecar.outbound
    assert names(port, "/svc/x", 3) == ["blue"] * 3

    def reloads() -> int:
        return sidecar.log().count("Config reloaded")

    def refusals() -> int:
        return sidecar.log().count("Config reload refused")

    def switchedTo(name: str) -> None:
        waitUntil(lambda: names(port, "/svc/probe", 1) == [name], 5, f"traffic to {name}")
        assert names(port, "/svc/probe", 20) == [name] * 20

    load = LoadLoop(port, "/svc/load", limit=50_000, deadline=40).start()
    try:
        waitUntil(lambda: len(load.outcomes) >= 50, 5, "load running")

        # A request in flight on blue when blue's cluster is dropped.
        with ThreadPoolExecutor(1) as pool:
            inflight = pool.submit(request, port, "GET", "/svc/sleep/1.5", (), None, 10)
            waitUntil(lambda: blue.seenTarget("/svc/sleep/1.5"), 5, "in-flight request at blue")

            # 1. Valid: blue's cluster goes, the route goes to green.
            writeAtomically(config, reloadConfig({"green": green}, "cluster: green"))
            waitUntil(lambda: reloads() == 1, 5, "first reload")
            switchedTo("green")
            slow = inflight.result(timeout=10)
        assert slow.status == 200 and slow.header("x-app") == "blue", slow

        # 2. Invalid YAML: refused with file and line, green stays.
        broken = reloadConfig({"green": green}, "cluster: green: oops")
        writeAtomically(config, broken)
        waitUntil(lambda: refusals() == 1, 5, "invalid YAML refused")
        line = lineOf(broken, "green: oops")
        assert f"{config}:{line}: not valid YAML" in sidecar.log(), sidecar.log()
        assert names(port, "/svc/probe", 20) == ["green"] * 20

        # 3. Unknown cluster: refused with file and line, green stays.
        unknown = reloadConfig({"green": green}, "cluster: nope")
        writeAtomically(config, unknown)
        waitUntil(lambda: refusals() == 2, 5, "unknown cluster refused")
        line = lineOf(unknown, "cluster: nope")
        assert f"{config}:{line}: routes.outbound.0.cluster: no cluster named 'nope'" in sidecar.log()
        assert names(port, "/svc/probe", 20) == ["green"] * 20
        assert reloads() == 1

        # 4. Valid: a new cluster, and a weighted split over both.
        writeAtomically(
            config,
            reloadConfig({"green": green, "red": red}, "weighted_clusters: {green: 1, red: 1}"),
        )
        waitUntil(lambda: reloads() == 2, 5, "second reload")
        waitUntil(lambda: "red" in names(port, "/svc/probe", 5), 5, "traffic to red")
        assert set(names(port, "/svc/probe", 60)) == {"green", "red"}

        # 5. SIGHUP reloads the file even though it has not changed.
        os.kill(sidecar.proc.pid, signal.SIGHUP)
        waitUntil(lambda: reloads() == 3, 5, "reload on SIGHUP")
        assert sidecar.running
        assert set(names(port, "/svc/probe", 60)) == {"green", "red"}
    finally:
        load.stop()
    outcomes = load.outcomes
    print(f"{len(outcomes)} requests under load")
    assert len(outcomes) > 200, len(outcomes)
    failed = [o for o in outcomes if o[0] != 200]
    assert failed == [], failed[:10]
    served = collections.Counter(name for _, name in outcomes)
    assert served["blue"] and served["green"] and served["red"], served
    # No going back: blue only before green, red only after green started.
    order = [name for _, name in outcomes]
    assert "blue" not in order[order.index("green") :]
    assert "red" not in order[: order.index("green")]
    text = sidecar.log()[started:]
    assert "Traceback" not in text, text
    assert sidecar.running


# -- 10. check-config ---------------------------------------------------


def checkConfig(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "easymesh", "check-config", str(path)],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_config_accepts_the_shared_config(mesh):
    result = checkConfig(mesh.config)
    assert result.returncode == 0, result
    assert "valid" in result.stdout, result


BROKEN_CONFIGS = {
    "unknown-cluster": (
        "clusters:\n"
        "  orders: {endpoints: ['http://127.0.0.1:9']}\n"
        "routes:\n"
        "  outbound:\n"
        "    - match: {prefix: /}\n"
        "      cluster: ordrs\n",
        "cluster: ordrs",
        "no cluster named 'ordrs'",
    ),
    "bad-yaml": (
        "clusters:\n"
        "  orders:\n"
        "    endpoints: ['http://127.0.0.1:9'\n"
        "routes: {}\n",
        "routes: {}",
        "not valid YAML",
    ),
    "bad-policy": (
        "clusters:\n"
        "  orders:\n"
        "    endpoints: ['http://127.0.0.1:9']\n"
        "    lb_policy: fastest\n",
        "lb_policy: fastest",
        "lb_policy: must be one of",
    ),
    "ring-hash-without-key": (
        "clusters:\n"
        "  orders:\n"
        "    endpoints: ['http://127.0.0.1:9']\n"
        "    lb_policy: ring_hash\n"
        "routes:\n"
        "  outbound:\n"
        "    - match: {prefix: /}\n"
        "      cluster: orders\n",
        "endpoints: ['http",
        "ring_hash needs hash_on",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_check_config_refuses_with_file_and_line(tmp_path, case):
    text, fragment, reason = BROKEN_CONFIGS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text, encoding="utf-8")
    result = checkConfig(path)
    assert result.returncode == 1, result
    assert f"{path}:{lineOf(text, fragment)}:" in result.stderr, result
    assert reason in result.stderr, result
    assert "Traceback" not in result.stderr, result
