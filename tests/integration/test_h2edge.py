"""
The HTTP/2 edge's limits, refusals of malformed requests and flood
defences, against a real sidecar over a real socket: prior-knowledge h2c
on the plaintext outbound listener and TLS with ALPN C{h2} on the mTLS
inbound listener (certificates made here), each case over both, by a raw
frame client (L{RawH2}).

One sidecar serves every case: its outbound listener forwards to its own
mTLS inbound listener over an HTTP/2 hop, and the inbound to the test app.
A connection that breaks a rule is answered as the RFC and the limits say;
the next request on it (where it survives) or on another connection is
served.
"""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path
from typing import Callable, Iterator, List, Sequence

import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

from tests.integration.app import TestApp
from tests.integration.conftest import Launcher
from tests.integration.h2raw import Field, RawH2
from tests.integration.harness import Sidecar
from tests.integration.test_mtls import ORDERS, PKI, WEB

PROTOCOL_ERROR = 0x1
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

MAX_HEAD_SIZE = 8192
MAX_BODY = 1000


class Edge:
    """
    The sidecar, the app behind it, and how to reach each listener.
    """

    def __init__(self, tmp: Path) -> None:
        (tmp / "pki").mkdir()
        self.pki = PKI(tmp / "pki")
        self.app = TestApp()
        self.launcher = Launcher(tmp)
        try:
            config = tmp / "edge.yaml"
            config.write_text(
                f"""\
tls-cert: {self.pki.orders.certPath}
tls-key: {self.pki.orders.keyPath}
tls-ca: {self.pki.ca.certPath}
inbound-tls: mtls
inbound-allow: ["{WEB}", "{ORDERS}"]
""",
                encoding="utf-8",
            )
            ports = self.launcher.ports()
            self.sidecar: Sidecar = self.launcher(
                "--config", str(config),
                "--peer", f"https://127.0.0.1:{ports['inbound']}",
                "--peer-identity", ORDERS,
                "--peer-protocol", "http2",
                "--max-head-size", str(MAX_HEAD_SIZE),
                "--max-body", str(MAX_BODY),
                "--node-id", "edge",
                "--access-log", "json",
                upstream=self.app.url,
                ports=ports,
            )  # fmt: skip
        except BaseException:
            self.close()
            raise

    def context(self) -> ssl.SSLContext:
        ctx = self.pki.context(self.pki.web)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        return ctx

    def connect(self, transport: str) -> RawH2:
        if transport == "h2c":
            return RawH2(self.sidecar.outbound)
        return RawH2(self.sidecar.inbound, context=self.context())

    def seen(self, tag: str) -> List[dict]:
        with self.app.lock:
            return [r for r in self.app.requests if tag in r["target"]]

    def close(self) -> None:
        try:
            self.launcher.closeAll()
        finally:
            self.app.close()


@pytest.fixture(scope="module")
def _edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    edge = Edge(tmp_path_factory.mktemp("h2edge"))
    try:
        yield edge
    finally:
        edge.close()


@pytest.fixture(params=["h2c", "tls"])
def connect(request: pytest.FixtureRequest, _edge: Edge) -> Iterator[Callable[[], RawH2]]:
    """
    Open raw HTTP/2 connections to the listener under test (closed at
    teardown); the sidecar's log lines written during the test are printed.
    """
    sidecar = _edge.sidecar
    assert sidecar.running, sidecar.log()
    offset = len(sidecar.log())
    opened: List[RawH2] = []

    def new() -> RawH2:
        client = _edge.connect(request.param)
        opened.append(client)
        return client

    try:
        yield new
    finally:
        for client in opened:
            client.close()
        print(f"===== {sidecar.logPath} during this test =====\n{sidecar.log()[offset:]}")


@pytest.fixture
def edge(_edge: Edge) -> Edge:
    return _edge


def tag() -> str:
    return uuid.uuid4().hex[:12]


def assertServed(client: RawH2, label: str) -> None:
    """
    A good request on C{client} reaches the app and is answered 200.
    """
    path = f"/echo/{label}-{tag()}".encode()
    answer = client.response(client.request(path))
    assert answer.status == 200, answer
    assert path in answer.data, answer


