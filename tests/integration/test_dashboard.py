"""
The admin listener's live dashboard (C{GET /}) in headless Chromium, beside
a real sidecar carrying real traffic: the page's DOM is dumped twice some
seconds apart, and a screenshot is taken.  When things go wrong (a dead
upstream, one slow request among fast ones) the screenshot's pixels show
what an operator would see.

Skipped when no C{chromium} or C{chromium-browser} is on C{PATH}.  Every
Chromium run is bounded; the screenshot is kept under the test's tmp
directory and, when C{EASYMESH_ARTIFACTS} names a directory, copied there
as C{dashboard.png}.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from easymesh import __version__
from tests.integration.conftest import HOPS
from tests.integration.harness import (
    Session,
    closedPort,
    request,
    sidecarArgs,
    twistdCommand,
)

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


class Image:
    """
    The pixels of an 8-bit RGB or RGBA PNG (what Chromium's screenshots
    are), as C{(r, g, b)} by C{pixel(x, y)}.
    """

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        offset, chunks, header = 8, [], b""
        while offset < len(data):
            (length,) = struct.unpack(">I", data[offset : offset + 4])
            kind = data[offset + 4 : offset + 8]
            body = data[offset + 8 : offset + 8 + length]
            if kind == b"IHDR":
                header = body
            elif kind == b"IDAT":
                chunks.append(body)
            offset += 12 + length
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
        assert depth == 8 and colour in (2, 6) and interlace == 0, header
        self.width, self.height = width, height
        self.channels = channels = 4 if colour == 6 else 3
        raw = zlib.decompress(b"".join(chunks))
        stride = width * channels
        rows: List[bytearray] = []
        previous = bytearray(stride)
        for y in range(height):
            start = y * (stride + 1)
            kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                up = previous[i]
                corner = previous[i - channels] if i >= channels else 0
                if kind == 1:
                    line[i] = (line[i] + left) & 0xFF
                elif kind == 2:
                    line[i] = (line[i] + up) & 0xFF
                elif kind == 3:
                    line[i] = (line[i] + (left + up) // 2) & 0xFF
                elif kind == 4:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    guess = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                    line[i] = (line[i] + guess) & 0xFF
            rows.append(line)
            previous = line
        self.rows = rows

    def pixel(self, x: int, y: int) -> Tuple[int, int, int]:
        i = x * self.channels
        row = self.rows[y]
        return row[i], row[i + 1], row[i + 2]

    def count(self, colour: Tuple[int, int, int], box: Tuple[int, int, int, int], within: int = 40) -> int:
        """
        How many pixels in C{box} (left, top, right, bottom; right and
        bottom excluded) are within C{within} of C{colour} (sum of the
        channels' differences).
        """
        left, top, right, bottom = box
        found = 0
        for y in range(max(0, top), min(self.height, bottom)):
            for x in range(max(0, left), min(self.width, right)):
                if sum(abs(a - b) for a, b in zip(self.pixel(x, y), colour)) <= within:
                    found += 1
        return found


# -- traffic -----------------------------------------------------------------


class Traffic:
    """
    GETs of C{path} to a listener on one keep-alive connection, a few dozen
    a second, until L{stop} (bounded in time and count); an answer other
    than C{status} is counted as a failure.
    """

    def __init__(self, port: int, path: str = "/echo/dashboard", status: int = 200) -> None:
        self.port = port
        self.path = path
        self.status = status
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
                    reply = session.get(self.path)
                    if reply.status != self.status:
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

    def start(port: int, path: str = "/echo/dashboard", status: int = 200) -> Traffic:
        loop = Traffic(port, path, status)
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
    _keep(screenshot)


def _keep(screenshot: Path) -> None:
    """
    Copy a screenshot, for people to look at, to C{EASYMESH_ARTIFACTS} if
    it names a directory.
    """
    print(f"dashboard screenshot: {screenshot}")
    artifacts = os.environ.get("EASYMESH_ARTIFACTS")
    if artifacts:
        target = Path(artifacts)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target / screenshot.name)
        print(f"dashboard screenshot copied to {(target / screenshot.name).resolve()}")


# -- when things go wrong ------------------------------------------------------

#: The page's colours (dashboard.js).
BLUE = (0x09, 0x69, 0xDA)
RED = (0xCF, 0x22, 0x2E)
ORANGE = (0xBC, 0x4C, 0x00)
#: Seconds the one slow request takes, among requests of a few ms.
SLOW = 1.2
#: Seconds of each burst of fast requests.
BURST = 2.0


def _burst(port: int, seconds: float) -> int:
    """
    Fast GETs through a listener, one after another, for C{seconds} (at
    most 2000); how many.
    """
    deadline = time.monotonic() + seconds
    sent = 0
    with Session(port, timeout=5) as session:
        while time.monotonic() < deadline and sent < 2000:
            reply = session.get("/echo/fast")
            assert reply.status == 200, reply
            sent += 1
            time.sleep(0.01)
    return sent


def _quietUntil(moment: float) -> None:
    """
    Send nothing until the wall clock (the sidecar's) reaches C{moment}: a
    gap in the traffic, so that the slow request's second has no
    neighbour on the charts.
    """
    delay = moment - time.time()
    assert delay < 3, delay
    if delay > 0:
        time.sleep(delay)


def _box(canvas: Node) -> Tuple[int, int, int, int, int, int]:
    """
    A chart's place in the page (left, top, width, height) and its plot's
    top and bottom rows, as the page drew it.
    """
    left, top, width, height, plotTop, plotBottom = (
        int(round(float(v))) for v in canvas.attrs["data-box"].split(",")
    )
    return left, top, width, height, plotTop, plotBottom


def test_dashboard_tells_the_truth_when_things_go_wrong(launch, app, traffic, tmp_path):
    """
    A dead endpoint is shown failing, with no latency estimate; a cluster
    whose every request fails shows its request line beside the error
    line; one slow request among fast ones is drawn, marked with its
    value, on a scale that still shows the fast ones; the header names
    the sidecar (by its host name, with no C{--node-id}), its version,
    uptime and start.
    """
    closed = closedPort()
    config = tmp_path / "mesh.yaml"
    config.write_text(
        f"""\
clusters:
  dead:
    endpoints: ["http://127.0.0.1:{closed}"]
    connect_timeout: 1s
routes:
  inbound:
    - match: {{prefix: /dead/}}
      cluster: dead
    - match: {{prefix: /}}
      cluster: local
""",
        encoding="utf-8",
    )
    ports = launch.ports()
    argv = twistdCommand() + ["-n", "--pidfile=", "easymesh"] + sidecarArgs(
        ports, ["--upstream", app.url, "--config", str(config)], nodeId=None
    )
    sidecar = launch(upstream=app.url, argv=argv, ports=ports)
    adminPort = sidecar.ports["admin"]
    sidecar.waitReady([adminPort])
    url = f"http://127.0.0.1:{adminPort}/"

    # Every request to the dead cluster fails, from now to the end.
    dead = traffic(sidecar.inbound, "/dead/x", 503)
    # Fast requests, a gap, one slow request alone, a gap, fast requests.
    fast = _burst(sidecar.outbound, BURST)
    _quietUntil(int(time.time()) + 1.05)
    slow = request(sidecar.outbound, "GET", f"/slow?d={SLOW}", timeout=10)
    assert slow.status == 200, slow
    _quietUntil(int(time.time()) + 2.05)
    fast += _burst(sidecar.outbound, BURST)

    profile = tmp_path / "chromium-profile"
    dom = parseDOM(chromium(profile, "--dump-dom", url))
    screenshot = tmp_path / "dashboard-trouble.png"
    chromium(profile, f"--screenshot={screenshot}", url)
    dead.stop()
    print(f"{fast} fast requests; dead cluster: {dead.sent} requests, failures {dead.failures[:3]}")
    assert dead.sent > 0 and not dead.failures, dead.failures[:3]

    # The header: which sidecar, which version, up how long, since when.
    assert dom.byId("node").text() == (socket.gethostname().split(".")[0] or "easymesh")
    build = dom.byId("build").text()
    assert build.startswith(f"easymesh {__version__} · up "), build
    assert re.search(r" · up (\d+ min )?\d+ s, started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", build), build

    # The dead endpoint fails, and has no latency to show; the live ones
    # serve.
    rows = {(row[0], row[1]): row for row in _rows(dom.byId("endpoints"))}
    failing = rows[("dead", f"127.0.0.1:{closed}")]
    assert failing[2].startswith("failing: the last "), failing
    assert failing[2].endswith(" requests got no answer (could not connect to the upstream)"), failing
    assert failing[4] == "– (no answer yet)", failing
    [cell] = [
        td
        for tr in dom.byId("endpoints").all(lambda n: n.attrs.get("data-endpoint") == f"dead 127.0.0.1:{closed}")
        for td in tr.all(lambda n: n.tag == "td")
        if td.text().startswith("failing")
    ]
    assert cell.attrs["class"] == "bad"
    for key in (("local", f"127.0.0.1:{app.port}"), ("peer", f"127.0.0.1:{sidecar.inbound}")):
        assert rows[key][2] == "serving", rows[key]
        assert rows[key][4].endswith(" ms") and float(rows[key][4].split()[0]) > 0, rows[key]

    charts = {c.attrs["data-chart"]: c for c in dom.all(lambda n: n.tag == "canvas")}
    image = Image(screenshot)
    assert (image.width, image.height) == WINDOW

    # The slow request is above the outbound latency scale, which fits the
    # fast ones; it is marked with its value, and the fast ones' line is
    # off the baseline.
    latency = charts["listener:outbound:latency"]
    assert float(latency.attrs["data-max"]) < SLOW * 1000 / 4, latency.attrs
    above = [[float(v) for v in values.split()] for values in latency.attrs["data-above"].split(",")]
    assert all(values and min(values) >= SLOW * 1000 for values in above), latency.attrs
    left, top, width, height, plotTop, plotBottom = _box(latency)
    assert top + height <= WINDOW[1], latency.attrs
    label = (left, top, left + width, top + plotTop - 4)
    marked = image.count(BLUE, label, 120) + image.count(ORANGE, label, 120)
    assert marked >= 10, (marked, latency.attrs)
    middle = (left, top + plotTop + 4, left + width, top + plotBottom - 4)
    drawn = image.count(BLUE, middle) + image.count(ORANGE, middle)
    assert drawn >= 10, (drawn, latency.attrs)

    # Every request to the dead cluster is an error: its request line still
    # shows beside the error line.
    rate = charts["cluster:dead:rps"]
    left, top, width, height, plotTop, plotBottom = _box(rate)
    assert top + height <= WINDOW[1], rate.attrs
    plot = (left, top + plotTop - 3, left + width, top + plotBottom + 3)
    blue, red = image.count(BLUE, plot), image.count(RED, plot)
    assert blue >= 20 and red >= 20, (blue, red, rate.attrs)

    _keep(screenshot)
