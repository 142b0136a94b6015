# -*- test-case-name: tests.test_cluster -*-
"""
A cluster: its endpoints, how one is chosen for each request, and what
guards them (circuit breakers, outlier detection, health checks).
"""

from __future__ import annotations

import random as _random
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from easymesh.cluster.balancers import balancerFor
from easymesh.cluster.breakers import MAX_REQUESTS, Breakers
from easymesh.cluster.discovery import DnsHosts, Hosts
from easymesh.cluster.endpoint import Endpoint
from easymesh.cluster.grpchealth import grpcProbe
from easymesh.config.addresses import TCP_SCHEMES
from easymesh.cluster.health import HealthChecker
from easymesh.cluster.outlier import OutlierDetector
from easymesh.config.mesh import HEALTH_CHECK_PATH, ClusterConfig, HealthCheck
from easymesh.config.model import PoolSettings
from easymesh.errors import NoHealthyUpstream, Overflow, UpstreamConnectFailure, classify
from easymesh.grpc import GRPC_TIMEOUT, StatusWatch, formatTimeout, httpEquivalent, isGrpc, statusOf
from easymesh.interfaces import IBodySink
from easymesh.message import ProxyRequest, Response
from easymesh.routing.retry import RetryBudgetState
from easymesh.upstream import upstreamFor

#: Statuses that count as gateway failures for outlier detection.
GATEWAY_ERRORS = frozenset((502, 503, 504))


