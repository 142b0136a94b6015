"""
Tests for the mTLS options of C{twistd easymesh}: C{--tls-cert},
C{--tls-key}, C{--tls-ca}, C{--inbound-tls}, C{--inbound-allow} and
C{--peer-identity}, as flags and as config file keys; how they must go
together; certificate files checked before anything is bound; and what
they make of the mesh and the service tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest
import twisted
from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError

from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import ClusterConfig
from easymesh.config.model import SidecarConfig, TLSFiles, UpstreamTLS
from easymesh.listener import MutualTLSFactory, ProxySite
from easymesh.tap import Options, makeService
from easymesh.tls.certs import makeCA, makeWorkload
from easymesh.tls.contexts import ClientTLS, ServerTLS

REPO = Path(__file__).resolve().parents[1]

ORDERS = "spiffe://example.org/ns/default/sa/orders"
WEB = "spiffe://example.org/ns/default/sa/web"
BILLING = "spiffe://example.org/ns/default/sa/billing"


class Files:
    """
    A CA, this workload's certificate (orders) and another's, on disk.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = makeCA(directory)
        self.orders = makeWorkload(self.ca, ORDERS, directory, "orders")
        self.web = makeWorkload(self.ca, WEB, directory, "web")
        self.cert = self.orders.certPath
        self.key = self.orders.keyPath
        self.caPath = self.ca.certPath

    def flags(self) -> List[str]:
        return ["--tls-cert", self.cert, "--tls-key", self.key, "--tls-ca", self.caPath]

    @property
    def tlsFiles(self) -> TLSFiles:
        return TLSFiles(self.cert, self.key, self.caPath)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("mtls-config"))


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def configOf(*args: str) -> SidecarConfig:
    config = parse(*args).config
    assert isinstance(config, SidecarConfig)
    return config


def usageError(*args: str) -> str:
    with pytest.raises(UsageError) as info:
        parse(*args)
    return str(info.value)


def writeConfig(directory: Path, text: str) -> str:
    path = directory / "sidecar.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


# Parsing


def test_defaults() -> None:
    config = configOf()
    assert (config.tls_cert, config.tls_key, config.tls_ca) == (None, None, None)
    assert config.inbound_tls == "off"
    assert config.inbound_allow == ()
    assert config.peer_identity == ()
    assert config.tlsFiles is None


def test_flags(files: Files) -> None:
    config = configOf(
        *files.flags(),
        "--inbound-tls", "mtls",
        "--inbound-allow", WEB,
        "--inbound-allow", "spiffe://example.org/ns/prod/*",
        "--peer", "https://10.0.0.7:8443",
        "--peer-identity", ORDERS,
        "--peer-identity", "orders.example.org",
    )  # fmt: skip
    assert config.tls_cert == files.cert
    assert config.tls_key == files.key
    assert config.tls_ca == files.caPath
    assert config.tlsFiles == files.tlsFiles
    assert config.inbound_tls == "mtls"
    assert config.inbound_allow == (WEB, "spiffe://example.org/ns/prod/*")
    assert config.peer_identity == (ORDERS, "orders.example.org")
    assert config.peerURL == UpstreamURL("https", "10.0.0.7", 8443)


def test_files_without_mtls(files: Files) -> None:
    """
    The files alone are allowed: the inbound listener stays plaintext and
    an https:// peer gets this workload's certificate.
    """
    config = configOf(*files.flags(), "--peer", "https://10.0.0.7:8443")
    assert config.inbound_tls == "off"
    assert config.tlsFiles == files.tlsFiles


def test_config_file(files: Files, tmp_path: Path) -> None:
    path = writeConfig(
        tmp_path,
        f"""\
        tls-cert: {files.cert}
        tls-key: {files.key}
        tls-ca: {files.caPath}
        inbound-tls: mtls
        inbound-allow:
          - {WEB}
          - "spiffe://example.org/ns/prod/*"
        peer: https://orders.internal:8443
        peer-identity: [{ORDERS}]
        """,
    )
    config = configOf("--config", path)
    assert config.tlsFiles == files.tlsFiles
    assert config.inbound_tls == "mtls"
    assert config.inbound_allow == (WEB, "spiffe://example.org/ns/prod/*")
    assert config.peer_identity == (ORDERS,)


