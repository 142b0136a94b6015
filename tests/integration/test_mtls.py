"""
mTLS between two real sidecars on loopback, with certificates made here:

    client -> A (web) outbound, plaintext
           -> A originates mTLS -> B (orders) inbound, mTLS only -> test app

The app sees A's verified identity in C{x-easymesh-peer-identity}, and no
forged one.  B refuses, and logs why: plaintext, no client certificate, one
from another CA, an expired one, an identity it does not allow.  A refuses a
B that is not the identity it expects.  B's authorization rules allow and
deny per route and identity, whatever the spelling of the path.  B's
certificate is rotated under load, by file replacement and by SIGHUP,
without a failed request.  And C{examples/mtls/run.sh} runs such a mesh and
stops cleanly on SIGTERM.

Direct TLS clients (Python's C{ssl}) stand in for other callers of B.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
from cryptography import x509

from easymesh.tls.certs import Issued, makeCA, makeWorkload
from tests.integration.app import TestApp
from tests.integration.conftest import HOPS, Launcher
from tests.integration.harness import (
    POLL,
    REPO,
    Reply,
    Session,
    Sidecar,
    request,
    send,
    waitUntil,
)

WEB = "spiffe://example.org/ns/default/sa/web"
ORDERS = "spiffe://example.org/ns/default/sa/orders"
BILLING = "spiffe://example.org/ns/default/sa/billing"
INTRUDER = "spiffe://example.org/ns/default/sa/intruder"

PEER_IDENTITY = "x-easymesh-peer-identity"


class PKI:
    """
    The mesh's CA and workload certificates, and some that B must refuse.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = makeCA(directory)
        self.web = makeWorkload(self.ca, WEB, directory, "web")
        self.orders = makeWorkload(self.ca, ORDERS, directory, "orders")
        self.billing = makeWorkload(self.ca, BILLING, directory, "billing")
        self.intruder = makeWorkload(self.ca, INTRUDER, directory, "intruder")
        now = datetime.datetime.now(datetime.timezone.utc)
        self.expired = makeWorkload(
            self.ca, WEB, directory, "web-expired",
            notBefore=now - datetime.timedelta(days=30),
            notAfter=now - datetime.timedelta(days=1),
        )  # fmt: skip
        other = directory / "other-ca"
        other.mkdir()
        self.otherCA = makeCA(other, name="another CA")
        self.foreign = makeWorkload(self.otherCA, WEB, other, "web")

    def tlsFlags(self, issued: Issued) -> List[str]:
        return ["--tls-cert", issued.certPath, "--tls-key", issued.keyPath, "--tls-ca", self.ca.certPath]

    def context(self, issued: Optional[Issued]) -> ssl.SSLContext:
        """
        A client context that trusts the mesh CA (no host name check: B's
        certificate names a SPIFFE ID) and presents C{issued}, if given.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(self.ca.certPath)
        if issued is not None:
            ctx.load_cert_chain(issued.certPath, issued.keyPath)
        return ctx


def bConfig(pki: PKI) -> str:
    return f"""\
tls-cert: {pki.orders.certPath}
tls-key: {pki.orders.keyPath}
tls-ca: {pki.ca.certPath}
inbound-tls: mtls
inbound-allow:
  - {WEB}
  - {BILLING}
authorization:
  inbound:
    default: allow
    rules:
      - match: {{prefix: /admin}}
        identities: ["{BILLING}"]
      - match: {{prefix: /orders, methods: [POST]}}
        identities: ["{WEB}"]