def assertCalmedAndOthersServed(flooder: RawH2, bystander: RawH2) -> None:
    """
    The flooding connection got GOAWAY C{ENHANCE_YOUR_CALM} and was
    closed; a connection opened before the flood is still served.
    """
    flooder.untilClosed()
    assert [code for _, code in flooder.goAways] == [ENHANCE_YOUR_CALM], flooder.goAways
    assertServed(bystander, "bystander")


# Limits.


def test_headerListOverLimitIs431ThenServed(edge: Edge, connect) -> None:
    """
    A header list over C{--max-head-size} is answered 431 with its cause,
    never forwarded; the connection serves the next request.
    """
    client = connect()
    label = tag()
    # Over the inbound listener's limit too (it allows for what a hop adds),
    # and under twice the limit (where the decoder refuses the list).
    size = MAX_HEAD_SIZE + 2000
    big = client.response(client.request(f"/echo/{label}".encode(), extra=[(b"x-big", b"v" * size)]))
    assert big.status == 431, big
    assert big.header(b"x-easymesh-error") == [b"request_too_large"], big
    assertServed(client, "after-431")
    assert edge.seen(label) == []


def test_hpackBombClosesTheConnection(edge: Edge, connect) -> None:
    """
    One large HPACK table entry referenced many times: the decoder refuses
    the list before building it; GOAWAY with an error, the connection
    closed; others are served.
    """
    bystander = connect()
    client = connect()
    label = tag()
    field = (b"x-bomb", b"b" * 3000)
    first = client.response(client.request(f"/echo/{label}".encode(), extra=[field]))
    assert first.status == 200, first
    client.request(f"/echo/{label}-bomb".encode(), extra=[field] * 200)
    client.untilClosed()
    assert client.goAways and client.goAways[-1][1] != 0, client.goAways
    assert len(edge.seen(label)) == 1
    assertServed(bystander, "bystander")


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "streamed"])
def test_bodyOverLimitIs413ThenServed(edge: Edge, connect, declared: bool) -> None:
    """
    A body over C{--max-body} is answered 413: at once when its length is
    declared (never forwarded), when the DATA passes the limit otherwise.
    The connection serves the next request, a POST within the limit.
    """
    client = connect()
    label = tag()
    body = b"x" * (MAX_BODY + 1)
    extra: List[Field] = [(b"content-length", str(len(body)).encode())] if declared else []
    refused = client.response(client.request(f"/echo/{label}".encode(), b"POST", extra=extra, body=body))
    assert refused.status == 413, refused
    assert refused.header(b"x-easymesh-error"), refused
    if declared:
        assert edge.seen(label) == []
    path = f"/echo/small-{tag()}".encode()
    small = client.response(client.request(path, b"POST", body=b"y" * MAX_BODY))
    assert small.status == 200, small
    assert b'"body_length": %d' % MAX_BODY in small.data, small


# Malformed requests (RFC 9113 sections 8.2 and 8.3): a stream error.


def _fields(client: RawH2, path: bytes, case: str) -> Sequence[Field]:
    usual = client.requestFields(path)
    if case == "missing-path":
        return [f for f in usual if f[0] != b":path"]
    if case == "pseudo-after-regular":
        return [(b"x-first", b"1")] + usual
    if case == "unknown-pseudo":
        return usual + [(b":color", b"blue")]
    if case == "repeated-pseudo":
        return usual + [(b":path", path)]
    extra = {
        "upper-case-name": (b"X-Upper", b"1"),
        "connection-header": (b"connection", b"keep-alive"),
        "transfer-encoding": (b"transfer-encoding", b"chunked"),
        "te-not-trailers": (b"te", b"gzip"),
        "leading-white-space": (b"x-value", b" padded"),
        "trailing-white-space": (b"x-value", b"padded\t"),
        "newline-in-value": (b"x-value", b"a\nb"),
    }[case]
    return usual + [extra]


