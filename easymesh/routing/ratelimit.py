# -*- test-case-name: tests.test_routing -*-
"""
Per-route rate limits: a token bucket per key (a header, the source IP or
the caller's identity), at most C{maxKeys} buckets kept, the least recently
used dropped first.  Buckets are kept under a fixed-size digest of their
key, so what a client sends (a header value of any length) does not change
what a bucket costs: the memory kept is bounded by C{maxKeys}.  An
exhausted bucket answers 429 with C{Retry-After} at once; nothing queues.
"""

from __future__ import annotations

from collections import OrderedDict
from hashlib import blake2b
from typing import Any, Optional

from easymesh.config.mesh import RouteRateLimit
from easymesh.errors import TooManyRequests
from easymesh.headers import commaList
from easymesh.message import ProxyRequest
from easymesh.tokenbucket import TokenBucket


def sourceAddress(request: ProxyRequest, trustedHops: int) -> str:
    """
    The client's address: the connection's peer, or with C{trustedHops} N,
    the N-th C{X-Forwarded-For} entry from the right of what arrived (the
    peer has been appended by then), as Envoy's C{xff_num_trusted_hops}.
    """
    if trustedHops <= 0:
        return request.clientAddress
    entries = commaList(request.headers.getRawHeaders(b"x-forwarded-for") or ())
    # The last entry is the peer, appended by this hop.
    if len(entries) > trustedHops:
        return entries[-1 - trustedHops].decode("latin-1")
    return request.clientAddress


#: Bytes of the digest a bucket is kept under.
KEY_DIGEST_SIZE = 16


def digestKey(key: str) -> bytes:
    """
    The fixed-size name of the bucket for C{key}.
    """
    return blake2b(key.encode("utf-8", "surrogatepass"), digest_size=KEY_DIGEST_SIZE).digest()


class KeyedRateLimiter:
    """
    A route's token buckets.
    """

    def __init__(self, config: RouteRateLimit, clock: Any, trustedHops: int = 0) -> None:
        self.config = config
        self._clock = clock
        self._trustedHops = trustedHops
        self._buckets: "OrderedDict[bytes, TokenBucket]" = OrderedDict()

    def keyOf(self, request: ProxyRequest) -> str:
        """
        The bucket a request counts against; requests without the key
        (no such header, no identity) share one bucket.
        """
        key = self.config.key
        if key is None:
            return ""
        if key.header is not None:
            values = request.headers.getRawHeaders(key.header.encode("ascii"))
            return values[0].decode("latin-1") if values else ""
        if key.sourceIp:
            return sourceAddress(request, self._trustedHops)
        return request.peerIdentity or ""

    def check(self, request: ProxyRequest) -> Optional[TooManyRequests]:
        """
        Take a token for C{request}.

        @return: L{None} if admitted, else the error to answer with.
        """
        key = digestKey(self.keyOf(request))
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.config.rate, self.config.burst, self._clock)
            buckets[key] = bucket
            if len(buckets) > self.config.maxKeys:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        wait = bucket.take()
        if wait is None:
            return None
        return TooManyRequests(wait)

    def __len__(self) -> int:
        return len(self._buckets)

    def keys(self) -> "list[bytes]":
        """
        The digests the buckets are kept under, least recently used first.
        """
        return list(self._buckets)
