"""
The admin listener's live dashboard (C{GET /}) in headless Chromium, beside
a real sidecar carrying real traffic: the page's DOM is dumped twice some
seconds apart, and a screenshot is taken.

Skipped when no C{chromium} or C{chromium-browser} is on C{PATH}.  Every
Chromium run is bounded; the screenshot is kept under the test's tmp
directory and, when C{EASYMESH_ARTIFACTS} names a directory, copied there
as C{dashboard.png}.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

from tests.integration.conftest import HOPS
from tests.integration.harness import Session, request

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium or chromium-browser binary on PATH: the dashboard test "
    "needs headless Chromium (Debian: apt-get install chromium)",
)

#: Seconds one Chromium run may take (it starts slowly on two busy cores).
CHROMIUM_DEADLINE = 90
#: Virtual milliseconds the page runs before a dump or screenshot: about
#: three polls of stats/live.
BUDGET_MS = 3000
WINDOW = (1200, 1600)
#: The traffic loop stops after this long, or this many requests, at most.
TRAFFIC_SECONDS = 120
TRAFFIC_REQUESTS = 20000


# -- a small DOM from Chromium's serialisation -----------------------------

VOID = frozenset(
    "area base br col embed hr img input link meta source track wbr".split()
)


class Node:
    def __init__(self, tag: str, attrs: Dict[str, str], parent: Optional["Node"]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: List[object] = []

    def text(self) -> str:
        return "".join(c.text() if isinstance(c, Node) else str(c) for c in self.children)

    def all(self, predicate: Callable[["Node"], bool]) -> List["Node"]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if predicate(child):
                    found.append(child)
                found += child.all(predicate)
        return found

    def byId(self, ident: str) -> "Node":
        [node] = self.all(lambda n: n.attrs.get("id") == ident)
        return node


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parseDOM(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


# -- Chromium --------------------------------------------------------------


def chromium(profile: Path, *args: str) -> str:
    """
    Run headless Chromium with C{args}; its standard output.  It runs in
    a process group of its own, killed whole if it overruns.
    """
    assert CHROMIUM is not None
    argv = [
        CHROMIUM,
        "--headless=new",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={BUDGET_MS}",
    ] + list(args)
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=CHROMIUM_DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        pytest.fail(f"chromium did not finish within {CHROMIUM_DEADLINE}s: {argv}")
    errors = err.decode("utf-8", "replace")
    print(f"chromium {args[0]}: {time.monotonic() - started:.1f}s, exit {proc.returncode}")
    assert proc.returncode == 0, errors[-3000:]
    # The page's own script errors are logged as console messages.
    assert "Uncaught" not in errors, [line for line in errors.splitlines() if "CONSOLE" in line]
    return out.decode("utf-8", "replace")


def pngSize(path: Path) -> tuple:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data
    return struct.unpack(">II", data[16:24])


# -- traffic -----------------------------------------------------------------


class Traffic:
    """
    GETs through the outbound listener on one keep-alive connection, a few
    dozen a second, until L{stop} (bounded in time and count).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.failures: List[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + TRAFFIC_SECONDS
        with Session(self.port, timeout=5) as session:
            while not self.stopping.is_set() and time.monotonic() < deadline:
                if self.sent >= TRAFFIC_REQUESTS:
                    return
                try:
                    reply = session.get("/echo/dashboard")
                    if reply.status != 200:
                        self.failures.append(repr(reply))
                except Exception as e:  # counted; the dashboard shows what happened
                    self.failures.append(repr(e))
                self.sent += 1
                self.stopping.wait(0.02)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)


@pytest.fixture
def traffic() -> Iterator[Callable[[int], Traffic]]:
    loops: List[Traffic] = []

    def start(port: int) -> Traffic:
        loop = Traffic(port)
        loops.append(loop)
        return loop

    try:
        yield start
    finally:
        for loop in loops:
            loop.stop()


# -- the test ----------------------------------------------------------------


def _figure(card: Node, name: str) -> float:
    [node] = card.all(lambda n: n.attrs.get("data-figure") == name)
    return float(node.text())


def _card(dom: Node, section: str, name: str) -> Node:
    [card] = dom.byId(section).all(lambda n: n.attrs.get("data-name") == name)
    return card


def _rows(container: Node) -> List[List[str]]:
    return [
        [cell.text().strip() for cell in row.all(lambda n: n.tag == "td")]
        for row in container.all(lambda n: n.tag == "tr")
        if row.all(lambda n: n.tag == "td")
    ]


def _updatedAt(dom) -> float:
    """
    The sidecar time of the page's last update, or 0 if it never updated.
    """
    [body] = dom.all(lambda n: n.tag == "body")
    return float(body.attrs.get("data-updated", 0))


