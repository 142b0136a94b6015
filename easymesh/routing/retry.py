# -*- test-case-name: tests.test_retry -*-
"""
Retries: which outcomes a policy retries, the backoff between tries, the
budget that caps retries across a cluster, and keeping a small request
body so that it can be sent again.
"""

from __future__ import annotations

import random as _random
from typing import Any, List, Optional, Tuple, Union

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from easymesh.config.mesh import Backoff, RetryBudget, RetryPolicy
from easymesh.errors import (
    ProxyError,
    UpstreamConnectFailure,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from easymesh.message import Response
from easymesh.requestbody import BufferedBody
from easymesh.tokenbucket import TokenBucket

_GATEWAY = frozenset((502, 503, 504))

#: The retry_on conditions under which each kind of failure is retried.
#: Each is answered with a 502, 503 or 504, so C{5xx} and C{gateway-error}
#: retry them all, as Envoy does.
_FAILURE_CONDITIONS = (
    (UpstreamConnectFailure, frozenset(("connect-failure", "5xx", "gateway-error"))),
    (UpstreamReset, frozenset(("reset", "5xx", "gateway-error"))),
    (UpstreamTimeout, frozenset(("timeout", "5xx", "gateway-error"))),
    (UpstreamProtocolError, frozenset(("reset", "5xx", "gateway-error"))),
)


def shouldRetry(policy: RetryPolicy, outcome: Union[Response, ProxyError]) -> bool:
    """
    Whether C{policy} retries an outcome: a response (by status) or a
    failure before any response.
    """
    conditions = policy.retryOn
    if isinstance(outcome, ProxyError):
        for kind, matching in _FAILURE_CONDITIONS:
            if isinstance(outcome, kind):
                return not matching.isdisjoint(conditions)
        return False
    code = outcome.code
    if code in policy.retryStatuses:
        return True
    if code >= 500 and "5xx" in conditions:
        return True
    if code in _GATEWAY and "gateway-error" in conditions:
        return True
    return code == 409 and "retriable-4xx" in conditions


def backoffDelay(retry: int, backoff: Backoff, random: _random.Random) -> float:
    """
    Seconds to wait before retry number C{retry} (from 1): full jitter over
    an interval that doubles with each retry from C{base}, capped at
    C{max}.
    """
    ceiling = min(backoff.max, backoff.base * (2 ** (retry - 1)))
    return random.uniform(0, ceiling)


class RetryBudgetState:
    """
    A cluster's retry budget: retries in flight may be up to a percentage
    of its active requests, and beyond that a minimum number a second is
    still allowed, so that a quiet cluster can retry at all.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._minimums: dict = {}

    def allow(self, budget: RetryBudget, active: int, retriesActive: int) -> bool:
        if retriesActive < budget.percent / 100.0 * active:
            return True
        rate = budget.minRetriesPerSecond
        if rate <= 0:
            return False
        bucket = self._minimums.get(rate)
        if bucket is None:
            bucket = self._minimums[rate] = TokenBucket(rate, max(1, int(rate)), self._clock)
        return bucket.take() is None


class _Collector:
    """
    Read a body producer into memory, up to a limit.
    """

    def __init__(self, source: IBodyProducer, limit: int) -> None:
        self.source = source
        self.limit = limit
        self.chunks: List[bytes] = []
        self.size = 0
        self.target: Optional[IConsumer] = None
        self.result: Deferred[Tuple[IBodyProducer, bool]] = Deferred(lambda _: source.stopProducing())
        self.overflowed = False

    def write(self, data: bytes) -> None:
        if self.target is not None:
            self.target.write(data)
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.size > self.limit and not self.overflowed:
            self.overflowed = True
            self.source.pauseProducing()
            self.result.callback((_Prefixed(self), False))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


@implementer(IBodyProducer)
class _Prefixed:
    """
    A body too big to keep: what was read, then the rest as it arrives.
    """

    def __init__(self, collector: _Collector) -> None:
        self._collector = collector
        self.length = collector.source.length
        self.done: Optional[Deferred[None]] = None

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        collector = self._collector
        for chunk in collector.chunks:
            consumer.write(chunk)
        collector.chunks = []
        collector.target = consumer
        assert self.done is not None
        done, self.done = self.done, None
        collector.source.resumeProducing()
        return done

    def pauseProducing(self) -> None:
        self._collector.source.pauseProducing()

    def resumeProducing(self) -> None:
        self._collector.source.resumeProducing()

    def stopProducing(self) -> None:
        self._collector.source.stopProducing()


def keepForReplay(
    body: Optional[IBodyProducer], limit: int
) -> Deferred[Tuple[Optional[IBodyProducer], bool]]:
    """
    Read a request body into memory if it is at most C{limit} bytes, so it
    can be sent more than once.

    @return: A L{Deferred} firing with the body to send and whether it can
        be sent again: a L{BufferedBody} and C{True}; or, for a body over
        the limit, a producer of it (what was read, then the rest) and
        C{False}.
    """
    if body is None or isinstance(body, BufferedBody):
        return succeed((body, True))
    length = body.length
    if isinstance(length, int) and length == 0:
        return succeed((BufferedBody(b""), True))
    if isinstance(length, int) and length > limit:
        return succeed((body, False))
    collector = _Collector(body, limit)
    prefixed: List[_Prefixed] = []

    def ended(_: Any) -> None:
        if not collector.overflowed:
            collector.result.callback((BufferedBody(b"".join(collector.chunks)), True))

    def failed(reason: Any) -> Any:
        if not collector.overflowed and not collector.result.called:
            collector.result.errback(reason)
            return None
        return reason

    producing = body.startProducing(collector)

    def handOver(result: Tuple[IBodyProducer, bool]) -> Tuple[IBodyProducer, bool]:
        producer = result[0]
        if isinstance(producer, _Prefixed):
            producer.done = producing
            prefixed.append(producer)
        return result

    result = collector.result
    result.addCallback(handOver)
    if not collector.overflowed:
        producing.addCallbacks(ended, failed)
    return result
