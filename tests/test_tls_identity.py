"""
Tests for L{easymesh.tls.identity}: identities in certificates and the
patterns that accept them.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from OpenSSL import crypto
from twisted.trial.unittest import SynchronousTestCase

from easymesh.tls.certs import Issued, makeCA, makeWorkload
from easymesh.tls.identity import (
    IdentityMismatch,
    IdentityPattern,
    identitiesOf,
    matches,
    parsePatterns,
    parseSPIFFE,
    requireMatch,
)

ORDERS = "spiffe://example.org/ns/prod/sa/orders"


def tempDir(case: Any) -> str:
    """
    A new directory, removed after the test.
    """
    path = tempfile.mkdtemp(prefix="easymesh-tls-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


class IdentityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempDir(self)
        self.ca = makeCA(self.dir)

    def cert(self, identity: str) -> Issued:
        return makeWorkload(self.ca, identity, self.dir, "w")

    def accepts(self, pattern: str, identity: str) -> object:
        return matches([IdentityPattern.parse(pattern)], self.cert(identity).cert)

    def test_identitiesOf(self) -> None:
        """
        The URI and DNS subjectAltNames, from a C{cryptography} or a
        pyOpenSSL certificate; none from the CA, which has none.
        """
        spiffe = self.cert(ORDERS).cert
        self.assertEqual(identitiesOf(spiffe), [ORDERS])
        self.assertEqual(identitiesOf(crypto.X509.from_cryptography(spiffe)), [ORDERS])
        self.assertEqual(identitiesOf(self.cert("api.example.org").cert), ["api.example.org"])
        self.assertEqual(identitiesOf(self.ca.cert), [])

    def test_exact(self) -> None:
        """
        A SPIFFE ID accepts that identity only.
        """
        self.assertEqual(self.accepts(ORDERS, ORDERS), ORDERS)
        for other in (ORDERS + "2", ORDERS + "/x", "spiffe://example.com/ns/prod/sa/orders"):
            self.assertIsNone(self.accepts(ORDERS, other))

    def test_prefix(self) -> None:
        """
        A SPIFFE ID ending in C{/*} accepts identities below it in the same
        trust domain, by whole segments.
        """
        pattern = "spiffe://example.org/ns/prod/*"
        self.assertEqual(self.accepts(pattern, ORDERS), ORDERS)
        below = "spiffe://example.org/ns/prod/x"
        self.assertEqual(self.accepts(pattern, below), below)
        for other in (
            "spiffe://example.org/ns/prod",
            "spiffe://example.org/ns/production/sa/orders",
            "spiffe://example.com/ns/prod/sa/orders",
            "spiffe://example.org/ns/staging/sa/orders",
        ):
            self.assertIsNone(self.accepts(pattern, other), other)
        self.assertEqual(self.accepts("spiffe://example.org/*", ORDERS), ORDERS)

    def test_any(self) -> None:
        """
        C{*} accepts any identity, and needs one.
        """
        self.assertEqual(self.accepts("*", ORDERS), ORDERS)
        self.assertEqual(self.accepts("*", "api.example.org"), "api.example.org")
        self.assertIsNone(matches([IdentityPattern.parse("*")], self.ca.cert))

    def test_dns(self) -> None:
        """
        A DNS name is matched as HTTPS clients match host names, wildcard
        certificates included, and case-insensitively.
        """
        self.assertEqual(self.accepts("api.example.org", "api.example.org"), "api.example.org")
        self.assertEqual(self.accepts("API.Example.org", "api.example.org"), "api.example.org")
        self.assertEqual(self.accepts("api.example.org", "*.example.org"), "api.example.org")
        for name in ("a.b.example.org", "example.org", "api.example.com"):
            self.assertIsNone(self.accepts(name, "*.example.org"), name)
        self.assertIsNone(self.accepts("orders", ORDERS))

    def test_firstMatch(self) -> None:
        """
        Several patterns: the first that accepts says which identity.
        """
        patterns = parsePatterns(["billing.example.org", "*"])
        self.assertEqual(matches(patterns, self.cert(ORDERS).cert), ORDERS)

    def test_requireMatch(self) -> None:
        """
        L{requireMatch} names what was expected and what was presented.
        """
        patterns = parsePatterns(["spiffe://example.org/ns/dev/*", "billing"])
        cert = self.cert(ORDERS).cert
        e = self.assertRaises(IdentityMismatch, requireMatch, patterns, cert)
        self.assertEqual(e.expected, ["spiffe://example.org/ns/dev/*", "billing"])
        self.assertEqual(e.presented, [ORDERS])
        for text in e.expected + e.presented:
            self.assertIn(text, str(e))
        self.assertEqual(requireMatch(parsePatterns([ORDERS]), cert), ORDERS)

    def test_invalid(self) -> None:
        """
        What is not a pattern is a L{ValueError} quoting it.
        """
        for text in [
            "",
            "spiffe://",
            "spiffe://Example.org/ns/prod",
            "spiffe://example.org/ns//prod",
            "spiffe://example.org/ns/./prod",
            "spiffe://example.org/ns/*/sa/orders",
            "spiffe://example.org/ns/prod*",
            "spiffe://example.org:8080/ns/prod",
            "spiffe://example.org/ns/prod?x=1",
            "https://example.org/x",
            "*.example.org",
            "**",
            "10.0.0.1",
            "::1",
            "api..example.org",
            "api example.org",
        ]:
            e = self.assertRaises(ValueError, IdentityPattern.parse, text)
            self.assertIn(repr(text), str(e))

    def test_parseSPIFFE(self) -> None:
        """
        A SPIFFE ID splits into trust domain and segments.
        """
        self.assertEqual(parseSPIFFE(ORDERS), ("example.org", ("ns", "prod", "sa", "orders")))
        self.assertEqual(parseSPIFFE("spiffe://example.org"), ("example.org", ()))
        self.assertRaises(ValueError, parseSPIFFE, "spiffe://example.org/")
        self.assertRaises(ValueError, parseSPIFFE, "spiffe://example.org/" + "a" * 2048)
