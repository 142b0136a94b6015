"""
Tests for L{easymesh.cluster.breakers}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from easymesh.cluster.breakers import (
    MAX_CONNECTIONS,
    MAX_PENDING_REQUESTS,
    MAX_REQUESTS,
    MAX_RETRIES,
    Breakers,
)
from easymesh.config.mesh import CircuitBreakers


class BreakersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.breakers = Breakers(
            CircuitBreakers(maxConnections=2, maxPendingRequests=1, maxRequests=3, maxRetries=1)
        )

    def test_requests(self) -> None:
        """
        Up to C{maxRequests} requests start; then one more only after one is
        done.  Each refusal is counted.
        """
        b = self.breakers
        self.assertEqual([b.tryRequest() for _ in range(4)], [True, True, True, False])
        self.assertEqual(b.requests, 3)
        self.assertEqual(b.overflows, {MAX_REQUESTS: 1})
        b.requestDone()
        self.assertTrue(b.tryRequest())
        self.assertFalse(b.tryRequest())
        self.assertEqual(b.overflows, {MAX_REQUESTS: 2})

    def test_pending(self) -> None:
        b = self.breakers
        self.assertTrue(b.tryPending())
        self.assertFalse(b.tryPending())
        b.pendingDone()
        self.assertEqual(b.pending, 0)
        self.assertTrue(b.tryPending())
        self.assertEqual(b.overflows, {MAX_PENDING_REQUESTS: 1})

    def test_retries(self) -> None:
        b = self.breakers
        self.assertTrue(b.tryRetry())
        self.assertFalse(b.tryRetry())
        b.retryDone()
        self.assertTrue(b.tryRetry())
        self.assertEqual(b.overflows, {MAX_RETRIES: 1})

    def test_connections(self) -> None:
        """
        L{Breakers.canConnect} says whether fewer than C{maxConnections} are
        open, and counts nothing itself.
        """
        b = self.breakers
        self.assertTrue(b.canConnect())
        b.connectionOpened()
        b.connectionOpened()
        self.assertFalse(b.canConnect())
        self.assertFalse(b.canConnect())
        self.assertEqual(b.overflows, {})
        b.connectionClosed()
        self.assertTrue(b.canConnect())
        self.assertEqual(b.connections, 1)

    def test_overflowed(self) -> None:
        b = self.breakers
        b.overflowed(MAX_CONNECTIONS)
        b.overflowed(MAX_CONNECTIONS)
        b.overflowed("custom")
        self.assertEqual(b.overflows, {MAX_CONNECTIONS: 2, "custom": 1})

    def test_independent(self) -> None:
        """
        Each breaker has its own count.
        """
        b = self.breakers
        self.assertTrue(b.tryRetry())
        self.assertFalse(b.tryRetry())
        self.assertTrue(b.tryRequest())
        self.assertTrue(b.tryPending())

    def test_zeroLimit(self) -> None:
        """
        A limit of zero refuses everything.
        """
        b = Breakers(
            CircuitBreakers(maxConnections=0, maxPendingRequests=0, maxRequests=0, maxRetries=0)
        )
        self.assertFalse(b.tryRequest())
        self.assertFalse(b.tryPending())
        self.assertFalse(b.tryRetry())
        self.assertFalse(b.canConnect())

    def test_doneNeverNegative(self) -> None:
        """
        An unmatched C{done} does not leave a negative count that would let
        more through than the limit.
        """
        b = self.breakers
        b.requestDone()
        b.pendingDone()
        b.retryDone()
        b.connectionClosed()
        self.assertEqual((b.requests, b.pending, b.retries, b.connections), (0, 0, 0, 0))
        self.assertEqual([b.tryRequest() for _ in range(4)], [True, True, True, False])
