# -*- test-case-name: tests.test_tls_rotation -*-
"""
Read and check the PEM files TLS is built from: a certificate file (the
certificate, then any intermediates), its private key, and the bundle of
CA certificates peers are verified against.

A certificate file can also be checked against a time (L{checkValidity}:
is every certificate in it within its validity period?) and against its
CA bundle (L{chainProblem}: do the CAs vouch for it?).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto

StrPath = Union[str, "os.PathLike[str]"]

#: What L{fileStamp} notes of each file: (mtime in ns, size, inode).
Stamp = Tuple[Optional[Tuple[int, int, int]], ...]


class CredentialError(ValueError):
    """
    A credential file cannot be used.

    @ivar path: The file.
    @ivar reason: Why not.
    """

    def __init__(self, path: StrPath, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


class NotYetValid(CredentialError):
    """
    A certificate in the file is not valid yet.

    @ivar validFrom: When it will be (its notBefore), in POSIX seconds.
    """

    def __init__(self, path: StrPath, reason: str, validFrom: float) -> None:
        super().__init__(path, reason)
        self.validFrom = validFrom


@dataclass(frozen=True)
class Credentials:
    """
    A certificate chain (leaf first), its private key, and the CA
    certificates peers must chain to.
    """

    chain: Tuple[x509.Certificate, ...]
    key: Any
    authorities: Tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def _read(path: StrPath) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CredentialError(path, e.strerror or str(e)) from None


def _certificates(path: StrPath) -> Tuple[x509.Certificate, ...]:
    data = _read(path)
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError as e:
        raise CredentialError(path, f"no PEM certificate could be read ({e})") from None


def _publicBytes(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def loadCredentials(
    certPath: StrPath, keyPath: StrPath, caPath: StrPath, now: Optional[float] = None
) -> Credentials:
    """
    Read the three files and check them: each parses, the key is the
    certificate's and, if C{now} is given, the certificates of C{certPath}
    are valid then (L{checkValidity}).

    @param now: POSIX time.
    @raise CredentialError: Naming the file at fault and why.
    """
    chain = _certificates(certPath)
    keyData = _read(keyPath)
    try:
        key = serialization.load_pem_private_key(keyData, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CredentialError(
            keyPath, f"no unencrypted PEM private key could be read ({e})"
        ) from None
    try:
        certKey = chain[0].public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CredentialError(certPath, f"its public key cannot be read ({e})") from None
    if _publicBytes(key.public_key()) != _publicBytes(certKey):
        raise CredentialError(
            keyPath, f"the key does not match the certificate in {os.fspath(certPath)}"
        )
    if now is not None:
        checkValidity(chain, certPath, now)
    return Credentials(chain, key, _certificates(caPath))


def notAfter(cert: x509.Certificate) -> float:
    """
    The end of C{cert}'s validity period, in POSIX seconds.
    """
    return cert.not_valid_after_utc.timestamp()


def utcText(when: float) -> str:
    """
    A POSIX time as C{2025-01-31 23:59:59 UTC}.
    """
    try:
        moment = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{when:.0f} (POSIX time)"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def checkValidity(chain: Sequence[x509.Certificate], path: StrPath, now: float) -> None:
    """
    Check that each certificate of a certificate file (the workload's, then
    its intermediates) is within its validity period at C{now}, as a peer
    verifying it would: from notBefore to notAfter, both included.

    @param now: POSIX time.
    @raise NotYetValid: One begins after C{now}.
    @raise CredentialError: One has expired.
    """
    for position, cert in enumerate(chain):
        begins = cert.not_valid_before_utc.timestamp()
        ends = notAfter(cert)
        which = "the certificate" if position == 0 else (
            f"certificate {position + 1} of the file ({cert.subject.rfc4514_string()})"
        )
        window = (
            f"notBefore {utcText(begins)}, notAfter {utcText(ends)}, now {utcText(now)}"
        )
        if now > ends:
            raise CredentialError(path, f"{which} has expired ({window})")
        if now < begins:
            raise NotYetValid(path, f"{which} is not valid yet ({window})", begins)


#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME, which pyOpenSSL does not name.
_NO_CHECK_TIME = 0x200000


def chainProblem(creds: Credentials) -> Optional[str]:
    """
    Why the CA bundle of C{creds} does not vouch for its certificate (with
    the intermediates of the certificate file), or L{None} if it does.
    Validity periods are left to L{checkValidity}.
    """
    store = crypto.X509Store()
    for authority in creds.authorities:
        store.add_cert(crypto.X509.from_cryptography(authority))
    store.set_flags(_NO_CHECK_TIME)
    untrusted = [crypto.X509.from_cryptography(c) for c in creds.chain[1:]]
    leaf = crypto.X509.from_cryptography(creds.leaf)
    try:
        crypto.X509StoreContext(store, leaf, untrusted).verify_certificate()
    except crypto.X509StoreContextError as e:
        return str(e)
    except crypto.Error as e:
        return f"it cannot be verified ({e})"
    return None


def fileStamp(paths: Sequence[StrPath]) -> Stamp:
    """
    What changes when a file is rewritten or replaced: its modification
    time, size and inode (L{None} for a file that cannot be read).
    """
    stamps: List[Optional[Tuple[int, int, int]]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)
