"""
A bug on the request path, reached through a real sidecar started from a
C{.tac} file.  Routes built in code whose weighted clusters all weigh 0 are
refused by the model (as the YAML reader refuses them), with the reason;
so the bug is planted instead: the router's choice of cluster raises.
Both edges (plaintext outbound, mTLS inbound) answer the sidecar's own
C{500 internal_error}, never Twisted's HTML page, and the error log says
so once per listener, naming the exception.  The router fails before
anything is forwarded, so no request crosses the hop between the
listeners and nothing here runs over an HTTP/2 hop.
"""

from __future__ import annotations

import shlex
import ssl
from pathlib import Path
from typing import Iterator

import pytest

from easymesh.tls.certs import makeCA, makeWorkload
from tests.integration.app import TestApp
from tests.integration.conftest import Launcher
from tests.integration.harness import Reply, Session, Sidecar, request, sidecarArgs, twistdCommand

WEB = "spiffe://example.org/ns/default/sa/web"
ORDERS = "spiffe://example.org/ns/default/sa/orders"

TAC = """\
import os
import shlex

import attrs
from twisted.application.service import Application

from easymesh.config.mesh import Route
from easymesh.config.validate import InvalidConfig
from easymesh.routing.router import Router
from easymesh.tap import Options, makeService

options = Options()
options.parseOptions(shlex.split(os.environ["EASYMESH_ARGS"]))
sidecar = makeService(options)
runtime = sidecar.runtime
try:
    runtime.apply(
        attrs.evolve(
            runtime.mesh,
            routes={
                "outbound": (Route("outbound-zero", weightedClusters=(("peer", 0),)),),
                "inbound": (Route("inbound-zero", weightedClusters=(("local", 0),)),),
            },
        )
    )
except InvalidConfig as e:
    print("model refused:", e)


def _clusterName(self, route):
    return next(iter(()))


Router._clusterName = _clusterName
application = Application("easymesh")
sidecar.setServiceParent(application)
"""


class Broken:
    """
    One sidecar whose router raises on both listeners; its inbound one
    speaks mTLS.
    """

    def __init__(self, tmp: Path) -> None:
        self.app = TestApp()
        self.launcher = Launcher(tmp)
        ca = makeCA(tmp)
        orders = makeWorkload(ca, ORDERS, tmp, "orders")
        web = makeWorkload(ca, WEB, tmp, "web")
        tac = tmp / "zero-weights.tac"
        tac.write_text(TAC, encoding="utf-8")
        ports = self.launcher.ports()
        args = sidecarArgs(
            ports,
            [
                "--upstream", self.app.url,
                "--tls-cert", orders.certPath,
                "--tls-key", orders.keyPath,
                "--tls-ca", ca.certPath,
                "--inbound-tls", "mtls",
                "--access-log", "text",
            ],
        )  # fmt: skip
        self.sidecar: Sidecar = self.launcher(
            argv=twistdCommand() + ["-n", "--pidfile=", "-y", str(tac)],
            env={"EASYMESH_ARGS": shlex.join(args)},
            ports=ports,
            upstream=self.app.url,
        )
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.load_verify_locations(ca.certPath)
        self.context.load_cert_chain(web.certPath, web.keyPath)

    def close(self) -> None:
        try:
            self.launcher.closeAll()
        finally:
            self.app.close()


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broken]:
    shared = Broken(tmp_path_factory.mktemp("internal-error"))
    try:
        yield shared
    finally:
        shared.close()


def assertInternalError(reply: Reply) -> None:
    assert reply.status == 500, reply
    assert reply.header("x-easymesh-error") == "internal_error", reply
    assert reply.header("content-type") == "text/plain; charset=utf-8", reply
    assert reply.body == b"internal proxy error\n"


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
def test_bugAnsweredAndLoggedOnce(broken: Broken, listener: str) -> None:
    """
    The client gets the sidecar's 500 with its cause; the error log has one
    line for it, naming the exception; no traceback or Twisted page.
    """
    if listener == "outbound":
        reply = request(broken.sidecar.outbound, "GET", "/zero?outbound")
    else:
        reply = request(broken.sidecar.inbound, "GET", "/zero?inbound", context=broken.context)
    assertInternalError(reply)
    text = broken.sidecar.waitForLog(
        lambda t: f"{listener} GET /zero?{listener} HTTP/1.1 500 " in t and "error=internal_error" in t
    )
    [line] = [
        l for l in text.splitlines() if "[easymesh.errors#warn]" in l and f"{listener} GET /zero" in l
    ]
    assert "500 internal_error" in line
    assert "unexpected StopIteration" in line
    assert "Processing Failed" not in text
    assert "Traceback" not in text
    assert broken.app.requests == []


def test_invalidModelRefusedWithReasons(broken: Broken) -> None:
    """
    A model built in code gets the checks a file gets: all-zero weights
    are refused, with the key path and reason of each, before anything
    runs.
    """
    log = broken.sidecar.log()
    for listener in ("outbound", "inbound"):
        assert (
            f"routes.{listener}.0.weighted_clusters: must give some cluster a weight above 0"
        ) in log


def test_connectionStaysUsable(broken: Broken) -> None:
    """
    The 500 is a complete response: the keep-alive connection carries the
    next request.
    """
    with Session(broken.sidecar.outbound) as session:
        for _ in range(3):
            assertInternalError(session.get("/zero/again"))
    assert broken.sidecar.running
