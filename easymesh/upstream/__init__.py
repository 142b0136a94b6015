# -*- test-case-name: tests.test_upstream_http -*-
"""
Upstream access, one implementation per URL scheme.  A new protocol
(C{grpc://}, C{tcp://}) registers its factory in L{SCHEMES}.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from easymesh.config.addresses import UpstreamURL
from easymesh.config.model import PoolSettings
from easymesh.interfaces import IUpstream
from easymesh.upstream.http import HTTPUpstream

#: Makes an upstream from its URL, pool settings, reactor and (optionally)
#: its cluster's circuit breakers and the sidecar's TLS contexts.
UpstreamFactory = Callable[..., IUpstream]

SCHEMES: Dict[str, UpstreamFactory] = {
    "http": HTTPUpstream,
    "https": HTTPUpstream,
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
    return SCHEMES[url.scheme](url, settings, reactor, breakers, tls)
