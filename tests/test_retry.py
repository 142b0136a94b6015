"""
Tests for L{easymesh.routing.retry} and the retries of
L{easymesh.routing.router.Router}: conditions, counts, backoff, the retry
budget, the max_retries breaker and body replay.
"""

from __future__ import annotations

import random
from typing import Any, Callable, List, Optional, Sequence

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from easymesh.upstream.h1client import proxyErrorFor
from easymesh.cluster.cluster import Cluster
from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import (
    Backoff,
    CircuitBreakers,
    ClusterConfig,
    MeshConfig,
    RetryBudget,
    RetryPolicy,
    Route,
)
from easymesh.errors import (
    NoHealthyUpstream,
    UpstreamConnectFailure,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from easymesh.message import LocalReply, ProxyRequest
from easymesh.requestbody import RequestBodyStream
from easymesh.routing.retry import (
    BufferedBody,
    RetryBudgetState,
    backoffDelay,
    BodyNotReplayable,
    ReplayableBody,
    shouldRetry,
)
from easymesh.routing.router import ATTEMPTS_HEADER, Router
from tests.meshfakes import FakeResponse, Sent, Upstreams, makeRequest


class MaxRandom(random.Random):
    """
    Always the top of a range: backoff delays are their ceilings.
    """

    def uniform(self, a: float, b: float) -> float:
        return b


class Env:
    """
    One route with a retry policy to cluster C{a}, whose fake upstreams
    answer each try with the next of C{outcomes} (a status code or an
    exception); tries beyond them stay pending.
    """

    def __init__(
        self,
        policy: Optional[RetryPolicy],
        endpoints: Sequence[str] = ("a1:80", "a2:80"),
        breakers: CircuitBreakers = CircuitBreakers(),
        rng: Optional[random.Random] = None,
        **routeArgs: Any,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.upstreams = Upstreams()
        self.outcomes: List[Any] = []
        self.upstreams.answer = self._answer
        urls = tuple(UpstreamURL.parse(f"http://{e}") for e in endpoints)
        self.config = ClusterConfig("a", endpoints=urls, weights=(1,) * len(urls), circuitBreakers=breakers)
        self.cluster = Cluster(self.config, self.clock, random.Random(1), makeUpstream=self.upstreams.make)
        route = Route("r", cluster="a", retryPolicy=policy, **routeArgs)
        self.mesh = MeshConfig(clusters={"a": self.config}, routes={"outbound": (route,)})
        self.router = Router(
            "outbound", self.mesh, {"a": self.cluster}, self.clock, rng if rng is not None else MaxRandom()
        )

    def _answer(self, request: ProxyRequest) -> Any:
        return self.outcomes.pop(0) if self.outcomes else None

    def send(self, request: Optional[ProxyRequest] = None) -> Deferred[Any]:
        return self.router.route(request if request is not None else makeRequest(b"/r"))

    def run(self, d: Deferred[Any], limit: int = 100) -> None:
        """
        Advance the clock from one timer to the next until C{d} has fired.
        """
        for _ in range(limit):
            if d.called:
                return
            calls = self.clock.getDelayedCalls()
            if not calls:
                return
            self.clock.advance(max(0.0, min(c.getTime() for c in calls) - self.clock.seconds()))

    @property
    def sent(self) -> List[Sent]:
        return self.upstreams.allSent()

    def result(self, d: Deferred[Any]) -> Any:
        self.run(d)
        assert d.called, "no result"
        results: List[Any] = []
        d.addBoth(results.append)
        return results[0]


def policy(*retryOn: str, statuses: Sequence[int] = (), numRetries: int = 2, **kw: Any) -> RetryPolicy:
    return RetryPolicy(retryOn=retryOn, retryStatuses=tuple(statuses), numRetries=numRetries, **kw)


def refused() -> BaseException:
    return ConnectionRefusedError("refused")


CONDITIONS = [
    # (retry_on, statuses, outcome, retried)
    (("connect-failure",), (), refused, True),
    (("connect-failure",), (), lambda: UpstreamConnectFailure("x"), True),
    (("connect-failure",), (), 503, False),
    (("connect-failure",), (), lambda: UpstreamReset(), False),
    (("connect-failure",), (), lambda: UpstreamTimeout(), False),
    (("reset",), (), lambda: UpstreamReset(), True),
    (
        ("reset",),
        (),
        lambda: proxyErrorFor(Failure(ResponseNeverReceived([Failure(ConnectionRefusedError())]))),
        True,
    ),
    (("reset",), (), lambda: UpstreamProtocolError(), True),
    (("reset",), (), refused, False),
    (("reset",), (), 502, False),
    (("timeout",), (), lambda: UpstreamTimeout(), True),
    (("timeout",), (), 504, False),
    (("timeout",), (), refused, False),
    (("5xx",), (), 500, True),
    (("5xx",), (), 503, True),
    (("5xx",), (), 599, True),
    (("5xx",), (), refused, True),
    (("5xx",), (), lambda: UpstreamReset(), True),
    (("5xx",), (), lambda: UpstreamTimeout(), True),
    (("5xx",), (), 404, False),
    (("5xx",), (), 429, False),
    (("gateway-error",), (), 502, True),
    (("gateway-error",), (), 503, True),
    (("gateway-error",), (), 504, True),
    (("gateway-error",), (), refused, True),
    (("gateway-error",), (), lambda: UpstreamTimeout(), True),
    (("gateway-error",), (), lambda: UpstreamReset(), True),
    (("gateway-error",), (), 500, False),
    (("gateway-error",), (), 501, False),
    (("gateway-error",), (), 404, False),
    (("retriable-4xx",), (), 409, True),
    (("retriable-4xx",), (), 404, False),
    (("retriable-4xx",), (), 429, False),
    (("retriable-4xx",), (), 500, False),
    ((), (429,), 429, True),
    ((), (429, 418), 418, True),
    ((), (429,), 503, False),
    ((), (429,), refused, False),
    (("gateway-error",), (500,), 500, True),
    (("5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "timeout"), (), 200, False),
    (("5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "timeout"), (), 404, False),
    (("5xx",), (), lambda: NoHealthyUpstream(), False),
]


def _outcome(outcome: Any) -> Any:
    return outcome() if callable(outcome) else outcome


@pytest.mark.parametrize("retryOn, statuses, outcome, retried", CONDITIONS)
def test_retryConditions(retryOn: Any, statuses: Any, outcome: Any, retried: bool) -> None:
    env = Env(policy(*retryOn, statuses=statuses, numRetries=1))
    env.outcomes = [_outcome(outcome), 200]
    result = env.result(env.send())
    assert len(env.sent) == (2 if retried else 1)
    if retried:
        assert result.code == 200
        assert result.headers.getRawHeaders(ATTEMPTS_HEADER) == [b"2"]
        return
    assert result.headers.getRawHeaders(ATTEMPTS_HEADER) == [b"1"]
    if isinstance(result, LocalReply):
        # A failure before any response: its error's reply.
        from easymesh.errors import classify

        error = classify(Failure(_outcome(outcome)))
        assert error is not None
        assert (result.code, result.cause) == (error.code, error.cause)
    else:
        assert result.code == outcome


@pytest.mark.parametrize("retryOn, statuses, outcome, retried", CONDITIONS)
def test_shouldRetry(retryOn: Any, statuses: Any, outcome: Any, retried: bool) -> None:
    from easymesh.errors import classify

    value = _outcome(outcome)
    if isinstance(value, BaseException):
        value = classify(Failure(value))
    else:
        value = FakeResponse(value)
    assert shouldRetry(policy(*retryOn, statuses=statuses), value) is retried


def test_numRetriesHonoured() -> None:
    env = Env(policy("5xx", numRetries=3))
    env.outcomes = [503] * 10
    request = makeRequest(b"/r")
    response = env.result(env.send(request))
    assert response.code == 503
    assert len(env.sent) == 4
    assert request.attempts == 4
    assert response.headers.getRawHeaders(ATTEMPTS_HEADER) == [b"4"]
    # The responses retried are discarded; the last is relayed.
    assert all(s.response is not None and s.response.delivered for s in env.sent[:3])
    assert response.delivered == []
    assert env.cluster.retries == 3
    assert (env.cluster.retriesActive, env.cluster.breakers.retries) == (0, 0)


def test_lastFailureAnswered() -> None:
    env = Env(policy("connect-failure", numRetries=2))
    env.outcomes = [refused(), refused(), refused(), 200]
    request = makeRequest(b"/r")
    reply = env.result(env.send(request))
    assert isinstance(reply, LocalReply)
    assert (reply.code, reply.cause) == (503, "upstream_connect_failure")
    assert len(env.sent) == 3
    assert request.attempts == 3


def test_succeedsAfterRetries() -> None:
    env = Env(policy("5xx", "connect-failure", numRetries=3))
    env.outcomes = [refused(), 500, 200]
    request = makeRequest(b"/r")
    response = env.result(env.send(request))
    assert response.code == 200
    assert response.headers.getRawHeaders(ATTEMPTS_HEADER) == [b"3"]
    assert [s.target for s in env.sent] == [b"/r"] * 3
    assert request.upstreamHost in ("a1:80", "a2:80")


def test_numRetriesZeroSendsOnce() -> None:
    env = Env(policy("5xx", numRetries=0))
    env.outcomes = [503, 200]
    request = makeRequest(b"/r")
    response = env.result(env.send(request))
    assert response.code == 503
    assert len(env.sent) == 1
    assert request.attempts == 1


def test_perTryTimeoutGivenToEveryTry() -> None:
    env = Env(policy("5xx", numRetries=2, perTryTimeout=0.5))
    env.outcomes = [503, 503, 200]
    env.result(env.send())
    assert [s.timeout for s in env.sent] == [0.5, 0.5, 0.5]


def test_backoffWaitsOnTheClock() -> None:
    """
    Each retry waits its backoff: the ceiling doubles from C{base} up to
    C{max} (here the jitter always picks the ceiling).
    """
    env = Env(policy("5xx", numRetries=4, backoff=Backoff(0.1, 0.3)))
    env.outcomes = [503] * 5
    d = env.send()
    waits = []
    for expected in (0.1, 0.2, 0.3, 0.3):
        tries = len(env.sent)
        (call,) = env.clock.getDelayedCalls()
        waits.append(round(call.getTime() - env.clock.seconds(), 9))
        env.clock.advance(expected - 0.001)
        assert len(env.sent) == tries
        env.clock.advance(0.001 + 1e-9)
        assert len(env.sent) == tries + 1
    assert waits == [0.1, 0.2, 0.3, 0.3]
    assert d.called


def test_backoffJitterWithinBounds() -> None:
    rng = random.Random(7)
    backoff = Backoff(0.025, 0.25)
    for retry in range(1, 8):
        ceiling = min(0.25, 0.025 * 2 ** (retry - 1))
        delays = [backoffDelay(retry, backoff, rng) for _ in range(200)]
        assert all(0 <= x <= ceiling for x in delays)
        # Full jitter: spread over the whole interval.
        assert min(delays) < ceiling / 4 and max(delays) > ceiling * 3 / 4


def test_backoffUnderClockWithJitter() -> None:
    env = Env(policy("5xx", numRetries=3, backoff=Backoff(1.0, 2.0)), rng=random.Random(3))
    env.outcomes = [503] * 4
    env.send()
    for ceiling in (1.0, 2.0, 2.0):
        (call,) = env.clock.getDelayedCalls()
        assert 0 <= call.getTime() - env.clock.seconds() <= ceiling
        env.clock.advance(ceiling)


def test_budgetCapsRetriesOfManyConcurrentRequests() -> None:
    env = Env(
        policy("5xx", numRetries=3, budget=RetryBudget(percent=20.0, minRetriesPerSecond=2.0)),
        breakers=CircuitBreakers(maxRetries=10000),
    )
    results = [env.send() for _ in range(100)]
    first = list(env.sent)
    assert len(first) == 100
    for sent in first:
        sent.respond(503)
    retries = len(env.sent) - 100
    # Backoffs are pending: no retry has been sent yet; count those allowed.
    assert retries == 0
    allowed = env.cluster.retriesActive
    assert 0 < allowed <= 20 + 2
    assert env.cluster.breakers.overflows.get("retry_budget", 0) == 100 - allowed
    # Those refused answer with the 503 they had, at once.
    answered = [d for d in results if d.called]
    assert len(answered) == 100 - allowed
    env.outcomes = [200] * 1000
    env.clock.advance(10)
    assert all(d.called for d in results)
    assert len(env.sent) == 100 + allowed
    assert (env.cluster.retriesActive, env.cluster.breakers.retries) == (0, 0)


def test_budgetMinimumLetsAQuietClusterRetry() -> None:
    env = Env(policy("5xx", numRetries=1, budget=RetryBudget(percent=20.0, minRetriesPerSecond=1.0)))
    env.outcomes = [503, 200]
    assert env.result(env.send()).code == 200
    # The minimum is one a second: the next failure in the same second is
    # not retried.
    env.outcomes = [503, 200]
    d = env.send()
    assert d.called
    assert env.result(d).code == 503
    env.clock.advance(1)
    env.outcomes = [503, 200]
    assert env.result(env.send()).code == 200


def test_budgetStateAllow() -> None:
    clock = Clock()
    state = RetryBudgetState(clock)
    budget = RetryBudget(percent=50.0, minRetriesPerSecond=0.0)
    assert state.allow(budget, 10, 4)
    assert not state.allow(budget, 10, 5)
    assert not state.allow(budget, 0, 0)
    minimum = RetryBudget(percent=0.0, minRetriesPerSecond=3.0)
    assert [state.allow(minimum, 0, 0) for _ in range(4)] == [True, True, True, False]
    clock.advance(1)
    assert state.allow(minimum, 0, 0)


def test_maxRetriesBreaker() -> None:
    env = Env(policy("5xx", numRetries=3), breakers=CircuitBreakers(maxRetries=1))
    first, second = env.send(), env.send()
    a, b = env.sent
    a.respond(503)
    assert not first.called
    b.respond(503)
    # The second's retry would exceed max_retries: its 503 is returned.
    response = env.result(second)
    assert response.code == 503
    assert response.headers.getRawHeaders(ATTEMPTS_HEADER) == [b"1"]
    assert env.cluster.breakers.overflows == {"max_retries": 1}
    env.outcomes = [200]
    assert env.result(first).code == 200
    assert env.cluster.breakers.retries == 0


def test_overflowNotRetried() -> None:
    env = Env(policy("5xx", "gateway-error", numRetries=3), breakers=CircuitBreakers(maxRequests=1))
    env.send()
    reply = env.result(env.send())
    assert isinstance(reply, LocalReply)
    assert (reply.code, reply.cause) == (503, "overflow")
    assert reply.headers.getRawHeaders(ATTEMPTS_HEADER) == [b"1"]
    assert env.cluster.breakers.overflows == {"max_requests": 1}
    assert len(env.sent) == 1
    assert env.cluster.retries == 0


def test_cancelDuringBackoffStopsEverything() -> None:
    env = Env(policy("5xx", numRetries=3))
    env.outcomes = [503]
    d = env.send()
    assert len(env.clock.getDelayedCalls()) == 1
    assert env.cluster.retriesActive == 1
    d.cancel()
    failure = env.result(d)
    failure.trap(CancelledError)
    assert env.clock.getDelayedCalls() == []
    env.clock.advance(100)
    assert len(env.sent) == 1
    assert (env.cluster.retriesActive, env.cluster.breakers.retries, env.cluster.active) == (0, 0, 0)


def test_cancelDuringATryStopsEverything() -> None:
    env = Env(policy("5xx", numRetries=3))
    env.outcomes = [503]
    d = env.send()
    env.clock.advance(1)
    assert len(env.sent) == 2
    d.cancel()
    assert env.sent[1].cancelled
    env.result(d).trap(CancelledError)
    env.clock.advance(100)
    assert len(env.sent) == 2
    assert (env.cluster.retriesActive, env.cluster.breakers.retries, env.cluster.active) == (0, 0, 0)
    assert env.cluster.breakers.requests == 0


def test_clientClosedNotRetried() -> None:
    env = Env(policy("5xx", "reset", "connect-failure", numRetries=3))
    env.outcomes = [CancelledError()]
    failure = env.result(env.send())
    assert isinstance(failure, Failure)
    assert len(env.sent) == 1


def test_routeTimeoutCoversRetries() -> None:
    env = Env(policy("5xx", numRetries=5, backoff=Backoff(0.1, 0.1)), timeout=1.0)
    env.outcomes = [503, 503]
    d = env.send()
    env.clock.pump([0.1 + 1e-9, 0.1 + 1e-9])
    assert len(env.sent) == 3
    assert not d.called
    env.clock.advance(0.79)
    assert not d.called
    env.clock.advance(0.01)
    env.result(d).trap(UpstreamTimeout)
    assert env.sent[2].cancelled
    assert env.clock.getDelayedCalls() == []
    assert (env.cluster.retriesActive, env.cluster.breakers.retries, env.cluster.active) == (0, 0, 0)


def test_routeTimeoutDuringBackoff() -> None:
    env = Env(policy("5xx", numRetries=5, backoff=Backoff(5.0, 5.0)), timeout=1.0)
    env.outcomes = [503]
    d = env.send()
    env.clock.advance(1.0)
    env.result(d).trap(UpstreamTimeout)
    assert env.clock.getDelayedCalls() == []
    assert len(env.sent) == 1
    assert env.cluster.retriesActive == 0


def stream(length: Any = UNKNOWN_LENGTH) -> RequestBodyStream:
    calls: List[str] = []
    body = RequestBodyStream(length, lambda: calls.append("pause"), lambda: calls.append("resume"))
    body.calls = calls  # type: ignore[attr-defined]
    return body


def feed(body: RequestBodyStream, data: bytes, piece: int) -> None:
    for i in range(0, len(data), piece):
        body.write(data[i : i + piece])
    body.finish()


def test_bodyForwardedBeforeTheClientHasSentIt() -> None:
    """
    On a route with a retry policy the first try is sent the body as it
    arrives, not once it is whole.
    """
    body = stream()
    env = Env(policy("5xx", "connect-failure", numRetries=1))
    d = env.send(makeRequest(b"/upload", method=b"POST", body=body))
    assert len(env.sent) == 1
    body.write(b"first chunk")
    (sent,) = env.sent
    assert (sent.body, sent.bodyEnded) == (b"first chunk", False)
    body.write(b", second")
    body.finish()
    assert (sent.body, sent.bodyEnded) == (b"first chunk, second", True)
    sent.answer(200)
    assert env.result(d).code == 200


@pytest.mark.parametrize("outcome", [refused, 503])
def test_retryReplaysTheCopyThenTheRestAsItArrives(outcome: Any) -> None:
    """
    A try that fails while the client is still sending is retried: the next
    try is sent what was kept, then the rest of the body as it arrives.
    """
    body = stream(12)
    env = Env(policy("5xx", "connect-failure", numRetries=1))
    d = env.send(makeRequest(b"/upload", method=b"POST", body=body))
    body.write(b"abcd")
    env.sent[0].answer(_outcome(outcome))
    # Arrives during the backoff: kept for the next try.
    body.write(b"efgh")
    env.run(d)
    first, second = env.sent
    assert (first.body, second.body) == (b"abcd", b"abcdefgh")
    assert second.request.body.length == 12
    body.write(b"ijkl")
    body.finish()
    assert (first.body, first.bodyEnded) == (b"abcd", False)
    assert (second.body, second.bodyEnded) == (b"abcdefghijkl", True)
    second.answer(200)
    response = env.result(d)
    assert response.code == 200
    assert response.headers.getRawHeaders(ATTEMPTS_HEADER) == [b"2"]
    assert not body.stopped


@pytest.mark.parametrize("declared", [True, False])
def test_smallBodyReplayedToEveryTry(declared: bool) -> None:
    data = random.Random(5).randbytes(64 * 1024)
    body = stream(len(data) if declared else UNKNOWN_LENGTH)
    env = Env(policy("5xx", "connect-failure", numRetries=3))
    d = env.send(makeRequest(b"/upload", method=b"POST", body=body))
    feed(body, data, 1000)
    assert env.sent[0].body == data
    for outcome in [503, refused(), 502, 200]:
        env.sent[-1].answer(outcome)
        env.run(d)
    response = env.result(d)
    assert response.code == 200
    assert len(env.sent) == 4
    for sent in env.sent:
        assert sent.body == data
        assert sent.bodyEnded
        assert sent.request.body.length == (len(data) if declared else UNKNOWN_LENGTH)


@pytest.mark.parametrize("declared", [True, False])
@pytest.mark.parametrize("size, tries", [(1000, 2), (200 * 1024, 1)])
def test_bodyCompleteBeforeRouting(size: int, tries: int, declared: bool) -> None:
    """
    A body the client has sent whole before the request is routed is kept
    (or streamed, when too big) all the same.
    """
    data = random.Random(size).randbytes(size)
    body = stream(size if declared else UNKNOWN_LENGTH)
    feed(body, data, 8192)
    env = Env(policy("5xx", numRetries=1))
    env.outcomes = [503, 200]
    response = env.result(env.send(makeRequest(b"/", method=b"POST", body=body)))
    assert response.code == (200 if tries == 2 else 503)
    assert [s.body for s in env.sent] == [data] * tries
    assert all(s.bodyEnded for s in env.sent)


def test_emptyBodyReplayed() -> None:
    body = stream(0)
    env = Env(policy("5xx", numRetries=1))
    env.outcomes = [503, 200]
    d = env.send(makeRequest(b"/", method=b"POST", body=body))
    assert env.result(d).code == 200
    assert [s.body for s in env.sent] == [b"", b""]


@pytest.mark.parametrize("declared", [True, False])
def test_bigBodySentOnceNeverRetried(declared: bool) -> None:
    """
    A try answered after the body has passed the limit is not retried, and
    a response that came before the body ended still gets all of it.
    """
    data = random.Random(6).randbytes(1024 * 1024)
    body = stream(len(data) if declared else UNKNOWN_LENGTH)
    env = Env(policy("5xx", "connect-failure", "reset", numRetries=3))
    request = makeRequest(b"/upload", method=b"POST", body=body)
    d = env.send(request)
    for i in range(0, 200000, 10000):
        body.write(data[i : i + 10000])
    (sent,) = env.sent
    assert sent.body == data[:200000]
    sent.answer(503)
    response = env.result(d)
    assert response.code == 503
    assert response.headers.getRawHeaders(ATTEMPTS_HEADER) == [b"1"]
    for i in range(200000, len(data), 10000):
        body.write(data[i : i + 10000])
    body.finish()
    assert sent.body == data
    assert sent.bodyEnded
    assert len(env.sent) == 1
    assert request.attempts == 1
    assert env.cluster.retries == 0


def test_bigBodyFailureNotRetried() -> None:
    """
    A try that fails after the body has passed the limit is not retried:
    the client is answered with its error.
    """
    body = stream()
    env = Env(policy("connect-failure", numRetries=3))
    d = env.send(makeRequest(b"/", method=b"POST", body=body))
    for _ in range(25):
        body.write(b"x" * 4096)
    env.sent[0].fail(refused())
    reply = env.result(d)
    assert (reply.cause, reply.headers.getRawHeaders(ATTEMPTS_HEADER)) == ("upstream_connect_failure", [b"1"])
    assert len(env.sent) == 1
    assert env.cluster.retries == 0


def test_retryBufferLimitFromMesh() -> None:
    env = Env(policy("5xx", numRetries=1))
    env.router = Router(
        "outbound",
        MeshConfig(clusters=env.mesh.clusters, routes=env.mesh.routes, retryBufferLimit=10),
        {"a": env.cluster},
        env.clock,
        MaxRandom(),
    )
    body = stream()
    d = env.send(makeRequest(b"/", method=b"POST", body=body))
    feed(body, b"0123456789A", 3)
    env.sent[0].answer(503)
    assert env.result(d).code == 503
    assert [s.body for s in env.sent] == [b"0123456789A"]


def test_noRetryPolicyBodyPassedAsIs() -> None:
    """
    A route without retries sends the client's body producer itself.
    """
    body = stream()
    env = Env(None)
    env.send(makeRequest(b"/", method=b"POST", body=body))
    assert env.sent[0].request.body is body


class Consumer:
    """
    A try's consumer of the body: records what it is written.
    """

    def __init__(self) -> None:
        self.chunks: List[bytes] = []

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


def start(producer: Any) -> Any:
    """
    Start C{producer} on a new L{Consumer}; return the consumer, with the
    outcome of the producing in its C{results}.
    """
    consumer = Consumer()
    results: List[Any] = []
    producer.startProducing(consumer).addBoth(results.append)
    consumer.results = results  # type: ignore[attr-defined]
    return consumer


class TestReplayableBody:
    def test_noBody(self) -> None:
        body = ReplayableBody(None, 10)
        assert body.produce() is None
        assert body.replayable()
        assert body.produce(last=True) is None

    def test_bufferedBodyHandedToEveryTry(self) -> None:
        buffered = BufferedBody(b"abc")
        body = ReplayableBody(buffered, 1)
        assert body.produce() is buffered
        assert body.replayable()
        assert body.produce() is buffered

    def test_bufferedBodyProducesEachTime(self) -> None:
        body = BufferedBody(b"data")
        for _ in range(2):
            chunks: List[bytes] = []

            class Consumer:
                write: Callable[[bytes], None] = chunks.append

            done: List[Any] = []
            body.startProducing(Consumer()).addCallback(done.append)
            assert (chunks, done) == ([b"data"], [None])

    @pytest.mark.parametrize("length", [5, UNKNOWN_LENGTH])
    def test_lengthOfEveryTry(self, length: Any) -> None:
        body = ReplayableBody(stream(length), 10)
        assert body.produce().length == length
        assert body.produce(last=True).length == length

    def test_streamedAsItArrives(self) -> None:
        """
        The first try is written each piece of the body as it arrives.
        """
        source = stream()
        body = ReplayableBody(source, 100)
        consumer = start(body.produce())
        source.write(b"abc")
        assert (consumer.data, consumer.results) == (b"abc", [])
        source.write(b"def")
        assert consumer.data == b"abcdef"
        source.finish()
        assert consumer.results == [None]
        assert body.replayable()

    def test_notStartedUntilATryProduces(self) -> None:
        """
        The source is left to hold the body until a try has a connection to
        send it on.
        """
        source = stream()
        body = ReplayableBody(source, 100)
        producer = body.produce()
        source.write(b"abc")
        consumer = start(producer)
        assert consumer.data == b"abc"

    def test_copyReplayedThenTheRest(self) -> None:
        source = stream()
        body = ReplayableBody(source, 100)
        first = start(body.produce())
        source.write(b"abc")
        body.abandon()
        assert source.calls == ["pause"]
        source.write(b"def")
        assert first.data == b"abc"
        second = start(body.produce())
        assert second.data == b"abcdef"
        assert source.calls == ["pause", "resume"]
        source.write(b"ghi")
        source.finish()
        assert (first.data, first.results) == (b"abc", [])
        assert (second.data, second.results) == (b"abcdefghi", [None])

    def test_replayAfterTheEnd(self) -> None:
        source = stream()
        body = ReplayableBody(source, 100)
        first = start(body.produce())
        feed(source, b"abcdef", 2)
        assert first.results == [None]
        second = start(body.produce(last=True))
        assert (second.data, second.results) == (b"abcdef", [None])
        assert not body.replayable()

    def test_overflowMakesItNotReplayable(self) -> None:
        """
        Past the limit the copy is dropped, and the try under way is sent
        the rest of the body all the same.
        """
        source = stream()
        body = ReplayableBody(source, 5)
        consumer = start(body.produce())
        source.write(b"abc")
        source.write(b"de")
        assert body.replayable()
        source.write(b"f")
        assert not body.replayable()
        source.write(b"ghi")
        source.finish()
        assert (consumer.data, consumer.results) == (b"abcdefghi", [None])
        assert not source.stopped

    def test_declaredTooBig(self) -> None:
        source = stream(11)
        body = ReplayableBody(source, 10)
        assert not body.replayable()
        consumer = start(body.produce())
        feed(source, b"0123456789A", 4)
        assert (consumer.data, consumer.results) == (b"0123456789A", [None])

    def test_tryAfterOverflowFails(self) -> None:
        source = stream()
        body = ReplayableBody(source, 2)
        start(body.produce())
        source.write(b"abc")
        late = start(body.produce())
        late.results[0].trap(BodyNotReplayable)

    def test_backPressure(self) -> None:
        """
        A try's consumer pausing its producer pauses the source.
        """
        source = stream()
        body = ReplayableBody(source, 100)
        producer = body.produce()
        consumer = start(producer)
        producer.pauseProducing()
        assert source.calls == ["pause"]
        source.write(b"abc")
        assert consumer.data == b""
        producer.resumeProducing()
        assert source.calls == ["pause", "resume"]
        assert consumer.data == b"abc"

    def test_pausedDuringReplay(self) -> None:
        """
        A try that pauses while it is written the copy leaves the source
        paused until it resumes.
        """
        source = stream()
        body = ReplayableBody(source, 100)
        start(body.produce())
        source.write(b"abc")
        body.abandon()
        source.write(b"def")
        producer = body.produce()
        consumer = Consumer()
        consumer.write = lambda data: (consumer.chunks.append(data), producer.pauseProducing())  # type: ignore[method-assign]
        producer.startProducing(consumer)
        assert consumer.data == b"abc"
        assert source.calls == ["pause"]
        producer.resumeProducing()
        assert consumer.data == b"abcdef"

    def test_sourceFailure(self) -> None:
        """
        A body that fails (the client went away) fails the try under way
        and every later one.
        """
        source = stream()
        body = ReplayableBody(source, 100)
        first = start(body.produce())
        source.write(b"abc")
        source.fail(Failure(ValueError("client went away")))
        first.results[0].trap(ValueError)
        assert not body.replayable()
        second = start(body.produce())
        second.results[0].trap(ValueError)
        assert second.data == b""

    def test_sourceFailedBeforeAnyTry(self) -> None:
        source = stream()
        source.fail(Failure(ValueError("client went away")))
        body = ReplayableBody(source, 100)
        start(body.produce()).results[0].trap(ValueError)
        assert not body.replayable()

    def test_trailers(self) -> None:
        """
        Each try's producer shows the source's trailers as they are when
        read.
        """
        source = stream()
        body = ReplayableBody(source, 100)
        producer = body.produce()
        assert producer.trailers is None
        trailers = Headers({b"grpc-status": [b"0"]})
        source.trailers = trailers  # type: ignore[attr-defined]
        assert producer.trailers is trailers
        assert body.produce().trailers is trailers

    def test_stoppedTryWithARetryToComeKeepsTheSource(self) -> None:
        source = stream()
        body = ReplayableBody(source, 100)
        producer = body.produce()
        first = start(producer)
        source.write(b"abc")
        producer.stopProducing()
        assert not source.stopped
        assert source.calls == ["pause"]
        assert body.replayable()
        source.write(b"def")
        second = start(body.produce())
        source.finish()
        assert (first.data, first.results) == (b"abc", [])
        assert (second.data, second.results) == (b"abcdef", [None])

    def test_stoppedLastTryStopsTheSource(self) -> None:
        source = stream()
        body = ReplayableBody(source, 100)
        start(body.produce())
        source.write(b"abc")
        producer = body.produce(last=True)
        consumer = start(producer)
        assert consumer.data == b"abc"
        producer.stopProducing()
        assert source.stopped

    def test_stoppedTryPastTheLimitStopsTheSource(self) -> None:
        source = stream()
        body = ReplayableBody(source, 2)
        producer = body.produce()
        start(producer)
        source.write(b"abc")
        producer.stopProducing()
        assert source.stopped

    def test_doneStopsAnIdleSource(self) -> None:
        source = stream()
        body = ReplayableBody(source, 100)
        start(body.produce())
        source.write(b"abc")
        body.abandon()
        body.done()
        assert source.stopped
        assert not body.replayable()

    def test_doneLeavesTheLastTryStreaming(self) -> None:
        """
        The try a response came on may still be sent the body (a stream
        both ways): it is, and the source is stopped only if it stops.
        """
        source = stream()
        body = ReplayableBody(source, 100)
        producer = body.produce()
        consumer = start(producer)
        source.write(b"abc")
        body.done()
        assert not source.stopped
        source.write(b"def")
        assert consumer.data == b"abcdef"
        producer.stopProducing()
        assert source.stopped


def test_errorReplySaysHowManyAttempts() -> None:
    env = Env(policy("connect-failure", numRetries=2))
    env.outcomes = [refused(), refused(), refused()]
    request = makeRequest(b"/r")
    reply = env.result(env.send(request))
    assert isinstance(reply, LocalReply), reply
    assert (reply.code, reply.cause) == (503, "upstream_connect_failure")
    assert reply.headers.getRawHeaders(ATTEMPTS_HEADER) == [b"3"]
    assert reply.headers.getRawHeaders(b"x-easymesh-error") == [b"upstream_connect_failure"]
    assert request.attempts == 3
