# -*- test-case-name: tests.test_tls_rotation -*-
"""
Read and check the PEM files TLS is built from: a certificate file (the
certificate, then any intermediates), its private key, and the bundle of
CA certificates peers are verified against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

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


def loadCredentials(certPath: StrPath, keyPath: StrPath, caPath: StrPath) -> Credentials:
    """
    Read the three files and check them: each parses, and the key is the
    certificate's.

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
    return Credentials(chain, key, _certificates(caPath))


def fileStamp(paths: Sequence[StrPath]) -> Stamp:
    """
    What changes when a file is rewritten or replaced: its modification
    time, size and inode (L{None} for a file that cannot be read).
    """
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)
