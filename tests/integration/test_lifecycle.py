"""
The process around the proxy: start-up errors, the .tac file, SIGTERM with
a request in flight, the access log, third-party filter plugins.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest


from tests.integration.conftest import HOPS, http1HopOnly
from tests.integration.harness import (
    TACFILE,
    accepts,
    portIsFree,
    request,
    sidecarArgs,
    twistdCommand,
)

#: How twistd ends after an orderly stop on SIGTERM: Twisted's twistd
#: re-raises the signal once the reactor has stopped, so the status is
#: "killed by SIGTERM" rather than 0 (see test_sigterm_exit_status_is_zero).
GRACEFUL = (0,)

#: Why a test of a sidecar that never serves runs once.
NEVER_SERVES = "the sidecar refuses to start: there is no hop"


@pytest.fixture(scope="module", params=HOPS)
def hop(request: pytest.FixtureRequest) -> str:
    """
    The sidecars these tests start forward from outbound to inbound over
    HTTP/1.1, then over HTTP/2.
    """
    return request.param


def _slowRequestThenSigterm(launch, app, *extra):
    """
    Start a sidecar with --drain 5, send GET /slow?d=1 (answered after a
    second) through both hops, and SIGTERM the sidecar once the app has the
    request.

    @return: The sidecar, the client thread and the dict its outcome lands
        in (C{"reply"} or C{"error"}).
    """
    sidecar = launch("--drain", "5", *extra, upstream=app.url)
    result = {}

    def client() -> None:
        try:
            result["reply"] = request(sidecar.outbound, "GET", "/slow?d=1", timeout=10)
        except Exception as e:  # reported by the assertions of the tests
            result["error"] = e

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    app.waitFor("/slow", timeout=5)
    sidecar.signal(signal.SIGTERM)
    return sidecar, thread, result


def test_sigterm_refuses_new_connections_while_draining(launch, app):
    sidecar, thread, result = _slowRequestThenSigterm(launch, app)
    deadline = time.monotonic() + 3
    refused = {"outbound": False, "inbound": False}
    while not all(refused.values()) and time.monotonic() < deadline:
        for name in refused:
            if not refused[name] and not accepts(sidecar.ports[name], timeout=0.2):
                refused[name] = True
        if not all(refused.values()):
            time.sleep(0.02)
    assert refused == {"outbound": True, "inbound": True}
    # Refused while the slow request was still being served.
    assert thread.is_alive()
    thread.join(10)
    assert not thread.is_alive()
    assert sidecar.wait(timeout=10) in GRACEFUL, sidecar.log()
    log = sidecar.log()
    assert "Draining" in log, log
    assert "Server Shut Down" in log, log
    assert "cut off" not in log, log
    assert "Traceback" not in log, log


def test_sigterm_completes_in_flight_request(launch, app):
    """
    A request in flight when SIGTERM comes is answered whole; over an
    HTTP/2 hop the inbound listener's graceful GOAWAY lets it finish.
    """
    sidecar, thread, result = _slowRequestThenSigterm(launch, app)
    thread.join(10)
    assert not thread.is_alive()
    assert sidecar.wait(timeout=10) in GRACEFUL, sidecar.log()
    assert "error" not in result, result.get("error")
    reply = result["reply"]
    assert reply.status == 200, reply
    assert reply.body == b"slow done\n"


def test_sigterm_exit_status_is_zero(launch):
    sidecar = launch()
    assert request(sidecar.outbound, "GET", "/", timeout=5).status == 200
    sidecar.signal(signal.SIGTERM)
    code = sidecar.wait(timeout=10)
    assert "Server Shut Down" in sidecar.log()
    assert code == 0, code


@http1HopOnly(NEVER_SERVES)
def test_broken_config_file_fails_fast_and_clearly(launch, tmp_path):
    ports = launch.ports()
    config = tmp_path / "broken-mesh.yaml"
    config.write_text(
        f'outbound: "{ports["outbound"]}"\n'
        f'inbound: "tcp:{ports["inbound"]}:interface=127.0.0.1"\n'
        "no-such-knob: 5\n"
        f'demo: "{ports["demo"]}"\n',
        encoding="utf-8",
    )
    argv = twistdCommand() + ["-n", "--pidfile=", "easymesh", "--config", str(config)]
    started = time.monotonic()
    sidecar = launch(argv=argv, ports=ports, ready=False)
    code = sidecar.wait(timeout=15)
    elapsed = time.monotonic() - started
    output = sidecar.log()
    assert code != 0, output
    assert elapsed < 10, elapsed
    assert f"{config}:3" in output or "broken-mesh.yaml:3" in output, output
    assert "no-such-knob" in output, output
    assert "Traceback" not in output, output
    assert "starting on" not in output, output
    for port in ports.values():
        assert portIsFree(port), port


@http1HopOnly(NEVER_SERVES)
def test_bad_flag_names_the_flag(launch):
    ports = launch.ports()
    argv = (
        twistdCommand()
        + ["-n", "--pidfile=", "easymesh"]
        + sidecarArgs(ports, ["--pool-size", "0"])
    )
    sidecar = launch(argv=argv, ports=ports, ready=False)
    code = sidecar.wait(timeout=15)
    output = sidecar.log()
    assert code != 0, output
    assert "--pool-size" in output, output
    assert "Traceback" not in output, output
    for port in ports.values():
        assert portIsFree(port), port


def test_tac_file_serves_the_same(launch):
    ports = launch.ports()
    args = " ".join(sidecarArgs(ports))
    argv = twistdCommand() + ["-n", "--pidfile=", "-y", str(TACFILE)]
    sidecar = launch(argv=argv, ports=ports, env={"EASYMESH_ARGS": args})
    reply = request(sidecar.outbound, "GET", "/anything?x=1", timeout=5)
    assert reply.status == 200, reply
    assert reply.body == b"hello world\n"
    via = ", ".join(reply.all("via"))
    assert "meshtest.outbound" in via and "meshtest.inbound" in via


def _accessLines(text):
    """
    The JSON access log entries in twistd's log: each line is twistd's
    prefix ("<time> [<namespace>#info] ") and then one JSON object.
    """
    entries = []
    for line in text.splitlines():
        start = line.find("] {")
        if start < 0:
            continue
        try:
            entry = json.loads(line[start + 2 :])
        except ValueError:
            continue
        if isinstance(entry, dict) and "listener" in entry:
            entries.append(entry)
    return entries


def test_json_access_log_one_line_per_request_per_listener(launch, app, hop):
    sidecar = launch("--access-log", "json", upstream=app.url)
    one = request(
        sidecar.outbound,
        "GET",
        "/echo/log-one",
        headers=[("Authorization", "secret"), ("Cookie", "c=secret")],
        timeout=5,
    )
    assert one.status == 200
    two = request(sidecar.outbound, "POST", "/echo/log-two?q=1", body=b"abc", timeout=5)
    assert two.status == 200
    sidecar.waitForLog(lambda text: len(_accessLines(text)) >= 4)
    assert sidecar.stop() in GRACEFUL
    text = sidecar.log()
    entries = _accessLines(text)
    assert len(entries) == 4, entries
    for path, method in (("/echo/log-one", "GET"), ("/echo/log-two?q=1", "POST")):
        mine = [e for e in entries if e["path"] == path]
        assert sorted(e["listener"] for e in mine) == ["inbound", "outbound"], entries
        for e in mine:
            assert e["method"] == method
            assert e["status"] == 200
        # Each side of the hop says what it spoke.
        spoken = "HTTP/2" if hop == "http2" else "HTTP/1.1"
        byListener = {e["listener"]: e for e in mine}
        assert byListener["outbound"]["upstream_protocol"] == spoken, entries
        assert byListener["inbound"]["protocol"] == spoken, entries
    assert "secret" not in text


def test_third_party_filter_plugin(launch, app, thirdparty):
    pythonpath = os.pathsep.join(
        p for p in (str(thirdparty), os.environ.get("PYTHONPATH", "")) if p
    )
    sidecar = launch(
        "--inbound-filter",
        "addheader:x-team=payments",
        upstream=app.url,
        env={"PYTHONPATH": pythonpath},
    )
    reply = request(sidecar.outbound, "GET", "/echo/team", timeout=5)
    assert reply.status == 200, reply
    assert reply.header("x-acme") == "seen"
    seen = json.loads(reply.body)
    assert [v for n, v in seen["headers"] if n.lower() == "x-team"] == ["payments"]
