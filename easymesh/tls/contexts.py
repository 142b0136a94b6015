# -*- test-case-name: tests.test_tls_contexts,tests.test_tls_rotation -*-
"""
TLS for the sidecar's listeners (L{ServerTLS}) and for its connections to
peers (L{ClientTLS}), made from PEM files that are re-read when they change.

Both sides speak TLS 1.2 or newer, with ECDHE and AEAD ciphers for 1.2 and
OpenSSL's defaults for 1.3, offer ALPN (C{http/1.1} unless told
otherwise), and verify the peer's chain against the CA bundle alone, never
the system's trust store.  Sessions are never resumed, so every connection
is verified in full against the CA bundle in force when it starts.

Every C{checkEvery} seconds after L{start} the three files' modification
time, size and inode are compared with those last seen; on a change they
are read again, checked (each parses, the key is the certificate's, and
the certificates of the certificate file are within their validity period
by the clock) and a new L{SSL.Context} is made for new connections.  A set
that fails is logged with the file and the reason and the previous context
stays in use; one refused only because it is not valid yet is tried again
when it becomes valid.  Open connections keep the context they started
with.

A new set is also compared with the one it replaces: a change of the
workload's identity is logged as a warning, and so is a CA bundle that
does not vouch for the workload's own certificate (peers trusting only
that bundle would refuse it).  The certificate in use is watched too: a
warning is logged once when it comes within C{expiryWarning} seconds of
its notAfter, and an error once it has expired.

A certificate and its key are two files, replaced one after the other: a
check that falls between sees them disagree, keeps the old pair and logs
it; the next check, after the second file has changed, loads the new pair.

Both sides log why they refused the other's certificate (expired, not yet
valid, from another CA, not an expected identity): OpenSSL's handshake
error says only "certificate verify failed".
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, List, Optional, Sequence, Union

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from easymesh.config.model import TLS_EXPIRY_WARNING
from easymesh.tls.credentials import (
    CredentialError,
    Credentials,
    NotYetValid,
    StrPath,
    chainProblem,
    fileStamp,
    loadCredentials,
    notAfter,
    utcText,
)
from easymesh.tls.identity import (
    IdentityMismatch,
    IdentityPattern,
    describeIdentities,
    identitiesOf,
    parsePatterns,
    requireMatch,
)

#: TLS 1.2 cipher suites: forward secret and authenticated encryption only.
CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20"

#: ALPN protocols offered unless others are given, most preferred first.
PROTOCOLS = (b"http/1.1",)

_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_NO_TICKET
    | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
)
_REQUIRE = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT

_log = Logger()

#: OpenSSL's words for the certificate verification errors most often met
#: (X509_verify_cert_error_string), by the name pyOpenSSL gives the code.
_VERIFY_ERRORS = {
    "ERR_CERT_HAS_EXPIRED": "certificate has expired",
    "ERR_CERT_NOT_YET_VALID": "certificate is not yet valid",
    "ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY": "unable to get local issuer certificate "
    "(not issued by a CA in the bundle)",
    "ERR_UNABLE_TO_GET_ISSUER_CERT": "unable to get issuer certificate",
    "ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE": "unable to verify the first certificate",
    "ERR_DEPTH_ZERO_SELF_SIGNED_CERT": "self-signed certificate",
    "ERR_SELF_SIGNED_CERT_IN_CHAIN": "self-signed certificate in certificate chain",
    "ERR_CERT_SIGNATURE_FAILURE": "certificate signature failure",
    "ERR_INVALID_PURPOSE": "unsupported certificate purpose",
    "ERR_INVALID_CA": "invalid CA certificate",
    "ERR_PATH_LENGTH_EXCEEDED": "path length constraint exceeded",
    "ERR_CERT_REVOKED": "certificate revoked",
    "ERR_CERT_CHAIN_TOO_LONG": "certificate chain too long",
}


def _verifyErrorText(errno: int) -> str:
    """
    What an X509 verification error code means.
    """
    codes = getattr(SSL, "X509VerificationCodes", None)
    for name in dir(codes) if codes is not None else ():
        if name.startswith("ERR_") and getattr(codes, name) == errno:
            return _VERIFY_ERRORS.get(name, name[4:].lower().replace("_", " "))
    return f"X509 verification error {errno}"


def _peerAddress(tlsProtocol: Any) -> str:
    """
    C{host:port} of the other end of a TLS connection, or C{?:?}.
    """
    try:
        peer = tlsProtocol.transport.getPeer()
    except Exception:
        peer = None
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


def _logUnverified(who: str, tlsProtocol: Any, cert: crypto.X509, errno: int, depth: int) -> None:
    """
    Log why OpenSSL refused the certificate chain of C{who} (C{"mTLS
    client"} or C{"peer"}).
    """
    try:
        presented = describeIdentities(cert)
    except Exception:
        presented = "an unreadable certificate"
    _log.warn(
        "Refused {who} {peer}: its certificate ({presented}) did not verify{where}: {reason}",
        who=who,
        peer=_peerAddress(tlsProtocol),
        presented=presented,
        where=f" (certificate at depth {depth})" if depth else "",
        reason=_verifyErrorText(errno),
    )


def _logClientRefusal(
    connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    """
    A listener's verify callback: it changes nothing OpenSSL decides, but
    logs why a client's certificate chain is refused.
    """
    if ok:
        return True
    try:
        _logUnverified("mTLS client", connection.get_app_data(), cert, errno, depth)
    except BaseException:
        # Raised out of an OpenSSL callback, it would be lost.
        _log.failure("While logging a refused client certificate")
    return False


def _context(creds: Credentials) -> SSL.Context:
    """
    A context presenting C{creds}' chain and trusting C{creds}' CAs only.
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(_OPTIONS)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_cipher_list(CIPHERS)
    ctx.use_certificate(creds.leaf)
    for cert in creds.chain[1:]:
        ctx.add_extra_chain_cert(cert)
    ctx.use_privatekey(creds.key)
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None
    for ca in creds.authorities:
        store.add_cert(crypto.X509.from_cryptography(ca))
    return ctx


def _duration(seconds: float) -> str:
    """
    C{3 days 4 hours}, C{5 hours 2 minutes} or C{40 seconds}.
    """
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [(days, "day"), (hours, "hour"), (minutes, "minute"), (seconds, "second")]
    shown = [(n, unit) for n, unit in parts if n][:2] or [(0, "second")]
    return " ".join(f"{n} {unit}{'' if n == 1 else 's'}" for n, unit in shown)


class _Reloading:
    """
    Holds the current L{SSL.Context} made from three files, and makes a new
    one when they change.

    The files are checked when made as when reloaded, but for the validity
    period of the certificate: before the sidecar starts, the command line
    and C{check-config} refuse a certificate that is not valid (see
    L{easymesh.tap.checkCredentials}); here one is only logged.

    @param expiryWarning: Seconds before the certificate's notAfter from
        which a warning is logged (once); 0 for none.
    """

    def __init__(
        self,
        certPath: StrPath,
        keyPath: StrPath,
        caPath: StrPath,
        clock: IReactorTime,
        checkEvery: float,
        expiryWarning: float = TLS_EXPIRY_WARNING,
    ) -> None:
        self.paths = (certPath, keyPath, caPath)
        self.checkEvery = checkEvery
        self.expiryWarning = expiryWarning
        self._clock = clock
        self._stamp = fileStamp(self.paths)
        #: When to read the files again though they have not changed: the
        #: notBefore of a refused certificate that was not valid yet.
        self._retryAt: Optional[float] = None
        #: What was last logged about the expiry of the certificate in use.
        self._expiryLogged: Optional[str] = None
        self.credentials = loadCredentials(*self.paths)
        self._context = self._build(self.credentials)
        self._poll = LoopingCall(self._check)
        self._poll.clock = clock
        self._checkChain(self.credentials)
        self._watchExpiry()

    def _makeContext(self, creds: Credentials) -> SSL.Context:
        raise NotImplementedError()

    def _build(self, creds: Credentials) -> SSL.Context:
        try:
            return self._makeContext(creds)
        except (SSL.Error, crypto.Error, ValueError, TypeError) as e:
            raise CredentialError(self.paths[0], f"OpenSSL refused the credentials ({e})") from None

    def reload(self) -> bool:
        """
        Read the files again and use them for new connections.

        @return: Whether they were good; if not, the reason is logged and
            the previous ones stay in use.
        """
        self._stamp = fileStamp(self.paths)
        self._retryAt = None
        try:
            creds = loadCredentials(*self.paths, now=self._clock.seconds())
            context = self._build(creds)
        except CredentialError as e:
            retry = ""
            if isinstance(e, NotYetValid):
                self._retryAt = e.validFrom
                retry = f"; they will be tried again at {utcText(e.validFrom)}"
            _log.error(
                "TLS credentials not reloaded, keeping the current ones: {path}: {reason}{retry}",
                path=e.path,
                reason=e.reason,
                retry=retry,
            )
            return False
        old, self.credentials, self._context = self.credentials, creds, context
        _log.info(
            "TLS credentials reloaded from {path}: {identities}, serial {serial:x}",
            path=str(self.paths[0]),
            identities=describeIdentities(creds.leaf),
            serial=creds.leaf.serial_number,
        )
        before, after = identitiesOf(old.leaf), identitiesOf(creds.leaf)
        if before != after:
            _log.warn(
                "TLS credentials from {path} change this workload's identity from "
                "{before} to {after}: peers that expect the old one will refuse it",
                path=str(self.paths[0]),
                before=describeIdentities(old.leaf),
                after=describeIdentities(creds.leaf),
            )
        self._checkChain(creds)
        self._expiryLogged = None
        self._watchExpiry()
        return True

    def _checkChain(self, creds: Credentials) -> None:
        """
        Warn if the CA bundle does not vouch for the workload's certificate.
        """
        problem = chainProblem(creds)
        if problem is not None:
            _log.warn(
                "TLS CA bundle {ca} does not vouch for this workload's certificate "
                "{cert} ({reason}): peers that trust only this bundle will refuse it",
                ca=str(self.paths[2]),
                cert=str(self.paths[0]),
                reason=problem,
            )

    def expiresIn(self) -> float:
        """
        Seconds until the notAfter of the certificate in use (negative once
        it has expired).
        """
        return notAfter(self.credentials.leaf) - self._clock.seconds()

    def _watchExpiry(self) -> None:
        """
        Log once that the certificate in use expires soon, and once that it
        has expired.
        """
        left = self.expiresIn()
        if left < 0:
            stage: Optional[str] = "expired"
        elif 0 < self.expiryWarning and left <= self.expiryWarning:
            stage = "soon"
        else:
            stage = None
        if stage == self._expiryLogged:
            return
        self._expiryLogged = stage
        if stage is None:
            return
        leaf = self.credentials.leaf
        fields = dict(
            path=str(self.paths[0]),
            identities=describeIdentities(leaf),
            serial=leaf.serial_number,
            notAfter=utcText(notAfter(leaf)),
        )
        if stage == "soon":
            _log.warn(
                "TLS certificate {path} ({identities}, serial {serial:x}) expires in "
                "{left}, at {notAfter}: replace it",
                left=_duration(left),
                **fields,
            )
        else:
            _log.error(
                "TLS certificate {path} ({identities}, serial {serial:x}) expired at "
                "{notAfter}: peers refuse it until it is replaced",
                **fields,
            )

    def _check(self) -> None:
        try:
            retry = self._retryAt is not None and self._clock.seconds() >= self._retryAt
            if retry or fileStamp(self.paths) != self._stamp:
                self.reload()
            self._watchExpiry()
        except Exception:
            _log.failure("While checking TLS credential files")

    def start(self) -> None:
        """
        Check the files every C{checkEvery} seconds.
        """
        if not self._poll.running:
            self._poll.start(self.checkEvery, now=False)

    def stop(self) -> None:
        """
        Stop checking the files.
        """
        if self._poll.running:
            self._poll.stop()


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS(_Reloading):
    """
    TLS for a listener: a C{contextFactory} for L{SSL4ServerEndpoint} or
    L{TLSMemoryBIOFactory}.

    @param requireClientCert: Refuse clients without a certificate from the
        CA bundle.  If false a client certificate is asked for, and checked
        if one is sent, but none is needed.
    @param protocols: ALPN protocols, most preferred first.  A client that
        offers ALPN but none of these is refused.
    """

    def __init__(
        self,
        certPath: StrPath,
        keyPath: StrPath,
        caPath: StrPath,
        clock: IReactorTime,
        requireClientCert: bool = True,
        checkEvery: float = 1.0,
        protocols: Sequence[bytes] = PROTOCOLS,
        expiryWarning: float = TLS_EXPIRY_WARNING,
    ) -> None:
        self.requireClientCert = requireClientCert
        self.protocols = tuple(protocols)
        super().__init__(certPath, keyPath, caPath, clock, checkEvery, expiryWarning)

    def _makeContext(self, creds: Credentials) -> SSL.Context:
        ctx = _context(creds)
        ctx.set_verify(
            _REQUIRE if self.requireClientCert else SSL.VERIFY_PEER, _logClientRefusal
        )
        for ca in creds.authorities:
            ctx.add_client_ca(ca)
        ctx.set_alpn_select_callback(self._selectProtocol)
        return ctx

    def _selectProtocol(self, connection: SSL.Connection, offered: List[bytes]) -> bytes:
        # b"" makes OpenSSL end the handshake (with an internal_error alert).
        return next((p for p in self.protocols if p in offered), b"")

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLS(_Reloading):
    """
    TLS for connections to a peer: a creator for L{wrapClientTLS}.

    Presents its own certificate, verifies the server's chain against the
    CA bundle, then its identity against C{expected}; a server that is not
    expected fails the connection with L{IdentityMismatch}.

    @param expected: Identity patterns (text or L{IdentityPattern}), at
        least one (C{"*"} accepts any identity).
    @param serverName: Sent as SNI, unless it is an IP address.  Only
        C{expected} decides which server is acceptable.
    """

    def __init__(
        self,
        certPath: StrPath,
        keyPath: StrPath,
        caPath: StrPath,
        expected: Sequence[Union[str, IdentityPattern]],
        serverName: Optional[str],
        clock: IReactorTime,
        checkEvery: float = 1.0,
        protocols: Sequence[bytes] = PROTOCOLS,
        expiryWarning: float = TLS_EXPIRY_WARNING,
    ) -> None:
        self.expected = parsePatterns(expected)
        if not self.expected:
            raise ValueError("no expected server identity given ('*' accepts any)")
        self.serverName = serverName
        self._sni = _sniName(serverName)
        self.protocols = tuple(protocols)
        super().__init__(certPath, keyPath, caPath, clock, checkEvery, expiryWarning)

    def _makeContext(self, creds: Credentials) -> SSL.Context:
        ctx = _context(creds)
        ctx.set_alpn_protos(list(self.protocols))
        return ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        connection.set_verify(_REQUIRE, _identityCheck(tlsProtocol, self.expected))
        return connection


def _sniName(serverName: Optional[str]) -> Optional[bytes]:
    if not serverName:
        return None
    try:
        ipaddress.ip_address(serverName)
    except ValueError:
        return serverName.encode("idna")
    return None


def _identityCheck(
    tlsProtocol: Any, expected: Sequence[IdentityPattern]
) -> Callable[[SSL.Connection, crypto.X509, int, int, int], bool]:
    """
    A verify callback that, once OpenSSL has verified the chain, fails the
    connection unless the server's certificate has an expected identity
    (as L{twisted.internet._sslverify.ClientTLSOptions} does for host
    names).
    """

    def verify(
        connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            try:
                _logUnverified("peer", tlsProtocol, cert, errno, depth)
            except BaseException:
                _log.failure("While logging a refused server certificate")
            return False
        if depth != 0:
            return True
        try:
            requireMatch(expected, cert)
        except IdentityMismatch as e:
            tlsProtocol.failVerification(Failure())
            _log.warn("Refused peer {peer}: {reason}", peer=_peerAddress(tlsProtocol), reason=str(e))
            return False
        except BaseException:
            # Raised out of an OpenSSL callback, it would be lost.
            _log.failure("While checking the server's identity")
            return False
        return True

    return verify


def peerCertificate(transport: Any) -> Optional[x509.Certificate]:
    """
    The certificate the peer of a TLS transport presented (verified by the
    handshake), or L{None} if there is none (yet).
    """
    getPeerCertificate = getattr(transport, "getPeerCertificate", None)
    if getPeerCertificate is None:
        return None
    try:
        cert = getPeerCertificate()
    except AttributeError:
        # The connection is gone.
        return None
    return None if cert is None else cert.to_cryptography()


def peerIdentities(transport: Any) -> List[str]:
    """
    The identities in the peer's certificate: its URI subjectAltNames, then
    its DNS subjectAltNames; none if it presented no certificate.
    """
    cert = peerCertificate(transport)
    return [] if cert is None else identitiesOf(cert)


def peerIdentity(transport: Any) -> Optional[str]:
    """
    The peer's first identity (its SPIFFE ID, for a workload certificate),
    or L{None}.
    """
    return next(iter(peerIdentities(transport)), None)
