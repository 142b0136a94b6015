"""
Tests for L{easymesh.reload}: live reload of routes and clusters when the
config file changes or on SIGHUP.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import textwrap
from typing import Any, Callable, List

import attrs
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from easymesh.config.addresses import UpstreamURL
from easymesh.config.files import readConfigFile
from easymesh.config.mesh import ClusterConfig
from easymesh.config.model import SidecarConfig
from easymesh.config.settings import buildConfig
from easymesh.reload import ConfigReloader, installSighup
from easymesh.runtime import MeshRuntime
from tests.meshfakes import Upstreams, logged

GOOD = """\
clusters:
  api:
    endpoints: [http://api1:8080]
routes:
  outbound:
    - match: {prefix: /api}
      cluster: api
    - cluster: peer
"""


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "easymesh.yaml")
        self.clock = Clock()
        self.upstreams = Upstreams()
        self.runtime = MeshRuntime(self.clock, random.Random(1), makeUpstream=self.upstreams.make)
        self.addCleanup(self.runtime.stop)
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.write(GOOD)
        self.running = self.load()
        self.runtime.apply(self.running.mesh())
        self.runtime.start()
        self.reloader = ConfigReloader(self.path, self.load, self.runtime, self.running, self.clock)
        self.told: List[bool] = []
        self.reloader.observers.append(self.told.append)
        self.reloader.start()
        self.addCleanup(self.reloader.stop)

    def load(self) -> SidecarConfig:
        return buildConfig(readConfigFile(self.path), self.path)

    def write(self, text: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))

    def endpoints(self, cluster: str) -> List[str]:
        return [e.key for e in self.runtime.clusters[cluster].endpoints]

    def settle(self) -> None:
        """
        Two checks: a change is seen, then applied once it has stayed.
        """
        self.clock.pump([1.0, 1.0])

    def test_fileBeingWrittenNotApplied(self) -> None:
        """
        A file that changes at every check (being written in place) is not
        read until it stays the same from one check to the next.
        """
        text = GOOD.replace("api1:8080", "api2:8080")
        for size in (len(text) // 3, 2 * len(text) // 3):
            self.write(text[:size])
            self.clock.advance(1.0)
        self.assertEqual((self.reloader.reloads, self.reloader.failures), (0, 0))
        self.write(text)
        self.clock.advance(1.0)
        self.assertEqual((self.reloader.reloads, self.reloader.failures), (0, 0))
        self.clock.advance(1.0)
        self.assertEqual((self.reloader.reloads, self.reloader.failures), (1, 0))
        self.assertEqual(self.endpoints("api"), ["api2:8080"])

    def reloadLogs(self, text: str) -> List[dict]:
        return logged(self.events, "easymesh.reload", text)

    def test_unchangedFileNotReloaded(self) -> None:
        routers = dict(self.runtime.routers)
        self.clock.pump([1.0] * 5)
        self.write(GOOD)
        self.clock.pump([1.0] * 2)
        self.assertEqual((self.reloader.reloads, self.reloader.failures), (0, 0))
        self.assertEqual(self.runtime.routers, routers)
        self.assertEqual(self.told, [])

    def test_changeDetectedByPolling(self) -> None:
        api = self.runtime.clusters["api"]
        peer = self.runtime.clusters["peer"]
        self.write(GOOD.replace("api1:8080", "api2:8080"))
        # Seen at the first check; applied at the next, once it has stayed
        # the same.
        self.clock.advance(1.0)
        self.assertEqual(self.reloader.reloads, 0)
        self.clock.advance(0.9)
        self.assertEqual(self.reloader.reloads, 0)
        self.clock.advance(0.1)
        self.assertEqual(self.reloader.reloads, 1)
        self.assertEqual(self.endpoints("api"), ["api2:8080"])
        self.assertIsNot(self.runtime.clusters["api"], api)
        self.assertIs(self.runtime.clusters["peer"], peer)
        self.assertEqual(self.upstreams["api1:8080"].closed, 1)
        self.assertEqual(self.told, [True])
        (info,) = self.reloadLogs("Config reloaded from")
        self.assertEqual(info["path"], self.path)
        # Polling goes on: nothing more until the next change.
        self.clock.pump([1.0] * 3)
        self.assertEqual(self.reloader.reloads, 1)

    def test_invalidFileRefused(self) -> None:
        routers = dict(self.runtime.routers)
        mesh = self.runtime.mesh
        self.write(GOOD.replace("    endpoints: [http://api1:8080]\n", "    endpoints: [http://api1:8080]\n    timeout: soon\n"))
        self.settle()
        self.assertEqual((self.reloader.reloads, self.reloader.failures), (0, 1))
        self.assertEqual(self.runtime.routers, routers)
        self.assertIs(self.runtime.mesh, mesh)
        self.assertEqual(self.endpoints("api"), ["api1:8080"])
        self.assertEqual(self.told, [False])
        (error,) = self.reloadLogs("Config reload refused")
        self.assertEqual(error["log_level"].name, "error")
        self.assertEqual(
            error["error"],
            f"{self.path}:4: clusters.api.timeout: must be a duration such as 250ms, 2s or 1m, not 'soon'",
        )
        # The same invalid file is not tried again at every poll.
        self.clock.pump([1.0] * 3)
        self.assertEqual(self.reloader.failures, 1)
        # Fixed: applied.
        self.write(GOOD.replace("api1", "api3"))
        self.settle()
        self.assertEqual((self.reloader.reloads, self.reloader.failures), (1, 1))
        self.assertEqual(self.endpoints("api"), ["api3:8080"])
        self.assertEqual(self.told, [False, True])

    def test_invalidYAMLRefused(self) -> None:
        self.write("clusters: [\n")
        self.settle()
        self.assertEqual(self.reloader.failures, 1)
        (error,) = self.reloadLogs("Config reload refused")
        self.assertTrue(error["error"].startswith(f"{self.path}:2: not valid YAML"), error["error"])

    def test_unknownClusterRefused(self) -> None:
        self.write(GOOD.replace("cluster: api", "cluster: apy"))
        self.settle()
        self.assertEqual(self.reloader.failures, 1)
        (error,) = self.reloadLogs("Config reload refused")
        self.assertEqual(error["error"], f"{self.path}:7: routes.outbound.0.cluster: no cluster named 'apy'")

    def test_ruleRefusedWithLine(self) -> None:
        """
        A file breaking a rule of the model is refused naming its line.
        """
        mesh = self.runtime.mesh
        self.write(GOOD.replace("cluster: api", "cluster: api\n      host_rewrite: 'a b'"))
        self.settle()
        self.assertEqual(self.reloader.failures, 1)
        self.assertIs(self.runtime.mesh, mesh)
        (error,) = self.reloadLogs("Config reload refused")
        self.assertEqual(
            error["error"], f"{self.path}:8: routes.outbound.0.host_rewrite: must be a host name, not 'a b'"
        )

    def test_invalidModelRefused(self) -> None:
        """
        A config whose routes and clusters the runtime refuses is logged
        with every problem, and the running config stays.
        """
        mesh = self.runtime.mesh
        evil = ClusterConfig(
            "api", endpoints=(UpstreamURL.parse("http://api9:8080"),), lbPolicy="ring_hash"
        )
        self.reloader._load = lambda: attrs.evolve(
            self.running, meshFile={**self.running.meshFile, "clusters": {"api": evil}}
        )
        self.assertFalse(self.reloader.reload())
        self.assertEqual((self.reloader.reloads, self.reloader.failures), (0, 1))
        self.assertIs(self.runtime.mesh, mesh)
        self.assertEqual(self.endpoints("api"), ["api1:8080"])
        (error,) = self.reloadLogs("Config reload refused")
        self.assertEqual(
            error["error"], "configuration refused: clusters.api: lb_policy ring_hash needs hash_on"
        )

    def test_settingsNeedingRestartLogged(self) -> None:
        self.write(GOOD + "drain: 9\nmax-headers: 50\n")
        self.settle()
        self.assertEqual(self.reloader.reloads, 1)
        (warning,) = self.reloadLogs("take effect only after a restart")
        self.assertEqual(warning["settings"], "drain, max-headers")
        self.assertEqual(self.reloadLogs("Config reloaded from"), [])

    def test_flagClusterSettingsAreReloaded(self) -> None:
        peer = self.runtime.clusters["peer"]
        self.write(GOOD + "timeout: 3\npeer: http://10.1.1.1:9000\n")
        self.settle()
        self.assertEqual(self.reloadLogs("restart"), [])
        self.assertEqual(self.endpoints("peer"), ["10.1.1.1:9000"])
        self.assertEqual(self.runtime.clusters["peer"].config.timeout, 3)
        self.assertIsNot(self.runtime.clusters["peer"], peer)

    def test_reloadNow(self) -> None:
        """
        L{ConfigReloader.reload}, as SIGHUP calls it, reads the file at once;
        the next poll does not read it again.
        """
        self.write(GOOD.replace("api1", "api4"))
        self.assertTrue(self.reloader.reload())
        self.assertEqual(self.endpoints("api"), ["api4:8080"])
        self.clock.pump([1.0] * 3)
        self.assertEqual(self.reloader.reloads, 1)
        # An unchanged file reloaded on request is applied again, keeping
        # every cluster.
        clusters = dict(self.runtime.clusters)
        self.assertTrue(self.reloader.reload())
        self.assertEqual(self.runtime.clusters, clusters)

    def test_deletedFile(self) -> None:
        os.remove(self.path)
        self.clock.pump([1.0] * 3)
        self.assertEqual((self.reloader.reloads, self.reloader.failures), (0, 0))
        self.assertFalse(self.reloader.reload())
        self.assertEqual(self.reloader.failures, 1)
        (error,) = self.reloadLogs("Config reload refused")
        self.assertIn("cannot read the file", error["error"])
        self.write(GOOD.replace("api1", "api5"))
        self.settle()
        self.assertEqual(self.endpoints("api"), ["api5:8080"])

    def test_unexpectedFailureKeepsPolling(self) -> None:
        make = self.upstreams.make

        def broken(url: UpstreamURL, *args: Any) -> Any:
            if url.host == "boom":
                raise RuntimeError("cannot build")
            return make(url, *args)

        self.runtime._makeUpstream = broken
        routers = dict(self.runtime.routers)
        self.write(GOOD.replace("api1", "boom"))
        self.settle()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual((self.reloader.reloads, self.reloader.failures), (0, 1))
        self.assertEqual(self.runtime.routers, routers)
        self.assertEqual(self.told, [False])
        self.write(GOOD.replace("api1", "api6"))
        self.settle()
        self.assertEqual(self.endpoints("api"), ["api6:8080"])

    def test_stop(self) -> None:
        self.reloader.stop()
        self.assertEqual(
            [c for c in self.clock.getDelayedCalls() if "check" in repr(c)], []
        )
        self.write(GOOD.replace("api1", "api7"))
        self.clock.pump([1.0] * 3)
        self.assertEqual(self.reloader.reloads, 0)


class FakeReactor:
    def __init__(self) -> None:
        self.calls: List[Callable[[], Any]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.append(f)


class SighupTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not hasattr(signal, "SIGHUP"):
            raise self.skipTest("no SIGHUP here")
        original = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, original)

    def test_sighupCallsTheHandlerInTheReactor(self) -> None:
        def handler() -> None:
            pass

        before = signal.getsignal(signal.SIGHUP)
        reactor = FakeReactor()
        restore = installSighup(handler, reactor)
        os.kill(os.getpid(), signal.SIGHUP)
        # Python runs signal handlers between bytecodes of the main thread;
        # give it a few.
        for _ in range(1000):
            if reactor.calls:
                break
        self.assertEqual(reactor.calls, [handler])
        restore()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)

    def test_restoreWithoutAPythonHandler(self) -> None:
        installed: List[Any] = []

        def fakeSignal(signum: int, handler: Any) -> Any:
            installed.append(handler)
            return None

        self.patch(signal, "signal", fakeSignal)
        restore = installSighup(lambda: None, FakeReactor())
        restore()
        self.assertEqual(installed[-1], signal.SIG_DFL)
