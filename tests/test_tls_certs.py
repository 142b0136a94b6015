"""
Tests for L{easymesh.tls.certs}: the development CA, workload certificates
and the C{certs} command.
"""

from __future__ import annotations

import datetime
import io
import os
import shutil
import stat
import tempfile
from typing import Any, List, Tuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial.unittest import SynchronousTestCase

from easymesh.tls.certs import loadCA, main, makeCA, makeWorkload, nameFor
from easymesh.tls.credentials import CredentialError, loadCredentials
from easymesh.tls.identity import identitiesOf

ORDERS = "spiffe://example.org/ns/default/sa/orders"


def tempDir(case: Any) -> str:
    """
    A new directory, removed after the test.
    """
    path = tempfile.mkdtemp(prefix="easymesh-tls-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class CertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempDir(self)

    def test_ca(self) -> None:
        """
        The CA is a self-signed P-256 CA certificate, its key in a file
        only its owner can read.
        """
        ca = makeCA(self.dir, name="test CA", validDays=10)
        self.assertEqual(ca.certPath, os.path.join(self.dir, "ca.pem"))
        self.assertEqual(ca.keyPath, os.path.join(self.dir, "ca-key.pem"))
        self.assertEqual(mode(ca.keyPath), 0o600)
        self.assertIsInstance(ca.key.curve, ec.SECP256R1)
        self.assertTrue(ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual(ca.cert.subject, ca.cert.issuer)
        ca.cert.verify_directly_issued_by(ca.cert)
        lifetime = ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc
        self.assertLess(lifetime, datetime.timedelta(days=11))
        self.assertEqual(loadCA(self.dir).cert, ca.cert)

    def test_workload(self) -> None:
        """
        A workload certificate alone in its file, signed by the CA, with a
        P-256 key, its identity as a URI subjectAltName, and good for
        server and client authentication.
        """
        ca = makeCA(self.dir)
        issued = makeWorkload(ca, ORDERS, self.dir, "orders")
        self.assertEqual(issued.certPath, os.path.join(self.dir, "orders.pem"))
        self.assertEqual(issued.keyPath, os.path.join(self.dir, "orders-key.pem"))
        self.assertEqual(mode(issued.keyPath), 0o600)
        with open(issued.certPath, "rb") as f:
            self.assertEqual(len(x509.load_pem_x509_certificates(f.read())), 1)
        cert = issued.cert
        cert.verify_directly_issued_by(ca.cert)
        self.assertIsInstance(issued.key.curve, ec.SECP256R1)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.UniformResourceIdentifier), [ORDERS])
        self.assertEqual(san.get_values_for_type(x509.DNSName), [])
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(
            set(eku), {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        )
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        creds = loadCredentials(issued.certPath, issued.keyPath, ca.certPath)
        self.assertEqual(creds.leaf, cert)

    def test_dnsWorkload(self) -> None:
        """
        A DNS identity, wildcard too, is a DNS subjectAltName.
        """
        ca = makeCA(self.dir)
        for identity in ("api.example.org", "*.example.org"):
            cert = makeWorkload(ca, identity, self.dir, "api").cert
            self.assertEqual(identitiesOf(cert), [identity])

    def test_validity(self) -> None:
        """
        C{notBefore} and C{notAfter} are the certificate's.
        """
        ca = makeCA(self.dir)
        start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
        end = datetime.datetime(2020, 2, 1, tzinfo=datetime.timezone.utc)
        cert = makeWorkload(ca, ORDERS, self.dir, "old", notBefore=start, notAfter=end).cert
        self.assertEqual((cert.not_valid_before_utc, cert.not_valid_after_utc), (start, end))

    def test_otherCA(self) -> None:
        """
        A certificate signed by another CA is not the first CA's.
        """
        ca = makeCA(os.path.join(self.dir))
        otherDir = os.path.join(self.dir, "other")
        os.makedirs(otherDir)
        other = makeCA(otherDir)
        cert = makeWorkload(other, ORDERS, self.dir, "orders").cert
        cert.verify_directly_issued_by(other.cert)
        self.assertRaises(Exception, cert.verify_directly_issued_by, ca.cert)

    def test_badIdentityOrName(self) -> None:
        """
        Identities that are neither SPIFFE IDs nor DNS names, and names
        that would clash with other files, are refused.
        """
        ca = makeCA(self.dir)
        for identity in ("https://example.org/x", "spiffe://Example.org/x", "*.org", "1.2.3.4", ""):
            self.assertRaises(ValueError, makeWorkload, ca, identity, self.dir, "x")
        for name in ("ca", "orders-key", "../orders", ".hidden", ""):
            self.assertRaises(ValueError, makeWorkload, ca, ORDERS, self.dir, name)
        self.assertEqual(sorted(os.listdir(self.dir)), ["ca-key.pem", "ca.pem"])

    def test_nameFor(self) -> None:
        """
        File names from identities.
        """
        self.assertEqual(nameFor(ORDERS), "orders")
        self.assertEqual(nameFor("spiffe://example.org"), "example.org")
        self.assertEqual(nameFor("api.example.org"), "api.example.org")
        self.assertEqual(nameFor("*.example.org"), "wildcard.example.org")


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.join(tempDir(self), "certs")

    def certs(self, *argv: str) -> Tuple[int, str]:
        out = io.StringIO()
        return main(list(argv), out), out.getvalue()

    def files(self) -> List[str]:
        return sorted(os.listdir(self.dir))

    def test_writes(self) -> None:
        """
        The directory is made, with a CA and a certificate per identity;
        keys are mode 0600; what was written is printed.
        """
        status, out = self.certs(
            self.dir, "--identity", ORDERS, "--identity", "api.example.org"
        )
        self.assertEqual(status, 0)
        self.assertEqual(
            self.files(),
            ["api.example.org-key.pem", "api.example.org.pem", "ca-key.pem", "ca.pem",
             "orders-key.pem", "orders.pem"],
        )
        for name in self.files():
            private = mode(os.path.join(self.dir, name)) & 0o077 == 0
            self.assertEqual(private, name.endswith("-key.pem"), name)
            self.assertIn(os.path.join(self.dir, name), out)
        self.assertIn(self.dir, out.splitlines()[-1])
        ca = loadCA(self.dir)
        creds = loadCredentials(
            os.path.join(self.dir, "orders.pem"),
            os.path.join(self.dir, "orders-key.pem"),
            ca.certPath,
        )
        self.assertEqual(identitiesOf(creds.leaf), [ORDERS])
        creds.leaf.verify_directly_issued_by(ca.cert)

    def test_reusesCA(self) -> None:
        """
        A CA already in the directory signs the new certificates.
        """
        self.assertEqual(self.certs(self.dir, "--identity", ORDERS)[0], 0)
        ca = loadCA(self.dir)
        status, out = self.certs(self.dir, "--identity", "spiffe://example.org/ns/default/sa/web")
        self.assertEqual(status, 0)
        self.assertIn("using the CA", out)
        self.assertEqual(loadCA(self.dir).cert, ca.cert)
        with open(os.path.join(self.dir, "web.pem"), "rb") as f:
            x509.load_pem_x509_certificate(f.read()).verify_directly_issued_by(ca.cert)

    def test_names(self) -> None:
        """
        C{--name} names each identity's files in turn.
        """
        status, _ = self.certs(
            self.dir,
            *("--identity", ORDERS, "--name", "a"),
            *("--identity", "x.example.org", "--name", "b"),
        )
        self.assertEqual(status, 0)
        self.assertEqual(
            self.files(), ["a-key.pem", "a.pem", "b-key.pem", "b.pem", "ca-key.pem", "ca.pem"]
        )

    def test_usageErrors(self) -> None:
        """
        Bad arguments exit with status 2 and write nothing.
        """
        for argv in [
            [self.dir],
            [self.dir, "--identity", "https://example.org/"],
            [self.dir, "--identity", ORDERS, "--name", "a", "--name", "b"],
            [self.dir, "--identity", ORDERS, "--identity", "spiffe://other.org/orders"],
            [self.dir, "--identity", ORDERS, "--name", "ca"],
        ]:
            self.assertEqual(self.certs(*argv)[0], 2, argv)
        self.assertFalse(os.path.exists(self.dir))

    def test_halfACA(self) -> None:
        """
        A directory with a CA certificate but no CA key is an error, and
        the certificate is left alone.
        """
        self.assertEqual(self.certs(self.dir, "--identity", ORDERS)[0], 0)
        os.remove(os.path.join(self.dir, "ca-key.pem"))
        with open(os.path.join(self.dir, "ca.pem"), "rb") as f:
            before = f.read()
        self.assertEqual(self.certs(self.dir, "--identity", ORDERS)[0], 1)
        with open(os.path.join(self.dir, "ca.pem"), "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertRaises(CredentialError, loadCA, self.dir)
