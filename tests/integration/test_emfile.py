"""
Out of file descriptors: the sidecar keeps running, sheds what it cannot
accept, says so in its log once per burst, and serves again once
descriptors free up.
"""

from __future__ import annotations

import shutil
import socket
import time
from typing import List

import pytest

from .conftest import HOPS
from .harness import POLL, freePorts, request, sidecarArgs, twistdCommand

PRLIMIT = shutil.which("prlimit")
LIMIT = 64


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.parametrize("hop", HOPS)
def test_outOfDescriptors(launch, hop: str) -> None:
    ports = dict(zip(("outbound", "inbound", "demo"), freePorts(3)))
    argv = [PRLIMIT, f"--nofile={LIMIT}:{LIMIT}"] + twistdCommand() + [
        "-n", "--pidfile=", "easymesh"
    ] + sidecarArgs(ports, ["--peer-protocol", hop])
    sidecar = launch(argv=argv, ports=ports)
    held: List[socket.socket] = []
    try:
        # Far more connections than the sidecar has descriptors for.
        for _ in range(3 * LIMIT):
            try:
                held.append(socket.create_connection(("127.0.0.1", ports["outbound"]), timeout=2))
            except OSError:
                break
        deadline = time.monotonic() + 10
        while "EMFILE" not in sidecar.log():
            assert time.monotonic() < deadline, sidecar.log()
            assert sidecar.running, sidecar.log()
            time.sleep(POLL)
    finally:
        for sock in held:
            sock.close()
    # Descriptors free again: the sidecar serves.
    deadline = time.monotonic() + 10
    while True:
        try:
            reply = request(ports["outbound"], "GET", "/after-emfile", timeout=3)
            break
        except OSError:
            assert time.monotonic() < deadline, sidecar.log()
            time.sleep(POLL)
    assert reply.status == 200, sidecar.log()
    assert reply.body == b"hello world\n"
    assert sidecar.running
    # One line per listener for the burst (outbound, inbound and the demo
    # app may each run out), then (once it is over) how many were shed.
    deadline = time.monotonic() + 20
    while "were shed" not in sidecar.log():
        assert time.monotonic() < deadline, sidecar.log()
        time.sleep(POLL)
    log = sidecar.log()
    # Twisted itself logs, with a traceback, when it cannot take back its
    # spare descriptor because a connection took the slot first (a race
    # under exhaustion); nothing else may.
    rereserve = log.count("Could not re-reserve EMFILE")
    assert log.count("EMFILE") - rereserve <= 3, log
    assert log.count("Traceback") == rereserve, log