@pytest.fixture(scope="module", params=HOPS)
def hop(request: pytest.FixtureRequest) -> str:
    """
    The sidecars these tests start forward from outbound to inbound over
    HTTP/1.1, then over HTTP/2.
    """
    return request.param


def test_dashboard_shows_live_traffic(launch, app, traffic, tmp_path):
    sidecar = launch(upstream=app.url)
    adminPort = sidecar.ports["admin"]
    sidecar.waitReady([adminPort])
    url = f"http://127.0.0.1:{adminPort}/"
    # Two errors for the recent errors table: refused by the sidecar, and
    # an upstream that does not speak HTTP.
    assert request(sidecar.outbound, "GET", "/a%2Fb").status == 400
    assert request(sidecar.outbound, "GET", "/garbage").status == 502

    loop = traffic(sidecar.outbound)
    deadline = time.monotonic() + 10
    while True:
        live = json.loads(request(adminPort, "GET", "/stats/live").body)
        if live["listeners"].get("outbound", {}).get("rps", 0) > 0:
            break
        assert time.monotonic() < deadline, live
        time.sleep(0.2)

    profile = tmp_path / "chromium-profile"
    first = parseDOM(chromium(profile, "--dump-dom", url))
    # Load the page again until it shows a later second of the sidecar's
    # figures (a few tries, each a whole Chromium run, within a deadline).
    deadline = time.monotonic() + 30
    for _ in range(10):
        second = parseDOM(chromium(profile, "--dump-dom", url))
        if _updatedAt(second) >= _updatedAt(first) + 1 or time.monotonic() > deadline:
            break
    screenshot = tmp_path / "dashboard.png"
    chromium(profile, f"--screenshot={screenshot}", url)
    loop.stop()
    print(f"traffic: {loop.sent} requests, {len(loop.failures)} failed {loop.failures[:3]}")

    # The page updated from the sidecar, and its numbers moved on between
    # the two dumps.
    updated = []
    for dom in (first, second):
        [body] = dom.all(lambda n: n.tag == "body")
        assert "data-updated" in body.attrs, "the page never updated"
        updated.append(float(body.attrs["data-updated"]))
        assert dom.byId("state").text() == "ready"
        assert dom.byId("node").text() == "meshtest"
    assert updated[1] > updated[0], updated
    totals = [float(dom.byId("totals").all(lambda n: n.attrs.get("data-figure") == "total")[0].text()) for dom in (first, second)]
    assert totals[1] > totals[0] > 0, totals
    for dom in (first, second):
        for name in ("outbound", "inbound"):
            card = _card(dom, "listeners", name)
            assert _figure(card, "rps") > 0, card.text()
            assert "listens on" in card.text(), card.text()
        for name in ("peer", "local"):
            assert _figure(_card(dom, "clusters", name), "rps") > 0

    # Every chart was drawn; the request charts have a scale above zero.
    charts = {c.attrs["data-chart"]: c for c in second.all(lambda n: n.tag == "canvas")}
    for kind, name in (("listener", "outbound"), ("listener", "inbound"), ("cluster", "peer"), ("cluster", "local")):
        for what in ("rps", "latency"):
            assert f"{kind}:{name}:{what}" in charts, sorted(charts)
    for key, canvas in charts.items():
        assert canvas.attrs.get("data-drawn"), key
        assert float(canvas.attrs["data-max"]) > 0, key
    for key in ("listener:outbound:rps", "listener:inbound:rps"):
        assert float(charts[key].attrs["data-max"]) >= _figure(_card(second, "listeners", key.split(":")[1]), "rps")

    # Endpoints and recent errors.
    endpoints = {(row[0], row[1]): row[2] for row in _rows(second.byId("endpoints"))}
    assert endpoints == {
        ("local", f"127.0.0.1:{app.port}"): "serving",
        ("peer", f"127.0.0.1:{sidecar.inbound}"): "serving",
    }, endpoints
    errors = _rows(second.byId("errors"))
    assert ["outbound", "–", "GET /a%2Fb", "400"] in [row[1:5] for row in errors], errors
    assert any(row[5].startswith("bad_request: ") for row in errors if row[3] == "GET /a%2Fb"), errors
    garbage = [row for row in errors if row[3] == "GET /garbage"]
    assert sorted((row[1], row[2], row[4]) for row in garbage) == [
        ("inbound", "local", "502"),
        ("outbound", "peer", "502"),
    ], errors
    assert all(row[5].startswith("upstream_protocol_error") for row in garbage), errors

    # The screenshot, kept for people to look at.
    assert pngSize(screenshot) == WINDOW, pngSize(screenshot)
    assert screenshot.stat().st_size > 20_000
    print(f"dashboard screenshot: {screenshot}")
    artifacts = os.environ.get("EASYMESH_ARTIFACTS")
    if artifacts:
        target = Path(artifacts)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target / "dashboard.png")
        print(f"dashboard screenshot copied to {(target / 'dashboard.png').resolve()}")
