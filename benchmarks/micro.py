"""
CPU per request of easymesh's own Python path, without sockets or a
reactor loop: one listener, driven over in-memory transports, forwarding
to an in-memory upstream connection kept in the real pool.

    python benchmarks/micro.py [--requests 20000] [--profile]

It measures what the proxy's code costs (parsing, headers, filters,
upstream client, relaying), which is what changes when that code changes;
benchmarks/run.py measures the whole process under load.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport

import attrs

from easymesh.config.model import SidecarConfig
from easymesh.filters.chain import FilterChain
from easymesh.forwarder import Forwarder
from easymesh.headers import HeaderPolicy
from easymesh.listener import ProxyResource, ProxySite
from easymesh.runtime import MeshRuntime
from easymesh.tap import buildTelemetry
from easymesh.upstream.http import HTTPUpstream

REQUEST = (
    b"GET /bench?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8083\r\nUser-Agent: wrk\r\n"
    b"Accept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 23:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)


class MemoryEndpoint:
    """
    Connects a protocol to a L{StringTransport} at once.
    """

    def __init__(self) -> None:
        self.connections: list = []

    def connect(self, factory: Any) -> Any:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


def build(telemetry: bool) -> Any:
    # The real reactor's timer heap (it is never run): Clock's sorted list
    # would cost more than the reactor does.
    from twisted.internet import reactor as clock

    endpoint = MemoryEndpoint()

    def makeUpstream(url: Any, settings: Any, reactor: Any, breakers: Any = None) -> Any:
        upstream = HTTPUpstream(url, settings, reactor, breakers)
        upstream._endpoint = endpoint
        return upstream

    config = SidecarConfig(upstream="http://127.0.0.1:6060", admin="none")
    reporter = buildTelemetry(attrs.evolve(config, admin="tcp:9901"), clock) if telemetry else None
    runtime = MeshRuntime(clock, makeUpstream=makeUpstream, telemetry=reporter)
    runtime.apply(config.mesh())
    forwarder = Forwarder(HeaderPolicy("bench", "inbound"), FilterChain(), runtime, "inbound")
    site = ProxySite(
        ProxyResource("inbound", forwarder, clock, telemetry=reporter), reactor=clock
    )
    client = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site.buildProtocol(client)
    transport = StringTransport(peerAddress=client)
    channel.makeConnection(transport)
    return channel, transport, endpoint


def run(requests: int, telemetry: bool) -> float:
    channel, transport, endpoint = build(telemetry)
    # One request to open the upstream connection.
    channel.dataReceived(REQUEST)
    protocol, upstreamTransport = endpoint.connections[0]
    protocol.dataReceived(RESPONSE)
    assert transport.value().endswith(b"hello world\n"), transport.value()
    assert len(endpoint.connections) == 1
    transport.clear()
    upstreamTransport.clear()
    started = time.process_time()
    for _ in range(requests):
        channel.dataReceived(REQUEST)
        protocol.dataReceived(RESPONSE)
        transport.clear()
        upstreamTransport.clear()
    elapsed = time.process_time() - started
    assert len(endpoint.connections) == 1, "the upstream connection was not reused"
    return elapsed / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--no-telemetry",
        action="store_true",
        help="without metrics and live figures (as with --admin none)",
    )
    args = parser.parse_args()
    telemetry = not args.no_telemetry
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        run(args.requests, telemetry)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return
    results = sorted(run(args.requests, telemetry) for _ in range(args.rounds))
    print(f"median {results[len(results) // 2] * 1e6:.1f} µs per request "
          f"(min {results[0] * 1e6:.1f}, max {results[-1] * 1e6:.1f}; {args.rounds} rounds of {args.requests})")


if __name__ == "__main__":
    main()
