# -*- test-case-name: tests.test_balancers -*-
"""
Load balancers: each picks one of a cluster's endpoints for a request.

A cluster owns one balancer.  It calls L{Balancer.update} whenever its
endpoint set changes (an endpoint that stays is the same L{Endpoint}
object, so per-endpoint state carries over) and L{Balancer.pick} for each
request with the endpoints that may take it: the available ones, or all of
them in panic mode.  Candidates are always some of the endpoints last given
to C{update}; endpoints are told apart by identity.

Balancers draw randomness from an injected L{random.Random} and read time
from an injected clock, so that tests are deterministic.  Weights are
positive integers; change one only together with a call to C{update}.
"""

from __future__ import annotations

import math
import random
import struct
from bisect import bisect_left, bisect_right
from hashlib import blake2b
from itertools import accumulate
from operator import attrgetter
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from twisted.internet.interfaces import IReactorTime

from easymesh.cluster.endpoint import EWMA_DECAY, Endpoint
from easymesh.config.mesh import EWMA, LEAST_REQUEST, RANDOM, RING_HASH, ROUND_ROBIN

#: Latency assumed, in seconds, for an endpoint that has not answered yet
#: (Linkerd's default RTT estimate).
DEFAULT_LATENCY = 0.030

#: Ring-hash virtual nodes per unit of weight.
VNODES_PER_WEIGHT = 100

#: Fewest and most virtual nodes on a hash ring (Envoy's C{min_ring_size}
#: default; a bound on memory and build time).
MIN_RING_SIZE = 1024
MAX_RING_SIZE = 1 << 20


class Balancer:
    """
    Picks an endpoint for each request.
    """

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """
        The cluster's endpoints are now C{endpoints}.
        """

    def pick(self, candidates: Sequence[Endpoint], hashKey: Optional[bytes] = None) -> Endpoint:
        """
        Choose one of C{candidates} (not empty).

        @param hashKey: What the request hashes to, for balancers that keep
            a request's key on one endpoint; others ignore it.
        """
        raise NotImplementedError()


class _Table:
    """
    The endpoints last given to L{Balancer.update}, with what weighted
    draws from all of them need.

    @ivar cumulative: Running sums of the endpoints' weights.
    @ivar total: The sum of their weights.
    @ivar uniform: Whether their weights are all equal.
    """

    def __init__(self, endpoints: Sequence[Endpoint] = ()) -> None:
        self.endpoints = list(endpoints)
        self.cumulative = list(accumulate(e.weight for e in endpoints))
        self.total = self.cumulative[-1] if endpoints else 0
        self.uniform = len({e.weight for e in endpoints}) <= 1

    def draw(self, random: Callable[[], float], candidates: Sequence[Endpoint]) -> Endpoint:
        """
        One of C{candidates}, with probability proportional to its weight:
        constant time when weights are equal, logarithmic when the
        candidates are all the endpoints, linear otherwise.

        @param random: Returns a float in [0, 1).
        """
        if self.uniform:
            return candidates[int(random() * len(candidates))]
        endpoints = self.endpoints
        if len(candidates) == len(endpoints):
            i = bisect_right(self.cumulative, random() * self.total)
            return endpoints[min(i, len(endpoints) - 1)]
        total = 0
        for e in candidates:
            total += e.weight
        return _weighted(random, candidates, total)

    def drawTwo(
        self, random: Callable[[], float], candidates: Sequence[Endpoint]
    ) -> Tuple[Endpoint, Endpoint]:
        """
        Two distinct endpoints from C{candidates} (at least two), each in
        proportion to its weight: the first as from all of them, the second
        from the rest.  Costs as L{draw}.
        """
        n = len(candidates)
        if self.uniform:
            i = int(random() * n)
            j = int(random() * (n - 1))
            if j >= i:
                j += 1
            return candidates[i], candidates[j]
        endpoints = self.endpoints
        if n == len(endpoints):
            cumulative = self.cumulative
            i = min(bisect_right(cumulative, random() * self.total), n - 1)
            start = cumulative[i - 1] if i else 0
            weight = cumulative[i] - start
            point = random() * (self.total - weight)
            if point >= start:
                point += weight
            j = bisect_right(cumulative, point)
            if j == i or j >= n:  # Float rounding at an edge.
                j = i - 1 if i else i + 1
            return endpoints[i], endpoints[j]
        total = 0
        for e in candidates:
            total += e.weight
        first = _weighted(random, candidates, total)
        return first, _weighted(random, candidates, total - first.weight, first)


