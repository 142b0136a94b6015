"""
Tests for L{easymesh.tokenbucket.TokenBucket}, with time from a L{Clock}.
"""

from __future__ import annotations

import itertools
from typing import Any, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from easymesh.tokenbucket import RateLimited, TokenBucket


class GuardedClock(Clock):
    """
    A L{Clock} that refuses to re-arm timers forever: a bucket that keeps
    scheduling calls that make no progress would hang L{Clock.advance}, so
    past C{limit} scheduled calls this raises instead.
    """

    def __init__(self, limit: int = 10_000) -> None:
        super().__init__()
        self.limit = limit
        self.scheduled = 0

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        self.scheduled += 1
        if self.scheduled > self.limit:
            raise RuntimeError(f"more than {self.limit} timers scheduled: stalled")
        return super().callLater(delay, f, *args, **kw)


def _track(ds: List[Deferred[None]]) -> List[int]:
    """
    Record the index of each of C{ds} as it fires successfully.
    """
    served: List[int] = []
    for index, d in enumerate(ds):
        d.addCallback(lambda _, i=index: served.append(i))
    return served


class RateAndBurstTests(SynchronousTestCase):
    def test_invalidParameters(self) -> None:
        """
        A rate must be positive and a burst at least one.
        """
        clock = Clock()
        for rate, burst in [(0, 1), (-1, 1), (1, 0), (1, -3)]:
            with self.assertRaises(ValueError):
                TokenBucket(rate, burst, clock)

    def test_burstAtOnce(self) -> None:
        """
        A full bucket hands out C{burst} tokens at once, and then refuses.
        """
        clock = Clock()
        bucket = TokenBucket(rate=2, burst=3, clock=clock)
        self.assertEqual(bucket.tokens, 3.0)
        for _ in range(3):
            self.assertIsNone(self.successResultOf(bucket.acquire()))
        self.assertEqual(bucket.tokens, 0.0)
        failure = self.failureResultOf(bucket.acquire(), RateLimited)
        self.assertAlmostEqual(failure.value.wait, 0.5)

    def test_onePerInterval(self) -> None:
        """
        After the burst, one token comes every C{1/rate} seconds.
        """
        clock = Clock()
        bucket = TokenBucket(rate=4, burst=2, clock=clock)
        self.successResultOf(bucket.acquire())
        self.successResultOf(bucket.acquire())
        for _ in range(5):
            clock.advance(0.125)
            self.failureResultOf(bucket.acquire(), RateLimited)
            clock.advance(0.125)
            self.successResultOf(bucket.acquire())
            self.failureResultOf(bucket.acquire(), RateLimited)

    def test_refillCappedAtBurst(self) -> None:
        """
        A long quiet spell saves up no more than C{burst} tokens.
        """
        clock = Clock()
        bucket = TokenBucket(rate=10, burst=3, clock=clock)
        for _ in range(3):
            self.successResultOf(bucket.acquire())
        clock.advance(100)
        self.assertEqual(bucket.tokens, 3.0)
        for _ in range(3):
            self.successResultOf(bucket.acquire())
        self.failureResultOf(bucket.acquire(), RateLimited)

    def test_secondImmediateAcquireRefused(self) -> None:
        """
        With C{rate=2, burst=1} and no queueing, the second immediate acquire
        fails at once with the half second it would have needed.
        """
        bucket = TokenBucket(rate=2, burst=1, clock=Clock())
        self.successResultOf(bucket.acquire())
        failure = self.failureResultOf(bucket.acquire(), RateLimited)
        self.assertAlmostEqual(failure.value.wait, 0.5)
        self.assertIn("0.500", str(failure.value))
        self.assertEqual(bucket.waiting, 0)

    def test_partialToken(self) -> None:
        """
        The wait reported counts the fraction of a token already refilled.
        """
        clock = Clock()
        bucket = TokenBucket(rate=2, burst=1, clock=clock)
        self.successResultOf(bucket.acquire())
        clock.advance(0.4)
        failure = self.failureResultOf(bucket.acquire(), RateLimited)
        self.assertAlmostEqual(failure.value.wait, 0.1)


