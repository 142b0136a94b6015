"""
Tests for L{easymesh.ops.sdnotify.Notifier}, against a real C{AF_UNIX}
datagram socket, with watchdog time from a L{Clock}.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, Dict, List

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from easymesh.ops.sdnotify import Notifier


def _drain(receiver: socket.socket, limit: int = 100) -> List[Dict[str, str]]:
    """
    Every datagram waiting on C{receiver} (at most C{limit}), each as a
    dict of its fields.
    """
    messages = []
    for _ in range(limit):
        try:
            data = receiver.recv(65536)
        except BlockingIOError:
            break
        fields = [line.split("=", 1) for line in data.decode("utf-8").split("\n")]
        messages.append({key: value for key, value in fields})
    return messages


class _SocketTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        if not hasattr(socket, "AF_UNIX"):
            raise SkipTest("no AF_UNIX sockets")
        # A short path: AF_UNIX paths are limited to about 100 bytes.
        directory = tempfile.mkdtemp(prefix="sdn")
        self.addCleanup(shutil.rmtree, directory, True)
        self.path = os.path.join(directory, "notify")
        self.receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.receiver.close)
        self.receiver.bind(self.path)
        self.receiver.setblocking(False)
        self.clock = Clock()
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def notifier(self, **env: str) -> Notifier:
        environ = {"NOTIFY_SOCKET": self.path}
        environ.update(env)
        notifier = Notifier(environ, self.clock)
        self.addCleanup(notifier.close)
        return notifier

    def received(self) -> List[Dict[str, str]]:
        return _drain(self.receiver)


class MessageTests(_SocketTestCase):
    def test_ready(self) -> None:
        notifier = self.notifier()
        self.assertTrue(notifier.enabled)
        self.assertTrue(notifier.ready("Serving on 8082 and 8083"))
        self.assertEqual(
            self.received(), [{"READY": "1", "STATUS": "Serving on 8082 and 8083"}]
        )

    def test_stopping(self) -> None:
        notifier = self.notifier()
        notifier.stopping()
        notifier.stopping("Draining")
        self.assertEqual(
            self.received(), [{"STOPPING": "1"}, {"STOPPING": "1", "STATUS": "Draining"}]
        )

    def test_status(self) -> None:
        """
        A status is one line: line breaks would end the field early.
        """
        notifier = self.notifier()
        notifier.status("3 requests in flight\nstill draining")
        self.assertEqual(
            self.received(), [{"STATUS": "3 requests in flight still draining"}]
        )

    def test_reloading(self) -> None:
        """
        C{RELOADING=1} carries C{MONOTONIC_USEC}, the monotonic clock in
        microseconds.
        """
        notifier = self.notifier()
        before = time.monotonic_ns() // 1000
        notifier.reloading()
        after = time.monotonic_ns() // 1000
        [message] = self.received()
        self.assertEqual(set(message), {"RELOADING", "MONOTONIC_USEC"})
        self.assertEqual(message["RELOADING"], "1")
        self.assertTrue(before <= int(message["MONOTONIC_USEC"]) <= after)

    def test_utf8(self) -> None:
        notifier = self.notifier()
        notifier.status("caf\u00e9 \u2713")
        self.assertEqual(self.received(), [{"STATUS": "caf\u00e9 \u2713"}])

    def test_unencodable(self) -> None:
        """
        Text that is not valid Unicode (a lone surrogate, as from an
        undecodable file name) is replaced, not raised.
        """
        notifier = self.notifier()
        self.assertTrue(notifier.status("bad \udcff name"))
        self.assertEqual(self.received(), [{"STATUS": "bad ? name"}])

    def test_environmentUnchanged(self) -> None:
        """
        The environment is read, never changed.
        """
        environ = {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": "1000000"}
        notifier = Notifier(environ, self.clock)
        self.addCleanup(notifier.close)
        notifier.ready()
        notifier.startWatchdog()
        notifier.stopWatchdog()
        self.assertEqual(
            environ, {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": "1000000"}
        )

    def test_sendErrorLoggedOnce(self) -> None:
        """
        A failed send returns C{False}, never raises, and is logged once.
        """
        self.receiver.close()
        os.unlink(self.path)
        notifier = self.notifier()
        for _ in range(3):
            self.assertFalse(notifier.ready())
            self.assertFalse(notifier.status("x"))
        warnings = [e for e in self.events if "Cannot notify" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["address"], self.path)

    def test_closeThenSend(self) -> None:
        """
        After L{Notifier.close}, a notification opens a new socket.
        """
        notifier = self.notifier()
        notifier.status("one")
        notifier.close()
        notifier.status("two")
        self.assertEqual(self.received(), [{"STATUS": "one"}, {"STATUS": "two"}])


class AbstractNamespaceTests(SynchronousTestCase):
    def test_abstractSocket(self) -> None:
        """
        C{@name} names a socket in Linux's abstract namespace.
        """
        if not sys.platform.startswith("linux"):
            raise SkipTest("abstract sockets are Linux only")
        name = f"easymesh-test-{os.getpid()}-{id(self)}"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind("\0" + name)
        receiver.setblocking(False)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name}, Clock())
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.ready())
        self.assertEqual(_drain(receiver), [{"READY": "1", "STATUS": "Ready"}])


class WatchdogTests(_SocketTestCase):
    def test_pingsEveryHalfPeriod(self) -> None:
        """
        With C{WATCHDOG_USEC} set, C{WATCHDOG=1} goes out at once and then
        every half of that period, until stopped.
        """
        notifier = self.notifier(WATCHDOG_USEC="30000000")
        self.assertEqual(notifier.watchdogInterval, 15.0)
        notifier.startWatchdog()
        self.assertEqual(self.received(), [{"WATCHDOG": "1"}])
        self.clock.advance(14.9)
        self.assertEqual(self.received(), [])
        self.clock.advance(0.1)
        self.assertEqual(self.received(), [{"WATCHDOG": "1"}])
        self.clock.pump([15.0] * 4)
        self.assertEqual(len(self.received()), 4)
        notifier.stopWatchdog()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertEqual(self.received(), [])

    def test_startTwice(self) -> None:
        """
        Starting a running watchdog changes nothing.
        """
        notifier = self.notifier(WATCHDOG_USEC="2000000")
        notifier.startWatchdog()
        notifier.startWatchdog()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.received()), 1)

    def test_ownPid(self) -> None:
        notifier = self.notifier(WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid()))
        self.assertEqual(notifier.watchdogInterval, 1.0)
        notifier.startWatchdog()
        self.assertEqual(len(self.received()), 1)

    def test_otherPid(self) -> None:
        """
        A watchdog meant for another process (C{WATCHDOG_PID}) is not fed.
        """
        for pid in [str(os.getpid() + 1), "nonsense"]:
            notifier = self.notifier(WATCHDOG_USEC="2000000", WATCHDOG_PID=pid)
            self.assertIsNone(notifier.watchdogInterval)
            notifier.startWatchdog()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.received(), [])

    def test_noWatchdog(self) -> None:
        for usec in ["", "0", "-5", "soon"]:
            notifier = self.notifier(WATCHDOG_USEC=usec)
            self.assertIsNone(notifier.watchdogInterval)
            notifier.startWatchdog()
            notifier.stopWatchdog()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.received(), [])

    def test_closeStops(self) -> None:
        notifier = self.notifier(WATCHDOG_USEC="2000000")
        notifier.startWatchdog()
        notifier.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DisabledTests(SynchronousTestCase):
    def test_noNotifySocket(self) -> None:
        """
        Without C{NOTIFY_SOCKET} every method is a no-op, even with a
        watchdog set.
        """
        clock = Clock()
        notifier = Notifier({"WATCHDOG_USEC": "2000000"}, clock)
        self.assertFalse(notifier.enabled)
        self.assertIsNone(notifier.watchdogInterval)
        self.assertFalse(notifier.ready())
        self.assertFalse(notifier.stopping())
        self.assertFalse(notifier.reloading())
        self.assertFalse(notifier.status("x"))
        notifier.startWatchdog()
        self.assertEqual(clock.getDelayedCalls(), [])
        notifier.stopWatchdog()
        notifier.close()
        self.assertIsNone(notifier._socket)

    def test_unsupportedAddress(self) -> None:
        """
        Addresses other than a path or C{@name} (a relative path, C{vsock:})
        turn notification off, with a warning.
        """
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for address in ["run/notify", "vsock:2:1234", "@"]:
            notifier = Notifier({"NOTIFY_SOCKET": address}, Clock())
            self.assertFalse(notifier.enabled)
            self.assertFalse(notifier.ready())
        warnings = [e for e in events if "Unsupported NOTIFY_SOCKET" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 3)
