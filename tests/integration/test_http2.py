"""
HTTP/2 on the listeners, with real clients (curl and nghttp) through a real
sidecar pair and a real app: prior-knowledge h2c on the plaintext outbound
listener, and ALPN C{h2} on the mTLS inbound listener of another sidecar.
The hop between the sidecars is HTTP/1.1.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.integration.test_mtls import PKI, WEB, bConfig
from tests.integration.test_trailers import TrailerApp

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("nghttp")),
    reason="needs curl and nghttp (Debian: curl, nghttp2-client)",
)

DEADLINE = 20


def run(argv: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=DEADLINE)


def curl(*args: str) -> subprocess.CompletedProcess:
    return run(["curl", "-sS", "--max-time", str(DEADLINE), *args])


def echoed(output: bytes) -> Dict[str, Any]:
    return json.loads(output)


def headerValues(seen: Dict[str, Any], name: str) -> List[str]:
    return [v for n, v in seen["headers"] if n.lower() == name]


def test_h2cThroughBothHops(launch, app) -> None:
    """
    A prior-knowledge HTTP/2 client on the outbound listener: the request
    reaches the app through both hops with its method, target, authority
    (as Host) and repeated headers, and the answer comes back over HTTP/2.
    """
    sidecar = launch("--access-log", "json", upstream=app.url)
    done = curl(
        "--http2-prior-knowledge",
        "-H", "X-Rep: 1",
        "-H", "X-Rep: 2",
        "-w", "\\n%{http_version} %{http_code}",
        f"http://127.0.0.1:{sidecar.outbound}/echo/h2?x=1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    body, _, tail = done.stdout.rpartition(b"\n")
    assert tail == b"2 200"
    seen = echoed(body)
    assert seen["method"] == "GET"
    assert seen["target"] == "/echo/h2?x=1"
    assert headerValues(seen, "host") == [f"127.0.0.1:{sidecar.outbound}"]
    assert headerValues(seen, "x-rep") == ["1", "2"] or headerValues(seen, "x-rep") == ["1, 2"]
    via = ", ".join(headerValues(seen, "via"))
    assert re.search(r"\b2 \S+\.outbound", via), via
    log = sidecar.log()
    protocols = re.findall(r'"listener":"(\w+)".*?"protocol":"([^"]+)"', log)
    assert ("outbound", "HTTP/2") in protocols
    assert ("inbound", "HTTP/1.1") in protocols


def test_h2cPostBodyIntact(launch, app, tmp_path: Path) -> None:
    sidecar = launch(upstream=app.url)
    payload = tmp_path / "payload"
    payload.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    done = run(
        ["nghttp", "-d", str(payload), f"http://127.0.0.1:{sidecar.outbound}/echo/upload"]
    )
    assert done.returncode == 0, done.stderr
    seen = echoed(done.stdout)
    assert seen["method"] == "POST"
    assert seen["body_length"] == 1024 * 1024
    assert seen["body_sha256"] == hashlib.sha256(payload.read_bytes()).hexdigest()


def test_hundredConcurrentStreams(launch) -> None:
    """
    100 streams at once on one connection (the advertised
    C{SETTINGS_MAX_CONCURRENT_STREAMS}) are all answered, through both
    hops to the built-in demo app.
    """
    sidecar = launch()
    done = run(["nghttp", "-nv", "-m", "100", f"http://127.0.0.1:{sidecar.outbound}/many"])
    assert done.returncode == 0, done.stderr
    output = done.stdout.decode()
    assert output.count(":status: 200") == 100, output[-2000:]
    assert "MAX_CONCURRENT_STREAMS(0x03):100" in output
    assert "GOAWAY" not in output.split("recv SETTINGS")[-1].split("send GOAWAY")[0]


def test_h2cTrailersBothWays(launch, tmp_path: Path) -> None:
    """
    Request trailers sent over HTTP/2 reach the app (as HTTP/1.1 chunked
    trailers); the app's trailers come back as an HTTP/2 trailer block.
    """
    app = TrailerApp()
    try:
        sidecar = launch(upstream=app.url)
        payload = tmp_path / "payload"
        payload.write_bytes(b"abcdef")
        done = run(
            [
                "nghttp", "-v", "-d", str(payload), "--trailer", "x-client-sum: 1234",
                f"http://127.0.0.1:{sidecar.outbound}/upload",
            ]
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        output = done.stdout.decode()
        assert "hello" in output and " world" in output
        assert re.search(r"recv \(stream_id=\d+\) grpc-status: 0", output), output
        assert re.search(r"recv \(stream_id=\d+\) x-checksum: c0ffee", output), output
        [seen] = app.seen
        assert seen["body"] == b"abcdef"
        assert [(n.lower(), v) for n, v in seen["trailers"]] == [("x-client-sum", "1234")]
    finally:
        app.close()


def test_alpnH2OnMutualTLSInbound(launch, app, tmp_path: Path) -> None:
    """
    The mTLS inbound listener offers C{h2} by ALPN: an allowed caller that
    negotiates it is served over HTTP/2 (nghttp and curl); the caller's
    identity reaches the app as over HTTP/1.1; a caller that is not
    allowed is refused as before.
    """
    (tmp_path / "pki").mkdir()
    pki = PKI(tmp_path / "pki")
    config = tmp_path / "orders.yaml"
    config.write_text(bConfig(pki), encoding="utf-8")
    b = launch("--config", str(config), "--node-id", "orders", "--access-log", "json", upstream=app.url)
    url = f"https://127.0.0.1:{b.inbound}/echo/alpn"
    done = run(["nghttp", "--cert", pki.web.certPath, "--key", pki.web.keyPath, url])
    assert done.returncode == 0, done.stderr
    seen = echoed(done.stdout)
    assert headerValues(seen, "x-easymesh-peer-identity") == [WEB]
    done = curl(
        "--http2", "-k", "--cert", pki.web.certPath, "--key", pki.web.keyPath,
        "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url,
    )  # fmt: skip
    assert done.stdout == b"2 200", done.stderr
    refused = curl(
        "--http2", "-k", "--cert", pki.intruder.certPath, "--key", pki.intruder.keyPath,
        "-o", "/dev/null", "-w", "%{http_code}", url,
    )  # fmt: skip
    assert refused.stdout in (b"000", b""), refused.stdout
    assert '"protocol":"HTTP/2"' in b.log()


# HTTP/2 between sidecars.


def test_sidecarHopOverH2c(launch, app) -> None:
    """
    With C{--peer-protocol http2} an HTTP/1.1 request rides the hop between
    the listeners over h2c and arrives as it was sent: method, target,
    repeated headers, body; the status comes back; both access log lines
    say what each side spoke.
    """
    sidecar = launch("--peer-protocol", "http2", "--access-log", "json", upstream=app.url)
    done = curl(
        "--http1.1",
        "-H", "X-Rep: 1",
        "-H", "X-Rep: 2",
        "--data-binary", "hello body",
        "-w", "\\n%{http_version} %{http_code}",
        f"http://127.0.0.1:{sidecar.outbound}/echo/hop?y=2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    body, _, tail = done.stdout.rpartition(b"\n")
    assert tail == b"1.1 200"
    seen = echoed(body)
    assert (seen["method"], seen["target"]) == ("POST", "/echo/hop?y=2")
    assert seen["body_length"] == len(b"hello body")
    assert headerValues(seen, "x-rep") in (["1", "2"], ["1, 2"])
    assert headerValues(seen, "host") == [f"127.0.0.1:{sidecar.outbound}"]
    via = ", ".join(headerValues(seen, "via"))
    assert re.search(r"\b2 \S+\.inbound", via), via
    log = sidecar.log()
    assert re.search(r'"listener":"outbound".*"protocol":"HTTP/1.1","upstream_protocol":"HTTP/2"', log), log
    assert re.search(r'"listener":"inbound".*"protocol":"HTTP/2","upstream_protocol":"HTTP/1.1"', log), log


def test_sidecarHopOverH2cManyRequests(launch) -> None:
    """
    100 concurrent HTTP/2 streams from a client, each forwarded over the
    multiplexed hop: all answered.
    """
    sidecar = launch("--peer-protocol", "http2")
    done = run(["nghttp", "-nv", "-m", "100", f"http://127.0.0.1:{sidecar.outbound}/many"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().count(":status: 200") == 100


@pytest.mark.parametrize("protocol", ["http2", "auto"])
def test_sidecarHopOverMutualTLSWithALPN(launch, app, tmp_path: Path, protocol: str) -> None:
    """
    Between two sidecars over mTLS, C{--peer-protocol http2} (or C{auto},
    to which the peer answers C{h2}) negotiates C{h2} by ALPN: the request
    arrives with the caller's identity, and the receiving sidecar logs it
    as HTTP/2.
    """
    (tmp_path / "pki").mkdir()
    pki = PKI(tmp_path / "pki")
    config = tmp_path / "orders.yaml"
    config.write_text(bConfig(pki), encoding="utf-8")
    b = launch("--config", str(config), "--node-id", "orders", "--access-log", "json", upstream=app.url)
    a = launch(
        *pki.tlsFlags(pki.web),
        "--peer", f"https://127.0.0.1:{b.inbound}",
        "--peer-protocol", protocol,
        "--node-id", "web",
        "--access-log", "json",
        upstream=app.url,
    )  # fmt: skip
    for i in range(3):
        done = curl(f"http://127.0.0.1:{a.outbound}/echo/mtls-h2/{i}")
        assert done.returncode == 0, done.stderr
        seen = echoed(done.stdout)
        assert headerValues(seen, "x-easymesh-peer-identity") == [WEB]
    assert b.log().count('"protocol":"HTTP/2"') == 3
    assert a.log().count('"upstream_protocol":"HTTP/2"') == 3