class QueueTests(SynchronousTestCase):
    def test_maxWait(self) -> None:
        """
        Callers queue while their wait is within C{maxWait}; one whose wait
        would exceed it fails at once with the wait needed.
        """
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=1, clock=clock, maxWait=2)
        self.successResultOf(bucket.acquire())
        first = bucket.acquire()
        second = bucket.acquire()
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(bucket.waiting, 2)
        failure = self.failureResultOf(bucket.acquire(), RateLimited)
        self.assertAlmostEqual(failure.value.wait, 3.0)
        self.assertEqual(bucket.waiting, 2)

    def test_maxWaitBoundaryQueues(self) -> None:
        """
        A wait exactly equal to C{maxWait} is allowed, and is kept.
        """
        clock = Clock()
        bucket = TokenBucket(rate=2, burst=1, clock=clock, maxWait=0.5)
        self.successResultOf(bucket.acquire())
        d = bucket.acquire()
        self.assertNoResult(d)
        clock.advance(0.49)
        self.assertNoResult(d)
        clock.advance(0.01)
        self.assertIsNone(self.successResultOf(d))

    def test_fifo(self) -> None:
        """
        Queued callers are served in the order they asked, one per interval.
        """
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=1, clock=clock, maxWait=10)
        self.successResultOf(bucket.acquire())
        waiters = [bucket.acquire() for _ in range(5)]
        served = _track(waiters)
        self.assertEqual(served, [])
        for step in range(5):
            clock.advance(1)
            self.assertEqual(served, list(range(step + 1)))
        self.assertEqual(bucket.waiting, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_noJumpingTheQueue(self) -> None:
        """
        While callers are queued, a new caller queues behind them even if a
        token is already due, because the timer runs late (the reactor was
        busy).
        """
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=1, clock=clock, maxWait=10)
        self.successResultOf(bucket.acquire())
        early = bucket.acquire()
        # Time passes but the timer due at t=1 has not run yet.
        clock.rightNow += 1.5
        late = bucket.acquire()
        self.assertNoResult(late)
        served = _track([early, late])
        clock.advance(0)
        self.assertEqual(served, [0])
        self.assertEqual(bucket.waiting, 1)
        clock.advance(1)
        self.assertEqual(served, [0, 1])

    def test_lateTimersKeepTheRate(self) -> None:
        """
        Timers that always run a little late (as a real reactor's do) do not
        lower the rate at which queued callers are served, as long as the
        bucket can hold what a late timer finds (burst 2 here).  With burst
        1 no bucket can keep the rate without handing out more than
        C{burst + rate * window} in some window (see L{test_property}).
        """
        clock = Clock()
        bucket = TokenBucket(rate=10, burst=2, clock=clock, maxWait=100, maxQueue=100)
        self.successResultOf(bucket.acquire())
        self.successResultOf(bucket.acquire())
        served = _track([bucket.acquire() for _ in range(50)])
        for _ in range(200):
            calls = clock.getDelayedCalls()
            if not calls:
                break
            due = min(call.getTime() for call in calls)
            if due + 0.01 > 5.05:
                break
            # Run each timer 10ms after it is due.
            clock.rightNow = due + 0.01
            clock.advance(0)
        # Tokens are due at t=0.1, 0.2, ..., 5.0.
        self.assertEqual(len(served), 50)

    def test_maxQueue(self) -> None:
        """
        Beyond C{maxQueue} queued callers, a caller is refused even though its
        wait is within C{maxWait}; the wait it would have needed is reported.
        """
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=1, clock=clock, maxWait=100, maxQueue=2)
        self.successResultOf(bucket.acquire())
        queued = [bucket.acquire(), bucket.acquire()]
        for d in queued:
            self.assertNoResult(d)
        failure = self.failureResultOf(bucket.acquire(), RateLimited)
        self.assertAlmostEqual(failure.value.wait, 3.0)
        self.assertEqual(bucket.waiting, 2)

    def test_maxQueueZero(self) -> None:
        """
        C{maxQueue=0} never queues.
        """
        bucket = TokenBucket(rate=1, burst=1, clock=Clock(), maxWait=100, maxQueue=0)
        self.successResultOf(bucket.acquire())
        self.failureResultOf(bucket.acquire(), RateLimited)
        self.assertEqual(bucket.waiting, 0)