def _weighted(
    random: Callable[[], float],
    candidates: Sequence[Endpoint],
    total: int,
    skip: Optional[Endpoint] = None,
) -> Endpoint:
    """
    One of C{candidates} other than C{skip}, with probability proportional
    to its weight, in linear time.

    @param random: Returns a float in [0, 1).
    @param total: The weight of C{candidates} less that of C{skip}.
    """
    point = random() * total
    last = candidates[0]
    for e in candidates:
        if e is skip:
            continue
        point -= e.weight
        if point < 0:
            return e
        last = e
    return last  # Float rounding left C{point} a hair above zero.


class RoundRobin(Balancer):
    """
    Smooth weighted round robin (nginx's): at each pick every candidate's
    current weight grows by its weight, the largest is chosen and loses the
    candidates' total weight.  Every run of as many picks as the total
    weight gives each endpoint exactly its weight's share, spread out
    rather than in bursts (after endpoints come and go, within a pick or
    two); with equal weights this is plain rotation.  Linear in the number
    of endpoints.

    Candidates left out of a pick keep their current weight until they are
    back.  An endpoint starts at a random fraction below zero: as weights
    are integers that only breaks ties, so with equal weights each sidecar
    rotates in its own random order instead of all starting on the first
    endpoint.
    """

    def __init__(self, random: random.Random) -> None:
        self._random = random
        self._endpoints: List[Endpoint] = []
        self._weights: List[int] = []
        self._current: List[float] = []
        self._total = 0
        self._index: Dict[int, int] = {}

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        old = dict(zip(map(id, self._endpoints), self._current))
        self._endpoints = list(endpoints)
        self._weights = [e.weight for e in endpoints]
        self._total = sum(self._weights)
        self._current = [
            old[id(e)] if id(e) in old else -self._random.random() for e in endpoints
        ]
        self._index = {id(e): i for i, e in enumerate(endpoints)}

    def pick(self, candidates: Sequence[Endpoint], hashKey: Optional[bytes] = None) -> Endpoint:
        current = self._current
        weights = self._weights
        best = -1
        bestCurrent = -math.inf
        if len(candidates) == len(current):
            # All of them: no need to look each up.
            for i in range(len(current)):
                c = current[i] + weights[i]
                current[i] = c
                if c > bestCurrent:
                    best = i
                    bestCurrent = c
            current[best] = bestCurrent - self._total
            return self._endpoints[best]
        index = self._index
        total = 0
        for e in candidates:
            i = index.get(id(e), -1)
            if i < 0:
                continue
            weight = weights[i]
            total += weight
            c = current[i] + weight
            current[i] = c
            if c > bestCurrent:
                best = i
                bestCurrent = c
        if best < 0:
            return candidates[0]
        current[best] = bestCurrent - total
        return self._endpoints[best]


class Random(Balancer):
    """
    Weighted random choice: constant time when all weights are equal.
    """

    def __init__(self, random: random.Random) -> None:
        self._random = random
        self._table = _Table()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._table = _Table(endpoints)

    def pick(self, candidates: Sequence[Endpoint], hashKey: Optional[bytes] = None) -> Endpoint:
        return self._table.draw(self._random.random, candidates)


