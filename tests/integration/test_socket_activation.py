"""
systemd socket activation: the listeners adopt sockets passed by systemd
(here Debian's C{systemd-socket-activate}), named by C{systemd:} endpoints.
"""

from __future__ import annotations

import shutil

import pytest

from .conftest import HOPS
from .harness import freePorts, request, twistdCommand

ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")
@pytest.mark.parametrize("hop", HOPS)
def test_systemdEndpoints(launch, hop: str) -> None:
    """
    With sockets passed by name, the sidecar serves the demo path through
    them: the first connection starts it, and the request is answered.
    """
    outbound, inbound, demo = freePorts(3)
    argv = [
        ACTIVATE,
        "-l", f"127.0.0.1:{outbound}",
        "-l", f"127.0.0.1:{inbound}",
        "--fdname=outbound:inbound",
    ] + twistdCommand() + [
        "-n", "--pidfile=", "easymesh",
        "--outbound", "systemd:domain=INET:name=outbound",
        "--inbound", "systemd:domain=INET:name=inbound",
        "--peer", f"http://127.0.0.1:{inbound}",
        "--peer-protocol", hop,
        "--demo", f"tcp:{demo}:interface=127.0.0.1",
        "--admin", "none",
    ]
    ports = {"outbound": outbound, "inbound": inbound, "demo": demo}
    sidecar = launch(argv=argv, ports=ports, ready=False)
    # systemd-socket-activate listens at once and starts the sidecar on the
    # first connection.
    sidecar.waitReady([outbound, inbound])
    reply = request(outbound, "GET", "/activated?x=1", timeout=20)
    assert reply.status == 200, sidecar.log()
    assert reply.body == b"hello world\n"