class CancelTests(SynchronousTestCase):
    def test_cancelGivesPlaceBack(self) -> None:
        """
        Cancelling a queued caller fails its L{Deferred} with
        L{CancelledError}, and the caller behind it is served in its slot.
        """
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=1, clock=clock, maxWait=10)
        self.successResultOf(bucket.acquire())
        a, b, c = bucket.acquire(), bucket.acquire(), bucket.acquire()
        served = _track([a, b, c])
        b.cancel()
        self.failureResultOf(b, CancelledError)
        self.assertEqual(bucket.waiting, 2)
        clock.advance(1)
        self.assertEqual(served, [0])
        clock.advance(1)
        # c is served at t=2, where b would have been, not at t=3.
        self.assertEqual(served, [0, 2])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancelHead(self) -> None:
        """
        Cancelling the first queued caller lets the next one have its token.
        """
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=1, clock=clock, maxWait=10)
        self.successResultOf(bucket.acquire())
        a, b = bucket.acquire(), bucket.acquire()
        a.cancel()
        self.failureResultOf(a, CancelledError)
        clock.advance(1)
        self.assertIsNone(self.successResultOf(b))

    def test_cancelFreesRoomForNewCaller(self) -> None:
        """
        A caller that would have been refused (wait beyond C{maxWait}) is
        queued once an earlier caller cancels.
        """
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=1, clock=clock, maxWait=2)
        self.successResultOf(bucket.acquire())
        a, b = bucket.acquire(), bucket.acquire()
        self.failureResultOf(bucket.acquire(), RateLimited)
        a.cancel()
        self.failureResultOf(a, CancelledError)
        c = bucket.acquire()
        self.assertNoResult(c)
        served = _track([b, c])
        clock.advance(1)
        self.assertEqual(served, [0])
        clock.advance(1)
        self.assertEqual(served, [0, 1])

    def test_cancelOnlyWaiterStopsTimer(self) -> None:
        """
        Cancelling the only queued caller leaves no timer behind, and its
        token stays in the bucket for the next caller.
        """
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=1, clock=clock, maxWait=10)
        self.successResultOf(bucket.acquire())
        d = bucket.acquire()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(1)
        self.successResultOf(bucket.acquire())

    def test_cancelAfterServedIsHarmless(self) -> None:
        """
        Cancelling a L{Deferred} that already has its token changes nothing.
        """
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=1, clock=clock, maxWait=10)
        self.successResultOf(bucket.acquire())
        a, b = bucket.acquire(), bucket.acquire()
        clock.advance(1)
        self.successResultOf(a)
        a.cancel()
        self.assertEqual(bucket.waiting, 1)
        clock.advance(1)
        self.successResultOf(b)


class CloseTests(SynchronousTestCase):
    def test_closeRefusesQueued(self) -> None:
        """
        L{TokenBucket.close} fails every queued caller with L{RateLimited}
        and stops the timer.
        """
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=1, clock=clock, maxWait=10)
        self.successResultOf(bucket.acquire())
        waiters = [bucket.acquire() for _ in range(3)]
        bucket.close()
        for d in waiters:
            self.failureResultOf(d, RateLimited)
        self.assertEqual(bucket.waiting, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_closeIdle(self) -> None:
        """
        Closing a bucket nobody waits on is fine.
        """
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=1, clock=clock)
        bucket.close()
        self.assertEqual(clock.getDelayedCalls(), [])


def _serveInSteps(start: float, rate: float, n: int) -> Tuple[List[int], List[int]]:
    """
    Queue C{n} callers behind an empty C{burst=1} bucket and advance the
    clock by exactly C{1/rate} C{n} times.

    @return: The indexes served, and the number served after each step.
    """
    clock = GuardedClock()
    clock.advance(start)
    bucket = TokenBucket(rate, 1, clock, maxWait=n / rate + 1, maxQueue=n)
    clock.scheduled = 0
    assert bucket.acquire().called
    served = _track([bucket.acquire() for _ in range(n)])
    counts = []
    for _ in range(n):
        clock.advance(1 / rate)
        counts.append(len(served))
    return served, counts


@pytest.mark.parametrize("rate", [3, 7, 10, 0.3, 1000])
@pytest.mark.parametrize("start", [0.0, 1e6])
def test_noRoundingStall(start: float, rate: float) -> None:
    """
    Advancing the clock by exactly the time needed serves every queued
    caller, one per step: float rounding does not leave a caller a hair
    short of its token.
    """
    n = 60
    served, counts = _serveInSteps(start, rate, n)
    assert served == list(range(n))
    assert counts == list(range(1, n + 1))


