"""
Tests for L{easymesh.tls.identity}: identities in certificates and the
patterns that accept them.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from typing import Any, List, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID
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

    def test_anyIgnoresDNSNamesThatAreNotNames(self) -> None:
        """
        A DNS subjectAltName spelt as a URI (C{spiffe://...}) is not an
        identity: C{*} does not return it, or it would pass for the SPIFFE
        ID it spells (the authorization rules tell SPIFFE IDs from DNS
        names by their text).
        """
        admin = "spiffe://example.org/ns/ops/sa/admin"
        anyone = [IdentityPattern.parse("*")]
        forged = self.certWith([x509.DNSName(admin)])
        self.assertIsNone(matches(anyone, forged))
        both = self.certWith([x509.DNSName(admin), x509.DNSName("api.example.org")])
        self.assertEqual(matches(anyone, both), "api.example.org")
        self.assertIsNone(matches([IdentityPattern.parse(admin)], forged))
        prefix = [IdentityPattern.parse("spiffe://example.org/ns/ops/*")]
        self.assertIsNone(matches(prefix, forged))

    def test_anyIgnoresControlCharacters(self) -> None:
        """
        Nor is a subjectAltName with control characters or spaces, which
        would go on into the caller identity header.
        """
        anyone = [IdentityPattern.parse("*")]
        for names in (
            [x509.UniformResourceIdentifier("spiffe://example.org/ns/a\r\nx-forged: 1")],
            [x509.UniformResourceIdentifier("spiffe://example.org/ns/a b")],
            [x509.DNSName("api.example.org\x00")],
            [x509.DNSName("api example.org")],
        ):
            self.assertIsNone(matches(anyone, self.certWith(names)), names)

    def test_malformedSubjectAltNames(self) -> None:
        """
        A certificate whose subjectAltName extension does not parse (OpenSSL
        verifies it all the same) names no identity, rather than raising.
        """
        for raw in (b"\x30\x03\x82\x01\xff", b"\x30\x05\x86\x03a\xffb"):
            cert = self.certWith(
                [], x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, raw)
            )
            self.assertEqual(identitiesOf(cert), [])
            self.assertIsNone(matches([IdentityPattern.parse("*")], cert))
            with self.assertRaises(IdentityMismatch):
                requireMatch([IdentityPattern.parse(ORDERS)], cert)

    def certWith(
        self, names: List[x509.GeneralName], extension: Optional[x509.ExtensionType] = None
    ) -> x509.Certificate:
        """
        A certificate from the CA with these subjectAltNames, or with
        C{extension} instead.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")]))
            .issuer_name(self.ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(extension or x509.SubjectAlternativeName(names), critical=False)
            .sign(self.ca.key, hashes.SHA256())
        )

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
