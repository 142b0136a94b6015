"""
Tests for L{easymesh.tls.contexts}: real TLS handshakes over loopback
sockets between L{ServerTLS} and L{ClientTLS}, with certificates made by
L{easymesh.tls.certs}.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import time
from typing import Any, Generator, List, Optional, Sequence, Tuple

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, gatherResults, inlineCallbacks
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from easymesh.tls.certs import Issued, makeCA, makeWorkload
from easymesh.tls.contexts import ClientTLS, ServerTLS, peerIdentities, peerIdentity
from easymesh.tls.credentials import CredentialError
from easymesh.tls.identity import IdentityMismatch

ORDERS = "spiffe://example.org/ns/default/sa/orders"
WEB = "spiffe://example.org/ns/default/sa/web"
BILLING = "spiffe://example.org/ns/default/sa/billing"


def realTimeClock() -> Clock:
    """
    A L{Clock} set to the time now (whole seconds, as in certificates), at
    which the certificates the tests make are valid.
    """
    clock = Clock()
    clock.advance(float(int(time.time())))
    return clock


def tempDir(case: Any) -> str:
    """
    A new directory, removed after the test.
    """
    path = tempfile.mkdtemp(prefix="easymesh-tls-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


@implementer(IHandshakeListener)
class Peer(Protocol):
    """
    One end of a test connection: records the handshake, what arrives and
    how the connection ended; the server end echoes.

    @ivar handshake: Fires with C{True} when the handshake completes, or
        C{False} if the connection is lost first.
    @ivar lost: Fires with C{None} when the connection is lost, C{reason}
        being why.
    """

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.handshake: Deferred[bool] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.reason: Optional[Failure] = None
        self.received = b""
        self._waiting: List[Tuple[int, Deferred[bytes]]] = []
        self.identities: Optional[List[str]] = None
        self.identity: Optional[str] = None
        self.alpn: Optional[bytes] = None
        self.serverName: Optional[bytes] = None
        self.cipher: Optional[str] = None

    def handshakeCompleted(self) -> None:
        self.identities = peerIdentities(self.transport)
        self.identity = peerIdentity(self.transport)
        self.alpn = self.transport.negotiatedProtocol
        handle = self.transport.getHandle()
        self.serverName = handle.get_servername()
        self.cipher = handle.get_cipher_name()
        self.handshake.callback(True)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)
        ready = [(n, d) for n, d in self._waiting if len(self.received) >= n]
        self._waiting = [(n, d) for n, d in self._waiting if len(self.received) < n]
        for _, d in ready:
            d.callback(self.received)

    def receivedAtLeast(self, n: int) -> Deferred[bytes]:
        """
        Fires with what was received once it is C{n} bytes or more.
        """
        d: Deferred[bytes] = Deferred()
        if len(self.received) >= n:
            d.callback(self.received)
        else:
            self._waiting.append((n, d))
        return d

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.handshake.called:
            self.handshake.callback(False)
        self.reason = reason
        self.lost.callback(None)


class PeerFactory(Factory):
    """
    Builds L{Peer}s and queues them in C{peers} as they connect.
    """

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.peers: DeferredQueue[Peer] = DeferredQueue()
        self.all: List[Peer] = []

    def buildProtocol(self, addr: Any) -> Peer:
        peer = Peer(self.echo)
        self.all.append(peer)
        self.peers.put(peer)
        return peer


@implementer(IOpenSSLClientConnectionCreator)
class RawClient:
    """
    A TLS client set up by hand, to do what L{ClientTLS} would not: present
    no certificate, stop at TLS 1.2, offer other ALPN protocols.  It
    verifies nothing.
    """

    def __init__(
        self,
        issued: Optional[Issued] = None,
        maxVersion: Optional[int] = None,
        protocols: Sequence[bytes] = (),
    ) -> None:
        self.context = SSL.Context(SSL.TLS_METHOD)
        if issued is not None:
            self.context.use_certificate(issued.cert)
            self.context.use_privatekey(issued.key)
        if maxVersion is not None:
            self.context.set_max_proto_version(maxVersion)
            if maxVersion < SSL.TLS1_2_VERSION:
                # OpenSSL 3 offers TLS 1.1 only at security level 0.
                self.context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        if protocols:
            self.context.set_alpn_protos(list(protocols))

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)


class TLSTestCase(TestCase):
    """
    A CA, certificates for C{orders} (the server) and C{web} (the client),
    and helpers to listen and connect on loopback.
    """

    timeout = 20

    def setUp(self) -> None:
        self.dir = tempDir(self)
        self.ca = makeCA(self.dir)
        self.serverCert = makeWorkload(self.ca, ORDERS, self.dir, "orders")
        self.clientCert = makeWorkload(self.ca, WEB, self.dir, "web")
        self.serverFactory = PeerFactory(echo=True)
        self.clientPeers: List[Peer] = []
        self.clock = realTimeClock()
        self.addCleanup(self._closeAll)

    def _closeAll(self) -> Deferred[Any]:
        waits = []
        for peer in self.clientPeers + self.serverFactory.all:
            if not peer.lost.called:
                peer.transport.abortConnection()
            waits.append(peer.lost)
        return gatherResults(waits)

    def serverTLS(self, issued: Optional[Issued] = None, **kw: Any) -> ServerTLS:
        issued = issued or self.serverCert
        return ServerTLS(issued.certPath, issued.keyPath, self.ca.certPath, self.clock, **kw)

    def clientTLS(
        self,
        issued: Optional[Issued] = None,
        expected: Sequence[str] = (ORDERS,),
        serverName: Optional[str] = "orders.default",
    ) -> ClientTLS:
        issued = issued or self.clientCert
        return ClientTLS(
            issued.certPath, issued.keyPath, self.ca.certPath, expected, serverName, self.clock
        )

    @inlineCallbacks
    def listen(self, tls: Any) -> Generator[Any, Any, int]:
        """
        Listen with C{tls} on a free loopback port; return the port number.
        """
        endpoint = SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1")
        port = yield endpoint.listen(self.serverFactory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def connect(self, portNumber: int, tls: Any) -> Generator[Any, Any, Peer]:
        """
        Connect with C{tls}; return the client's L{Peer} (its handshake may
        still be under way).
        """
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", portNumber)
        if tls is not None:
            endpoint = wrapClientTLS(tls, endpoint)
        peer = yield endpoint.connect(Factory.forProtocol(Peer))
        self.clientPeers.append(peer)
        return peer

    @inlineCallbacks
    def roundTrip(self, client: Peer, data: bytes = b"ping") -> Generator[Any, Any, None]:
        """
        C{data} goes through C{client}'s connection and is echoed back.
        """
        before = len(client.received)
        client.transport.write(data)
        received = yield client.receivedAtLeast(before + len(data))
        self.assertEqual(received[before:], data)

    @inlineCallbacks
    def assertRefused(self, client: Peer) -> Generator[Any, Any, Peer]:
        """
        The server never completes a handshake with C{client}, nor reads
        anything it sends; return the server's end.
        """
        server = yield self.serverFactory.peers.get()
        client.transport.write(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
        serverHandshake = yield server.handshake
        self.assertFalse(serverHandshake)
        yield server.lost
        yield client.lost
        self.assertEqual(server.received, b"")
        self.assertEqual(client.received, b"")
        return server


class HandshakeTests(TLSTestCase):
    @inlineCallbacks
    def test_mutual(self) -> Generator[Any, Any, None]:
        """
        A client and a server with certificates from the CA complete the
        handshake, each sees the other's identity, ALPN picks
        C{http/1.1}, the client sends SNI, and data flows.
        """
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, self.clientTLS())
        self.assertTrue((yield client.handshake))
        server = yield self.serverFactory.peers.get()
        self.assertTrue((yield server.handshake))
        self.assertEqual(client.identities, [ORDERS])
        self.assertEqual(client.identity, ORDERS)
        self.assertEqual(server.identities, [WEB])
        self.assertEqual(server.identity, WEB)
        self.assertEqual((client.alpn, server.alpn), (b"http/1.1", b"http/1.1"))
        self.assertEqual(server.serverName, b"orders.default")
        yield self.roundTrip(client)

    @inlineCallbacks
    def test_noServerNameForIPAddress(self) -> Generator[Any, Any, None]:
        """
        No SNI is sent when the server name is an IP address, or absent.
        """
        port = yield self.listen(self.serverTLS())
        for name in ("127.0.0.1", "::1", None):
            yield self.connect(port, self.clientTLS(serverName=name))
            server = yield self.serverFactory.peers.get()
            self.assertTrue((yield server.handshake))
            self.assertIsNone(server.serverName)

    @inlineCallbacks
    def test_tls12(self) -> Generator[Any, Any, None]:
        """
        A client that stops at TLS 1.2 gets an ECDHE cipher with AEAD.
        """
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, RawClient(self.clientCert, SSL.TLS1_2_VERSION))
        self.assertTrue((yield client.handshake))
        self.assertEqual(client.transport.getHandle().get_protocol_version_name(), "TLSv1.2")
        self.assertRegex(client.cipher, r"^ECDHE-ECDSA-(AES\d+-GCM|CHACHA20-POLY1305)")
        yield self.roundTrip(client)

    @inlineCallbacks
    def test_tls11Refused(self) -> Generator[Any, Any, None]:
        """
        A client that stops at TLS 1.1 is refused.
        """
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, RawClient(self.clientCert, SSL.TLS1_1_VERSION))
        server = yield self.assertRefused(client)
        self.assertIn("unsupported protocol", str(server.reason.value))

    @inlineCallbacks
    def test_clientWithoutCertificate(self) -> Generator[Any, Any, None]:
        """
        The server refuses a client that presents no certificate.
        """
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, RawClient())
        server = yield self.assertRefused(client)
        server.reason.trap(SSL.Error)
        self.assertIn("certificate required", str(client.reason.value))

    @inlineCallbacks
    def test_clientFromAnotherCA(self) -> Generator[Any, Any, None]:
        """
        The server refuses a client certificate from another CA, even with
        an identity it would accept.
        """
        otherDir = os.path.join(self.dir, "other")
        os.makedirs(otherDir)
        other = makeWorkload(makeCA(otherDir), WEB, otherDir, "web")
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, RawClient(other))
        server = yield self.assertRefused(client)
        server.reason.trap(SSL.Error)
        self.assertIn("unknown ca", str(client.reason.value))

    @inlineCallbacks
    def test_expiredClientCertificate(self) -> Generator[Any, Any, None]:
        """
        The server refuses an expired client certificate.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        expired = makeWorkload(
            self.ca, WEB, self.dir, "expired",
            notBefore=now - datetime.timedelta(days=10),
            notAfter=now - datetime.timedelta(days=1),
        )
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, RawClient(expired))
        server = yield self.assertRefused(client)
        server.reason.trap(SSL.Error)
        self.assertIn("certificate expired", str(client.reason.value))

    @inlineCallbacks
    def test_clientCertificateOptional(self) -> Generator[Any, Any, None]:
        """
        With C{requireClientCert=False} a client without a certificate is
        let in, with no identity.
        """
        port = yield self.listen(self.serverTLS(requireClientCert=False))
        client = yield self.connect(port, RawClient())
        server = yield self.serverFactory.peers.get()
        self.assertTrue((yield server.handshake))
        self.assertEqual(server.identities, [])
        self.assertIsNone(server.identity)
        yield self.roundTrip(client)

    @inlineCallbacks
    def test_alpnWithoutOverlap(self) -> Generator[Any, Any, None]:
        """
        A client offering ALPN protocols the server does not speak is
        refused; the protocol list is a parameter.
        """
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, RawClient(self.clientCert, protocols=[b"h2"]))
        server = yield self.assertRefused(client)
        server.reason.trap(SSL.Error)

    @inlineCallbacks
    def test_alpnPreference(self) -> Generator[Any, Any, None]:
        """
        The server picks its most preferred protocol among those offered.
        """
        tls = self.serverTLS(protocols=[b"h2", b"http/1.1"])
        port = yield self.listen(tls)
        client = yield self.connect(
            port, RawClient(self.clientCert, protocols=[b"http/1.1", b"h2"])
        )
        self.assertTrue((yield client.handshake))
        self.assertEqual(client.alpn, b"h2")

    @inlineCallbacks
    def test_serverIdentityMismatch(self) -> Generator[Any, Any, None]:
        """
        The client refuses a server from the CA whose identity is not the
        expected one, with an error naming both.
        """
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, self.clientTLS(expected=[BILLING]))
        self.assertFalse((yield client.handshake))
        yield client.lost
        reason = client.reason
        reason.trap(IdentityMismatch)
        self.assertIn(BILLING, str(reason.value))
        self.assertIn(ORDERS, str(reason.value))
        self.assertEqual(reason.value.presented, [ORDERS])
        server = yield self.serverFactory.peers.get()
        self.assertFalse((yield server.handshake))

    @inlineCallbacks
    def test_serverIdentityPrefix(self) -> Generator[Any, Any, None]:
        """
        A C{/*} pattern accepts a server below it.
        """
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(
            port,
            self.clientTLS(
                expected=["spiffe://example.org/ns/prod/*", "spiffe://example.org/ns/default/*"]
            ),
        )
        self.assertTrue((yield client.handshake))

    @inlineCallbacks
    def test_serverFromAnotherCA(self) -> Generator[Any, Any, None]:
        """
        The client refuses a server whose certificate is from another CA,
        whatever its identity.
        """
        otherDir = os.path.join(self.dir, "other")
        os.makedirs(otherDir)
        other = makeWorkload(makeCA(otherDir), ORDERS, otherDir, "orders")
        serverTLS = ServerTLS(other.certPath, other.keyPath, self.ca.certPath, self.clock)
        port = yield self.listen(serverTLS)
        client = yield self.connect(port, self.clientTLS(expected=["*"]))
        self.assertFalse((yield client.handshake))
        yield client.lost
        client.reason.trap(SSL.Error)

    @inlineCallbacks
    def test_dnsWildcardServer(self) -> Generator[Any, Any, None]:
        """
        A C{*.example.org} server certificate satisfies a client expecting
        C{api.example.org}, not one expecting C{a.b.example.org}.
        """
        wildcard = makeWorkload(self.ca, "*.example.org", self.dir, "wildcard")
        port = yield self.listen(self.serverTLS(wildcard))
        client = yield self.connect(
            port, self.clientTLS(expected=["api.example.org"], serverName="api.example.org")
        )
        self.assertTrue((yield client.handshake))
        self.assertEqual(client.identities, ["*.example.org"])
        client = yield self.connect(port, self.clientTLS(expected=["a.b.example.org"]))
        self.assertFalse((yield client.handshake))
        yield client.lost
        client.reason.trap(IdentityMismatch)

    @inlineCallbacks
    def test_plaintextClient(self) -> Generator[Any, Any, None]:
        """
        A plaintext HTTP request to the TLS server gets no HTTP through, in
        either direction.
        """
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, None)
        server = yield self.assertRefused(client)
        server.reason.trap(SSL.Error)
        self.assertNotIn(b"HTTP", client.received)


class ConstructionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempDir(self)
        self.ca = makeCA(self.dir)
        self.cert = makeWorkload(self.ca, ORDERS, self.dir, "orders")

    def test_interfaces(self) -> None:
        """
        L{ServerTLS} and L{ClientTLS} provide Twisted's connection creator
        interfaces.
        """
        c = self.cert
        verifyObject(
            IOpenSSLServerConnectionCreator,
            ServerTLS(c.certPath, c.keyPath, self.ca.certPath, Clock()),
        )
        verifyObject(
            IOpenSSLClientConnectionCreator,
            ClientTLS(c.certPath, c.keyPath, self.ca.certPath, ["*"], None, Clock()),
        )

    def test_expectedRequired(self) -> None:
        """
        A client must be told which server identities to accept, in valid
        patterns.
        """
        c = self.cert
        for expected in ([], ["spiffe://example.org/a/*/b"]):
            self.assertRaises(
                ValueError,
                ClientTLS, c.certPath, c.keyPath, self.ca.certPath, expected, None, Clock(),
            )

    def test_badFilesAtStart(self) -> None:
        """
        Files that cannot be used at start are an error naming the file.
        """
        c = self.cert
        missing = os.path.join(self.dir, "missing.pem")
        other = makeWorkload(self.ca, WEB, self.dir, "web")
        for args, path, reason in [
            ((missing, c.keyPath, self.ca.certPath), missing, "No such file"),
            ((c.certPath, missing, self.ca.certPath), missing, "No such file"),
            ((c.certPath, c.keyPath, missing), missing, "No such file"),
            ((c.keyPath, c.keyPath, self.ca.certPath), c.keyPath, "no PEM certificate"),
            ((c.certPath, c.certPath, self.ca.certPath), c.certPath, "private key"),
            ((c.certPath, other.keyPath, self.ca.certPath), other.keyPath, "does not match"),
        ]:
            e = self.assertRaises(CredentialError, ServerTLS, *args, Clock())
            self.assertEqual(e.path, path)
            self.assertIn(reason, e.reason)


