"""
Fixtures: the test app, and a factory of sidecar processes that are always
stopped at teardown, their logs printed (and so shown for a failing test).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import pytest

from tests.integration.app import TestApp
from tests.integration.harness import (
    Sidecar,
    freePorts,
    sidecarArgs,
    twistdCommand,
    THIRDPARTY,
)


@pytest.fixture
def app() -> Iterator[TestApp]:
    server = TestApp()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def staleApp() -> Iterator[TestApp]:
    server = TestApp(mode="stale")
    try:
        yield server
    finally:
        server.close()


#: What the hop between a sidecar's outbound and the inbound listener it
#: forwards to speaks (C{--peer-protocol}), with the ids the tests that
#: run over each carry.
HOPS = [pytest.param("http1", id="hop-http1"), pytest.param("http2", id="hop-http2")]


def http1HopOnly(reason: str) -> pytest.MarkDecorator:
    """
    Run a test of a module whose tests run over both hops over the
    HTTP/1.1 hop only, the other skipped for C{reason}.
    """
    return pytest.mark.parametrize(
        "hop",
        [HOPS[0], pytest.param("http2", id="hop-http2", marks=pytest.mark.skip(reason=reason))],
    )


class Launcher:
    """
    Start sidecars for one test; L{closeAll} stops every one.

    @ivar hop: The C{--peer-protocol} each sidecar is given unless its
        arguments name one (none is given for C{http1}, the default).
    """

    def __init__(self, tmp: Path, hop: str = "http1") -> None:
        self.tmp = tmp
        self.hop = hop
        self.started: List[Sidecar] = []

    def ports(self) -> Dict[str, int]:
        outbound, inbound, demo, admin = freePorts(4)
        return {"outbound": outbound, "inbound": inbound, "demo": demo, "admin": admin}

    def __call__(
        self,
        *extra: str,
        upstream: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        ready: bool = True,
        ports: Optional[Dict[str, int]] = None,
        argv: Optional[Sequence[str]] = None,
    ) -> Sidecar:
        """
        Start C{twistd -n --pidfile= easymesh ...} on fresh ports and wait
        until its listeners (and demo app, if it runs one) accept.

        @param argv: The whole command line instead of the easymesh one.
        """
        ports = ports or self.ports()
        args = list(extra)
        if upstream is not None:
            args = ["--upstream", upstream] + args
        if self.hop != "http1" and "--peer-protocol" not in args:
            args += ["--peer-protocol", self.hop]
        if argv is None:
            argv = twistdCommand() + ["-n", "--pidfile=", "easymesh"] + sidecarArgs(ports, args)
        n = len(self.started) + 1
        sidecar = Sidecar(argv, self.tmp / f"sidecar-{n}.log", self.tmp, ports, env)
        self.started.append(sidecar)
        sidecar.start()
        if ready:
            wanted = [ports["outbound"], ports["inbound"]]
            if upstream is None:
                wanted.append(ports["demo"])
            sidecar.waitReady(wanted)
        return sidecar

    def closeAll(self) -> None:
        for sidecar in self.started:
            code = sidecar.stop()
            text = sidecar.log()
            tail = "\n".join(text.splitlines()[-200:])
            print(f"===== {sidecar.logPath} (exit {code}) =====\n{tail}")


@pytest.fixture(scope="session")
def hop() -> str:
    """
    What the hop between the listeners of the sidecars L{launch} starts
    speaks: HTTP/1.1 unless a module overrides this fixture, as those whose
    tests run over both hops do with one whose C{params} are L{HOPS}.
    """
    return "http1"


@pytest.fixture
def launch(tmp_path: Path, hop: str) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path, hop)
    try:
        yield launcher
    finally:
        launcher.closeAll()


class Shared:
    """
    One sidecar in front of one test app (C{--upstream} the app, default
    settings otherwise), shared by the tests that need nothing else, so that
    the suite starts fewer processes.  It is started again if it has died.

    @ivar hop: What the hop between its listeners speaks
        (C{--peer-protocol}): the tests that use it run over each.
    """

    def __init__(self, tmp: Path, hop: str = "http1") -> None:
        self.app = TestApp()
        self.launcher = Launcher(tmp)
        self.hop = hop
        self._sidecar: Optional[Sidecar] = None

    @property
    def sidecar(self) -> Sidecar:
        if self._sidecar is None or not self._sidecar.running:
            self._sidecar = self.launcher("--peer-protocol", self.hop, upstream=self.app.url)
        return self._sidecar

    def close(self) -> None:
        try:
            self.launcher.closeAll()
        finally:
            self.app.close()


@pytest.fixture(scope="session", params=HOPS)
def _shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    shared = Shared(tmp_path_factory.mktemp("shared-mesh"), request.param)
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def mesh(_shared: Shared) -> Iterator[Shared]:
    """
    The shared sidecar and app; the sidecar's log lines written during the
    test are printed at teardown (and so shown if it fails).
    """
    sidecar = _shared.sidecar
    offset = len(sidecar.log())
    try:
        yield _shared
    finally:
        print(f"===== {sidecar.logPath} during this test =====\n{sidecar.log()[offset:]}")


@pytest.fixture
def thirdparty(tmp_path: Path) -> Path:
    """
    A copy of the third-party filter fixture package to put on PYTHONPATH
    (a copy, so that Twisted's plugin cache is written outside the tree).
    """
    if not (THIRDPARTY / "twisted" / "plugins").is_dir():
        pytest.fail(f"the third-party plugin fixture {THIRDPARTY} is missing")
    target = tmp_path / "thirdparty"
    shutil.copytree(
        THIRDPARTY,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "dropin.cache", "*.pyc"),
    )
    return target
