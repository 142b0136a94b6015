# -*- test-case-name: tests.test_service -*-
"""
Count requests in flight, so that a stopping sidecar can wait for them.
"""

from __future__ import annotations

from typing import List

from twisted.internet.defer import Deferred, succeed


class InFlight:
    """
    A count of requests being served, and whether the sidecar is draining.
    """

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle: List[Deferred[None]] = []

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """
        @return: A L{Deferred} that fires when no request is in flight.
        """
        if self.count == 0:
            return succeed(None)
        d: Deferred[None] = Deferred(self._idle.remove)
        self._idle.append(d)
        return d
