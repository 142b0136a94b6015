"""
Tests for what C{*} (the default of C{--inbound-allow}) takes as a caller's
identity: valid SPIFFE IDs and DNS names only, as the other patterns; and
for how a certificate's names are shown in log lines.
"""

from __future__ import annotations

from typing import List

from cryptography import x509
from OpenSSL import crypto
from twisted.trial.unittest import SynchronousTestCase

from easymesh.tls.certs import issue, makeCA
from easymesh.tls.identity import (
    IdentityMismatch,
    IdentityPattern,
    describeIdentities,
    describeNames,
    dnsIdentity,
    isSPIFFE,
    matches,
    requireMatch,
)
from tests.test_tls_identity import tempDir

ADMIN = "spiffe://example.org/ns/ops/sa/admin"

#: URI subjectAltNames that are not SPIFFE IDs, though TLS verifies a
#: certificate naming them.
NOT_SPIFFE = [
    "spiffe://example.org/ns/../sa/admin",
    "spiffe://example.org/ns/./sa/admin",
    "spiffe://example.org/ns/%2e%2e/sa/admin",
    "spiffe://example.org/ns/ops/sa/%61dmin",
    "SPIFFE://example.org/ns/ops/sa/admin",
    "Spiffe://example.org/ns/ops/sa/admin",
    "spiffe://Example.org/ns/ops/sa/admin",
    "spiffe://example.org:8443/ns/ops/sa/admin",
    "spiffe://user@example.org/ns/ops/sa/admin",
    "spiffe://user:pw@example.org/ns/ops/sa/admin",
    "spiffe://example.org/ns/ops/sa/admin?x=1",
    "spiffe://example.org/ns/ops/sa/admin#f",
    "spiffe://example.org/ns//sa/admin",
    "spiffe://example.org/ns/ops/sa/admin/",
    "spiffe:///ns/ops/sa/admin",
    "spiffe://",
    "spiffe:example.org/ns/ops/sa/admin",
    "https://example.org/ns/ops/sa/admin",
    "urn:example:admin",
    "spiffe://example.org/" + "a" * 2048,
]

#: DNS subjectAltNames that are not DNS names.
NOT_DNS = [
    "api..example.org",
    ".example.org",
    "api.example.org.",
    "10.0.0.1",
    "*.*.example.org",
    "a*.example.org",
    "api.*.example.org",
    "*",
    "*.org",
    "a" * 64 + ".example.org",
    ("a" * 60 + ".") * 5 + "org",
    "api.example.org/x",
    "api:443",
]


class AnyPatternTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempDir(self)
        self.ca = makeCA(self.dir)
        self.anyone = [IdentityPattern.parse("*")]

    def cert(self, names: List[x509.GeneralName]) -> x509.Certificate:
        return issue(self.ca, names, self.dir, "w").cert

    def test_notSPIFFE(self) -> None:
        """
        A URI subjectAltName that is not a valid SPIFFE ID is not an
        identity to C{*}, as to the other patterns.
        """
        for uri in NOT_SPIFFE:
            cert = self.cert([x509.UniformResourceIdentifier(uri)])
            self.assertIsNone(matches(self.anyone, cert), uri)
            self.assertFalse(isSPIFFE(uri), uri)
            prefix = [IdentityPattern.parse("spiffe://example.org/*")]
            self.assertIsNone(matches(prefix, cert), uri)

    def test_nextIdentity(self) -> None:
        """
        C{*} takes the first valid SPIFFE ID, else the first DNS name, past
        names that are not identities.
        """
        bad = x509.UniformResourceIdentifier("spiffe://example.org/ns/../sa/admin")
        good = x509.UniformResourceIdentifier(ADMIN)
        dns = x509.DNSName("api.example.org")
        self.assertEqual(matches(self.anyone, self.cert([bad, good])), ADMIN)
        self.assertEqual(matches(self.anyone, self.cert([dns, bad])), "api.example.org")
        self.assertEqual(matches(self.anyone, self.cert([dns, bad, good])), ADMIN)

    def test_notDNS(self) -> None:
        """
        A DNS subjectAltName that is not a DNS name is not an identity.
        """
        for name in NOT_DNS:
            self.assertIsNone(dnsIdentity(name), name)
            self.assertIsNone(matches(self.anyone, self.cert([x509.DNSName(name)])), name)

    def test_dnsNames(self) -> None:
        """
        DNS names are taken in lower case; a wildcard certificate names its
        pattern.
        """
        for name, identity in [
            ("api.example.org", "api.example.org"),
            ("API.Example.ORG", "api.example.org"),
            ("orders", "orders"),
            ("x_y-1.example.org", "x_y-1.example.org"),
            ("*.example.org", "*.example.org"),
            ("a" * 63 + ".example.org", "a" * 63 + ".example.org"),
        ]:
            self.assertEqual(dnsIdentity(name), identity, name)
            self.assertEqual(matches(self.anyone, self.cert([x509.DNSName(name)])), identity)

    def test_validSPIFFE(self) -> None:
        for uri in [ADMIN, "spiffe://example.org", "spiffe://a-b_c.example/x.y/Z_1"]:
            self.assertTrue(isSPIFFE(uri), uri)
            self.assertEqual(
                matches(self.anyone, self.cert([x509.UniformResourceIdentifier(uri)])), uri
            )


class DescribeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempDir(self)
        self.ca = makeCA(self.dir)

    def test_none(self) -> None:
        """
        A certificate without subjectAltNames names no identity; no
        certificate is said too.
        """
        cert = issue(self.ca, [], self.dir, "w").cert
        self.assertEqual(describeIdentities(cert), "no identity")
        self.assertEqual(describeIdentities(crypto.X509.from_cryptography(cert)), "no identity")
        self.assertEqual(describeIdentities(None), "no certificate")
        e = self.assertRaises(IdentityMismatch, requireMatch, [IdentityPattern.parse(ADMIN)], cert)
        self.assertIn("certificate presents no identity", str(e))

    def test_names(self) -> None:
        cert = issue(
            self.ca,
            [x509.UniformResourceIdentifier(ADMIN), x509.DNSName("api.example.org")],
            self.dir,
            "w",
        ).cert
        self.assertEqual(describeIdentities(cert), f"{ADMIN}, api.example.org")

    def test_escaped(self) -> None:
        """
        Anything but printable ASCII is escaped (a refused certificate may
        name anything), and long or many names are cut short.
        """
        self.assertEqual(
            describeNames(["spiffe://e/a\r\nforged: 1", "a b\\x", "\u00e9\u2028\U0001f600"]),
            "spiffe://e/a\\x0d\\x0aforged:\\x201, a\\x20b\\x5cx, \\xe9\\u2028\\U0001f600",
        )
        self.assertEqual(describeNames(["x" * 300]), "x" * 256 + "...")
        self.assertEqual(
            describeNames([f"n{i}" for i in range(20)]),
            "n0, n1, n2, n3, n4, n5, n6, n7 and 12 more",
        )