def test_flags_override_file(files: Files, tmp_path: Path) -> None:
    """
    A repeatable flag replaces the file's list; others keep the file's.
    """
    path = writeConfig(
        tmp_path,
        f"""\
        tls-cert: {files.cert}
        tls-key: {files.key}
        tls-ca: {files.caPath}
        inbound-tls: mtls
        inbound-allow: [{WEB}, {BILLING}]
        """,
    )
    config = configOf("-c", path, "--inbound-allow", ORDERS)
    assert config.inbound_allow == (ORDERS,)
    assert config.inbound_tls == "mtls"


@pytest.mark.parametrize(
    "flag, value, reason",
    [
        ("--inbound-tls", "tls", "must be one of off, mtls, not 'tls'"),
        ("--inbound-allow", "spiffe://example.org/ns/*/sa/web", "invalid identity pattern"),
        ("--inbound-allow", "", "must be an identity pattern, not ''"),
        ("--inbound-allow", "https://web.example.org", "not identities"),
        ("--peer-identity", "*.example.org", "wildcard DNS certificates match plain names"),
        ("--peer-identity", "10.0.0.7", "IP addresses are not identities"),
        ("--peer-identity", "spiffe://Example.org/x", "bad trust domain"),
    ],
)
def test_bad_values(flag: str, value: str, reason: str) -> None:
    message = usageError(flag, value)
    assert message.startswith(f"{flag}: "), message
    assert reason in message


def test_bad_pattern_in_file(tmp_path: Path) -> None:
    path = writeConfig(tmp_path, "inbound-tls: mtls\ninbound-allow:\n  - web\n  - 'a/*'\n")
    message = usageError("-c", path)
    assert message.startswith(f"{path}:2: key 'inbound-allow'"), message
    assert "invalid identity pattern 'a/*'" in message


# Options that must go together


@pytest.mark.parametrize(
    "given",
    [("cert",), ("key",), ("ca",), ("cert", "key"), ("cert", "ca"), ("key", "ca")],
)
def test_files_go_together(files: Files, given: tuple) -> None:
    paths = {"cert": files.cert, "key": files.key, "ca": files.caPath}
    args: List[str] = []
    for name in given:
        args += [f"--tls-{name}", paths[name]]
    message = usageError(*args)
    assert "tls-cert, tls-key and tls-ca go together" in message


def test_files_go_together_in_file(files: Files, tmp_path: Path) -> None:
    """
    In a config file the refusal names the file and the line.
    """
    path = writeConfig(tmp_path, f"node-id: a\ntls-cert: {files.cert}\n")
    message = usageError("-c", path)
    assert message.startswith(f"{path}:2: key 'tls-cert'"), message
    assert "go together" in message


def test_mtls_needs_files() -> None:
    message = usageError("--inbound-tls", "mtls")
    assert message.startswith("inbound-tls: ")
    assert "mtls needs tls-cert, tls-key and tls-ca" in message


def test_mtls_needs_files_in_file(tmp_path: Path) -> None:
    path = writeConfig(tmp_path, "drain: 1\ninbound-tls: mtls\n")
    message = usageError("-c", path)
    assert message.startswith(f"{path}:2: key 'inbound-tls': mtls needs"), message


@pytest.mark.parametrize("withFiles", [False, True])
def test_allow_needs_mtls(files: Files, withFiles: bool) -> None:
    args = (files.flags() if withFiles else []) + ["--inbound-allow", WEB]
    message = usageError(*args)
    assert message.startswith("inbound-allow: ")
    assert "needs inbound-tls: mtls" in message
    assert "needs inbound-tls: mtls" in usageError(
        *args, "--inbound-tls", "off"
    )


@pytest.mark.parametrize(
    "peer, withFiles",
    [
        (None, True),
        ("http://10.0.0.7:8083", True),
        ("https://10.0.0.7:8443", False),
    ],
)
def test_peer_identity_needs_https_peer_and_files(
    files: Files, peer: Any, withFiles: bool
) -> None:
    args = (files.flags() if withFiles else []) + ["--peer-identity", ORDERS]
    if peer is not None:
        args += ["--peer", peer]
    message = usageError(*args)
    assert message.startswith("peer-identity: ")
    assert "needs an https:// peer and tls-cert, tls-key, tls-ca" in message


