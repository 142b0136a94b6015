"""
Tests for L{easymesh.tcpproxy}: a C{tcp} listener's connections, over
L{StringTransport}s with a L{Clock}, to a real L{Cluster} whose upstreams
connect when the test says; and for the C{listeners} of the config file.
"""

from __future__ import annotations

import json
import random
from typing import Any, Dict, List

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from easymesh.accesslog import AccessLog
from easymesh.cluster.cluster import Cluster
from easymesh.config.addresses import UpstreamURL
from easymesh.config.files import readConfigFile
from easymesh.config.mesh import CircuitBreakers, ClusterConfig, ListenerSpec, MeshConfig, OutlierDetection
from easymesh.config.model import ConfigError
from easymesh.config.validate import validateMesh
from easymesh.inflight import InFlight
from easymesh.ops.metrics import Metrics
from easymesh.ops.telemetry import Telemetry
from easymesh.runtime import MeshRuntime
from easymesh.tcpproxy import TCPListener


class Transport(StringTransport):
    """
    A L{StringTransport} that records a closed sending half and the
    producers registered with it.
    """

    def __init__(self, peer: Any = None) -> None:
        super().__init__(peerAddress=peer)
        self.writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


class Upstream:
    """
    A TCP endpoint's upstream whose connections the test completes.
    """

    def __init__(self, url: UpstreamURL, settings: Any, reactor: Any, breakers: Any = None, tls: Any = None) -> None:
        self.url = url
        self.attempts: List[Any] = []

    def connect(self, factory: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.attempts.append((factory, d))
        return d

    def succeed(self) -> Any:
        factory, d = self.attempts[-1]
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(Transport())
        d.callback(protocol)
        return protocol

    def refuse(self) -> None:
        self.attempts[-1][1].errback(Failure(ConnectionRefusedError()))

    def idleConnections(self) -> int:
        return 0

    def close(self) -> "Deferred[None]":
        return succeed(None)


class Runtime:
    def __init__(self, clusters: Dict[str, Cluster]) -> None:
        self.clusters = clusters


class World:
    def __init__(self, endpoints: int = 1, **cluster: Any) -> None:
        self.clock = Clock()
        self.upstreams: Dict[str, Upstream] = {}
        urls = tuple(UpstreamURL.parse(f"tcp://10.0.0.{i + 1}:6379") for i in range(endpoints))
        config = ClusterConfig("redis", endpoints=urls, weights=(1,) * endpoints, **cluster)
        self.cluster = Cluster(config, self.clock, random.Random(1), makeUpstream=self._make)
        self.cluster.start()
        self.metrics = Metrics(processMetrics=False)
        self.inflight = InFlight()
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.listener = TCPListener(
            "cache", Runtime({"redis": self.cluster}), "redis", self.clock, self.inflight, 60.0,
            AccessLog("json"), Telemetry(self.metrics),
        )  # fmt: skip

    def _make(self, url: UpstreamURL, settings: Any, reactor: Any, breakers: Any = None, tls: Any = None) -> Upstream:
        upstream = self.upstreams[url.host] = Upstream(url, settings, reactor, breakers, tls)
        return upstream

    def accept(self) -> Any:
        peer = IPv4Address("TCP", "10.9.9.9", 40000)
        client = self.listener.buildProtocol(peer)
        client.makeConnection(Transport(peer))
        return client

    def access(self) -> List[Dict[str, Any]]:
        return [json.loads(e["line"]) for e in self.events if e.get("log_namespace") == "easymesh.access"]

    def close(self) -> None:
        globalLogPublisher.removeObserver(self.events.append)
        self.cluster.stop()


@pytest.fixture
def world() -> Any:
    w = World()
    yield w
    w.close()


def test_bytesBothWays(world: World) -> None:
    """
    An accepted connection is connected to the cluster's endpoint at once,
    reads nothing until then, and then bytes pass both ways; each side's
    transport produces for the other (back-pressure).
    """
    client = world.accept()
    assert client.transport.producerState == "paused"
    upstream = world.upstreams["10.0.0.1"].succeed()
    assert client.transport.producerState == "producing"
    client.transport.producer.pauseProducing()
    assert upstream.transport.producerState == "paused"
    client.transport.producer.resumeProducing()
    upstream.transport.producer.pauseProducing()
    assert client.transport.producerState == "paused"
    upstream.transport.producer.resumeProducing()
    client.dataReceived(b"PING\r\n")
    assert upstream.transport.value() == b"PING\r\n"
    upstream.dataReceived(b"+PONG\r\n")
    assert client.transport.value() == b"+PONG\r\n"
    assert world.cluster.breakers.connections == 1
    assert world.inflight.count == 1


def test_halfClose(world: World) -> None:
    """
    A side that ends its sending half ends the other's, and the other
    direction goes on; once both have, the pair closes and is logged
    (as the first to end closed it).
    """
    client = world.accept()
    upstream = world.upstreams["10.0.0.1"].succeed()
    client.readConnectionLost()
    assert upstream.transport.writeClosed and not client.transport.writeClosed
    upstream.dataReceived(b"late answer")
    assert client.transport.value() == b"late answer"
    upstream.readConnectionLost()
    assert client.transport.writeClosed
    upstream.connectionLost(Failure(ConnectionDone()))
    client.connectionLost(Failure(ConnectionDone()))
    [line] = world.access()
    assert line["bytes_in"] == 0 and line["bytes_out"] == 11 and line["ended"] == "client_closed"
    assert line["upstream"] == "10.0.0.1:6379" and line["listener"] == "cache"
    assert world.cluster.breakers.connections == 0 and world.inflight.count == 0


def test_idleTimeout(world: World) -> None:
    client = world.accept()
    upstream = world.upstreams["10.0.0.1"].succeed()
    world.clock.advance(59)
    client.dataReceived(b"x")
    world.clock.advance(59)
    assert not client.transport.disconnecting
    world.clock.advance(1)
    # Both are closed without losing what is in flight: their sending ends.
    assert client.transport.writeClosed and upstream.transport.writeClosed
    client.connectionLost(Failure(ConnectionDone()))
    assert world.access()[0]["ended"] == "idle_timeout"
    text = world.metrics.exposition()[0].decode()
    assert 'easymesh_tcp_connections_total{cluster="redis",ended="idle_timeout",listener="cache"} 1.0' in text


def test_connectFailure(world: World) -> None:
    """
    A refused connect closes the client's connection at once, counts
    against the endpoint, and is logged with its cause.
    """
    client = world.accept()
    world.upstreams["10.0.0.1"].refuse()
    assert client.transport.disconnecting
    [endpoint] = world.cluster.endpoints
    assert endpoint.failures == 1 and endpoint.active == 0
    client.connectionLost(Failure(ConnectionDone()))
    assert world.access()[0]["ended"] == "upstream_connect_failure"


def test_connectFailuresEject() -> None:
    w = World(2, outlierDetection=OutlierDetection(consecutiveGatewayFailure=2, maxEjectionPercent=50.0))
    try:
        for _ in range(6):
            client = w.accept()
            endpoint = [u for u in w.upstreams.values() if u.attempts and not u.attempts[-1][1].called]
            if endpoint[0].url.host == "10.0.0.1":
                endpoint[0].refuse()
            else:
                endpoint[0].succeed()
            client.connectionLost(Failure(ConnectionDone()))
        a1, a2 = w.cluster.endpoints
        assert a1.ejected and not a2.ejected
    finally:
        w.close()


def test_clientGoneWhileConnecting(world: World) -> None:
    client = world.accept()
    client.connectionLost(Failure(ConnectionDone()))
    factory, d = world.upstreams["10.0.0.1"].attempts[-1]
    assert d.called
    [endpoint] = world.cluster.endpoints
    assert endpoint.active == 0 and endpoint.failures == 0
    assert world.inflight.count == 0


def test_breakerFull() -> None:
    w = World(circuitBreakers=CircuitBreakers(maxConnections=1))
    try:
        w.accept()
        w.upstreams["10.0.0.1"].succeed()
        second = w.accept()
        assert second.transport.disconnecting
        assert len(w.upstreams["10.0.0.1"].attempts) == 1
        second.connectionLost(Failure(ConnectionDone()))
        assert w.access()[0]["ended"] == "overflow"
    finally:
        w.close()


def test_drainClosesAll(world: World) -> None:
    client = world.accept()
    upstream = world.upstreams["10.0.0.1"].succeed()
    done = world.listener.closeAll()
    assert not done.called
    assert client.transport.writeClosed and upstream.transport.writeClosed
    client.connectionLost(Failure(ConnectionDone()))
    assert done.called
    assert world.access()[0]["ended"] == "drained"


CONFIG = """\
listeners:
  - name: cache
    address: tcp:16380:interface=127.0.0.1
    protocol: tcp
    cluster: redis
    idle_timeout: 5m
  - name: admin-api
    address: tcp:18099:interface=127.0.0.1
    cluster: api
clusters:
  redis:
    endpoints: ["tcp://127.0.0.1:6379"]
  api:
    endpoints: ["http://127.0.0.1:8000"]
authorization:
  admin-api:
    default: deny
"""


def test_listenersFromTheFile(tmp_path: Any) -> None:
    """
    The file's listeners are read with their settings; an http listener
    with a cluster and no routes gets a default route, and may be named
    by authorization.
    """
    from easymesh.config.model import SidecarConfig

    path = tmp_path / "mesh.yaml"
    path.write_text(CONFIG)
    values = readConfigFile(str(path))
    cache, api = values.mesh["listeners"]
    assert cache == ListenerSpec("cache", "tcp:16380:interface=127.0.0.1", "tcp", "redis", idleTimeout=300.0)
    assert api.protocol == "http" and api.cluster == "api"
    mesh = SidecarConfig(meshFile=values.mesh).mesh()
    assert mesh.routes["admin-api"][0].cluster == "api"
    assert "cache" not in mesh.routes
    assert validateMesh(mesh) == []
    assert mesh.httpListenerNames() == ("outbound", "inbound", "admin-api")


@pytest.mark.parametrize(
    "listener, reason",
    [
        ("{name: inbound, address: 'tcp:1', protocol: tcp, cluster: redis}", "is made by the flags"),
        ("{name: Cache, address: 'tcp:1', protocol: tcp, cluster: redis}", "lower-case"),
        ("{name: c, address: 'nope:1', protocol: tcp, cluster: redis}", "invalid endpoint"),
        ("{name: c, address: 'tcp:1', protocol: udp, cluster: redis}", "must be one of"),
        ("{name: c, address: 'tcp:1', protocol: tcp}", "needs a cluster"),
        ("{name: c, address: 'tcp:1', protocol: tcp, cluster: redis, allow: ['*']}", "tls: mtls"),
        ("{name: c, address: 'tcp:1', protocol: tcp, cluster: redis, filters: [x]}", "for http listeners"),
        ("{address: 'tcp:1'}", "needs 'name'"),
    ],
)
def test_badListenerRefusedWithItsLine(tmp_path: Any, listener: str, reason: str) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(f"clusters:\n  redis:\n    endpoints: ['tcp://127.0.0.1:6379']\nlisteners:\n  - {listener}\n")
    with pytest.raises(ConfigError) as caught:
        readConfigFile(str(path))
    assert "mesh.yaml:5" in str(caught.value) and reason in str(caught.value), str(caught.value)


def test_tcpAndHttpClustersKeptApart() -> None:
    """
    A tcp listener's cluster must have tcp:// or tls:// endpoints, and a
    route's must not.
    """
    from easymesh.config.mesh import Route

    tcp = ClusterConfig("redis", endpoints=(UpstreamURL.parse("tcp://127.0.0.1:6379"),), weights=(1,))
    http = ClusterConfig("api", endpoints=(UpstreamURL.parse("http://127.0.0.1:80"),), weights=(1,))
    mesh = MeshConfig(
        clusters={"redis": tcp, "api": http},
        routes={"outbound": (Route("r", cluster="redis"),)},
        listeners=(ListenerSpec("c", "tcp:1", "tcp", "api"),),
    )
    reasons = [str(p) for p in validateMesh(mesh)]
    assert any("listeners.0.cluster: a tcp listener's cluster needs tcp:// or tls://" in r for r in reasons), reasons
    assert any("routes.outbound.0: cluster 'redis' has tcp://" in r for r in reasons), reasons


def test_reloadChangingListenersRefused() -> None:
    """
    Listeners change only with a restart: a reload that changes them is
    refused, and the running configuration stays.
    """
    from easymesh.config.validate import InvalidConfig

    clock = Clock()
    runtime = MeshRuntime(clock)
    tcp = ClusterConfig("redis", endpoints=(UpstreamURL.parse("tcp://127.0.0.1:6379"),), weights=(1,))
    first = MeshConfig(clusters={"redis": tcp}, listeners=(ListenerSpec("c", "tcp:1", "tcp", "redis"),))
    runtime.apply(first)
    with pytest.raises(InvalidConfig, match="only by a restart"):
        runtime.apply(MeshConfig(clusters={"redis": tcp}))
    assert runtime.mesh is first
    runtime.stop()


def test_upstreamURLs() -> None:
    assert str(UpstreamURL.parse("tls://db.internal:5432")) == "tls://db.internal:5432"
    with pytest.raises(ValueError, match="needs a port"):
        UpstreamURL.parse("tcp://db.internal")


def test_healthCheckIsAConnect() -> None:
    """
    A tcp cluster's health check connects to each endpoint and closes the
    connection; endpoints that refuse it are taken out, and brought back
    once they accept again.
    """
    from easymesh.config.mesh import HealthCheck

    check = HealthCheck(interval=5.0, timeout=1.0, healthyThreshold=1, unhealthyThreshold=2)
    w = World(healthCheck=check)
    try:
        upstream = w.upstreams["10.0.0.1"]
        [endpoint] = w.cluster.endpoints
        for _ in range(2):
            w.clock.advance(5)
            assert upstream.attempts, "no probe was sent"
            upstream.refuse()
        assert not endpoint.healthy
        w.clock.advance(5)
        probe = upstream.succeed()
        assert probe.transport.disconnecting
        assert endpoint.healthy
    finally:
        w.close()


def test_tcpHealthCheckAsksNoPath() -> None:
    from easymesh.config.mesh import HealthCheck
    from easymesh.config.validate import validateCluster

    tcp = ClusterConfig(
        "redis",
        endpoints=(UpstreamURL.parse("tcp://127.0.0.1:6379"),),
        weights=(1,),
        healthCheck=HealthCheck(path="/healthz"),
    )
    assert [str(p) for p in validateCluster(tcp)] == [
        "health_check.path: a tcp:// or tls:// cluster's check is a connect: no path"
    ]


def test_dashboardSeesTheListener() -> None:
    """
    The live figures count a tcp listener's connections under its name:
    one that reached its upstream as served, one that did not as an error
    with its cause.
    """
    from easymesh.ops.live import LiveStats

    w = World()
    try:
        live = LiveStats(w.clock)
        w.listener.telemetry = Telemetry(w.metrics, live)
        client = w.accept()
        w.clock.advance(0.25)
        w.upstreams["10.0.0.1"].succeed()
        client.connectionLost(Failure(ConnectionDone()))
        refused = w.accept()
        w.upstreams["10.0.0.1"].refuse()
        refused.connectionLost(Failure(ConnectionDone()))
        assert live.total == 2
        [error] = list(live.errors)
        assert error["listener"] == "cache" and error["reason"] == "upstream_connect_failure"
    finally:
        w.close()
