"""
The README's quick starts, run as written: every shell block of "Install",
"Try it on one machine" and "Two machines", in a fresh virtualenv made by
the README's own first command from a copy of this checkout.

Only what two sidecars on one test machine cannot share is changed: the
default ports become free ones (a command that relies on a default port
gets that listener's flag with the free port, bound to the same address
as the default), host B's address is 127.0.0.1, and host B runs from a
directory of its own, as it would on its own machine.  Each C{curl} check
is compared with the output the README shows.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from tests.integration.harness import freePorts

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

#: The default ports of a sidecar, and of the app the two-machine quick
#: start runs on host B, by the listener flag that sets each.
DEFAULT_PORTS = {8082: "--outbound", 8083: "--inbound", 6060: "--demo", 9901: "--admin", 8000: None}
#: The address each listener binds by default (every address: None).
DEFAULT_INTERFACES = {"--outbound": "127.0.0.1", "--inbound": None, "--demo": "127.0.0.1", "--admin": "127.0.0.1"}

#: How long the first command (a venv and a pip install) may take.
INSTALL_SECONDS = 900
#: How long a sidecar of an installed venv may take to be ready.
START_SECONDS = 60


def sections(text: str) -> Dict[str, str]:
    """
    The README's level-2 sections, by heading.
    """
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def shellBlocks(section: str) -> List[Tuple[str, Optional[str]]]:
    """
    Each C{sh} block of a section, with the C{text} block that follows it
    at once (its expected output), if any.
    """
    blocks = []
    for match in re.finditer(r"^```sh\n(.*?)^```\n(\s*```text\n(.*?)^```$)?", section, re.M | re.S):
        blocks.append((match.group(1), match.group(3)))
    return blocks


def withPorts(script: str, ports: Dict[int, int]) -> str:
    """
    C{script} with each default port replaced by the host's free one; a
    C{twistd -n easymesh} that relies on a default port gets the flag for
    it, bound as the default would be.
    """
    lines = []
    for line in script.splitlines():
        missing = []
        if re.search(r"twistd -n\b.*\beasymesh\b", line):
            for port, flag in DEFAULT_PORTS.items():
                if flag is not None and flag + " " not in line:
                    interface = DEFAULT_INTERFACES[flag]
                    where = f":interface={interface}" if interface else ""
                    missing.append(f"{flag} tcp:{ports[port]}{where}")
        for port, free in ports.items():
            line = re.sub(rf"(?<![\d.]){port}\b", str(free), line)
        lines.append(" ".join([line] + missing))
    return "\n".join(lines) + "\n"


def cleanEnvironment() -> Dict[str, str]:
    """
    The environment of a new terminal: no virtualenv active, none of this
    test run's on the path.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    ours = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != ours)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