# Certificate files checked at start


@pytest.mark.parametrize(
    "which, content, reason",
    [
        ("cert", None, ": No such file or directory"),
        ("key", None, ": No such file or directory"),
        ("ca", None, ": No such file or directory"),
        ("cert", "directory", ": Is a directory"),
        ("cert", "garbage", "no PEM certificate could be read"),
        ("key", "garbage", "no unencrypted PEM private key could be read"),
        ("ca", "garbage", "no PEM certificate could be read"),
        ("key", "other key", "the key does not match the certificate"),
        ("key", "certificate", "no unencrypted PEM private key"),
        ("cert", "key", "no PEM certificate could be read"),
    ],
)
def test_bad_files(files: Files, tmp_path: Path, which: str, content: Any, reason: str) -> None:
    """
    A file that cannot be read, does not parse, or a key that is not the
    certificate's, is refused when the options are parsed (before
    anything is built or bound), naming the file and the reason.
    """
    paths: Dict[str, str] = {"cert": files.cert, "key": files.key, "ca": files.caPath}
    bad = tmp_path / f"bad-{which}.pem"
    if content == "directory":
        bad.mkdir()
    elif content == "garbage":
        bad.write_text("-----BEGIN NONSENSE-----\nAAAA\n-----END NONSENSE-----\n")
    elif content == "other key":
        bad = Path(files.web.keyPath)
    elif content == "certificate":
        bad = Path(files.cert)
    elif content == "key":
        bad = Path(files.key)
    paths[which] = str(bad)
    message = usageError(
        "--tls-cert", paths["cert"], "--tls-key", paths["key"], "--tls-ca", paths["ca"],
        "--inbound-tls", "mtls",
    )  # fmt: skip
    assert message.startswith(f"tls {bad}: "), message
    assert reason in message
    assert message.count(str(bad)) == 1, message


def test_bad_files_without_mtls(files: Files, tmp_path: Path) -> None:
    """
    The files are checked whenever they are given, not only for mTLS.
    """
    missing = str(tmp_path / "missing-ca.pem")
    message = usageError("--tls-cert", files.cert, "--tls-key", files.key, "--tls-ca", missing)
    assert message.startswith(f"tls {missing}: No such file")