class RefusalLogTests(TLSTestCase):
    """
    Each side logs why it refused the other's certificate, which OpenSSL's
    handshake error ("certificate verify failed") does not say.
    """

    def setUp(self) -> None:
        super().setUp()
        from twisted.logger import globalLogPublisher

        self.events: List[Any] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self, text: str) -> List[str]:
        from twisted.logger import formatEvent

        messages = [formatEvent(e) for e in self.events if "log_format" in e]
        return [m for m in messages if text in m]

    @inlineCallbacks
    def refusedClient(self, issued: Issued) -> Generator[Any, Any, str]:
        """
        Connect with C{issued} to a server that refuses it; the server's
        log line, which names the client's address.
        """
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, RawClient(issued))
        local = client.transport.getHost()
        yield self.assertRefused(client)
        [line] = self.logged("Refused mTLS client")
        self.assertIn(f"Refused mTLS client {local.host}:{local.port}: ", line)
        return line

    @inlineCallbacks
    def test_expiredClient(self) -> Generator[Any, Any, None]:
        now = datetime.datetime.now(datetime.timezone.utc)
        expired = makeWorkload(
            self.ca, WEB, self.dir, "expired",
            notBefore=now - datetime.timedelta(days=10),
            notAfter=now - datetime.timedelta(days=1),
        )  # fmt: skip
        line = yield self.refusedClient(expired)
        self.assertIn(f"its certificate ({WEB}) did not verify: certificate has expired", line)

    @inlineCallbacks
    def test_notYetValidClient(self) -> Generator[Any, Any, None]:
        now = datetime.datetime.now(datetime.timezone.utc)
        future = makeWorkload(
            self.ca, WEB, self.dir, "future",
            notBefore=now + datetime.timedelta(days=1),
            notAfter=now + datetime.timedelta(days=10),
        )  # fmt: skip
        line = yield self.refusedClient(future)
        self.assertIn("did not verify: certificate is not yet valid", line)

    @inlineCallbacks
    def test_clientFromAnotherCA(self) -> Generator[Any, Any, None]:
        otherDir = os.path.join(self.dir, "other")
        os.makedirs(otherDir)
        other = makeWorkload(makeCA(otherDir), WEB, otherDir, "web")
        line = yield self.refusedClient(other)
        self.assertIn(
            f"its certificate ({WEB}) did not verify: unable to get local issuer certificate",
            line,
        )

    @inlineCallbacks
    def test_goodClientNotLogged(self) -> Generator[Any, Any, None]:
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, self.clientTLS())
        self.assertTrue((yield client.handshake))
        yield self.roundTrip(client)
        self.assertEqual(self.logged("Refused"), [])

    @inlineCallbacks
    def test_serverIdentityMismatch(self) -> Generator[Any, Any, None]:
        port = yield self.listen(self.serverTLS())
        client = yield self.connect(port, self.clientTLS(expected=[BILLING]))
        self.assertFalse((yield client.handshake))
        yield client.lost
        [line] = self.logged("Refused peer")
        self.assertEqual(
            line,
            f"Refused peer 127.0.0.1:{port}: peer identity mismatch: expected {BILLING}; "
            f"certificate presents {ORDERS}",
        )

    @inlineCallbacks
    def test_serverFromAnotherCA(self) -> Generator[Any, Any, None]:
        otherDir = os.path.join(self.dir, "other")
        os.makedirs(otherDir)
        other = makeWorkload(makeCA(otherDir), ORDERS, otherDir, "orders")
        port = yield self.listen(ServerTLS(other.certPath, other.keyPath, self.ca.certPath, self.clock))
        client = yield self.connect(port, self.clientTLS(expected=["*"]))
        self.assertFalse((yield client.handshake))
        yield client.lost
        [line] = self.logged("Refused peer")
        self.assertEqual(
            line,
            f"Refused peer 127.0.0.1:{port}: its certificate ({ORDERS}) did not verify: "
            "unable to get local issuer certificate (not issued by a CA in the bundle)",
        )

    def test_verifyErrorText(self) -> None:
        from easymesh.tls.contexts import _verifyErrorText

        codes = SSL.X509VerificationCodes
        self.assertEqual(_verifyErrorText(codes.ERR_CERT_HAS_EXPIRED), "certificate has expired")
        self.assertEqual(
            _verifyErrorText(codes.ERR_UNABLE_TO_GET_CRL), "unable to get crl"
        )
        self.assertEqual(_verifyErrorText(99999), "X509 verification error 99999")