"""


class Mesh:
    """
    The shared pair: B (orders) with mTLS inbound and authorization rules
    in front of the test app, and A (web) whose outbound originates mTLS to
    B expecting B's identity.  A keeps at most one idle connection to B
    (C{--pool-size 1}), so concurrent requests make new TLS connections.
    """

    def __init__(self, tmp: Path, pki: PKI, hop: str = "http1") -> None:
        self.pki = pki
        self.hop = hop
        self.tmp = tmp
        self.app = TestApp()
        self.launcher = Launcher(tmp)
        config = tmp / "orders.yaml"
        config.write_text(bConfig(pki), encoding="utf-8")
        self.b = self.launcher("--config", str(config), "--node-id", "orders", upstream=self.app.url)
        self.a = self.launcher(
            *pki.tlsFlags(pki.web),
            "--peer", f"https://127.0.0.1:{self.b.inbound}",
            "--peer-identity", ORDERS,
            "--peer-protocol", hop,
            "--pool-size", "1",
            "--node-id", "web",
            upstream=self.app.url,
        )  # fmt: skip
        self._wrongPeer: Optional[Sidecar] = None

    @property
    def wrongPeer(self) -> Sidecar:
        """
        Another caller, started on first use, whose outbound expects
        billing's identity of B: B does not have it.
        """
        if self._wrongPeer is None:
            self._wrongPeer = self.launcher(
                *self.pki.tlsFlags(self.pki.web),
                "--peer", f"https://127.0.0.1:{self.b.inbound}",
                "--peer-identity", BILLING,
                "--node-id", "web-2",
                upstream=self.app.url,
            )  # fmt: skip
        return self._wrongPeer

    def close(self) -> None:
        try:
            self.launcher.closeAll()
        finally:
            self.app.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("mtls-pki"))


@pytest.fixture(scope="module", params=HOPS)
def _mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[Mesh]:
    shared = Mesh(tmp_path_factory.mktemp("mtls-mesh"), pki, request.param)
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def mesh(_mesh: Mesh) -> Iterator[Mesh]:
    """
    The shared pair, both running; their log lines written during the test
    are printed at teardown (and so shown if it fails).
    """
    for sidecar in (_mesh.a, _mesh.b):
        assert sidecar.running, sidecar.log()
    offsets = {s.logPath: len(s.log()) for s in _mesh.launcher.started}
    try:
        yield _mesh
    finally:
        for sidecar in _mesh.launcher.started:
            offset = offsets.get(sidecar.logPath, 0)
            print(f"===== {sidecar.logPath} during this test =====\n{sidecar.log()[offset:]}")


# -- direct clients of B ---------------------------------------------------


def tlsRequest(
    port: int,
    ctx: ssl.SSLContext,
    method: str,
    target: str,
    headers: Sequence[Tuple[str, str]] = (),
    body: Optional[bytes] = None,
) -> Reply:
    """
    One request over a new TLS connection to 127.0.0.1:port.
    """
    return request(port, method, target, headers, body, context=ctx)


class Attempt:
    """
    What a client that B should refuse got: its local port (as B logs
    it), the bytes it received, and the error that ended it.
    """

    def __init__(self, port: int, received: bytes, error: Optional[BaseException]) -> None:
        self.port = port
        self.received = received
        self.error = error

    def __repr__(self) -> str:
        return f"<Attempt from {self.port}: {self.received[:100]!r} {self.error!r}>"


def attempt(port: int, ctx: Optional[ssl.SSLContext], target: str) -> Attempt:
    """
    Connect to 127.0.0.1:port (in TLS with C{ctx}, or in plaintext), send
    a GET for C{target}, and read until the connection ends.
    """
    sock: Any = socket.create_connection(("127.0.0.1", port), timeout=10)
    local = sock.getsockname()[1]
    received = b""
    error: Optional[BaseException] = None
    try:
        if ctx is not None:
            sock = ctx.wrap_socket(sock)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: orders\r\n\r\n".encode("ascii"))
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    except (ssl.SSLError, OSError) as e:
        error = e
    finally:
        sock.close()
    return Attempt(local, received, error)


def peerIdentities(seen: Dict[str, Any]) -> List[str]:
    """
    The values of every C{x-easymesh-peer-identity} header the app got.
    """
    return [v for n, v in seen["headers"] if n.lower() == PEER_IDENTITY]


def servedSerial(port: int, ctx: ssl.SSLContext) -> int:
    """
    The serial number of the certificate B presents to a new connection
    (after a complete request, so that B has verified the client too).
    """
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    try:
        send(conn, "GET", "/echo/serial-probe")
        conn.getresponse().read()
        der = conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()
    return x509.load_der_x509_certificate(der).serial_number


# -- the path through both sidecars ----------------------------------------


def test_request_through_mtls(mesh: Mesh) -> None:
    """
    A request through A's plaintext outbound reaches the app over A's mTLS
    connection to B, and the app is told A's identity; the reply comes
    back through both.
    """
    reply = request(mesh.a.outbound, "GET", "/echo/mtls?x=1")
    assert reply.status == 200, reply
    seen = json.loads(reply.body)
    assert seen["target"] == "/echo/mtls?x=1"
    assert peerIdentities(seen) == [WEB]
    # B's Via names the version the hop spoke.
    hop = "1.1" if mesh.hop == "http1" else "2"
    assert reply.all("Via") == [f"{hop} orders.inbound", "1.1 web.outbound"]


def test_forged_identity_header_removed(mesh: Mesh) -> None:
    """
    An C{x-easymesh-peer-identity} sent by a client, in any case and
    however often, never reaches the app: only the one B sets does.
    """
    forged = [
        (PEER_IDENTITY, "spiffe://example.org/ns/ops/sa/admin"),
        ("X-EasyMesh-Peer-Identity", BILLING),
        (PEER_IDENTITY, "*"),
    ]
    reply = request(mesh.a.outbound, "GET", "/echo/forged-via-a", headers=forged)
    assert reply.status == 200, reply
    assert peerIdentities(json.loads(reply.body)) == [WEB]
    ctx = mesh.pki.context(mesh.pki.billing)
    direct = tlsRequest(mesh.b.inbound, ctx, "GET", "/echo/forged-direct", headers=forged)
    assert direct.status == 200, direct
    assert peerIdentities(json.loads(direct.body)) == [BILLING]


def test_plaintext_listener_sets_no_identity(mesh: Mesh) -> None:
    """
    A's own inbound listener is plaintext: what it forwards carries no
    identity, forged or otherwise.
    """
    reply = request(
        mesh.a.inbound, "GET", "/echo/plain-inbound", headers=[(PEER_IDENTITY, WEB)]
    )
    assert reply.status == 200, reply
    assert peerIdentities(json.loads(reply.body)) == []


# -- B refuses ---------------------------------------------------------------


REFUSALS = {
    # case: (client certificate, what B logs about the connection)
    "plaintext": (None, "TLS handshake with 127.0.0.1:{port} failed: http request"),
    "no-client-cert": (
        "none",
        "TLS handshake with 127.0.0.1:{port} failed: peer did not return a certificate",
    ),
    "another-ca": (
        "foreign",
        "Refused mTLS client 127.0.0.1:{port}: its certificate ({WEB}) did not verify: "
        "unable to get local issuer certificate",
    ),
    "expired": (
        "expired",
        "Refused mTLS client 127.0.0.1:{port}: its certificate ({WEB}) did not verify: "
        "certificate has expired",
    ),
    "identity-not-allowed": (
        "intruder",
        "Refused mTLS client 127.0.0.1:{port}: identity {INTRUDER} is not allowed",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_inbound_refuses(mesh: Mesh, case: str) -> None:
    """
    B's inbound listener answers no request from a client it refuses,
    forwards nothing to the app, and logs the reason naming the client's
    address.
    """
    certificate, logged = REFUSALS[case]
    if certificate is None:
        ctx = None
    else:
        ctx = mesh.pki.context(None if certificate == "none" else getattr(mesh.pki, certificate))
    target = f"/echo/refused-{case}"
    result = attempt(mesh.b.inbound, ctx, target)
    assert b"HTTP/" not in result.received, result
    expected = logged.format(port=result.port, WEB=WEB, INTRUDER=INTRUDER)
    mesh.b.waitForLog(lambda text: expected in text)
    assert mesh.app.seen(target) == []
    if case in ("another-ca", "expired"):
        # OpenSSL's own handshake error, logged as well, says less.
        mesh.b.waitForLog(
            lambda text: f"TLS handshake with 127.0.0.1:{result.port} failed: "
            "certificate verify failed" in text
        )
    assert "Traceback" not in mesh.b.log()


def test_outbound_refuses_unexpected_peer(mesh: Mesh) -> None:
    """
    A sidecar that expects another identity of its peer than B's refuses
    B: its client gets a 502 or 503, the app sees nothing, and its log
    names the identities.
    """
    c = mesh.wrongPeer
    reply = request(c.outbound, "GET", "/echo/unexpected-peer", timeout=10)
    assert reply.status in (502, 503), reply
    assert reply.header("x-easymesh-error"), reply
    assert mesh.app.seen("/echo/unexpected-peer") == []
    c.waitForLog(
        lambda text: f"Refused peer 127.0.0.1:{mesh.b.inbound}: peer identity mismatch: "
        f"expected {BILLING}; certificate presents {ORDERS}" in text
    )
    # A, which expects B's identity, still gets through.
    assert request(mesh.a.outbound, "GET", "/echo/expected-peer").status == 200


def test_unexpected_peer_is_not_reported_as_a_reset(mesh: Mesh) -> None:
    reply = request(mesh.wrongPeer.outbound, "GET", "/echo/unexpected-peer-cause", timeout=10)
    assert reply.status == 503, reply
    assert reply.header("x-easymesh-error") == "upstream_tls_failure", reply


# -- authorization -----------------------------------------------------------


def test_route_allowed_and_denied(mesh: Mesh) -> None:
    """
    B's rules: C{/admin} for billing only; C{POST /orders} for web only;
    everything else allowed.  Each route lets one identity through and
    denies the other with 403 C{unauthorized}, logged, never reaching the
    app.
    """
    billing = mesh.pki.context(mesh.pki.billing)
    web = mesh.pki.context(mesh.pki.web)

    # The app answers 404 to all but /echo: what counts is what it saw.
    allowed = tlsRequest(mesh.b.inbound, billing, "GET", "/admin/stats?by=billing")
    assert allowed.status == 404, allowed
    [seen] = mesh.app.seenTarget("/admin/stats?by=billing")
    assert peerIdentities(seen) == [BILLING]

    denied = request(mesh.a.outbound, "GET", "/admin/stats?by=web")
    assert denied.status == 403, denied
    assert denied.header("x-easymesh-error") == "unauthorized"
    assert mesh.app.seenTarget("/admin/stats?by=web") == []
    mesh.b.waitForLog(
        lambda text: f"Denied inbound GET /admin/stats from {WEB}: no rule allows {WEB}" in text
    )

    posted = request(mesh.a.outbound, "POST", "/orders?by=web", body=b'{"item": 1}')
    assert posted.status == 404, posted
    [seen] = mesh.app.seenTarget("/orders?by=web")
    assert seen["body_length"] == 11
    assert peerIdentities(seen) == [WEB]

    refused = tlsRequest(mesh.b.inbound, billing, "POST", "/orders?by=billing", body=b"{}")
    assert refused.status == 403, refused
    assert refused.header("x-easymesh-error") == "unauthorized"
    assert mesh.app.seenTarget("/orders?by=billing") == []

    # GET /orders matches no rule: the default allows both.
    for ctx, who in ((billing, "billing"), (web, "web")):
        reply = tlsRequest(mesh.b.inbound, ctx, "GET", f"/orders?get-by={who}")
        assert reply.status == 404, reply
        assert len(mesh.app.seenTarget(f"/orders?get-by={who}")) == 1


BYPASSES = [
    "/public/../admin/x",
    "/public/%2E%2E/admin/x",
    "/./admin/x",
    "/%61dmin/x",
    "//admin/x",
    "///admin",
    "/x/..//admin/x",
    "/admin/x/..",
    "/admin%2Fx",
    "/public/..%2Fadmin",
    "/%2Fadmin",
    "/admin%5Cx",
    "/ADMIN/x",
    "/Admin/x/",
    "/aDmIn",
    "/public/../ADMIN/",
    "/public#/../admin",
    "http://u@admin.example.org/admin/x",
    "http://admin.example.org,/admin/x",
]


@pytest.mark.parametrize("via", ["a", "direct"])
def test_protected_prefix_bypass_attempts(mesh: Mesh, via: str) -> None:
    """
    Spellings of a path under C{/admin} (dot-segments, escapes, doubled or
    escaped slashes) from web, through A or directly, are refused (403, or
    400 for what no reading can accept) and never reach the app.
    """
    ctx = mesh.pki.context(mesh.pki.web)
    for n, path in enumerate(BYPASSES):
        target = f"{path}?bypass={via}-{n}"
        if via == "a":
            reply = request(mesh.a.outbound, "GET", target)
        else:
            reply = tlsRequest(mesh.b.inbound, ctx, "GET", target)
        assert reply.status in (400, 403), (target, reply)
        assert reply.header("x-easymesh-error") in ("unauthorized", "bad_request"), reply
    with mesh.app.lock:
        reached = [r["target"] for r in mesh.app.requests if "bypass=" in r["target"]]
    assert reached == []
    # The same spellings from billing, allowed on /admin, do get through
    # where they are readable.
    billing = mesh.pki.context(mesh.pki.billing)
    target = f"/public/../admin/x?allowed={via}"
    reply = tlsRequest(mesh.b.inbound, billing, "GET", target)
    assert reply.status == 404, reply
    assert len(mesh.app.seenTarget(target)) == 1


def test_authorization_reloaded(mesh: Mesh) -> None:
    """
    The rules are part of the config file, and are reloaded with it
    (SIGHUP here): a deny default takes effect at once, and so does going
    back.
    """
    config = mesh.tmp / "orders.yaml"
    original = config.read_text(encoding="utf-8")
    assert "default: allow" in original

    def status(target: str) -> int:
        return request(mesh.a.outbound, "GET", target).status

    config.write_text(original.replace("default: allow", "default: deny"), encoding="utf-8")
    try:
        mesh.b.signal(signal.SIGHUP)
        waitUntil(lambda: status("/echo/after-reload") == 403, 10, "the deny default applied")
        mesh.b.waitForLog(
            lambda text: f"Denied inbound GET /echo/after-reload from {WEB}: "
            "no rule matches and the default is deny" in text
        )
    finally:
        config.write_text(original, encoding="utf-8")
        mesh.b.signal(signal.SIGHUP)
        waitUntil(lambda: status("/echo/restored") == 200, 10, "the allow default back")


# -- rotation ------------------------------------------------------------------


class Load:
    """
    Client threads sending requests through A until told to stop, at most
    C{limit} each and for at most C{seconds}; every outcome but a 200 is a
    failure.  One thread sends slow requests, so that some are in flight
    whenever B's certificate changes.
    """

    def __init__(self, port: int, threads: int = 3, limit: int = 2000, seconds: float = 60.0) -> None:
        self.port = port
        self.limit = limit
        self.deadline = time.monotonic() + seconds
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: List[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(f"t{i}", "/echo/rotation"), daemon=True)
            for i in range(threads)
        ]
        self.threads.append(
            threading.Thread(target=self._run, args=("slow", "/slow?d=0.3"), daemon=True)
        )

    def _run(self, name: str, path: str) -> None:
        sep = "&" if "?" in path else "?"
        with Session(self.port, timeout=10) as session:
            for n in range(self.limit):
                if self.stopping.is_set() or time.monotonic() > self.deadline:
                    return
                try:
                    reply = session.get(f"{path}{sep}c={name}-{n}")
                except Exception as e:
                    with self.lock:
                        self.failures.append(f"{name}-{n}: {e!r}")
                    continue
                with self.lock:
                    if reply.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{name}-{n}: {reply!r}")

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def count(self) -> int:
        with self.lock:
            return self.ok + len(self.failures)

    def waitFor(self, more: int, timeout: float = 20.0) -> None:
        target = self.count() + more
        waitUntil(lambda: self.count() >= target, timeout, f"{more} more requests")

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(15)
        assert not any(t.is_alive() for t in self.threads)


def test_rotation_under_load(mesh: Mesh) -> None:
    """
    B's certificate and key are replaced (each renamed into place) with a
    new certificate for the same identity while clients send requests
    through A: B serves the new one to new connections within a few
    seconds, a SIGHUP re-reads the files once more, and not one request
    fails.
    """
    pki, b = mesh.pki, mesh.b
    probe = pki.context(pki.web)
    before = servedSerial(b.inbound, probe)
    # What is on disk now: the PKI is shared by the meshes of both hops,
    # and an earlier run of this test rotated it already.
    onDisk = x509.load_pem_x509_certificate(Path(pki.orders.certPath).read_bytes()).serial_number
    assert before == onDisk
    reloads = b.log().count("TLS credentials reloaded")

    load = Load(mesh.a.outbound).start()
    try:
        load.waitFor(40)

        staging = mesh.tmp / "staging"
        staging.mkdir(exist_ok=True)
        new = makeWorkload(pki.ca, ORDERS, staging, "orders-next")
        os.replace(new.keyPath, pki.orders.keyPath)
        os.replace(new.certPath, pki.orders.certPath)
        serial = new.cert.serial_number
        assert serial != before

        waitUntil(lambda: servedSerial(b.inbound, probe) == serial, 10, "B serves the new certificate")
        b.waitForLog(lambda text: f"serial {serial:x}" in text)
        load.waitFor(40)

        b.signal(signal.SIGHUP)
        b.waitForLog(lambda text: text.count("TLS credentials reloaded") >= reloads + 2)
        load.waitFor(40)
        assert servedSerial(b.inbound, probe) == serial
    finally:
        load.stop()
    assert load.failures == [], load.failures[:20]
    assert load.ok >= 120
    assert b.running and mesh.a.running
    log = b.log()
    assert "Traceback" not in log
    assert f"{ORDERS}, serial {serial:x}" in log


# -- stopping ------------------------------------------------------------------


def test_sigterm_with_idle_mtls_client(launch, pki: PKI, app) -> None:
    """
    SIGTERM with an idle keep-alive mTLS client stops cleanly: exit status
    0, and nothing in the log but the orderly stop.
    """
    b = launch(
        *pki.tlsFlags(pki.orders), "--inbound-tls", "mtls", "--node-id", "orders-2",
        upstream=app.url,
    )  # fmt: skip
    conn = http.client.HTTPSConnection(
        "127.0.0.1", b.inbound, timeout=10, context=pki.context(pki.web)
    )
    try:
        send(conn, "GET", "/echo/idle-then-sigterm")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        # The connection stays open, idle, and is not read from again.
        b.signal(signal.SIGTERM)
        assert b.wait(timeout=15) == 0, b.log()
    finally:
        conn.close()
    log = b.log()
    assert "Unhandled error" not in log, log


# -- examples/mtls/run.sh ------------------------------------------------------


EXAMPLE = REPO / "examples" / "mtls" / "run.sh"
EXAMPLE_PORTS = (18082, 18083, 16060, 28082, 28083, 26060)


def bindable(port: int) -> bool:
    """
    Whether a listener could bind 127.0.0.1:port now (as Twisted does,
    with C{SO_REUSEADDR}, so connections in TIME_WAIT do not count).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def groupAlive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def childrenOf(pid: int) -> List[int]:
    """
    The processes whose parent is C{pid} (from /proc).
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def test_example_script(tmp_path: Path) -> None:
    """
    C{examples/mtls/run.sh DIR} makes certificates in DIR, runs two
    sidecars meshed over mTLS in the foreground until 18082 answers with
    the app's response through mTLS (and 18083 refuses plaintext), and on
    SIGTERM stops every child and exits 0.
    """
    busy = [p for p in EXAMPLE_PORTS if not bindable(p)]
    if busy:
        pytest.skip(f"ports in use: {busy}")
    certs = tmp_path / "certs"
    output = tmp_path / "run.out"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    env.pop("EASYMESH_ARGS", None)
    env.pop("EASYMESH_CONFIG", None)
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            ["bash", str(EXAMPLE), str(certs)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(tmp_path),
            env=env,
            start_new_session=True,
        )

    def text() -> str:
        return output.read_text(encoding="utf-8", errors="replace")

    try:
        deadline = time.monotonic() + 60
        while "curl -i http://127.0.0.1:18082/" not in text():
            if proc.poll() is not None:
                raise AssertionError(f"run.sh exited with {proc.returncode}:\n{text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"run.sh not ready in 60s:\n{text()}")
            time.sleep(POLL)
        assert str(certs) in text()
        for name in ("ca.pem", "orders.pem", "orders-key.pem", "web.pem", "web-key.pem"):
            assert (certs / name).is_file(), name

        reply = request(18082, "GET", "/")
        assert reply.status == 200, reply
        assert reply.body == b"hello world\n"
        assert reply.all("Via") == ["1.1 orders.inbound", "1.1 web.outbound"]
        # The other way round, orders calls web over mTLS too.
        assert request(28082, "GET", "/").status == 200

        plain = attempt(18083, None, "/")
        assert b"HTTP/" not in plain.received, plain

        children = childrenOf(proc.pid)
        assert len(children) >= 2, children
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, text()
        waitUntil(lambda: not groupAlive(proc.pid), 5, "every child of run.sh gone")
        assert [c for c in children if os.path.exists(f"/proc/{c}")] == []
        assert all(bindable(p) for p in EXAMPLE_PORTS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if groupAlive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        print(f"===== run.sh =====\n{text()}")
        for log in sorted(certs.glob("*.log")):
            print(f"===== {log} =====\n{log.read_text(errors='replace')}")
