"""
Tests for L{easymesh.cluster.balancers}, with seeded randomness and time
from a L{Clock}.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Dict, List, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from easymesh.cluster.balancers import (
    Balancer,
    LeastRequest,
    PeakEWMA,
    Random,
    RingHash,
    RoundRobin,
    _Table,
    balancerFor,
)
from easymesh.cluster.endpoint import Endpoint
from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import LB_POLICIES

PICKS = 10_000


def makeEndpoints(weights: Sequence[int], first: int = 0) -> List[Endpoint]:
    """
    Endpoints C{10.0.0.<first + 1>:8080} and on, with C{weights}.
    """
    hosts = (f"10.0.{n // 250}.{n % 250}" for n in range(first + 1, first + 1 + len(weights)))
    return [Endpoint(UpstreamURL("http", host, 8080), weight=w) for host, w in zip(hosts, weights)]


def count(
    balancer: Balancer, candidates: Sequence[Endpoint], picks: int = PICKS
) -> Counter[Endpoint]:
    return Counter(balancer.pick(candidates, None) for _ in range(picks))


def keys(n: int) -> List[bytes]:
    return [b"user-%d" % (i,) for i in range(n)]


class TestCase(SynchronousTestCase):
    def assertNear(self, actual: float, expected: float, tolerance: float) -> None:
        """
        Assert that C{actual} is within C{tolerance} (a fraction) of
        C{expected}.
        """
        if abs(actual - expected) > expected * tolerance:
            self.fail(f"{actual} is not within {tolerance:.0%} of {expected}")


class RoundRobinTests(TestCase):
    def test_equalWeightsRotate(self) -> None:
        """
        With equal weights every endpoint is picked once in each run of as
        many picks as there are endpoints, always in the same order.
        """
        endpoints = makeEndpoints([1] * 4)
        rr = RoundRobin(random.Random(1))
        rr.update(endpoints)
        picks = [rr.pick(endpoints, None) for _ in range(PICKS)]
        cycle = picks[:4]
        self.assertEqual(set(cycle), set(endpoints))
        self.assertEqual(picks, cycle * (PICKS // 4))

    def test_weightsExact(self) -> None:
        """
        Weights 1:3 give exactly a quarter and three quarters, spread out:
        the light endpoint is never picked twice in a row.
        """
        light, heavy = endpoints = makeEndpoints([1, 3])
        rr = RoundRobin(random.Random(2))
        rr.update(endpoints)
        picks = [rr.pick(endpoints, None) for _ in range(PICKS)]
        self.assertEqual(Counter(picks), {light: PICKS // 4, heavy: 3 * PICKS // 4})
        for a, b in zip(picks, picks[1:]):
            self.assertFalse(a is light and b is light)

    def test_smoothMixedWeights(self) -> None:
        """
        Every run of as many picks as the total weight gives each endpoint
        exactly its weight.
        """
        endpoints = makeEndpoints([5, 1, 1, 3])
        rr = RoundRobin(random.Random(3))
        rr.update(endpoints)
        for _ in range(100):
            window = count(rr, endpoints, 10)
            self.assertEqual([window[e] for e in endpoints], [5, 1, 1, 3])

    def test_startRandomised(self) -> None:
        """
        Differently seeded balancers over the same endpoints do not all
        start on the same one.
        """
        endpoints = makeEndpoints([1] * 4)
        firsts: Counter[Endpoint] = Counter()
        for seed in range(200):
            rr = RoundRobin(random.Random(seed))
            rr.update(endpoints)
            firsts[rr.pick(endpoints, None)] += 1
        self.assertEqual(set(firsts), set(endpoints))
        for e in endpoints:
            self.assertGreater(firsts[e], 25)

    def test_updateKeepsFairness(self) -> None:
        """
        After an endpoint is added mid-rotation, every run of as many picks
        as the total weight still gives each endpoint its weight, give or
        take one, the new endpoint included.
        """
        for seed in range(20):
            endpoints = makeEndpoints([1, 1, 1])
            rr = RoundRobin(random.Random(seed))
            rr.update(endpoints)
            for _ in range(seed % 3 + 1):
                rr.pick(endpoints, None)
            endpoints = endpoints + makeEndpoints([1], first=3)
            rr.update(endpoints)
            for _ in range(50):
                window = count(rr, endpoints, 4)
                self.assertTrue(all(0 <= window[e] <= 2 for e in endpoints), window)
            self.assertEqual(sorted(count(rr, endpoints, 400).values()), [100] * 4)

    def test_updateKeepsState(self) -> None:
        """
        An endpoint that stays keeps its place: re-announcing the same set
        does not restart the rotation.
        """
        endpoints = makeEndpoints([1] * 4)
        rr = RoundRobin(random.Random(4))
        rr.update(endpoints)
        picks = [rr.pick(endpoints, None) for _ in range(6)]
        rr.update(list(endpoints))
        picks += [rr.pick(endpoints, None) for _ in range(6)]
        self.assertEqual(picks[4:], picks[:4] * 2)

    def test_removedEndpoint(self) -> None:
        """
        After an endpoint goes, the rest share the picks evenly: the
        current weights they kept put each at most two picks off its share,
        once, however long it runs.
        """
        for seed in range(20):
            endpoints = makeEndpoints([1] * 5)
            rr = RoundRobin(random.Random(seed))
            rr.update(endpoints)
            count(rr, endpoints, seed % 5 + 1)
            rest = endpoints[:2] + endpoints[3:]
            rr.update(rest)
            for picks in (4, 40, 4000):
                counts = count(rr, rest, picks)
                self.assertTrue(all(abs(counts[e] - picks / 4) <= 2 for e in rest), counts)

    def test_candidates(self) -> None:
        """
        Only candidates are picked, evenly; an endpoint left out comes back
        into the rotation.
        """
        endpoints = makeEndpoints([1] * 4)
        rr = RoundRobin(random.Random(6))
        rr.update(endpoints)
        some = endpoints[1:]
        self.assertEqual(sorted(count(rr, some, 300).values()), [100] * 3)
        self.assertEqual(set(count(rr, endpoints, 4)), set(endpoints))


class RandomTests(TestCase):
    def test_equalWeights(self) -> None:
        """
        With equal weights each endpoint gets its share within 5%.
        """
        endpoints = makeEndpoints([1] * 4)
        balancer = Random(random.Random(7))
        balancer.update(endpoints)
        counts = count(balancer, endpoints)
        for e in endpoints:
            self.assertNear(counts[e], PICKS / 4, 0.05)

    def test_weights(self) -> None:
        """
        Weights 1:3 are honoured within 5%.
        """
        light, heavy = endpoints = makeEndpoints([1, 3])
        balancer = Random(random.Random(8))
        balancer.update(endpoints)
        counts = count(balancer, endpoints)
        self.assertNear(counts[light], PICKS / 4, 0.05)
        self.assertEqual(counts[light] + counts[heavy], PICKS)

    def test_manyWeights(self) -> None:
        """
        Weights 1:2:3:4 are honoured within 5%.
        """
        endpoints = makeEndpoints([1, 2, 3, 4])
        balancer = Random(random.Random(25))
        balancer.update(endpoints)
        counts = count(balancer, endpoints)
        for e in endpoints:
            self.assertNear(counts[e], PICKS * e.weight / 10, 0.05)

    def test_weightedCandidates(self) -> None:
        """
        Among weighted candidates, the weights of those left out do not
        count.
        """
        a, b, c = endpoints = makeEndpoints([2, 6, 100])
        balancer = Random(random.Random(9))
        balancer.update(endpoints)
        counts = count(balancer, [a, b])
        self.assertNear(counts[a], PICKS / 4, 0.05)
        self.assertNotIn(c, counts)


class LeastRequestTests(TestCase):
    def test_idleEqualWeights(self) -> None:
        """
        With nothing in flight, ties are broken randomly: each endpoint gets
        its share within 5%.
        """
        endpoints = makeEndpoints([1] * 4)
        balancer = LeastRequest(random.Random(10))
        balancer.update(endpoints)
        counts = count(balancer, endpoints)
        for e in endpoints:
            self.assertNear(counts[e], PICKS / 4, 0.05)

    def test_idleWeights(self) -> None:
        """
        With nothing in flight, weights 1:3 are honoured within 5%.
        """
        light, heavy = endpoints = makeEndpoints([1, 3])
        balancer = LeastRequest(random.Random(11))
        balancer.update(endpoints)
        counts = count(balancer, endpoints)
        self.assertNear(counts[light], PICKS / 4, 0.05)

    def test_idleManyWeights(self) -> None:
        """
        With nothing in flight, weights 1:2:3:4 are honoured within 5%,
        among all the endpoints and among some of them.
        """
        endpoints = makeEndpoints([1, 2, 3, 4])
        balancer = LeastRequest(random.Random(24))
        balancer.update(endpoints)
        counts = count(balancer, endpoints)
        for e in endpoints:
            self.assertNear(counts[e], PICKS * e.weight / 10, 0.05)
        some = endpoints[1:]
        counts = count(balancer, some)
        for e in some:
            self.assertNear(counts[e], PICKS * e.weight / 9, 0.05)

    def test_prefersLessLoaded(self) -> None:
        """
        An endpoint with more requests in flight than every other is never
        picked; the rest share the picks.
        """
        busy, a, b = endpoints = makeEndpoints([1, 1, 1])
        busy.active = 5
        a.active = 1
        b.active = 1
        balancer = LeastRequest(random.Random(12))
        balancer.update(endpoints)
        counts = count(balancer, endpoints)
        self.assertNotIn(busy, counts)
        self.assertNear(counts[a], PICKS / 2, 0.05)

    def test_twoEndpoints(self) -> None:
        """
        With two candidates the less loaded one is always picked.
        """
        a, b = endpoints = makeEndpoints([1, 1])
        a.active = 3
        b.active = 2
        balancer = LeastRequest(random.Random(13))
        balancer.update(endpoints)
        self.assertEqual(count(balancer, endpoints, 100), {b: 100})

    def test_loadPerWeight(self) -> None:
        """
        Requests in flight are compared per unit of weight: 5 in flight on a
        weight-3 endpoint are less load than 2 on a weight-1 endpoint.
        """
        light, heavy = endpoints = makeEndpoints([1, 3])
        light.active = 2
        heavy.active = 5
        balancer = LeastRequest(random.Random(14))
        balancer.update(endpoints)
        self.assertEqual(count(balancer, endpoints, 100), {heavy: 100})

    def test_underLoad(self) -> None:
        """
        With requests kept in flight and finishing at random, weights 1:3
        settle at about a quarter and three quarters of the traffic.
        """
        rng = random.Random(15)
        light, heavy = endpoints = makeEndpoints([1, 3])
        balancer = LeastRequest(random.Random(16))
        balancer.update(endpoints)
        inFlight: List[Endpoint] = []
        picks: Counter[Endpoint] = Counter()
        for _ in range(PICKS):
            while len(inFlight) >= 40:
                inFlight.pop(rng.randrange(len(inFlight))).finished(0.0, None)
            e = balancer.pick(endpoints, None)
            e.started()
            inFlight.append(e)
            picks[e] += 1
        self.assertNear(picks[light], PICKS / 4, 0.1)

    def test_nonCandidate(self) -> None:
        """
        An endpoint that is not a candidate is never picked, however idle.
        """
        idle, a, b, c = endpoints = makeEndpoints([1, 1, 1, 1])
        for e in (a, b, c):
            e.active = 10
        balancer = LeastRequest(random.Random(17))
        balancer.update(endpoints)
        counts = count(balancer, [a, b, c])
        self.assertNotIn(idle, counts)
        self.assertEqual(set(counts), {a, b, c})

    def test_single(self) -> None:
        """
        A single candidate is picked.
        """
        endpoints = makeEndpoints([1, 1])
        balancer = LeastRequest(random.Random(18))
        balancer.update(endpoints)
        self.assertIs(balancer.pick(endpoints[1:], None), endpoints[1])


class TwoChoicesTests(TestCase):
    def test_drawTwoWeighted(self) -> None:
        """
        Of the two endpoints drawn for a comparison, the first is drawn in
        proportion to weight from all the candidates and the second from
        the rest, whether the candidates are all the endpoints or some.
        """
        endpoints = makeEndpoints([1, 2, 3, 4, 6])
        table = _Table(endpoints)
        rng = random.Random(26)
        for candidates in (endpoints, endpoints[1:], [endpoints[4], endpoints[0], endpoints[2]]):
            total = sum(e.weight for e in candidates)
            firsts: Counter[Endpoint] = Counter()
            seconds: Counter[Endpoint] = Counter()
            for _ in range(PICKS):
                a, b = table.drawTwo(rng.random, candidates)
                self.assertIsNot(a, b)
                firsts[a] += 1
                seconds[b] += 1
            for e in candidates:
                self.assertNear(firsts[e], PICKS * e.weight / total, 0.1)
                second = sum(
                    f.weight / total * e.weight / (total - f.weight)
                    for f in candidates
                    if f is not e
                )
                self.assertNear(seconds[e], PICKS * second, 0.1)


class PeakEWMATests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)

    def simulate(
        self,
        balancer: Balancer,
        endpoints: Sequence[Endpoint],
        latency: Dict[Endpoint, float],
        seconds: float,
    ) -> List[Endpoint]:
        """
        Pick every 0.1 s for C{seconds}; each request finishes at once,
        reporting C{latency} for its endpoint.
        """
        picks: List[Endpoint] = []
        for _ in range(int(seconds * 10)):
            self.clock.advance(0.1)
            e = balancer.pick(endpoints, None)
            e.started()
            e.finished(self.clock.seconds(), latency[e])
            picks.append(e)
        return picks

    def test_idleEqual(self) -> None:
        """
        Endpoints with no latency observed share the picks evenly.
        """
        endpoints = makeEndpoints([1] * 4)
        balancer = PeakEWMA(random.Random(19), self.clock)
        balancer.update(endpoints)
        counts = count(balancer, endpoints)
        for e in endpoints:
            self.assertNear(counts[e], PICKS / 4, 0.05)

    def test_avoidsSlowThenDecays(self) -> None:
        """
        An endpoint that answered slowly is avoided while its estimate is
        above the others'; as its estimate decays it is tried again, and
        once it answers fast it takes its share.
        """
        slow, *fast = endpoints = makeEndpoints([1] * 3)
        balancer = PeakEWMA(random.Random(20), self.clock)
        balancer.update(endpoints)
        for e in fast:
            e.observe(self.clock.seconds(), 0.010)
        slow.observe(self.clock.seconds(), 1.0)
        latency = {e: 0.010 for e in endpoints}

        early = self.simulate(balancer, endpoints, latency, 40)
        self.assertNotIn(slow, early)
        # 1.0 s decays below 10 ms after 10 * ln(100) = 46 s; its first fast
        # answers are averaged with what is left of the slow one, so it
        # takes its full share only gradually.
        self.assertIn(slow, self.simulate(balancer, endpoints, latency, 20))
        self.simulate(balancer, endpoints, latency, 30)
        late = Counter(self.simulate(balancer, endpoints, latency, 30))
        self.assertNear(late[slow], 30 * 10 / 3, 0.25)

    def test_loadCounts(self) -> None:
        """
        Requests in flight multiply the cost: an endpoint twice as fast but
        with three requests in flight loses.
        """
        fast, slow = endpoints = makeEndpoints([1, 1])
        now = self.clock.seconds()
        fast.observe(now, 0.010)
        slow.observe(now, 0.020)
        balancer = PeakEWMA(random.Random(21), self.clock)
        balancer.update(endpoints)
        self.assertEqual(count(balancer, endpoints, 100), {fast: 100})
        for _ in range(3):
            fast.started()
        self.assertEqual(count(balancer, endpoints, 100), {slow: 100})

    def test_newEndpointNotFlooded(self) -> None:
        """
        A new endpoint is assumed to take the default latency: it is not
        preferred over faster endpoints at once, but as that assumption
        decays it is tried, and then judged by what it answers.
        """
        endpoints = makeEndpoints([1] * 3)
        balancer = PeakEWMA(random.Random(22), self.clock, defaultLatency=0.030)
        balancer.update(endpoints)
        latency = {e: 0.005 for e in endpoints}
        self.simulate(balancer, endpoints, latency, 5)
        new = makeEndpoints([1], first=3)[0]
        latency[new] = 0.005
        endpoints = endpoints + [new]
        balancer.update(endpoints)
        early = self.simulate(balancer, endpoints, latency, 10)
        self.assertNotIn(new, early)
        # 30 ms decays below 5 ms after 10 * ln(6) = 18 s.
        later = Counter(self.simulate(balancer, endpoints, latency, 30))
        self.assertGreater(later[new], 30 * 10 / 4 * 0.5)

    def test_clockStepBackNotALatency(self) -> None:
        """
        A latency below zero (the wall clock stepped back while a request
        was out) is taken as zero: the endpoint's estimate never goes below
        zero, so it does not win every pick, more so the busier it is.
        """
        stepped, *rest = endpoints = makeEndpoints([1] * 3)
        now = self.clock.seconds()
        stepped.observe(now, -30.0)
        self.assertEqual(stepped.ewma(now), 0.0)
        for e in rest:
            e.observe(now, 0.010)
        stepped.observe(now, -5.0)
        self.assertEqual(stepped.ewma(now), 0.0)
        for _ in range(5):
            stepped.started()
        balancer = PeakEWMA(random.Random(24), self.clock)
        balancer.update(endpoints)
        self.assertNotIn(stepped, count(balancer, endpoints, 100))

    def test_nonCandidate(self) -> None:
        """
        The fastest endpoint is not picked when it is not a candidate.
        """
        best, *rest = endpoints = makeEndpoints([1] * 3)
        now = self.clock.seconds()
        best.observe(now, 0.001)
        for e in rest:
            e.observe(now, 0.5)
        balancer = PeakEWMA(random.Random(23), self.clock)
        balancer.update(endpoints)
        self.assertEqual(set(count(balancer, rest, 100)), set(rest))
        self.assertGreater(count(balancer, endpoints, 300)[best], 150)


class RingHashTests(TestCase):
    def ring(self, endpoints: Sequence[Endpoint], seed: int = 0, **kw: int) -> RingHash:
        balancer = RingHash(random.Random(seed), **kw)
        balancer.update(endpoints)
        return balancer

    def mapping(
        self, balancer: Balancer, candidates: Sequence[Endpoint], n: int = PICKS
    ) -> Dict[bytes, Endpoint]:
        return {k: balancer.pick(candidates, k) for k in keys(n)}

    def test_sameKeySameEndpoint(self) -> None:
        """
        A key always maps to the same endpoint, in every balancer built
        over the same endpoints, whatever their order or randomness.
        """
        endpoints = makeEndpoints([1] * 10)
        one = self.ring(endpoints, seed=1)
        other = self.ring(list(reversed(endpoints)), seed=2)
        first = self.mapping(one, endpoints)
        self.assertEqual(self.mapping(one, endpoints), first)
        self.assertEqual(self.mapping(other, endpoints), first)
        self.assertEqual(len(set(first.values())), 10)

    def test_distribution(self) -> None:
        """
        Keys spread over equal endpoints within 10% of an even share, and
        over weights 1:3 within 10% of a quarter.
        """
        endpoints = makeEndpoints([1] * 4)
        counts = Counter(self.mapping(self.ring(endpoints), endpoints).values())
        for e in endpoints:
            self.assertNear(counts[e], PICKS / 4, 0.1)
        light, heavy = endpoints = makeEndpoints([1, 3])
        counts = Counter(self.mapping(self.ring(endpoints), endpoints).values())
        self.assertNear(counts[light], PICKS / 4, 0.1)

    def test_noKeyRandom(self) -> None:
        """
        Requests without a key land on random points: every endpoint gets
        some, within 10% of an even share.
        """
        endpoints = makeEndpoints([1] * 4)
        counts = count(self.ring(endpoints), endpoints)
        for e in endpoints:
            self.assertNear(counts[e], PICKS / 4, 0.1)

    def assertAddMovesOnlyToNew(self, n: int, **kw: int) -> float:
        """
        Adding one endpoint to C{n} moves fewer than 2/(n+1) of the keys,
        all of them to the new endpoint.

        @return: The fraction moved.
        """
        endpoints = makeEndpoints([1] * n)
        balancer = self.ring(endpoints, **kw)
        before = self.mapping(balancer, endpoints)
        bigger = endpoints + makeEndpoints([1], first=n)
        balancer.update(bigger)
        after = self.mapping(balancer, bigger)
        moved = [k for k in before if after[k] is not before[k]]
        self.assertEqual({after[k] for k in moved}, {bigger[-1]})
        fraction = len(moved) / PICKS
        self.assertLess(fraction, 2 / (n + 1))
        self.assertGreater(fraction, 0.5 / (n + 1))
        return fraction

    def test_addEndpoint(self) -> None:
        """
        Adding an endpoint to 10 moves about 1/11 of the keys, only to it
        (without a minimum ring size, which would rescale the ring), and
        the same holds for 20 endpoints with the defaults.
        """
        self.assertAddMovesOnlyToNew(10, minRingSize=0)
        self.assertAddMovesOnlyToNew(20)

    def test_addEndpointSmallCluster(self) -> None:
        """
        In a cluster small enough for the minimum ring size to apply, adding
        an endpoint rescales every endpoint's points: a few keys move
        between the old endpoints too, but fewer than 2/(n+1) in all.
        """
        endpoints = makeEndpoints([1] * 10)
        balancer = self.ring(endpoints)
        before = self.mapping(balancer, endpoints)
        bigger = endpoints + makeEndpoints([1], first=10)
        balancer.update(bigger)
        after = self.mapping(balancer, bigger)
        moved = [k for k in before if after[k] is not before[k]]
        toNew = [k for k in moved if after[k] is bigger[-1]]
        self.assertLess(len(moved), PICKS * 2 / 11)
        self.assertLess(len(moved) - len(toNew), PICKS * 0.05)

    def test_removeEndpoint(self) -> None:
        """
        Removing an endpoint moves only the keys it had.
        """
        endpoints = makeEndpoints([1] * 20)
        balancer = self.ring(endpoints)
        before = self.mapping(balancer, endpoints)
        gone = endpoints[7]
        rest = endpoints[:7] + endpoints[8:]
        balancer.update(rest)
        after = self.mapping(balancer, rest)
        moved = {k for k in before if after[k] is not before[k]}
        self.assertEqual(moved, {k for k in before if before[k] is gone})

    def test_nonCandidateFallsThrough(self) -> None:
        """
        A key whose endpoint is not a candidate goes to the next endpoint
        on the ring (the one it would have if that endpoint were removed),
        and comes back when its endpoint is a candidate again.
        """
        endpoints = makeEndpoints([1] * 20)
        balancer = self.ring(endpoints)
        before = self.mapping(balancer, endpoints)
        out = endpoints[3]
        available = [e for e in endpoints if e is not out]
        during = self.mapping(balancer, available)
        without = self.mapping(self.ring(available), available)
        self.assertEqual(during, without)
        self.assertNotIn(out, during.values())
        moved = {k for k in before if during[k] is not before[k]}
        self.assertEqual(moved, {k for k in before if before[k] is out})
        self.assertEqual(self.mapping(balancer, endpoints), before)

    def test_fewCandidates(self) -> None:
        """
        With one or two candidates left every key goes to one of them.
        """
        endpoints = makeEndpoints([1] * 50)
        balancer = self.ring(endpoints)
        for candidates in (endpoints[10:11], [endpoints[0], endpoints[-1]]):
            self.assertEqual(set(self.mapping(balancer, candidates, 500).values()), set(candidates))

    def test_rebuiltOnChangeOnly(self) -> None:
        """
        The ring is rebuilt when an endpoint or a weight changes, not when
        the same endpoints are given again in another order.
        """
        endpoints = makeEndpoints([1] * 5)
        balancer = self.ring(endpoints)
        ring = balancer._hashes
        balancer.update(list(reversed(endpoints)))
        self.assertIs(balancer._hashes, ring)
        endpoints[0].weight = 2
        balancer.update(endpoints)
        self.assertEqual(balancer._owners.count(endpoints[0]), 2 * -(-1024 // 6))
        self.assertEqual(len(balancer._hashes), 6 * -(-1024 // 6))

    def test_ringSize(self) -> None:
        """
        The ring has C{vnodesPerWeight} points per unit of weight, scaled up
        to C{minRingSize} and down to C{maxRingSize}.
        """
        self.assertEqual(len(self.ring(makeEndpoints([1] * 20))._hashes), 2000)
        self.assertEqual(len(self.ring(makeEndpoints([1, 2]))._hashes), 3 * 342)
        self.assertEqual(len(self.ring(makeEndpoints([1, 2]), maxRingSize=30)._hashes), 30)
        self.assertEqual(len(self.ring(makeEndpoints([1, 2]), maxRingSize=2)._hashes), 2)

    def test_ringSizeBoundedWhateverTheWeights(self) -> None:
        """
        Weights whose sum is above C{maxRingSize} share it in proportion
        (one point each at least), rather than a point per unit of weight:
        a weight of a billion does not make a billion points.
        """
        endpoints = makeEndpoints([10**9, 3 * 10**9, 1])
        balancer = self.ring(endpoints, maxRingSize=4000)
        self.assertLessEqual(len(balancer._hashes), 4000 + len(endpoints))
        self.assertEqual(balancer._owners.count(endpoints[0]), 999)
        self.assertEqual(balancer._owners.count(endpoints[1]), 2999)
        self.assertEqual(balancer._owners.count(endpoints[2]), 1)


def subsets(endpoints: Sequence[Endpoint]) -> st.SearchStrategy[List[Endpoint]]:
    """
    Non-empty subsets of C{endpoints}, in any order.
    """
    return st.lists(st.sampled_from(endpoints), min_size=1, unique_by=id)


class CandidateTests(TestCase):
    @settings(max_examples=100, deadline=None)
    @given(
        weights=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=12),
        data=st.data(),
        seed=st.integers(min_value=0, max_value=2**32),
    )
    def test_pickIsCandidate(self, weights: List[int], data: st.DataObject, seed: int) -> None:
        """
        Every balancer picks one of the candidates, for any endpoints, any
        non-empty subset of them, any load, with or without a key, and
        through updates that add and remove endpoints.
        """
        pool = makeEndpoints(weights)
        for e in pool:
            e.active = data.draw(st.integers(min_value=0, max_value=3))
            if data.draw(st.booleans()):
                e.observe(0.0, data.draw(st.floats(min_value=0.0, max_value=2.0)))
        clock = Clock()
        for policy in LB_POLICIES:
            balancer = balancerFor(policy, random.Random(seed), clock)
            for _ in range(3):
                endpoints = data.draw(subsets(pool))
                balancer.update(endpoints)
                for _ in range(2):
                    candidates = data.draw(subsets(endpoints))
                    key = data.draw(st.one_of(st.none(), st.binary(max_size=8)))
                    for _ in range(5):
                        picked = balancer.pick(candidates, key)
                        self.assertTrue(any(picked is c for c in candidates))
                clock.advance(1)


class BalancerForTests(TestCase):
    def test_policies(self) -> None:
        """
        Each policy name gives its balancer.
        """
        rng = random.Random(0)
        clock = Clock()
        self.assertEqual(
            [type(balancerFor(policy, rng, clock)) for policy in LB_POLICIES],
            [RoundRobin, Random, LeastRequest, PeakEWMA, RingHash],
        )

    def test_unknown(self) -> None:
        """
        An unknown policy is a L{ValueError}.
        """
        with self.assertRaises(ValueError):
            balancerFor("fastest", random.Random(0), Clock())
