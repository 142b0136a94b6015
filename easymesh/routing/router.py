# -*- test-case-name: tests.test_routing -*-
"""
What a listener does with a request once its headers are prepared and its
filters have run: match a route, apply its rate limit, answer directly or
choose a cluster, rewrite, and send it, retrying under the route's policy
within its timeout.
"""

from __future__ import annotations

import random as _random
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from easymesh.cluster.cluster import Cluster
from easymesh.config.mesh import MeshConfig, RetryPolicy, Route
from easymesh.errors import NoRoute, Overflow, ProxyError, UpstreamTimeout, classify
from easymesh.headers import commaList
from easymesh.message import LocalReply, ProxyRequest, Response, discardResponse
from easymesh.routing.matcher import RouteTable
from easymesh.routing.paths import normalisePath
from easymesh.routing.ratelimit import KeyedRateLimiter, sourceAddress
from easymesh.routing.retry import ReplayableBody, backoffDelay, shouldRetry

Reply = Response

ATTEMPTS_HEADER = b"x-easymesh-attempts"


class Router:
    """
    One listener's routes over a set of clusters.

    @param previous: The router this one replaces: the buckets of its rate
        limits are kept for routes of the same name and limit, so that a
        reload does not let every client burst again.
    """

    log = Logger()

    def __init__(
        self,
        listener: str,
        mesh: MeshConfig,
        clusters: Mapping[str, Cluster],
        clock: Any,
        random: Optional[_random.Random] = None,
        previous: Optional["Router"] = None,
    ) -> None:
        self.listener = listener
        self.mesh = mesh
        self.table = RouteTable(mesh.routes.get(listener, ()))
        self.clusters = clusters
        self._clock = clock
        self._random = random if random is not None else _random.Random()
        kept: Mapping[str, KeyedRateLimiter] = {}
        if previous is not None and previous.mesh.xffNumTrustedHops == mesh.xffNumTrustedHops:
            kept = previous._limiters
        self._limiters: Dict[str, KeyedRateLimiter] = {}
        for route in self.table.routes:
            if route.rateLimit is None:
                continue
            limiter = kept.get(route.name)
            if limiter is None or limiter.config != route.rateLimit:
                limiter = KeyedRateLimiter(route.rateLimit, clock, mesh.xffNumTrustedHops)
            self._limiters[route.name] = limiter

    def route(self, request: ProxyRequest) -> Deferred[Reply]:
        """
        Route and send a request.

        @return: A L{Deferred} firing with the reply, or failing with a
            L{ProxyError} (or a failure L{classify} maps to one).  With a
            retry policy, the reply (the error's too, after the last try)
            says in L{ATTEMPTS_HEADER} how many tries were made.
        """
        try:
            path = normalisePath(request.target, self.mesh.paths)
            route = self.table.match(request.method, path, request.headers)
            if route is None:
                raise NoRoute(f"no route for {path[:200]!r}")
            request.route = route.name
            limiter = self._limiters.get(route.name)
            if limiter is not None:
                refused = limiter.check(request)
                if refused is not None:
                    raise refused
        except ProxyError:
            return fail()
        if route.directResponse is not None:
            return succeed(_direct(route))
        cluster = self.clusters[self._clusterName(route)]
        request.cluster = cluster.name
        request.streamIdleTimeout = cluster.config.streamIdleTimeout
        if request.upgrade is not None:
            request.upgrade = allowedUpgrade(request.upgrade, route.upgradeTypes)
            idle = route.tunnelIdleTimeout
            request.tunnelIdleTimeout = idle if idle is not None else self.mesh.tunnelIdleTimeout
            request.tunnelMaxLifetime = route.tunnelMaxLifetime
        self._shortenDeadline(request, route)
        if route.prefixRewrite is not None or route.hostRewrite is not None:
            _rewrite(request, route, path)
        hashKey = self._hashKey(request, cluster) if cluster.config.hashOn is not None else None
        policy = route.retryPolicy
        if policy is None or policy.numRetries == 0:
            request.attempts = 1
            d = cluster.request(request, policy.perTryTimeout if policy else None, hashKey)
        else:
            d = Deferred.fromCoroutine(self._withRetries(request, route, cluster, hashKey))
        if route.timeout is not None:
            d.addTimeout(route.timeout, self._clock, onTimeoutCancel=_routeTimeout)
        return d

    def _shortenDeadline(self, request: ProxyRequest, route: Route) -> None:
        """
        A gRPC call's deadline is the sooner of its own and its route's
        timeout.
        """
        if request.deadline is not None and route.timeout is not None:
            request.deadline = min(request.deadline, self._clock.seconds() + route.timeout)

    def _clusterName(self, route: Route) -> str:
        if route.cluster is not None:
            return route.cluster
        weighted = route.weightedClusters
        total = sum(w for _, w in weighted)
        point = self._random.random() * total
        for name, weight in weighted:
            point -= weight
            if point < 0:
                return name
        return next(name for name, w in reversed(weighted) if w > 0)

    def _hashKey(self, request: ProxyRequest, cluster: Cluster) -> Optional[bytes]:
        hashOn = cluster.config.hashOn
        if hashOn is None:
            return None
        if hashOn.header is not None:
            values = request.headers.getRawHeaders(hashOn.header.encode("ascii"))
            return values[0] if values else None
        if hashOn.cookie is not None:
            return _cookie(request.headers, hashOn.cookie.encode("latin-1"))
        return sourceAddress(request, self.mesh.xffNumTrustedHops).encode("latin-1")

    async def _withRetries(
        self, request: ProxyRequest, route: Route, cluster: Cluster, hashKey: Optional[bytes]
    ) -> Reply:
        policy = route.retryPolicy
        assert policy is not None
        # The first try is sent the body as it arrives; a copy is kept, up to
        # the limit, for the tries that may follow.
        body = ReplayableBody(request.body, self.mesh.retryBufferLimit)
        try:
            return await self._tries(request, policy, cluster, hashKey, body)
        finally:
            # No try follows: the body goes on to the last try if it is
            # still being sent, and is stopped once that try stops.
            body.done()

    async def _tries(
        self,
        request: ProxyRequest,
        policy: RetryPolicy,
        cluster: Cluster,
        hashKey: Optional[bytes],
        body: ReplayableBody,
    ) -> Reply:
        attempt = 0
        while True:
            attempt += 1
            request.attempts = attempt
            request.body = body.produce(last=attempt > policy.numRetries)
            retrying = attempt > 1
            try:
                outcome: Any = await cluster.request(request, policy.perTryTimeout, hashKey)
            except CancelledError:
                raise
            except Exception:
                outcome = classify(Failure())
                if outcome is None:
                    raise
            finally:
                if retrying:
                    cluster.retriesActive -= 1
                    cluster.breakers.retryDone()
            failed = isinstance(outcome, ProxyError)
            if (
                attempt > policy.numRetries
                or not body.replayable()
                or isinstance(outcome, Overflow)
                or not shouldRetry(policy, outcome)
            ):
                return _final(outcome, attempt)
            if not cluster.retryBudget.allow(policy.budget, cluster.active, cluster.retriesActive):
                cluster.breakers.overflowed("retry_budget")
                self.log.debug("{cluster}: retry budget exhausted", cluster=cluster.name)
                return _final(outcome, attempt)
            if not cluster.breakers.tryRetry():
                return _final(outcome, attempt)
            body.abandon()
            if not failed:
                discardResponse(outcome)
            cluster.retriesActive += 1
            cluster.retries += 1
            try:
                await deferLater(self._clock, backoffDelay(attempt, policy.backoff, self._random))
            except BaseException:
                cluster.retriesActive -= 1
                cluster.breakers.retryDone()
                raise


