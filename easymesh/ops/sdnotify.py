# -*- test-case-name: tests.test_sdnotify -*-
"""
systemd notification (C{sd_notify(3)}) without libsystemd: datagrams of
C{KEY=VALUE} lines sent over an C{AF_UNIX} socket to C{$NOTIFY_SOCKET}.

With no C{NOTIFY_SOCKET} (not started by systemd, or C{Type=} other than
C{notify}) every method is a no-op.  The environment is only read, never
changed: whether child processes should inherit it is the caller's choice.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, List, Mapping, Optional, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

_log = Logger()


def _address(value: str) -> Optional[str]:
    """
    The socket address named by C{$NOTIFY_SOCKET}: a path, or C{@name} for
    Linux's abstract namespace; L{None} for anything else.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def _watchdogInterval(environ: Mapping[str, str]) -> Optional[float]:
    """
    Seconds between keep-alive pings (half of C{$WATCHDOG_USEC}), or L{None}
    if the watchdog is off or meant for another process (C{$WATCHDOG_PID}).
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def _monotonicUsec() -> int:
    """
    C{CLOCK_MONOTONIC} in microseconds, as C{MONOTONIC_USEC} wants it.
    """
    clockId = getattr(time, "CLOCK_MONOTONIC", None)
    if clockId is not None:
        return time.clock_gettime_ns(clockId) // 1000
    return time.monotonic_ns() // 1000


def _oneLine(text: str) -> str:
    """
    C{text} without line breaks, which would end the field early.
    """
    return " ".join(text.splitlines())


class Notifier:
    """
    Tell systemd about the service's state, and keep its watchdog fed.

    Sends never block and never raise: the first failure is logged, later
    ones are dropped silently.

    @param environ: Where C{NOTIFY_SOCKET}, C{WATCHDOG_USEC} and
        C{WATCHDOG_PID} are read from, once, here.
    @param clock: Times the watchdog pings; the global reactor if L{None}.
    """

    def __init__(
        self,
        environ: Mapping[str, str] = os.environ,
        clock: Optional[IReactorTime] = None,
    ) -> None:
        self._clock = clock
        raw = environ.get("NOTIFY_SOCKET", "")
        self._address = _address(raw) if hasattr(socket, "AF_UNIX") else None
        if raw and self._address is None:
            _log.warn("Unsupported NOTIFY_SOCKET {address!r}: not notifying", address=raw)
        self._interval = _watchdogInterval(environ) if self._address else None
        self._socket: Optional[socket.socket] = None
        self._failed = False
        self._watchdog: Optional[LoopingCall] = None

    @property
    def enabled(self) -> bool:
        """
        Whether there is a notification socket to send to.
        """
        return self._address is not None

    @property
    def watchdogInterval(self) -> Optional[float]:
        """
        Seconds between watchdog pings, or L{None} if systemd set no
        watchdog for this process.
        """
        return self._interval

    def notify(self, fields: Sequence[str]) -> bool:
        """
        Send C{KEY=VALUE} C{fields} in one datagram.

        @return: Whether it was sent.
        """
        if self._address is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message, self._address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                _log.warn(
                    "Cannot notify systemd at {address!r}: {error}; "
                    "further failures are not logged",
                    address=self._address.replace("\0", "@"),
                    error=e,
                )
            return False
        return True

    def ready(self, status: str = "Ready") -> bool:
        """
        Start-up (or a reload) is complete.
        """
        return self.notify(["READY=1", f"STATUS={_oneLine(status)}"])

    def stopping(self, status: Optional[str] = None) -> bool:
        """
        The service is shutting down.
        """
        return self.notify(["STOPPING=1"] + self._status(status))

    def reloading(self, status: Optional[str] = None) -> bool:
        """
        The service is reloading its configuration; send L{ready} when done.

        Carries C{MONOTONIC_USEC}, which C{Type=notify-reload} (systemd 253
        and later) requires with C{RELOADING=1}.
        """
        fields = ["RELOADING=1", f"MONOTONIC_USEC={_monotonicUsec()}"]
        return self.notify(fields + self._status(status))

    def status(self, text: str) -> bool:
        """
        A one-line status shown by C{systemctl status}.
        """
        return self.notify([f"STATUS={_oneLine(text)}"])

    @staticmethod
    def _status(text: Optional[str]) -> List[str]:
        return [] if text is None else [f"STATUS={_oneLine(text)}"]

    def _ping(self) -> None:
        self.notify(["WATCHDOG=1"])

    def startWatchdog(self) -> None:
        """
        Ping the watchdog now and then every L{watchdogInterval} seconds, if
        systemd set one for this process.  Pings stop when the reactor
        stalls: that is the point.
        """
        if self._interval is None or self._watchdog is not None:
            return
        clock: Any = self._clock
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        watchdog = LoopingCall(self._ping)
        watchdog.clock = clock
        self._watchdog = watchdog
        watchdog.start(self._interval, now=True).addErrback(
            lambda f: _log.failure("Watchdog pings stopped", f)
        )

    def stopWatchdog(self) -> None:
        """
        Stop pinging the watchdog.
        """
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.running:
            watchdog.stop()

    def close(self) -> None:
        """
        Stop the watchdog and close the socket; later notifications open it
        again.
        """
        self.stopWatchdog()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
