"""
The workload certificate's validity period and the caller identities of
C{--inbound-allow '*'}, against real processes with certificates made here:

  - C{python -m easymesh check-config} and C{twistd easymesh} refuse an
    expired or not yet valid certificate, naming the file and its period;
  - a running mTLS sidecar into whose files an expired pair is rotated
    keeps its certificate and serves on, says why in its log, and exports
    the seconds left on the certificate in use;
  - with the default C{*}, a client certificate whose URI subjectAltName is
    not a valid SPIFFE ID is refused (or its DNS name is the identity), and
    one without any names is logged as naming no identity.

Every client here calls the mTLS inbound listener itself: no request
crosses the hop between a sidecar's listeners, so nothing here runs over
an HTTP/2 hop.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional

import pytest
from cryptography import x509

from easymesh.tls.certs import Issued, issue, makeCA, makeWorkload
from tests.integration.harness import REPO, request, waitUntil
from tests.integration.test_mtls import attempt, peerIdentities, servedSerial

ORDERS = "spiffe://example.org/ns/default/sa/orders"
WEB = "spiffe://example.org/ns/default/sa/web"
ADMIN = "spiffe://example.org/ns/ops/sa/admin"
DAY = datetime.timedelta(days=1)
GAUGE = "easymesh_tls_certificate_expiry_seconds"


class PKI:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = makeCA(directory)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.orders = makeWorkload(self.ca, ORDERS, directory, "orders")
        self.web = makeWorkload(self.ca, WEB, directory, "web")
        self.expired = makeWorkload(
            self.ca, ADMIN, directory, "expired", notBefore=now - 30 * DAY, notAfter=now - DAY
        )
        self.future = makeWorkload(self.ca, ORDERS, directory, "future", notBefore=now + DAY)

    def flags(self, issued: Issued) -> List[str]:
        return [
            "--tls-cert", issued.certPath,
            "--tls-key", issued.keyPath,
            "--tls-ca", self.ca.certPath,
        ]  # fmt: skip

    def context(self, issued: Optional[Issued]) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(self.ca.certPath)
        if issued is not None:
            ctx.load_cert_chain(issued.certPath, issued.keyPath)
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    directory = tmp_path / "pki"
    directory.mkdir()
    return PKI(directory)


def checkConfig(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "easymesh", "check-config", str(path)],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )


def configFor(tmp_path: Path, pki: PKI, issued: Issued) -> Path:
    path = tmp_path / f"{Path(issued.certPath).stem}.yaml"
    path.write_text(
        f"tls-cert: {issued.certPath}\n"
        f"tls-key: {issued.keyPath}\n"
        f"tls-ca: {pki.ca.certPath}\n"
        "inbound-tls: mtls\n",
        encoding="utf-8",
    )
    return path


# -- refused before anything runs ------------------------------------------


@pytest.mark.parametrize(
    "which, reason",
    [("expired", "the certificate has expired"), ("future", "the certificate is not valid yet")],
)
def test_check_config_refuses(tmp_path: Path, pki: PKI, which: str, reason: str) -> None:
    """
    C{check-config} refuses a certificate outside its validity period,
    naming the file, notBefore and notAfter; a valid one passes.
    """
    issued = getattr(pki, which)
    done = checkConfig(configFor(tmp_path, pki, issued))
    assert done.returncode == 1, done
    assert "valid (" not in done.stdout
    begins = issued.cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    ends = issued.cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    expected = f"tls {issued.certPath}: {reason} (notBefore {begins}, notAfter {ends}, now "
    assert expected in done.stderr, done.stderr
    good = checkConfig(configFor(tmp_path, pki, pki.orders))
    assert good.returncode == 0, good
    assert "valid (" in good.stdout


def test_start_refuses_expired(launch: Any, pki: PKI, app: Any) -> None:
    """
    The sidecar does not start with an expired certificate: it says why
    and exits before binding anything.
    """
    sidecar = launch(
        *pki.flags(pki.expired), "--inbound-tls", "mtls", upstream=app.url, ready=False
    )
    assert sidecar.wait(30) != 0
    assert f"tls {pki.expired.certPath}: the certificate has expired" in sidecar.log()


# -- rotation of an expired pair into a running sidecar --------------------


def metric(sidecar: Any, certPath: str) -> float:
    reply = request(sidecar.ports["admin"], "GET", "/stats/prometheus")
    assert reply.status == 200, reply
    prefix = f'{GAUGE}{{cert="{certPath}"}} '
    [line] = [l for l in reply.body.decode("utf-8").splitlines() if l.startswith(prefix)]
    return float(line[len(prefix):])


def test_expired_rotation_keeps_serving(tmp_path: Path, launch: Any, pki: PKI, app: Any) -> None:
    """
    An expired pair renamed over the files of a running mTLS sidecar is
    refused (the log says why, and again on SIGHUP); the sidecar keeps
    presenting its certificate and serving, and its gauge still counts
    down to that certificate's notAfter.  A valid pair for another
    identity is then taken, with a warning.
    """
    live = tmp_path / "live"
    live.mkdir()
    for name in ("orders.pem", "orders-key.pem"):
        shutil.copy(os.path.join(pki.dir, name), live / name)
    cert, key = str(live / "orders.pem"), str(live / "orders-key.pem")
    b = launch(
        "--tls-cert", cert, "--tls-key", key, "--tls-ca", pki.ca.certPath,
        "--inbound-tls", "mtls", "--node-id", "orders",
        upstream=app.url,
    )  # fmt: skip
    web = pki.context(pki.web)
    serial = pki.orders.cert.serial_number
    assert servedSerial(b.inbound, web) == serial

    staging = tmp_path / "staging"
    staging.mkdir()
    for name in ("expired.pem", "expired-key.pem"):
        shutil.copy(os.path.join(pki.dir, name), staging / name)
    os.replace(staging / "expired-key.pem", key)
    os.replace(staging / "expired.pem", cert)
    refused = (
        f"TLS credentials not reloaded, keeping the current ones: {cert}: "
        "the certificate has expired"
    )
    b.waitForLog(lambda text: refused in text, timeout=10)

    reply = request(b.inbound, "GET", "/echo/after-expired", context=web)
    assert reply.status == 200, reply
    assert peerIdentities(json.loads(reply.body)) == [WEB]
    assert servedSerial(b.inbound, web) == serial
    # The gauge is of the certificate still in use, a year from now.
    left = metric(b, cert)
    assert 364 * 86400 < left <= 365 * 86400, left

    b.signal(signal.SIGHUP)
    b.waitForLog(lambda text: text.count(refused) >= 2, timeout=10)
    assert servedSerial(b.inbound, web) == serial
    assert "TLS credentials reloaded" not in b.log()

    other = makeWorkload(pki.ca, ADMIN, staging, "admin")
    os.replace(other.keyPath, key)
    os.replace(other.certPath, cert)
    b.waitForLog(lambda text: "change this workload's identity" in text, timeout=10)
    waitUntil(
        lambda: servedSerial(b.inbound, web) == other.cert.serial_number, 10, "the new pair"
    )
    log = b.log()
    assert f"from {ORDERS} to {ADMIN}" in log
    assert "Traceback" not in log
    assert b.running


# -- the caller identities of '*' --------------------------------------------


@pytest.fixture
def callee(launch: Any, pki: PKI, app: Any) -> Any:
    """
    An mTLS sidecar that allows any identity from the CA (the default).
    """
    return launch(
        *pki.flags(pki.orders), "--inbound-tls", "mtls", "--node-id", "orders", upstream=app.url
    )


#: case: (the client certificate's only URI subjectAltName, or None for no
#: subjectAltName at all; how the log shows it)
REFUSED = {
    "dot-dot": ("spiffe://example.org/ns/../sa/admin", None),
    "upper-case-scheme": ("SPIFFE://example.org/ns/ops/sa/admin", None),
    "port": ("spiffe://example.org:8443/ns/ops/sa/admin", None),
    "userinfo": ("spiffe://u@example.org/ns/ops/sa/admin", None),
    "query": ("spiffe://example.org/ns/ops/sa/admin?x", None),
    "empty-segment": ("spiffe://example.org/ns//admin", None),
    "control-characters": (
        "spiffe://example.org/a\r\nforged",
        "spiffe://example.org/a\\x0d\\x0aforged",
    ),
    "no-names": (None, "no identity"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_any_refuses_what_is_not_an_identity(callee: Any, pki: PKI, app: Any, case: str) -> None:
    """
    A client certificate from the CA whose only subjectAltName is not an
    identity is refused after the handshake, nothing reaches the app, and
    the log names what the certificate holds (escaped) or that it holds
    nothing.
    """
    uri, shown = REFUSED[case]
    names = [] if uri is None else [x509.UniformResourceIdentifier(uri)]
    shown = shown or uri
    client = issue(pki.ca, names, pki.dir, f"client-{case}")
    target = f"/echo/any-{case}"
    result = attempt(callee.inbound, pki.context(client), target)
    assert b"HTTP/" not in result.received, result
    presented = "a certificate with no identity" if shown == "no identity" else f"identity {shown}"
    expected = f"Refused mTLS client 127.0.0.1:{result.port}: {presented} is not allowed"
    callee.waitForLog(lambda text: expected in text)
    assert app.seen(target) == []
    log = callee.log()
    assert "forged" not in log.replace("\\x0d\\x0aforged", "")
    assert "Traceback" not in log


def test_any_takes_the_dns_name(callee: Any, pki: PKI, app: Any) -> None:
    """
    Past a URI that is not a SPIFFE ID, the certificate's DNS name (in
    lower case) is the caller's identity.
    """
    client = issue(
        pki.ca,
        [
            x509.UniformResourceIdentifier("spiffe://example.org/ns/../sa/admin"),
            x509.DNSName("API.Example.org"),
        ],
        pki.dir,
        "client-dns",
    )
    reply = request(callee.inbound, "GET", "/echo/any-dns", context=pki.context(client))
    assert reply.status == 200, reply
    assert peerIdentities(json.loads(reply.body)) == ["api.example.org"]