def test_unreadable_file(files: Files, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    key = tmp_path / "key.pem"
    key.write_bytes(Path(files.key).read_bytes())
    key.chmod(0)
    message = usageError("--tls-cert", files.cert, "--tls-key", str(key), "--tls-ca", files.caPath)
    assert message.startswith(f"tls {key}: Permission denied")


def test_refused_before_binding(files: Files, tmp_path: Path) -> None:
    """
    A real C{twistd easymesh} with a key that is not its certificate's
    exits with the reason and without listening on anything.
    """
    env = dict(os.environ)
    env.pop("EASYMESH_ARGS", None)
    env.pop("EASYMESH_CONFIG", None)
    script = Path(sys.executable).with_name("twistd")
    twistd = (
        [sys.executable, str(script)]
        if script.exists()
        else [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]
    )
    result = subprocess.run(
        twistd + [
            "-n", "--pidfile=", "easymesh",
            "--outbound", "tcp:0:interface=127.0.0.1",
            "--inbound", "tcp:0:interface=127.0.0.1",
            "--peer", "http://127.0.0.1:9",
            "--upstream", "http://127.0.0.1:9",
            "--tls-cert", files.cert,
            "--tls-key", files.web.keyPath,
            "--tls-ca", files.caPath,
            "--inbound-tls", "mtls",
        ],
        cwd=str(tmp_path),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    output = result.stdout + result.stderr
    if (twisted.version.major, twisted.version.minor) >= (26, 10):
        # Before 26.10, twistd exits 0 after printing a usage error.
        assert result.returncode != 0, output
    assert f"tls {files.web.keyPath}: the key does not match the certificate" in output
    assert "starting on" not in output


# What the options make


def test_mesh_peer_cluster(files: Files) -> None:
    """
    With the files, both default clusters originate TLS with them; the
    peer cluster expects the C{--peer-identity} patterns, the local one
    any identity (it is used only for an https:// upstream).
    """
    config = configOf(
        *files.flags(),
        "--peer", "https://10.0.0.7:8443",
        "--peer-identity", ORDERS,
        "--peer-identity", "spiffe://example.org/ns/prod/*",
    )  # fmt: skip
    mesh = config.mesh()
    peer = mesh.clusters["peer"]
    assert peer.endpoints == (UpstreamURL("https", "10.0.0.7", 8443),)
    assert peer.tls == UpstreamTLS(files.tlsFiles, (ORDERS, "spiffe://example.org/ns/prod/*"))
    assert mesh.clusters["local"].tls == UpstreamTLS(files.tlsFiles, ("*",))


def test_mesh_any_peer_identity(files: Files) -> None:
    config = configOf(*files.flags(), "--peer", "https://10.0.0.7:8443")
    assert config.mesh().clusters["peer"].tls == UpstreamTLS(files.tlsFiles, ("*",))


def test_mesh_without_files() -> None:
    mesh = configOf("--peer", "https://10.0.0.7:8443").mesh()
    assert mesh.clusters["peer"].tls is None
    assert mesh.clusters["local"].tls is None


def test_mesh_file_clusters(files: Files, tmp_path: Path) -> None:
    """
    Clusters from the config file get the workload's files too, expecting
    any identity from the CA.
    """
    path = writeConfig(
        tmp_path,
        f"""\
        tls-cert: {files.cert}
        tls-key: {files.key}
        tls-ca: {files.caPath}
        clusters:
          billing:
            endpoints: [https://10.0.0.9:8443]
        """,
    )
    cluster = configOf("-c", path).mesh().clusters["billing"]
    assert isinstance(cluster, ClusterConfig)
    assert cluster.tls == UpstreamTLS(files.tlsFiles, ("*",))


def test_mesh_file_cluster_identities(files: Files, tmp_path: Path) -> None:
    """
    A config file's cluster may name the identities its endpoints must
    present; they go with the workload's files, and win over
    C{--peer-identity} for a C{peer} cluster.
    """
    path = writeConfig(
        tmp_path,
        f"""\
        clusters:
          billing:
            endpoints: [https://10.0.0.9:8443]
            tls: {{identities: ["spiffe://example.org/ns/prod/sa/billing", "spiffe://example.org/ns/canary/*"]}}
          peer:
            endpoints: [https://10.0.0.7:8443]
            tls: {{identities: ["{ORDERS}"]}}
        """,
    )
    mesh = configOf("-c", path, *files.flags(), "--peer", "https://10.0.0.7:8443").mesh()
    assert mesh.clusters["billing"].tls == UpstreamTLS(
        files.tlsFiles,
        ("spiffe://example.org/ns/prod/sa/billing", "spiffe://example.org/ns/canary/*"),
    )
    assert mesh.clusters["peer"].tls == UpstreamTLS(files.tlsFiles, (ORDERS,))


@pytest.mark.parametrize(
    "tls, reason",
    [
        ("{identities: []}", "must list at least one identity pattern"),
        ('{identities: ["spiffe://"]}', "spiffe"),
        ("{sni: x}", "unknown key 'sni'"),
    ],
)
def test_mesh_file_cluster_identities_refused(tmp_path: Path, tls: str, reason: str) -> None:
    path = writeConfig(
        tmp_path,
        f"""\
        clusters:
          billing:
            endpoints: [https://10.0.0.9:8443]
            tls: {tls}
        """,
    )
    message = usageError("-c", path)
    assert f"{path}:4: clusters.billing.tls" in message, message
    assert reason in message, message


def test_mesh_file_cluster_identities_need_files(tmp_path: Path) -> None:
    path = writeConfig(
        tmp_path,
        """\
        clusters:
          billing:
            endpoints: [https://10.0.0.9:8443]
            tls: {identities: ["*"]}
        """,
    )
    message = usageError("-c", path)
    assert "cluster 'billing' names tls identities: it needs tls-cert, tls-key and tls-ca" in message


def test_mesh_file_peer_cluster_keeps_peer_identity(files: Files) -> None:
    """
    A config file's C{peer} cluster replaces the flags' one, but not the
    C{--peer-identity} patterns: its https:// endpoints must present one of
    them, not any identity from the CA.
    """
    directory = tempfile.mkdtemp()
    try:
        path = writeConfig(
            Path(directory),
            """            clusters:
              peer:
                endpoints: [https://10.0.0.7:8443, https://10.0.0.8:8443]
              billing:
                endpoints: [https://10.0.0.9:8443]
            """,
        )
        config = configOf(
            "-c", path, *files.flags(), "--peer", "https://10.0.0.7:8443", "--peer-identity", ORDERS
        )
    finally:
        shutil.rmtree(directory, True)
    mesh = config.mesh()
    assert len(mesh.clusters["peer"].endpoints) == 2
    assert mesh.clusters["peer"].tls == UpstreamTLS(files.tlsFiles, (ORDERS,))
    assert mesh.clusters["billing"].tls == UpstreamTLS(files.tlsFiles, ("*",))


def test_service_mtls_inbound(files: Files) -> None:
    """
    With C{--inbound-tls mtls} the inbound listener is TLS over the proxy
    site, with a server context requiring client certificates and the
    allowed identities; the outbound listener stays plaintext, and the
    peer's connections use a client context expecting the peer identity.
    """
    reactor = MemoryReactorClock()
    options = parse(
        *files.flags(),
        "--inbound-tls", "mtls",
        "--inbound-allow", WEB,
        "--inbound-allow", "spiffe://example.org/ns/prod/*",
        "--peer", "https://127.0.0.1:8443",
        "--peer-identity", ORDERS,
        "--upstream", "http://127.0.0.1:5000",
    )  # fmt: skip
    service = makeService(options, reactor=reactor)
    inbound = service.getServiceNamed("inbound").factory
    outbound = service.getServiceNamed("outbound").factory
    assert isinstance(inbound, MutualTLSFactory)
    assert isinstance(outbound, ProxySite)
    site = inbound.wrappedFactory
    assert isinstance(site, ProxySite)
    assert [p.text for p in site.allowedIdentities] == [WEB, "spiffe://example.org/ns/prod/*"]
    server = service.tls.server(files.tlsFiles)
    assert isinstance(server, ServerTLS)
    assert server.requireClientCert is True
    assert server.paths == (files.cert, files.key, files.caPath)
    client = service.tls.client(UpstreamTLS(files.tlsFiles, (ORDERS,)), "127.0.0.1")
    assert isinstance(client, ClientTLS)
    assert [p.text for p in client.expected] == [ORDERS]


def test_service_mtls_any_caller(files: Files) -> None:
    """
    Without C{--inbound-allow} any identity from the CA is accepted.
    """
    options = parse(*files.flags(), "--inbound-tls", "mtls", "--upstream", "http://127.0.0.1:5000")
    service = makeService(options, reactor=MemoryReactorClock())
    site = service.getServiceNamed("inbound").factory.wrappedFactory
    assert [p.kind for p in site.allowedIdentities] == ["any"]


def test_service_plaintext_inbound(files: Files) -> None:
    options = parse(*files.flags(), "--upstream", "http://127.0.0.1:5000")
    service = makeService(options, reactor=MemoryReactorClock())
    inbound = service.getServiceNamed("inbound").factory
    assert isinstance(inbound, ProxySite)
    assert inbound.allowedIdentities is None


def test_check_config_reads_certificates(files: Files, tmp_path: Path, capsys: Any) -> None:
    """
    C{python -m easymesh check-config} reads the certificate files as the
    sidecar would at start: a key that is not the certificate's is refused.
    """
    from easymesh.__main__ import main

    path = writeConfig(
        tmp_path,
        f"""\
        tls-cert: {files.cert}
        tls-key: {files.web.keyPath}
        tls-ca: {files.caPath}
        """,
    )
    assert main(["check-config", path]) == 1
    assert "the key does not match the certificate" in capsys.readouterr().err