def _final(outcome: Union[Response, ProxyError], attempts: int) -> Reply:
    """
    The reply for a request's last try: its response, or its error's reply,
    saying how many tries were made.
    """
    reply: Reply = outcome.reply() if isinstance(outcome, ProxyError) else outcome
    reply.headers.setRawHeaders(ATTEMPTS_HEADER, [b"%d" % (attempts,)])
    return reply


def allowedUpgrade(offered: bytes, allowed: Tuple[str, ...]) -> Optional[bytes]:
    """
    The protocols of C{offered} (an C{Upgrade} field's value) whose names
    (without a version: C{websocket}, C{h2c}) are in C{allowed} (lower
    case); L{None} if none is: the request is then forwarded without the
    upgrade.
    """
    kept = [
        token
        for token in commaList([offered])
        if token.split(b"/", 1)[0].lower().decode("latin-1") in allowed
    ]
    return b", ".join(kept) if kept else None


def _direct(route: Route) -> LocalReply:
    response = route.directResponse
    assert response is not None
    headers = Headers()
    if response.body:
        headers.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
    return LocalReply(response.status, response.body, headers)


def _rewrite(request: ProxyRequest, route: Route, path: str) -> None:
    """
    Apply a route's rewrites.  A prefix rewrite replaces what the route
    matched (its prefix, or its whole path) in the normalised C{path}, so
    that no encoding of the path can carry the old prefix past it; the
    query and anything after the path are kept byte-exact.
    """
    if route.prefixRewrite is not None:
        match = route.match
        matched = match.path if match.path is not None else (match.prefix or "/")
        if path.startswith(matched):
            rewritten = route.prefixRewrite + path[len(matched):]
            if not rewritten.startswith("/"):
                rewritten = "/" + rewritten
            target = request.target
            end = min(i for i in (target.find(b"?"), target.find(b"#"), len(target)) if i >= 0)
            request.target = rewritten.encode("latin-1") + target[end:]
    if route.hostRewrite is not None:
        request.headers.setRawHeaders(b"host", [route.hostRewrite.encode("ascii")])


def _cookie(headers: Headers, name: bytes) -> Optional[bytes]:
    for value in headers.getRawHeaders(b"cookie") or ():
        for pair in value.split(b";"):
            key, _, cookie = pair.strip().partition(b"=")
            if key == name:
                return cookie
    return None


def _routeTimeout(result: Any, seconds: float) -> Failure:
    """
    What a request cancelled by its route's timeout fails with.
    """
    return Failure(UpstreamTimeout(f"route timeout of {seconds:g}s"))
