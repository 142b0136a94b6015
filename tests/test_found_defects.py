"""
Defects once found in the request path, each pinned by a test: a client
spelling the sidecar's own headers with underscores, and a health check
reading an endless body.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from easymesh.cluster.cluster import Cluster
from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import ClusterConfig, HealthCheck
from easymesh.headers import HeaderPolicy
from tests.meshfakes import Upstreams


def test_underscoreSpellingOfOwnHeadersRemoved() -> None:
    """
    A client may not forge the caller identity header by spelling its name
    with underscores, which CGI and WSGI servers read as the same header.
    """
    headers = Headers(
        {
            b"x_easymesh_peer_identity": [b"spiffe://example.org/ns/ops/sa/admin"],
            b"X_Easymesh-Peer_Identity": [b"spiffe://example.org/ns/ops/sa/admin"],
        }
    )
    HeaderPolicy("orders-1", "inbound").prepareRequest(headers, "10.0.0.7", b"https", b"1.1")
    assert not any(
        name.lower().replace(b"_", b"-").startswith(b"x-easymesh-")
        for name, _ in headers.getAllRawHeaders()
    )


class _BodyTransport:
    """
    The producer a response body is delivered from.
    """

    stopped = 0

    def stopProducing(self) -> None:
        self.stopped += 1

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


def test_healthProbeBodyNotReadForEver() -> None:
    clock = Clock()
    upstreams = Upstreams()
    upstreams.answer = lambda request: 200
    check = HealthCheck(path="/healthz", interval=5.0, timeout=1.0)
    url = UpstreamURL.parse("http://10.0.0.1:8080")
    cluster = Cluster(
        ClusterConfig("web", endpoints=(url,), weights=(1,), healthCheck=check),
        clock,
        random.Random(1),
        makeUpstream=upstreams.make,
    )
    cluster.start()
    try:
        clock.advance(0.5)
        (sent,) = upstreams.made[0].sent
        assert sent.response is not None
        (reader,) = sent.response.delivered
        transport = _BodyTransport()
        reader.bodyStarted(transport)
        for _ in range(30):
            reader.bodyData(b"x" * 1024)
            clock.advance(0.1)
        assert transport.stopped
    finally:
        cluster.stop()