class Terminal:
    """
    A long-running block (a sidecar in the foreground) in its own process
    group, stopped as Ctrl-C would.
    """

    def __init__(self, script: str, cwd: Path, log: Path) -> None:
        self.log = log
        self.output = open(log, "wb")
        self.process = subprocess.Popen(
            ["bash", "-ec", script],
            cwd=cwd,
            env=cleanEnvironment(),
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        # The background app of a block may outlive the shell.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.output.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def waitReady(terminal: Terminal, adminPort: int, seconds: float) -> None:
    """
    Wait until the sidecar's admin listener answers C{/ready} with 200.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert terminal.process.poll() is None, f"exited:\n{terminal.text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{adminPort}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready after {seconds}s:\n{terminal.text()[-3000:]}")


def waitListening(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {seconds}s")


def runCheck(script: str, cwd: Path) -> str:
    result = subprocess.run(
        ["bash", "-ec", script],
        cwd=cwd,
        env=cleanEnvironment(),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode("utf-8", errors="replace").replace("\r\n", "\n")


#: Header values that differ from run to run, or with the versions
#: installed, or with the app's directory.
VARYING = {"date", "server", "content-length"}


def assertShown(actual: str, expected: str, hostName: str) -> None:
    """
    C{curl -i}'s output is what the README shows: the status line, every
    header shown (the value too, but for those in L{VARYING}), and the
    body's first lines (up to a C{...}).
    """
    expected = expected.replace("HOST.", hostName + ".")
    shownHead, _, shownBody = expected.partition("\n\n")
    head, _, body = actual.partition("\n\n")
    shownLines, lines = shownHead.splitlines(), head.splitlines()
    assert lines[0] == shownLines[0]
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    for line in shownLines[1:]:
        name, value = line.split(": ", 1)
        values = [v for n, v in headers if n.lower() == name.lower()]
        assert values, f"no {name} in:\n{head}"
        if name.lower() not in VARYING:
            assert value in values, f"{line!r} not in:\n{head}"
    vias = [v for n, v in headers if n.lower() == "via"]
    assert vias == [line.split(": ", 1)[1] for line in shownLines if line.startswith("Via: ")]
    bodyLines = shownBody.rstrip("\n").split("\n")
    if bodyLines[-1] == "...":
        bodyLines = bodyLines[:-1]
        assert body.split("\n")[: len(bodyLines)] == bodyLines
    else:
        assert body.rstrip("\n") == shownBody.rstrip("\n")


def boundAddress(port: int) -> Optional[str]:
    """
    The IPv4 address a listening socket on C{port} is bound to, from
    /proc/net/tcp (so no traffic leaves loopback to find out).
    """
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, hexPort = fields[1].split(":")
        if fields[3] == "0A" and int(hexPort, 16) == port:
            return socket.inet_ntoa(bytes.fromhex(address)[::-1])
    return None


def copyCheckout(target: Path) -> None:
    """
    This checkout's source, as a clean clone would have it.
    """
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "_trial_temp*",
        ".hypothesis", "artifacts", "dropin.cache", "twistd.pid", "twistd.log",
    )
    shutil.copytree(ROOT, target, ignore=ignore)


@pytest.fixture
def terminals() -> Iterator[List[Terminal]]:
    started: List[Terminal] = []
    try:
        yield started
    finally:
        for terminal in started:
            terminal.stop()
            print(f"===== {terminal.log} =====\n{terminal.text()[-3000:]}")


def test_quickStarts(tmp_path: Path, terminals: List[Terminal]) -> None:
    readme = sections(README.read_text(encoding="utf-8"))
    hostName = socket.gethostname().split(".")[0]
    checkout = tmp_path / "easymesh"
    copyCheckout(checkout)

    # Install: the first command installs and runs; the second is the
    # test command, which CI runs as it is.
    [(run, _), (testCommand, _)] = shellBlocks(readme["Install"])
    assert testCommand in (ROOT / ".ci" / "run").read_text()
    one = dict(zip(DEFAULT_PORTS, freePorts(len(DEFAULT_PORTS))))
    terminals.append(Terminal(withPorts(run, one), checkout, tmp_path / "run.log"))
    waitReady(terminals[-1], one[9901], INSTALL_SECONDS)
    assert boundAddress(one[8083]) == "0.0.0.0"

    # Try it on one machine: the check; then the sidecar again with its
    # inbound listener on loopback, and the same check.
    [(check, shown), (loopback, _)] = shellBlocks(readme["Try it on one machine"])
    assert shown is not None
    assertShown(runCheck(withPorts(check, one), checkout), shown, hostName)
    terminals[-1].stop()
    terminals.append(Terminal(withPorts(loopback, one), checkout, tmp_path / "loopback.log"))
    waitReady(terminals[-1], one[9901], START_SECONDS)
    assert boundAddress(one[8083]) == "127.0.0.1"
    assertShown(runCheck(withPorts(check, one), checkout), shown, hostName)
    terminals[-1].stop()

    # Two machines: B in a directory of its own, with the same venv.
    [(hostB, _), (hostA, _), (call, callShown)] = shellBlocks(readme["Two machines"])
    assert callShown is not None
    b = dict(zip(DEFAULT_PORTS, freePorts(len(DEFAULT_PORTS))))
    a = dict(zip(DEFAULT_PORTS, freePorts(len(DEFAULT_PORTS))))
    directoryB = tmp_path / "host-b"
    directoryB.mkdir()
    (directoryB / ".venv").symlink_to(checkout / ".venv")
    terminals.append(Terminal(withPorts(hostB, b), directoryB, tmp_path / "host-b.log"))
    waitReady(terminals[-1], b[9901], START_SECONDS)
    waitListening(b[8000])
    assert boundAddress(b[8083]) == "0.0.0.0"

    scriptA, count = re.subn(r"^B=\S+$", "B=127.0.0.1", hostA, flags=re.M)
    assert count == 1
    scriptA = scriptA.replace("$B:8083", f"$B:{b[8083]}")
    terminals.append(Terminal(withPorts(scriptA, a), checkout, tmp_path / "host-a.log"))
    waitReady(terminals[-1], a[9901], START_SECONDS)
    assert boundAddress(a[8083]) == "127.0.0.1"
    assertShown(runCheck(withPorts(call, a), checkout), callShown, hostName)


def test_withPorts() -> None:
    """
    Ports are replaced as whole numbers, and the flags a command leaves
    to their defaults are added, bound as the defaults are.
    """
    ports = {8082: 1, 8083: 2, 6060: 3, 9901: 4, 8000: 5}
    assert withPorts("curl -i http://127.0.0.1:8082/x?y=18082", ports) == (
        "curl -i http://127.0.0.1:1/x?y=18082\n"
    )
    assert withPorts(".venv/bin/twistd -n easymesh --inbound tcp:8083:interface=127.0.0.1", ports) == (
        ".venv/bin/twistd -n easymesh --inbound tcp:2:interface=127.0.0.1"
        " --outbound tcp:1:interface=127.0.0.1 --demo tcp:3:interface=127.0.0.1"
        " --admin tcp:4:interface=127.0.0.1\n"
    )
    assert withPorts("python3 -m http.server 8000 --bind 127.0.0.1 &", ports) == (
        "python3 -m http.server 5 --bind 127.0.0.1 &\n"
    )