class LeastRequest(Balancer):
    """
    Power of two choices on requests in flight: of two distinct random
    candidates, the one with fewer active requests per unit of weight.
    A tie goes to the first drawn, which is itself random.

    With equal weights this is Envoy's P2C least request.  With
    unequal weights Envoy schedules by C{weight / (active + 1) ** bias}
    (bias 1 by default); this draws the two in proportion to weight and
    compares C{active / weight} instead: under load both settle where
    active requests are proportional to weight, and an idle cluster (every
    count zero, every comparison a tie) is split by weight.  Comparing
    C{(active + 1) / weight} would send an idle cluster's traffic to the
    heavier of each pair, all of it with two endpoints.
    """

    def __init__(self, random: random.Random) -> None:
        self._random = random
        self._table = _Table()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._table = _Table(endpoints)

    def pick(self, candidates: Sequence[Endpoint], hashKey: Optional[bytes] = None) -> Endpoint:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._table.drawTwo(self._random.random, candidates)
        if b.active * a.weight < a.active * b.weight:
            return b
        return a


class PeakEWMA(Balancer):
    """
    Power of two choices on latency (Finagle's and Linkerd's peak EWMA): of
    two distinct random candidates, the one with the lower cost
    C{latency * (active + 1) / weight}, where C{latency} is the endpoint's
    decaying peak estimate (L{Endpoint.ewma}).  A tie goes to the first
    drawn, which is itself random.  With equal weights this is Linkerd's
    cost exactly; a weight of C{w} counts as C{w} times the capacity.

    An endpoint that has not answered yet is assumed to take
    C{defaultLatency}, decaying like an estimate from when this balancer
    first saw it (as Linkerd does): a new endpoint does not take all the
    traffic at once, and in a quiet cluster of faster endpoints it is still
    tried within seconds.  An estimate of exactly zero counts as none.
    """

    def __init__(
        self,
        random: random.Random,
        clock: IReactorTime,
        defaultLatency: float = DEFAULT_LATENCY,
    ) -> None:
        self._random = random
        self._clock = clock
        self.defaultLatency = defaultLatency
        self._seen: Dict[int, float] = {}
        # Holds the endpoints that the ids in _seen name.
        self._endpoints: List[Endpoint] = []

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        now = self._clock.seconds()
        old = self._seen
        self._seen = {id(e): old.get(id(e), now) for e in endpoints}
        self._endpoints = list(endpoints)

    def _cost(self, e: Endpoint, now: float) -> float:
        latency = e.ewma(now)
        if latency == 0.0:
            since = now - self._seen.get(id(e), now)
            latency = self.defaultLatency * math.exp(-max(0.0, since) / EWMA_DECAY)
        return latency * (e.active + 1) / e.weight

    def pick(self, candidates: Sequence[Endpoint], hashKey: Optional[bytes] = None) -> Endpoint:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        random = self._random.random
        i = int(random() * n)
        j = int(random() * (n - 1))
        if j >= i:
            j += 1
        a = candidates[i]
        b = candidates[j]
        now = self._clock.seconds()
        if self._cost(b, now) < self._cost(a, now):
            return b
        return a


def _hash64(data: bytes) -> int:
    """
    A stable 64-bit hash, the same in every process.
    """
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


#: Ring points drawn from one 64-byte BLAKE2b digest.
_POINTS_PER_DIGEST = 8
_unpackPoints = struct.Struct(">8Q").unpack


