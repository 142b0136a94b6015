# -*- test-case-name: tests.test_retry -*-
"""
Retries: which outcomes a policy retries, the backoff between tries, the
budget that caps retries across a cluster, and the request body streamed
to the first try while a copy is kept so that it can be sent again.
"""

from __future__ import annotations

import random as _random
from typing import Any, Dict, List, Optional, Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from easymesh.config.mesh import Backoff, RetryBudget, RetryPolicy
from easymesh.errors import (
    GrpcStatus,
    ProxyError,
    UpstreamConnectFailure,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from easymesh.grpc import isGrpc, statusOf
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

#: The retry_on conditions that retry a gRPC response whose head carries
#: its status (Trailers-Only: nothing of it has been relayed yet).
_GRPC_CONDITIONS: Dict[int, str] = {
    GrpcStatus.CANCELLED: "cancelled",
    GrpcStatus.DEADLINE_EXCEEDED: "deadline-exceeded",
    GrpcStatus.INTERNAL: "internal",
    GrpcStatus.RESOURCE_EXHAUSTED: "resource-exhausted",
    GrpcStatus.UNAVAILABLE: "unavailable",
}


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
    if code == 200 and isGrpc(outcome.headers):
        status = statusOf(outcome.headers)
        return status is not None and _GRPC_CONDITIONS.get(status) in conditions
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
        self._minimums: Dict[float, TokenBucket] = {}

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


class BodyNotReplayable(Exception):
    """
    A try wanted the request body after the copy kept for it was dropped.
    """


@implementer(IConsumer)
class ReplayableBody:
    """
    A request body on a route that retries: streamed to the first try as it
    arrives, while a copy of it is kept up to C{limit} bytes so that a later
    try can be sent it again (Envoy's C{per_request_buffer_limit_bytes}).

    Each try gets its own producer from L{produce}; a later try's producer
    writes the copy kept so far, then goes on with the body as it still
    arrives.  Once the body is longer than C{limit} the copy is dropped and
    the request can no longer be retried; the try under way streams on to
    the end all the same.  Only one try consumes the body at a time.

    A body held whole in memory (a L{BufferedBody}, or no body) is handed to
    every try as it is.

    @param source: The request's body producer (in practice fed by the
        listener), which this becomes the consumer of once a try starts
        producing.
    @param limit: The most bytes kept for a retry.
    """

    def __init__(self, source: Optional[IBodyProducer], limit: int) -> None:
        length = getattr(source, "length", None)
        if isinstance(length, int) and length == 0 and not isinstance(source, BufferedBody):
            source = BufferedBody(b"")
        self._source = source
        self._whole = source is None or isinstance(source, BufferedBody)
        self._limit = limit
        #: What the source has written so far; L{None} once dropped.
        self._copy: Optional[List[bytes]] = []
        self._size = 0
        if isinstance(length, int) and length > limit:
            self._copy = None
        self._current: Optional[_TryBody] = None
        self._last = False
        self._final = False
        self._started = False
        self._ended = False
        self._sourceStopped = False
        self._failure: Optional[Failure] = None
        self._sourcePaused = False
        self._replaying = False

    # The router's side.

    def produce(self, last: bool = False) -> Optional[IBodyProducer]:
        """
        The body producer for the next try; the previous try, if any, gets
        no more of the body.

        @param last: Whether no try will follow this one: then the copy is
            dropped once this try has been given it.
        """
        if self._whole:
            return self._source
        self.abandon()
        self._last = last
        producer = self._current = _TryBody(self)
        return producer

    def replayable(self) -> bool:
        """
        Whether another try can be sent the whole body: the copy is intact
        (the body has not passed the limit) and the body has not failed.
        """
        if self._whole:
            return True
        return not (self._last or self._final or self._copy is None or self._failure is not None)

    def abandon(self) -> None:
        """
        The current try is over (a retry follows): it gets no more of the
        body, and the source is paused until the next try starts.
        """
        self._detach()
        self._pauseSource()

    def done(self) -> None:
        """
        No try follows the current one: drop the copy, and stop the source
        unless a try is still being sent the body (it is stopped when that
        try stops).
        """
        if self._whole:
            return
        self._final = True
        self._copy = None
        current = self._current
        if current is None or not current._producing:
            self._detach()
            self._stopSource()

    # The tries' side.

    def _detach(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            current._detach()

    def _start(self, producer: "_TryBody", consumer: IConsumer) -> Deferred[None]:
        if producer is not self._current or producer._producing:
            return fail(BodyNotReplayable("the request body went to a later try"))
        if self._failure is not None:
            return fail(self._failure)
        if self._copy is None and self._started:
            return fail(BodyNotReplayable("the request body was longer than the retry buffer"))
        done: Deferred[None] = Deferred()
        producer._start(consumer, done)
        self._replaying = True
        try:
            for chunk in list(self._copy or ()):
                if producer is not self._current:
                    return done
                consumer.write(chunk)
        finally:
            self._replaying = False
        if self._last:
            self._copy = None
        if producer is not self._current:
            return done
        if not self._started:
            self._started = True
            assert self._source is not None
            self._source.startProducing(self).addCallbacks(self._sourceEnded, self._sourceFailed)
            if producer is self._current and producer.paused:
                self._pauseSource()
        elif self._ended:
            self._sourceEnded(None)
        elif not producer.paused:
            self._resumeSource()
        return done

    def _paused(self, producer: "_TryBody") -> None:
        if producer is self._current and producer._producing:
            self._pauseSource()

    def _resumed(self, producer: "_TryBody") -> None:
        if producer is self._current and producer._producing and not self._replaying:
            self._resumeSource()

    def _stoppedBy(self, producer: "_TryBody") -> None:
        """
        A try no longer wants the body: the source is stopped if no try
        will follow, else paused for the next.
        """
        if producer is not self._current:
            return
        self._detach()
        if self.replayable():
            self._pauseSource()
        else:
            self._stopSource()

    # The source's side: an IConsumer.

    def write(self, data: bytes) -> None:
        if self._copy is not None:
            self._size += len(data)
            if self._size > self._limit:
                self._copy = None
            else:
                self._copy.append(data)
        current = self._current
        if current is not None:
            current._write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def _sourceEnded(self, _: Any) -> None:
        self._ended = True
        if self._current is not None:
            self._current._finish(None)

    def _sourceFailed(self, reason: Failure) -> None:
        self._failure = reason
        self._copy = None
        if self._current is not None:
            self._current._finish(reason)

    def _pauseSource(self) -> None:
        if self._started and not self._sourcePaused and not self._over():
            self._sourcePaused = True
            assert self._source is not None
            self._source.pauseProducing()

    def _resumeSource(self) -> None:
        if self._sourcePaused and not self._over():
            self._sourcePaused = False
            assert self._source is not None
            self._source.resumeProducing()

    def _stopSource(self) -> None:
        if not self._over():
            self._sourceStopped = True
            assert self._source is not None
            self._source.stopProducing()

    def _over(self) -> bool:
        return self._ended or self._sourceStopped or self._failure is not None


@implementer(IBodyProducer)
class _TryBody:
    """
    The request body as one try is sent it: see L{ReplayableBody}.

    @ivar length: The body's length, as the request declared it (or
        C{UNKNOWN_LENGTH}), whatever the try.
    @ivar paused: Whether the try's consumer has paused it.
    """

    def __init__(self, body: ReplayableBody) -> None:
        self._body = body
        source = body._source
        assert source is not None
        self.length = source.length
        self.paused = False
        self._consumer: Optional[IConsumer] = None
        self._done: Optional[Deferred[None]] = None
        self._producing = False

    @property
    def trailers(self) -> Any:
        """
        The body's trailers, once it has ended with some: the source's.
        """
        return getattr(self._body._source, "trailers", None)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        return self._body._start(self, consumer)

    def pauseProducing(self) -> None:
        self.paused = True
        self._body._paused(self)

    def resumeProducing(self) -> None:
        self.paused = False
        self._body._resumed(self)

    def stopProducing(self) -> None:
        """
        The try no longer wants the body: the L{Deferred} from
        L{startProducing} never fires.
        """
        self._body._stoppedBy(self)

    def _start(self, consumer: IConsumer, done: Deferred[None]) -> None:
        self._consumer = consumer
        self._done = done
        self._producing = True

    def _write(self, data: bytes) -> None:
        if self._consumer is not None:
            self._consumer.write(data)

    def _finish(self, result: Optional[Failure]) -> None:
        done, self._done = self._done, None
        self._consumer = None
        if done is None:
            return
        if result is None:
            done.callback(None)
        else:
            done.errback(result)

    def _detach(self) -> None:
        self._consumer = None
        self._done = None