MALFORMED = [
    "missing-path",
    "pseudo-after-regular",
    "unknown-pseudo",
    "repeated-pseudo",
    "upper-case-name",
    "connection-header",
    "transfer-encoding",
    "te-not-trailers",
    "leading-white-space",
    "trailing-white-space",
    "newline-in-value",
]


@pytest.mark.parametrize("case", MALFORMED)
def test_malformedRequestResetThenServed(edge: Edge, connect, case: str) -> None:
    """
    A malformed request is reset with C{PROTOCOL_ERROR}, not answered and
    not forwarded; the connection is not closed and serves the next
    request.
    """
    client = connect()
    label = tag()
    path = f"/echo/{label}".encode()
    streamId = client.newStream()
    client.send(*client.headerFrames(streamId, _fields(client, path, case)))
    bad = client.response(streamId)
    assert bad.reset == PROTOCOL_ERROR, bad
    assert bad.heads == [], bad
    assert client.goAways == [], client.goAways
    assertServed(client, "after-malformed")
    assert edge.seen(label) == []


# Floods: GOAWAY ENHANCE_YOUR_CALM for the flooder, others unaffected.


def test_rapidResetFlood(edge: Edge, connect) -> None:
    """
    Streams opened and reset at once, far more than the edge allows
    (CVE-2023-44487): GOAWAY C{ENHANCE_YOUR_CALM} and the connection
    closed; another connection is served.
    """
    bystander = connect()
    flooder = connect()
    frames = []
    for _ in range(300):
        streamId = flooder.newStream()
        frames += flooder.headerFrames(streamId, flooder.requestFields(b"/hang"))
        frames.append(RstStreamFrame(streamId, error_code=CANCEL))
    flooder.send(*frames)
    assertCalmedAndOthersServed(flooder, bystander)
    assertServed(connect(), "after-flood")


def test_keepalivePingsThenPingFlood(edge: Edge, connect) -> None:
    """
    A few PINGs are keepalives and answered; more without a request or
    DATA in between are a flood: GOAWAY C{ENHANCE_YOUR_CALM}, closed.
    """
    bystander = connect()
    client = connect()
    for i in range(3):
        client.ping(b"keep%04d" % i)
    client.until(lambda: len(client.pingAcks) == 3, what="three PING answers")
    assert client.goAways == []
    assertServed(client, "between-pings")
    client.send(*[PingFrame(0, opaque_data=b"many%04d" % i) for i in range(10)])
    assertCalmedAndOthersServed(client, bystander)


def test_settingsFlood(edge: Edge, connect) -> None:
    bystander = connect()
    flooder = connect()
    frames = []
    for i in range(50):
        frame = SettingsFrame(0)
        frame.settings = {0x4: 65535 + i}
        frames.append(frame)
    flooder.send(*frames)
    assertCalmedAndOthersServed(flooder, bystander)


def test_emptyDataFlood(edge: Edge, connect) -> None:
    bystander = connect()
    flooder = connect()
    streamId = flooder.newStream()
    frames = flooder.headerFrames(streamId, flooder.requestFields(b"/echo/empty", b"POST"), end=False)
    frames += [DataFrame(streamId, b"") for _ in range(300)]
    flooder.send(*frames)
    assertCalmedAndOthersServed(flooder, bystander)


def test_continuationFlood(edge: Edge, connect) -> None:
    """
    A HEADERS frame followed by CONTINUATION frames without end
    (CVE-2024-27316): the connection is closed with an error before the
    list is decoded; nothing is forwarded; others are served.
    """
    bystander = connect()
    flooder = connect()
    label = tag()
    headers = HeadersFrame(1)
    headers.data = flooder.encoder.encode(flooder.requestFields(f"/echo/{label}".encode()))
    frames: List[Frame] = [headers]
    for _ in range(2000):
        continuation = ContinuationFrame(1)
        continuation.data = b"\x40\x01a\x01b"  # one more literal field
        frames.append(continuation)
    flooder.send(*frames)
    flooder.untilClosed()
    assert flooder.goAways and flooder.goAways[-1][1] != 0, flooder.goAways
    assert edge.seen(label) == []
    assertServed(bystander, "bystander")
