"""
Tests for the reloading of L{easymesh.tls.contexts.ServerTLS} and
L{ClientTLS} when their files change, over real loopback connections, and
for L{easymesh.tls.credentials}.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, Generator, List

from OpenSSL import SSL
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from easymesh.tls.certs import makeCA, makeWorkload
from easymesh.tls.credentials import CredentialError, fileStamp, loadCredentials
from tests.test_tls_contexts import ORDERS, WEB, TLSTestCase, tempDir

ORDERS_V2 = "spiffe://example.org/ns/default/sa/orders-v2"
WEB_V2 = "spiffe://example.org/ns/default/sa/web-v2"


class RotationTests(TLSTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.server = self.serverTLS()
        self.server.start()
        self.addCleanup(self.server.stop)

    def logged(self, text: str) -> List[str]:
        messages = [formatEvent(e) for e in self.events if "log_format" in e]
        return [m for m in messages if text in m]

    @inlineCallbacks
    def connectedIdentity(self, port: int) -> Generator[Any, Any, str]:
        """
        Connect to the server; return the identity it presents.
        """
        client = yield self.connect(port, self.clientTLS(expected=["spiffe://example.org/*"]))
        self.assertTrue((yield client.handshake))
        return client.identity

    @inlineCallbacks
    def serverIdentity(self) -> Generator[Any, Any, str]:
        """
        The client identity the server's next connection sees.
        """
        server = yield self.serverFactory.peers.get()
        self.assertTrue((yield server.handshake))
        return server.identity

    @inlineCallbacks
    def test_newCertificateForNewConnections(self) -> Generator[Any, Any, None]:
        """
        Once the files are replaced and checked, new connections get the
        new certificate, and a connection made before carries on with the
        old one.
        """
        port = yield self.listen(self.server)
        before = yield self.connect(port, self.clientTLS(expected=["spiffe://example.org/*"]))
        self.assertTrue((yield before.handshake))
        self.assertEqual(before.identity, ORDERS)
        serial = self.server.credentials.leaf.serial_number

        makeWorkload(self.ca, ORDERS_V2, self.dir, "orders")
        self.assertEqual((yield self.connectedIdentity(port)), ORDERS)
        self.clock.advance(self.server.checkEvery)

        self.assertNotEqual(self.server.credentials.leaf.serial_number, serial)
        self.assertEqual((yield self.connectedIdentity(port)), ORDERS_V2)
        yield self.roundTrip(before)
        self.assertEqual(len(self.logged("TLS credentials reloaded")), 1)
        self.assertIn(ORDERS_V2, self.logged("TLS credentials reloaded")[0])

    def test_unchangedNotReloaded(self) -> None:
        """
        Files that have not changed are not read again.
        """
        credentials = self.server.credentials
        for _ in range(3):
            self.clock.advance(self.server.checkEvery)
        self.assertIs(self.server.credentials, credentials)
        self.assertEqual(self.logged("TLS credentials"), [])

    @inlineCallbacks
    def test_garbageRefused(self) -> Generator[Any, Any, None]:
        """
        A certificate file replaced with garbage is refused and logged with
        its name and the reason; the old certificate stays in use.
        """
        port = yield self.listen(self.server)
        with open(self.serverCert.certPath, "wb") as f:
            f.write(b"garbage\n")
        self.clock.advance(self.server.checkEvery)
        [message] = self.logged("not reloaded")
        self.assertIn(self.serverCert.certPath, message)
        self.assertIn("no PEM certificate", message)
        self.assertEqual((yield self.connectedIdentity(port)), ORDERS)
        # Logged once, not at every check.
        self.clock.advance(self.server.checkEvery)
        self.assertEqual(len(self.logged("not reloaded")), 1)

    @inlineCallbacks
    def test_keyMismatchRefused(self) -> Generator[Any, Any, None]:
        """
        A new certificate whose key has not arrived yet is refused; the
        next check after the key arrives takes both.
        """
        port = yield self.listen(self.server)
        staging = os.path.join(self.dir, "staging")
        os.makedirs(staging)
        new = makeWorkload(self.ca, ORDERS_V2, staging, "orders")
        shutil.copyfile(new.certPath, self.serverCert.certPath)
        self.assertFalse(self.server.reload())
        [message] = self.logged("not reloaded")
        self.assertIn(self.serverCert.keyPath, message)
        self.assertIn("does not match", message)
        self.assertEqual((yield self.connectedIdentity(port)), ORDERS)

        shutil.copyfile(new.keyPath, self.serverCert.keyPath)
        self.clock.advance(self.server.checkEvery)
        self.assertEqual((yield self.connectedIdentity(port)), ORDERS_V2)

    def test_reloadValidatesCA(self) -> None:
        """
        A CA bundle that does not parse is refused too.
        """
        credentials = self.server.credentials
        with open(self.ca.certPath, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        self.assertFalse(self.server.reload())
        self.assertIs(self.server.credentials, credentials)
        [message] = self.logged("not reloaded")
        self.assertIn(self.ca.certPath, message)

    def test_openSSLRefuses(self) -> None:
        """
        Credentials OpenSSL will not take are refused like bad files.
        """

        def refuse(creds: Any) -> Any:
            raise SSL.Error([("SSL routines", "", "ee key too small")])

        credentials = self.server.credentials
        self.patch(self.server, "_makeContext", refuse)
        makeWorkload(self.ca, ORDERS_V2, self.dir, "orders")
        self.clock.advance(self.server.checkEvery)
        self.assertIs(self.server.credentials, credentials)
        [message] = self.logged("not reloaded")
        self.assertIn(self.serverCert.certPath, message)
        self.assertIn("ee key too small", message)

    def test_stopped(self) -> None:
        """
        After L{stop} the files are no longer checked; L{start} and L{stop}
        may be called twice.
        """
        self.server.start()
        self.server.stop()
        self.server.stop()
        credentials = self.server.credentials
        makeWorkload(self.ca, ORDERS_V2, self.dir, "orders")
        self.clock.advance(self.server.checkEvery * 3)
        self.assertIs(self.server.credentials, credentials)

    @inlineCallbacks
    def test_clientRotation(self) -> Generator[Any, Any, None]:
        """
        A client's new certificate is presented on its new connections.
        """
        port = yield self.listen(self.server)
        clientTLS = self.clientTLS()
        clientTLS.start()
        self.addCleanup(clientTLS.stop)
        first = yield self.connect(port, clientTLS)
        self.assertTrue((yield first.handshake))
        self.assertEqual((yield self.serverIdentity()), WEB)

        makeWorkload(self.ca, WEB_V2, self.dir, "web")
        self.clock.advance(clientTLS.checkEvery)
        second = yield self.connect(port, clientTLS)
        self.assertTrue((yield second.handshake))
        self.assertEqual((yield self.serverIdentity()), WEB_V2)
        yield self.roundTrip(first)


class CredentialFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempDir(self)
        self.ca = makeCA(self.dir)
        self.cert = makeWorkload(self.ca, ORDERS, self.dir, "orders")

    def test_load(self) -> None:
        """
        The chain, the key and the CA bundle are read.
        """
        creds = loadCredentials(self.cert.certPath, self.cert.keyPath, self.ca.certPath)
        self.assertEqual(creds.leaf, self.cert.cert)
        self.assertEqual(creds.authorities, (self.ca.cert,))

    def test_encryptedKey(self) -> None:
        """
        An encrypted key is refused: there is nobody to type the password.
        """
        from cryptography.hazmat.primitives import serialization

        with open(self.cert.keyPath, "wb") as f:
            f.write(
                self.cert.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        c = self.cert
        e = self.assertRaises(
            CredentialError, loadCredentials, c.certPath, c.keyPath, self.ca.certPath
        )
        self.assertEqual(e.path, self.cert.keyPath)

    def test_unsupportedPublicKey(self) -> None:
        """
        A certificate whose public key cryptography cannot read (an unknown
        curve) is a L{CredentialError} naming it, not another exception.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        der = self.cert.cert.public_bytes(serialization.Encoding.DER)
        p256 = bytes.fromhex("06082A8648CE3D030107")
        self.assertEqual(der.count(p256), 1)
        unknown = x509.load_der_x509_certificate(
            der.replace(p256, bytes.fromhex("06082A8648CE3D03017F"))
        )
        with open(self.cert.certPath, "wb") as f:
            f.write(unknown.public_bytes(serialization.Encoding.PEM))
        c = self.cert
        e = self.assertRaises(
            CredentialError, loadCredentials, c.certPath, c.keyPath, self.ca.certPath
        )
        self.assertEqual(e.path, c.certPath)
        self.assertIn("not supported", e.reason)

    def test_stamp(self) -> None:
        """
        The stamp changes when a file is replaced, and is L{None} for a
        missing file.
        """
        paths = [self.cert.certPath, os.path.join(self.dir, "missing")]
        before = fileStamp(paths)
        self.assertIsNone(before[1])
        makeWorkload(self.ca, ORDERS_V2, self.dir, "orders")
        self.assertNotEqual(fileStamp(paths), before)
        self.assertEqual(fileStamp(paths), fileStamp(paths))