class Cluster:
    """
    A named set of endpoints with a balancer.

    @ivar active: Requests now in flight to the cluster.
    @ivar retriesActive: Retries now in flight.
    @ivar retries: Retries made so far.
    @ivar retryBudget: Caps retries across the cluster (see
        L{easymesh.routing.retry}).
    """

    log = Logger()

    def __init__(
        self,
        config: ClusterConfig,
        reactor: Any,
        random: Optional[_random.Random] = None,
        resolver: Any = None,
        makeUpstream: Callable[..., Any] = upstreamFor,
        telemetry: Any = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.name = config.name
        self._reactor = reactor
        self._makeUpstream = makeUpstream
        self._random = random if random is not None else _random.Random()
        self.pool = PoolSettings(
            config.poolSize,
            config.poolIdle,
            config.connectTimeout,
            config.timeout,
            config.tls,
            config.protocol,
        )
        self.endpoints: List[Endpoint] = []
        self.balancer = balancerFor(config.lbPolicy, self._random, reactor)
        self.breakers = Breakers(config.circuitBreakers, config.name, telemetry)
        self.active = 0
        self.retriesActive = 0
        self.retries = 0
        self.retryBudget = RetryBudgetState(reactor)
        self._panicking = False
        self.outlier = (
            OutlierDetector(
                config.outlierDetection,
                reactor,
                self.name,
                lambda: self.endpoints,
                onEject=(lambda e, reason: telemetry.ejected(self.name)) if telemetry else None,
            )
            if config.outlierDetection is not None
            else None
        )
        self.health = (
            HealthChecker(
                config.healthCheck,
                reactor,
                self.name,
                lambda: self.endpoints,
                self._probe,
                rng=self._random,
            )
            if config.healthCheck is not None
            else None
        )
        self.discovery: Optional[DnsHosts] = None
        if config.dns is not None:
            if resolver is None:
                resolver = reactor.nameResolver
            self.discovery = DnsHosts(config.dns, resolver, reactor, self.setHosts, self.name)
        else:
            self.setHosts(list(zip(config.endpoints, config.weights or [1] * len(config.endpoints))))

    def setHosts(self, hosts: Hosts) -> None:
        """
        Replace the endpoints; those that stay keep their state and
        connections, those that go have their idle connections closed.
        """
        old: Dict[Tuple[str, str, int], Endpoint] = {
            (e.url.scheme, e.url.host, e.url.port): e for e in self.endpoints
        }
        endpoints = []
        for url, weight in hosts:
            endpoint = old.pop((url.scheme, url.host, url.port), None)
            if endpoint is None:
                endpoint = Endpoint(
                    url, self._makeUpstream(url, self.pool, self._reactor, self.breakers), weight
                )
            endpoint.weight = weight
            endpoints.append(endpoint)
        self.endpoints = endpoints
        self.balancer.update(endpoints)
        if self.health is not None:
            # Probe new endpoints soon, and stop probing those gone.
            self.health.refresh()
        for gone in old.values():
            gone.upstream.close()
        if self.config.dns is not None:
            self.log.info(
                "Cluster {cluster}: endpoints now {endpoints}",
                cluster=self.name,
                endpoints=", ".join(e.key for e in endpoints),
            )

    def pick(self, hashKey: Optional[bytes] = None) -> Endpoint:
        """
        The endpoint for a request: an available one, or, when none is
        (panic mode), any.

        @raise NoHealthyUpstream: The cluster has no endpoints.
        """
        endpoints = self.endpoints
        if not endpoints:
            raise NoHealthyUpstream(f"cluster {self.name} has no endpoints")
        if not self._panicking:
            # The usual case, without a list per request: all available.
            for endpoint in endpoints:
                if not endpoint.available:
                    break
            else:
                if len(endpoints) == 1:
                    return endpoints[0]
                return self.balancer.pick(endpoints, hashKey)
        candidates = [e for e in endpoints if e.available]
        if candidates:
            if self._panicking:
                self._panicking = False
                self.log.info("Cluster {cluster}: endpoints available again; panic over", cluster=self.name)
        else:
            candidates = endpoints
            if not self._panicking:
                self._panicking = True
                self.log.warn(
                    "Cluster {cluster}: every endpoint is ejected or unhealthy; "
                    "panic mode: balancing over all {count}",
                    cluster=self.name,
                    count=len(endpoints),
                )
        return self.balancer.pick(candidates, hashKey)

    def request(
        self,
        request: ProxyRequest,
        timeout: Optional[float] = None,
        hashKey: Optional[bytes] = None,
    ) -> Deferred[Response]:
        """
        Send a request to one endpoint.

        @param timeout: Seconds to wait for the response head once the body
            is sent, instead of the cluster's timeout.
        @return: A L{Deferred} firing with the response, or failing with a
            L{easymesh.errors.ProxyError} (or a failure
            L{easymesh.errors.classify} maps to one); C{request.upstreamHost}
            is set to the endpoint chosen.
        """
        if not self.breakers.tryRequest():
            return fail(Overflow(MAX_REQUESTS))
        try:
            endpoint = self.pick(hashKey)
        except NoHealthyUpstream:
            self.breakers.requestDone()
            return fail()
        request.upstreamHost = endpoint.key
        self.active += 1
        endpoint.started()
        started = self._reactor.seconds()
        if request.deadline is not None:
            # What is left of a gRPC call's deadline goes with each try.
            request.headers.setRawHeaders(GRPC_TIMEOUT, [formatTimeout(request.deadline - started)])
        # A bug in an upstream must not leave the request counted forever.
        try:
            d = endpoint.upstream.request(request, timeout)
        except Exception:
            d = fail()
        return d.addBoth(self._finished, endpoint, started)

    def _finished(self, result: Any, endpoint: Endpoint, started: float) -> Any:
        self.active -= 1
        self.breakers.requestDone()
        now = self._reactor.seconds()
        if isinstance(result, Failure):
            error = classify(result)
            # The endpoint's fault: no answer from it, not a client gone or
            # a request this sidecar held back.
            blamed = (
                error.cause
                if error is not None and error.code >= 502 and not isinstance(error, Overflow)
                else None
            )
            endpoint.finished(now, None, blamed)
            if self.outlier is not None and blamed is not None:
                self.outlier.record(endpoint, None, True)
        else:
            endpoint.finished(now, now - started)
            if self.telemetry is not None:
                self.telemetry.upstreamAnswered(self.name, now - started)
            if self.outlier is not None:
                code = result.code
                if code == 200 and isGrpc(result.headers):
                    status = statusOf(result.headers)
                    if status is None:
                        # Its status comes with its trailers.
                        return StatusWatch(result, lambda status, failed: self._grpcEnded(endpoint, status, failed))
                    code = httpEquivalent(status)
                self.outlier.record(endpoint, code, code in GATEWAY_ERRORS)
        return result

    def tcpConnecting(self, endpoint: Endpoint) -> float:
        """
        A C{tcp} listener starts connecting a client to C{endpoint}.

        @return: When, for L{tcpConnected} and L{tcpConnectFailed}.
        """
        endpoint.started()
        return self._reactor.seconds()

    def tcpConnected(self, endpoint: Endpoint, started: float) -> None:
        """
        The connection to C{endpoint} is made (its connect time is what
        the latency estimate learns); it counts as a success for outlier
        detection.
        """
        now = self._reactor.seconds()
        endpoint.finished(now, now - started)
        if self.outlier is not None:
            self.outlier.record(endpoint, 200)

    def tcpConnectFailed(self, endpoint: Endpoint) -> None:
        """
        Connecting to C{endpoint} failed: a gateway failure, for outlier
        detection.
        """
        endpoint.finished(self._reactor.seconds(), None, UpstreamConnectFailure.cause)
        if self.outlier is not None:
            self.outlier.record(endpoint, None, True)

    def _grpcEnded(self, endpoint: Endpoint, status: Optional[int], failed: bool) -> None:
        """
        A gRPC response from C{endpoint} has ended: count its status (as
        Envoy does, by the HTTP status that stands for it), or the failure
        of its body as a gateway failure.
        """
        if self.outlier is None:
            return
        if failed:
            self.outlier.record(endpoint, None, True)
        elif status is not None:
            code = httpEquivalent(status)
            self.outlier.record(endpoint, code, code in GATEWAY_ERRORS)

    def _probe(self, endpoint: Endpoint, check: HealthCheck) -> Deferred[int]:
        if check.grpc is not None:
            return grpcProbe(endpoint, check)
        if endpoint.url.scheme in TCP_SCHEMES:
            return _connectProbe(endpoint)
        headers = Headers()
        headers.setRawHeaders(b"host", [(check.host or endpoint.url.authority).encode("ascii")])
        headers.setRawHeaders(b"user-agent", [b"easymesh-health-check"])
        path = check.path if check.path is not None else HEALTH_CHECK_PATH
        probe = ProxyRequest(b"GET", path.encode("ascii"), headers, listener="health")
        d = endpoint.upstream.request(probe, check.timeout)
        return d.addCallback(_drainStatus)

    def start(self) -> None:
        if self.discovery is not None:
            self.discovery.start()
        if self.outlier is not None:
            self.outlier.start()
        if self.health is not None:
            self.health.start()

    def stop(self) -> Deferred[Any]:
        """
        Stop discovery and checks, and close idle connections.
        """
        if self.discovery is not None:
            self.discovery.stop()
        if self.outlier is not None:
            self.outlier.stop()
        if self.health is not None:
            self.health.stop()
        return DeferredList([e.upstream.close() for e in self.endpoints], consumeErrors=True)

    def __repr__(self) -> str:
        return f"<Cluster {self.name} {len(self.endpoints)} endpoint(s)>"


#: The most of a health check's response body read (so that its connection
#: can be reused); a longer body is cut off and its connection closed.
PROBE_BODY_LIMIT = 64 * 1024


@implementer(IBodySink)
class _Drain:
    """
    Read a health check's body and forget it, so that its connection can be
    reused; C{done} fires with the status once the body has ended, and
    cancelling it (the check's timeout) drops the connection.
    """

    def __init__(self, code: int) -> None:
        self.code = code
        self.size = 0
        self.producer: Any = None
        self.done: Deferred[int] = Deferred(self._cancel)

    def bodyStarted(self, producer: Any) -> None:
        self.producer = producer

    def bodyData(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > PROBE_BODY_LIMIT:
            self.producer.stopProducing()

    def bodyEnded(self, trailers: Any) -> None:
        if not self.done.called:
            self.done.callback(self.code)

    def bodyFailed(self, reason: Any) -> None:
        self.bodyEnded(None)

    def _cancel(self, d: Deferred[int]) -> None:
        if self.producer is not None:
            self.producer.stopProducing()


def _drainStatus(response: Response) -> Deferred[int]:
    """
    The status of a health check's response, once its body has been read:
    the check's timeout covers the whole response.
    """
    drain = _Drain(response.code)
    response.deliverBody(drain)
    return drain.done


def _connectProbe(endpoint: Endpoint) -> "Deferred[int]":
    """
    The health check of a TCP endpoint: a connection, closed at once;
    200 if it was made (the check's timeout cancels it).
    """

    def connected(protocol: Protocol) -> int:
        assert protocol.transport is not None
        protocol.transport.loseConnection()
        return 200

    d: Deferred[Any] = endpoint.upstream.connect(Factory.forProtocol(Protocol))
    return d.addCallback(connected)