class RingHash(Balancer):
    """
    Consistent hashing on a Ketama-style ring: each endpoint is put at
    C{vnodesPerWeight} points per unit of weight, scaled up so that the
    ring has at least C{minRingSize} points and down so that it has at most
    C{maxRingSize}: to one point per unit of weight, or, for weights that
    sum to more than C{maxRingSize}, to its share of C{maxRingSize} by
    weight (one point at least).  An
    endpoint's points are the 64-bit words of the BLAKE2b digests of
    C{b"host:port_0"}, C{b"host:port_1"} and on, so every sidecar with the
    same endpoints builds the same ring.

    A request goes to the endpoint of the first point at or after its key's
    hash, skipping endpoints that are not candidates (at most one turn of
    the ring); without a key it lands on a random point.  Adding an
    endpoint moves only the keys that it takes (about 1/N), removing one
    only the keys that it had, unless the change crosses C{minRingSize}
    and so rescales every endpoint's points (clusters of total weight
    below C{minRingSize / vnodesPerWeight}), which moves a few more.
    """

    def __init__(
        self,
        random: random.Random,
        vnodesPerWeight: int = VNODES_PER_WEIGHT,
        minRingSize: int = MIN_RING_SIZE,
        maxRingSize: int = MAX_RING_SIZE,
    ) -> None:
        self._random = random
        self.vnodesPerWeight = vnodesPerWeight
        self.minRingSize = minRingSize
        self.maxRingSize = maxRingSize
        self._endpoints: List[Endpoint] = []
        self._built: FrozenSet[Tuple[int, int]] = frozenset()
        self._hashes: List[int] = []
        self._owners: List[Endpoint] = []
        self._ownerIds: List[int] = []

    def _pointsPerWeight(self, totalWeight: int) -> int:
        perWeight = self.vnodesPerWeight
        if totalWeight:
            if perWeight * totalWeight < self.minRingSize:
                perWeight = -(-self.minRingSize // totalWeight)
            if perWeight * totalWeight > self.maxRingSize:
                perWeight = max(1, self.maxRingSize // totalWeight)
        return perWeight

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        built = frozenset((id(e), e.weight) for e in endpoints)
        if built == self._built and len(endpoints) == len(self._endpoints):
            return
        self._endpoints = list(endpoints)
        self._built = built
        totalWeight = sum(e.weight for e in endpoints)
        perWeight = self._pointsPerWeight(totalWeight)
        # Weights summing to more than the ring's size share it instead.
        shared = perWeight * totalWeight > self.maxRingSize
        hashes: List[int] = []
        owners: List[Endpoint] = []
        for e in sorted(endpoints, key=attrgetter("key")):
            prefix = e.key.encode("utf-8") + b"_"
            if shared:
                count = max(1, e.weight * self.maxRingSize // totalWeight)
            else:
                count = e.weight * perWeight
            for i in range(-(-count // _POINTS_PER_DIGEST)):
                digest = blake2b(prefix + b"%d" % (i,), digest_size=64).digest()
                hashes.extend(_unpackPoints(digest))
            del hashes[len(owners) + count :]
            owners.extend([e] * count)
        order = sorted(range(len(hashes)), key=hashes.__getitem__)
        self._hashes = [hashes[i] for i in order]
        self._owners = [owners[i] for i in order]
        self._ownerIds = [id(e) for e in self._owners]

    def pick(self, candidates: Sequence[Endpoint], hashKey: Optional[bytes] = None) -> Endpoint:
        if hashKey is None:
            point = self._random.getrandbits(64)
        else:
            point = _hash64(hashKey)
        hashes = self._hashes
        size = len(hashes)
        if size == 0 or len(candidates) == 1:
            return candidates[point % len(candidates)]
        start = bisect_left(hashes, point)
        if start == size:
            start = 0
        if len(candidates) == len(self._endpoints):
            return self._owners[start]
        allowed = set(map(id, candidates))
        ownerIds = self._ownerIds
        for i in range(start, size):
            if ownerIds[i] in allowed:
                return self._owners[i]
        for i in range(start):
            if ownerIds[i] in allowed:
                return self._owners[i]
        return candidates[point % len(candidates)]


def balancerFor(policy: str, random: random.Random, clock: IReactorTime) -> Balancer:
    """
    A new balancer for an C{lbPolicy} name from L{easymesh.config.mesh}.

    @raise ValueError: C{policy} is not one of them.
    """
    if policy == ROUND_ROBIN:
        return RoundRobin(random)
    if policy == RANDOM:
        return Random(random)
    if policy == LEAST_REQUEST:
        return LeastRequest(random)
    if policy == EWMA:
        return PeakEWMA(random, clock)
    if policy == RING_HASH:
        return RingHash(random)
    raise ValueError(f"unknown load-balancing policy {policy!r}")
