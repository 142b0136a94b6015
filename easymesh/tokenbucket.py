# -*- test-case-name: tests.test_tokenbucket -*-
"""
A token bucket whose L{TokenBucket.acquire} returns a L{Deferred}: tokens
are handed out first come, first served; a caller that would wait too long
is refused at once with the wait it would have needed.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Optional

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime


#: Tolerance for float rounding when a refill lands exactly on a token.
_EPSILON = 1e-9


class RateLimited(Exception):
    """
    No token within the allowed wait.

    @ivar wait: Seconds until a token would have been available.
    """

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limited: next token in {wait:.3f}s")
        self.wait = wait


class TokenBucket:
    """
    C{rate} tokens a second, at most C{burst} saved up.

    @param maxWait: Longest a caller may queue for a token (0: never queue).
    @param maxQueue: Most callers queued at once.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: IReactorTime,
        maxWait: float = 0.0,
        maxQueue: int = 1024,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.maxWait = maxWait
        self.maxQueue = maxQueue
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock.seconds()
        self._waiters: Deque[Deferred[None]] = deque()
        self._timer: Optional[IDelayedCall] = None
        self._dueAt = 0.0

    def _refill(self) -> float:
        now = self._clock.seconds()
        if now > self._updated:
            self._tokens = min(
                float(self.burst), self._tokens + (now - self._updated) * self.rate
            )
            self._updated = now
        return self._tokens

    @property
    def tokens(self) -> float:
        """
        Tokens available now.
        """
        return self._refill()

    @property
    def waiting(self) -> int:
        """
        Callers queued for a token.
        """
        return len(self._waiters)

    def take(self) -> Optional[float]:
        """
        Take one token now if one is free and nobody is queued.

        @return: L{None} if taken, else the seconds until one would be free.
        """
        tokens = self._refill()
        if not self._waiters and tokens >= 1.0 - _EPSILON:
            self._tokens = max(0.0, tokens - 1.0)
            return None
        return (len(self._waiters) + 1.0 - tokens) / self.rate

    def acquire(self) -> Deferred[None]:
        """
        Take one token.

        @return: A L{Deferred} that fires with L{None} once the token is
            taken (at once, if one is free and nobody is queued), or fails
            with L{RateLimited} if it would take longer than C{maxWait} or
            the queue is full.  Cancelling it gives its place back.
        """
        tokens = self._refill()
        if not self._waiters and tokens >= 1.0 - _EPSILON:
            self._tokens = max(0.0, tokens - 1.0)
            return succeed(None)
        # This caller needs every queued caller's token plus its own.
        wait = (len(self._waiters) + 1.0 - tokens) / self.rate
        if wait > self.maxWait or len(self._waiters) >= self.maxQueue:
            return fail(RateLimited(wait))
        waiter: Deferred[None] = Deferred(self._cancel)
        self._waiters.append(waiter)
        self._schedule()
        return waiter

    def _cancel(self, waiter: Deferred[None]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass
        waiter.errback(CancelledError())
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._waiters:
            delay = max(0.0, (1.0 - self._refill()) / self.rate)
            self._dueAt = self._clock.seconds() + delay
            self._timer = self._clock.callLater(delay, self._release)

    def _release(self) -> None:
        self._timer = None
        tokens = self._refill()
        if self._waiters and self._clock.seconds() >= self._dueAt:
            # The timer ran when the head's token was due: float rounding
            # (clock values near 1.7e9 carry about 2e-7 s) must not leave
            # it just short, re-arming the timer at the same instant.
            tokens = max(tokens, 1.0)
        ready = []
        while self._waiters and tokens >= 1.0 - _EPSILON:
            tokens -= 1.0
            ready.append(self._waiters.popleft())
        self._tokens = max(0.0, tokens)
        self._schedule()
        for waiter in ready:
            waiter.callback(None)

    def close(self) -> None:
        """
        Refuse every queued caller and stop the timer.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            waiter.errback(RateLimited(0.0))
