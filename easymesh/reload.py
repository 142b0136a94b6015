# -*- test-case-name: tests.test_reload -*-
"""
Live reload of routes and clusters: on SIGHUP, and when the config file
changes, the file is read and checked completely; a valid file replaces
the running routes and clusters at once, an invalid one is logged (file,
line, reason) and the running config stays.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from easymesh.config.model import ConfigError, SidecarConfig
from easymesh.runtime import MeshRuntime

#: Seconds between checks of the config file for changes.
CHECK_EVERY = 1.0


def _fingerprint(path: str) -> Optional[Tuple[Any, ...]]:
    try:
        info = os.stat(path)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).digest()
    except OSError:
        return None
    return (info.st_ino, info.st_size, digest)


class ConfigReloader:
    """
    Watch a config file and apply its routes and clusters when it changes.

    @param load: Reads the file (with the command line's flags over it)
        into a L{SidecarConfig}; raises L{ConfigError} if it is refused.
    @param observers: Told of each attempt: called with C{True} after a
        reload applied, C{False} after a refused one.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        load: Callable[[], SidecarConfig],
        runtime: MeshRuntime,
        running: SidecarConfig,
        clock: Any,
        checkEvery: float = CHECK_EVERY,
    ) -> None:
        self.path = path
        self._load = load
        self._runtime = runtime
        self.running = running
        #: The config whose routes and clusters are in force.
        self.current = running
        self._clock = clock
        self._checkEvery = checkEvery
        self._loop: Optional[LoopingCall] = None
        self._seen = _fingerprint(path)
        #: A change seen at the last check, applied if it is still there at
        #: the next.
        self._changing: Optional[Tuple[Any, ...]] = None
        self.observers: List[Callable[[bool], None]] = []
        self.reloads = 0
        self.failures = 0

    def start(self) -> None:
        self._loop = LoopingCall(self.check)
        self._loop.clock = self._clock
        self._loop.start(self._checkEvery, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self) -> None:
        """
        Reload if the file has changed since it was last read, and has then
        stayed the same for one more check: a file being written in place
        is not read half-written.
        """
        seen = _fingerprint(self.path)
        if seen is None or seen == self._seen:
            self._changing = None
        elif seen == self._changing:
            self._changing = None
            self.reload()
        else:
            self._changing = seen

    def reload(self) -> bool:
        """
        Read the file and apply it if it is valid.

        @return: Whether the new config was applied.
        """
        self._seen = _fingerprint(self.path)
        try:
            config = self._load()
            self._runtime.apply(config.mesh())
        except ConfigError as e:
            self.log.error(
                "Config reload refused, the running config stays: {error}", error=str(e)
            )
            return self._refused()
        except Exception:
            # Whatever goes wrong, the poll and SIGHUP must keep working.
            self.log.failure("Config reload failed, the running config stays")
            return self._refused()
        restart = _needsRestart(self.running, config)
        if restart:
            self.log.warn(
                "Config reloaded; changes to {settings} take effect only after a restart",
                settings=", ".join(restart),
            )
        else:
            self.log.info("Config reloaded from {path}", path=self.path)
        self.current = config
        self.reloads += 1
        self._tell(True)
        return True

    def _refused(self) -> bool:
        self.failures += 1
        self._tell(False)
        return False

    def _tell(self, applied: bool) -> None:
        for observer in self.observers:
            observer(applied)


def _needsRestart(old: SidecarConfig, new: SidecarConfig) -> List[str]:
    """
    The settings (other than routes and clusters, and the flag-made default
    clusters) that differ between two configs.
    """
    import attrs

    reloadable = {
        "meshFile",
        "peer",
        "upstream",
        "timeout",
        "connect_timeout",
        "pool_size",
        "pool_idle",
        "stream_idle_timeout",
        "tunnel_idle_timeout",
    }
    differ = []
    for field in attrs.fields(SidecarConfig):
        if field.name in reloadable:
            continue
        if getattr(old, field.name) != getattr(new, field.name):
            differ.append(field.name.replace("_", "-"))
    return differ


def installSighup(handler: Callable[[], Any], reactor: Any) -> Callable[[], None]:
    """
    Call C{handler} in the reactor on SIGHUP.

    @return: A function that restores the previous SIGHUP handling.
    """
    import signal

    if not hasattr(signal, "SIGHUP"):
        return lambda: None

    def onSignal(signum: int, frame: Any) -> None:
        reactor.callFromThread(handler)

    previous = signal.signal(signal.SIGHUP, onSignal)
    if previous is None:
        # Installed other than from Python: the default is the best guess.
        previous = signal.SIG_DFL

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore

