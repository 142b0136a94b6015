# -*- test-case-name: tests.test_upstream_http -*-
"""
Upstream access, one implementation per URL scheme (and, for C{http://}
and C{https://}, per cluster C{protocol}).  A new protocol (C{tcp://})
registers its factory in L{SCHEMES}.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from easymesh.config.addresses import UpstreamURL
from easymesh.config.model import PoolSettings
from easymesh.interfaces import IUpstream
from easymesh.upstream.http import HTTPUpstream
from easymesh.upstream.http2 import AutoUpstream, H2Upstream
from easymesh.upstream.tcp import TCPUpstream

#: Makes an upstream from its URL, pool settings, reactor and (optionally)
#: its cluster's circuit breakers and the sidecar's TLS contexts.
UpstreamFactory = Callable[..., IUpstream]

SCHEMES: Dict[str, UpstreamFactory] = {
    "http": HTTPUpstream,
    "https": HTTPUpstream,
    "h2c": H2Upstream,
    "grpc": H2Upstream,
    "tcp": TCPUpstream,
    "tls": TCPUpstream,
}


def upstreamFor(
    url: UpstreamURL,
    settings: PoolSettings,
    reactor: Any,
    breakers: Any = None,
    tls: Any = None,
) -> IUpstream:
    """
    Make the upstream for C{url} from the implementation for its scheme.

    @param breakers: The L{easymesh.cluster.breakers.Breakers} of the
        upstream's cluster, told of connections and pending requests.
    @param tls: The sidecar's L{easymesh.tls.registry.TLSContexts}.
    """
    if settings.protocol == "http2" and url.scheme in ("http", "https"):
        return H2Upstream(url, settings, reactor, breakers, tls)
    if settings.protocol == "auto" and url.scheme == "https":
        return AutoUpstream(url, settings, reactor, breakers, tls)
    return SCHEMES[url.scheme](url, settings, reactor, breakers, tls)
