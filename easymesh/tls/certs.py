# -*- test-case-name: tests.test_tls_certs -*-
"""
A development CA and workload certificates for mutual TLS, and the
C{certs} command that makes them.

Keys are EC P-256.  A workload certificate names its identity, a SPIFFE ID
in a URI subjectAltName or a DNS name in a DNS subjectAltName, and is good
for both TLS server and TLS client authentication.  Files are PEM, written
to a temporary file and renamed into place, so that a sidecar watching
them sees the old file or the new one, never half of one; key files are
mode 0600 from the start.

For development and tests: a production mesh has its own CA.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, TextIO, Tuple, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from easymesh.tls.credentials import CredentialError, StrPath, loadCredentials
from easymesh.tls.identity import IdentityPattern, parseSPIFFE

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"

#: Workload certificates are valid from this long before they are made, to
#: allow for clocks a little behind.
SKEW = datetime.timedelta(minutes=5)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Issued:
    """
    A certificate, its private key, and the files they were written to.
    """

    cert: x509.Certificate
    key: Any
    certPath: str
    keyPath: str


def _write(path: str, data: bytes, mode: int) -> None:
    """
    Replace C{path} with C{data} at once.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _save(cert: x509.Certificate, key: Any, certPath: str, keyPath: str) -> Issued:
    _write(
        keyPath,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write(certPath, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return Issued(cert, key, certPath, keyPath)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def makeCA(directory: StrPath, name: str = "easymesh dev CA", validDays: int = 3650) -> Issued:
    """
    Make a self-signed CA and write it to C{ca.pem} and C{ca-key.pem} in
    C{directory}.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + datetime.timedelta(days=validDays))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = os.fspath(directory)
    return _save(cert, key, os.path.join(directory, CA_CERT), os.path.join(directory, CA_KEY))


def loadCA(directory: StrPath) -> Issued:
    """
    The CA in C{ca.pem} and C{ca-key.pem} in C{directory}.

    @raise CredentialError: A file is missing or bad, or they disagree.
    """
    certPath = os.path.join(os.fspath(directory), CA_CERT)
    keyPath = os.path.join(os.fspath(directory), CA_KEY)
    creds = loadCredentials(certPath, keyPath, certPath)
    return Issued(creds.leaf, creds.key, certPath, keyPath)


def _subjectAltName(identity: str) -> x509.GeneralName:
    """
    The subjectAltName naming C{identity}.

    @raise ValueError: It is neither a SPIFFE ID nor a DNS name.
    """
    if identity.startswith("spiffe:"):
        parseSPIFFE(identity)
        return x509.UniformResourceIdentifier(identity)
    wildcard = identity.startswith("*.") and identity.count(".") >= 2
    try:
        pattern = IdentityPattern.parse(identity[2:] if wildcard else identity)
    except ValueError:
        pattern = None
    if pattern is None or pattern.kind != "dns":
        raise ValueError(
            f"{identity!r} is neither a SPIFFE ID (spiffe://trust-domain/path) nor a DNS name"
        )
    return x509.DNSName(("*." if wildcard else "") + pattern.text)


def nameFor(identity: str) -> str:
    """
    The file name for C{identity}'s certificate: a SPIFFE ID's last path
    segment (or its trust domain), or the DNS name (C{*} spelt
    C{wildcard}).
    """
    if identity.startswith("spiffe:"):
        domain, segments = parseSPIFFE(identity)
        return segments[-1] if segments else domain
    return identity.replace("*", "wildcard", 1)


def _checkName(name: str) -> None:
    if not _NAME.fullmatch(name) or name == "ca" or name.endswith("-key"):
        raise ValueError(
            f"bad certificate name {name!r}: letters, digits, '.', '-' and '_', "
            "not 'ca' and not ending in '-key'"
        )


def makeWorkload(
    ca: Issued,
    identity: str,
    directory: StrPath,
    name: str,
    notBefore: Optional[datetime.datetime] = None,
    notAfter: Optional[datetime.datetime] = None,
) -> Issued:
    """
    Make a certificate for C{identity} signed by C{ca}, and write it to
    C{NAME.pem} (the certificate alone) and C{NAME-key.pem} in
    C{directory}.

    @param identity: A SPIFFE ID or a DNS name (C{*.example.org} too).
    @param notBefore: Default: a few minutes ago.
    @param notAfter: Default: a year after C{notBefore}.
    @raise ValueError: C{identity} or C{name} is not acceptable.
    """
    return issue(ca, [_subjectAltName(identity)], directory, name, notBefore, notAfter)


def issue(
    ca: Issued,
    names: Sequence[x509.GeneralName],
    directory: StrPath,
    name: str,
    notBefore: Optional[datetime.datetime] = None,
    notAfter: Optional[datetime.datetime] = None,
) -> Issued:
    """
    As L{makeWorkload}, with these subjectAltNames, unchecked (none for no
    extension): for tests of certificates that name something other than
    an identity.
    """
    _checkName(name)
    if notBefore is None:
        notBefore = _now() - SKEW
    if notAfter is None:
        notAfter = notBefore + datetime.timedelta(days=365)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            # A CA's key signs, so it is one of the issuer key types.
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                cast(CertificateIssuerPublicKeyTypes, ca.cert.public_key())
            ),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    directory = os.fspath(directory)
    return _save(
        cert,
        key,
        os.path.join(directory, f"{name}.pem"),
        os.path.join(directory, f"{name}-key.pem"),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="easymesh certs",
        description="Make a development CA (or use the one in DIR) and a "
        "certificate and key for each workload identity.",
    )
    parser.add_argument("directory", metavar="DIR", help="where to write (made if missing)")
    parser.add_argument(
        "--identity",
        action="append",
        required=True,
        metavar="ID",
        help="a SPIFFE ID (spiffe://trust-domain/ns/NAME/sa/NAME) or DNS name; repeatable",
    )
    parser.add_argument(
        "--name",
        action="append",
        metavar="NAME",
        help="file name (NAME.pem, NAME-key.pem) for each --identity in turn "
        "(default: the SPIFFE ID's last segment, or the DNS name)",
    )
    return parser


def _plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> List[Tuple[str, str]]:
    identities = args.identity
    names = args.name or []
    if names and len(names) != len(identities):
        parser.error("give one --name per --identity, or none")
    plan = []
    for i, identity in enumerate(identities):
        try:
            _subjectAltName(identity)
            name = names[i] if names else nameFor(identity)
            _checkName(name)
        except ValueError as e:
            parser.error(str(e))
        plan.append((identity, name))
    seen = [name for _, name in plan]
    for name in seen:
        if seen.count(name) > 1:
            parser.error(f"two identities would be written to {name}.pem; use --name")
    return plan


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    """
    C{certs DIR --identity ID [--identity ID ...] [--name NAME ...]}.

    @return: The exit status.
    """
    out = sys.stdout if out is None else out
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        plan = _plan(parser, args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    directory = os.path.abspath(args.directory)
    try:
        os.makedirs(directory, exist_ok=True)
        caFiles = [os.path.exists(os.path.join(directory, f)) for f in (CA_CERT, CA_KEY)]
        if all(caFiles):
            ca = loadCA(directory)
            print(f"using the CA in {ca.certPath}", file=out)
        elif any(caFiles):
            raise CredentialError(
                directory, f"has only one of {CA_CERT} and {CA_KEY}; not replacing it"
            )
        else:
            ca = makeCA(directory)
            print(f"wrote {ca.certPath} and {ca.keyPath} (new CA)", file=out)
        for identity, name in plan:
            issued = makeWorkload(ca, identity, directory, name)
            print(f"wrote {issued.certPath} and {issued.keyPath} for {identity}", file=out)
    except (OSError, ValueError) as e:
        print(f"easymesh certs: error: {e}", file=sys.stderr)
        return 1
    print(f"certificates are in {directory}", file=out)
    return 0