@pytest.mark.parametrize("rate", [3, 10])
def test_noRoundingStallAtEpochTime(rate: float) -> None:
    """
    The same, starting at a realistic C{reactor.seconds()}.
    """
    n = 10
    served, counts = _serveInSteps(1.7e9, rate, n)
    assert served == list(range(n))
    assert counts == list(range(1, n + 1))


#: Operations, with times in token intervals (multiples of 1/rate): acquire
#: (the most common), advance the clock, cancel a queued caller, or let time
#: pass without running timers (the reactor is busy).
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["acquire"] * 4 + ["advance"] * 2 + ["cancel", "lag"]),
        st.one_of(
            st.sampled_from([0.0, 0.3, 0.5, 1.0, 1.5, 3.0]),
            st.floats(min_value=0, max_value=4, allow_nan=False),
        ),
        st.integers(min_value=0, max_value=100),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, database=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 2.0, 3.0, 7.0, 10.0]),
    burst=st.integers(min_value=1, max_value=4),
    waitTokens=st.sampled_from([0.0, 1.0, 2.5, 5.0, 20.0]),
    maxQueue=st.one_of(st.just(1024), st.integers(min_value=0, max_value=8)),
    ops=_OPS,
)
def test_property(
    rate: float,
    burst: int,
    waitTokens: float,
    maxQueue: int,
    ops: List[Tuple[str, float, int]],
) -> None:
    """
    Over any sequence of acquires, clock advances (on time or with timers
    running late) and cancellations: the tokens handed out within any window
    never exceed C{burst + rate * window}; callers are served in the order
    they asked; refusals are justified; and once the clock runs on, nobody
    is left waiting.
    """
    maxWait = waitTokens / rate
    clock = GuardedClock()
    bucket = TokenBucket(rate, burst, clock, maxWait=maxWait, maxQueue=maxQueue)
    # Each caller's outcome: (result, time, sequence number), filled in when
    # its Deferred fires.
    outcomes: List[List[Tuple[Any, float, int]]] = []
    sequence = itertools.count()
    queued: List[Tuple[int, Deferred[None]]] = []

    for op, tokens, pick in ops:
        if op == "acquire":
            index = len(outcomes)
            waitingBefore = bucket.waiting
            # The wait this caller faces: a token for each caller ahead of it
            # and one for itself, less what the bucket holds.
            needed = (waitingBefore + 1 - bucket.tokens) / rate
            outcome: List[Tuple[Any, float, int]] = []
            outcomes.append(outcome)
            d = bucket.acquire()
            d.addBoth(
                lambda result, o=outcome: o.append(
                    (result, clock.seconds(), next(sequence))
                )
            )
            if not outcome:
                queued.append((index, d))
                assert needed <= maxWait + 1e-9
                assert waitingBefore < maxQueue
            elif isinstance(outcome[0][0], Failure):
                failure = outcome[0][0]
                assert failure.check(RateLimited), failure
                assert failure.value.wait == pytest.approx(needed)
                assert failure.value.wait > 0
                assert failure.value.wait > maxWait or waitingBefore >= maxQueue
            else:
                assert waitingBefore == 0
        elif op == "advance":
            clock.advance(tokens / rate)
        elif op == "lag":
            clock.rightNow += tokens / rate
        else:
            live = [d for i, d in queued if not outcomes[i]]
            if live:
                live[pick % len(live)].cancel()

    # Run the clock on, one token interval at a time (bounded).
    for _ in range(2 * bucket.waiting + 3):
        clock.advance(1 / rate)
    assert bucket.waiting == 0
    assert clock.getDelayedCalls() == []

    grants: List[Tuple[int, float, int]] = []
    for index, outcome in enumerate(outcomes):
        assert len(outcome) == 1, f"caller {index} never answered"
        result, when, seq = outcome[0]
        if isinstance(result, Failure):
            # Refused at once, or cancelled while queued.
            assert result.check(RateLimited, CancelledError), result
            if result.check(CancelledError):
                assert index in [i for i, _ in queued]
        else:
            assert result is None
            grants.append((index, when, seq))
    grants.sort(key=lambda g: g[2])

    order = [index for index, _, _ in grants]
    assert order == sorted(order), "callers served out of order"
    times = [t for _, t, _ in grants]
    for i in range(len(times)):
        for j in range(i, len(times)):
            handedOut = j - i + 1
            assert handedOut <= burst + rate * (times[j] - times[i]) + 1e-6, (
                f"{handedOut} tokens in [{times[i]}, {times[j]}]"
            )
