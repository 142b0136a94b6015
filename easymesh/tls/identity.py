# -*- test-case-name: tests.test_tls_identity -*-
"""
Workload identities in certificates, and the patterns operators write to
say which identities they accept.

An identity is a SPIFFE ID in a URI subjectAltName
(C{spiffe://trust-domain/ns/NAME/sa/NAME}) or a DNS name in a DNS
subjectAltName.  Patterns are:

  - a SPIFFE ID: that identity exactly;
  - a SPIFFE ID ending in C{/*}: any identity in that trust domain below
    that path, by whole segments (C{spiffe://example.org/ns/prod/*} takes
    C{.../ns/prod/sa/web}, not C{.../ns/prod} or C{.../ns/production/...});
  - C{*}: any identity the certificate has (its chain is verified by TLS)
    that is a valid SPIFFE ID or DNS name; other subjectAltNames are not
    identities;
  - a DNS name: matched as HTTPS clients match host names.

DNS names are matched by C{service_identity}: its L{DNS_ID} (the name the
operator wrote) against a L{DNSPattern} made from each DNS subjectAltName,
which applies RFC 6125, so C{*.example.org} certificates match
C{api.example.org} as they do in browsers.  One subjectAltName at a time
rather than C{verify_certificate_hostname}, which parses every URI
subjectAltName with C{service_identity}'s URI rules too: those know only
C{scheme:host}, so SPIFFE paths mean nothing to them (its C{URI_ID} refuses
them).  SPIFFE IDs are therefore read from the certificate with
C{cryptography} and compared here, segment by segment.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from cryptography import x509
from OpenSSL import crypto
from service_identity.exceptions import CertificateError
from service_identity.hazmat import DNS_ID, DNSPattern

AnyCertificate = Union[x509.Certificate, crypto.X509]

_SCHEME = "spiffe://"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_MAX_SPIFFE = 2048
#: What DNS subjectAltNames may be made of to be identities.
_DNS_CHARS = re.compile(r"[A-Za-z0-9*._-]+")
_MAX_DNS = 253
_MAX_LABEL = 63
#: How much of a certificate's names a log line shows.
_SHOWN_NAMES = 8
_SHOWN_LENGTH = 256
#: Shown as they are; anything else (and the backslash) is escaped.
_PRINTABLE = re.compile(r"[!-\[\]-~]*")


def parseSPIFFE(text: str) -> Tuple[str, Tuple[str, ...]]:
    """
    Split a SPIFFE ID into its trust domain and path segments.

    @raise ValueError: C{text} is not a SPIFFE ID.
    """
    if not text.startswith(_SCHEME):
        raise ValueError(f"{text!r} is not a SPIFFE ID: it must start with {_SCHEME}")
    if len(text) > _MAX_SPIFFE:
        raise ValueError(f"SPIFFE ID longer than {_MAX_SPIFFE} characters")
    domain, slash, path = text[len(_SCHEME):].partition("/")
    if not _TRUST_DOMAIN.fullmatch(domain):
        raise ValueError(
            f"{text!r}: bad trust domain {domain!r} "
            "(lower-case letters, digits, '.', '-' and '_' only)"
        )
    if not slash:
        return domain, ()
    segments = tuple(path.split("/"))
    for segment in segments:
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise ValueError(
                f"{text!r}: bad path segment {segment!r} (non-empty, not '.' "
                "or '..', letters, digits, '.', '-' and '_' only)"
            )
    return domain, segments


def subjectAltNames(cert: AnyCertificate) -> Tuple[List[str], List[str]]:
    """
    The URI and the DNS subjectAltNames of a certificate (pyOpenSSL's or
    C{cryptography}'s).
    """
    if isinstance(cert, crypto.X509):
        cert = cert.to_cryptography()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    except ValueError:
        # The extensions do not parse (OpenSSL verifies such a chain all
        # the same): the certificate names no identity.
        return [], []
    return (
        san.get_values_for_type(x509.UniformResourceIdentifier),
        san.get_values_for_type(x509.DNSName),
    )


def identitiesOf(cert: AnyCertificate) -> List[str]:
    """
    The identities a certificate names: its URI subjectAltNames, then its
    DNS subjectAltNames.
    """
    uris, names = subjectAltNames(cert)
    return uris + names


def _escaped(text: str) -> str:
    """
    C{text} with every character but printable ASCII escaped, cut short.
    """
    if len(text) > _SHOWN_LENGTH:
        text = text[:_SHOWN_LENGTH] + "..."
    if _PRINTABLE.fullmatch(text):
        return text
    return "".join(c if _PRINTABLE.fullmatch(c) else _escape(c) for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def describeNames(names: Sequence[str]) -> str:
    """
    Identities for a log line: C{"no identity"} if there are none, else
    the first few, escaped (a certificate that failed verification may
    name anything), joined by C{", "}.
    """
    if not names:
        return "no identity"
    shown = ", ".join(_escaped(n) for n in names[:_SHOWN_NAMES])
    more = len(names) - _SHOWN_NAMES
    return f"{shown} and {more} more" if more > 0 else shown


def describeIdentities(cert: Optional[AnyCertificate]) -> str:
    """
    The identities a certificate names (L{identitiesOf}), for a log line
    (L{describeNames}); C{"no certificate"} for L{None}.
    """
    return "no certificate" if cert is None else describeNames(identitiesOf(cert))


def isSPIFFE(text: str) -> bool:
    """
    Whether C{text} is a valid SPIFFE ID (L{parseSPIFFE}).
    """
    try:
        parseSPIFFE(text)
    except ValueError:
        return False
    return True


def dnsIdentity(name: str) -> Optional[str]:
    """
    A DNS subjectAltName as an identity, in lower case, or L{None} if it is
    not a DNS name: ASCII letters, digits, C{-} and C{_} in non-empty
    labels of at most 63 characters, at most 253 in all, not an IP
    address, and C{*} only as the whole first label of a name of three or
    more (C{*.example.org}).
    """
    if len(name) > _MAX_DNS or not _DNS_CHARS.fullmatch(name):
        return None
    if "*" in name and not (name.startswith("*.") and "*" not in name[1:]):
        return None
    labels = name.split(".")
    if any(not label or len(label) > _MAX_LABEL for label in labels):
        return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return None
    try:
        pattern = DNSPattern.from_bytes(name.encode("ascii"))
    except CertificateError:
        return None
    return pattern.pattern.decode("ascii")


@dataclass(frozen=True)
class IdentityPattern:
    """
    One accepted identity or family of identities; make with L{parse}.

    @ivar text: The pattern as written.
    @ivar kind: C{"any"}, C{"spiffe"} (exact), C{"spiffe-prefix"} or
        C{"dns"}.
    """

    text: str
    kind: str
    trustDomain: str = ""
    segments: Tuple[str, ...] = ()
    dns: Optional[DNS_ID] = field(default=None, compare=False)

    @classmethod
    def parse(cls, text: str) -> IdentityPattern:
        """
        Read a pattern.

        @raise ValueError: C{text} is not a pattern, with the reason.
        """
        text = text.strip()
        try:
            return cls._parse(text)
        except ValueError as e:
            raise ValueError(f"invalid identity pattern {text!r}: {e}") from None

    @classmethod
    def _parse(cls, text: str) -> IdentityPattern:
        if text == "*":
            return cls(text, "any")
        if text.startswith(_SCHEME):
            prefix = text.endswith("/*")
            domain, segments = parseSPIFFE(text[:-2] if prefix else text)
            return cls(text, "spiffe-prefix" if prefix else "spiffe", domain, segments)
        if "*" in text:
            raise ValueError(
                "'*' is allowed only alone or as the last segment of a SPIFFE ID "
                "(spiffe://trust-domain/path/*); wildcard DNS certificates "
                "match plain names"
            )
        if ":" in text or "/" in text:
            raise ValueError("URIs other than spiffe:// are not identities")
        if not text:
            raise ValueError("empty")
        try:
            ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            raise ValueError("IP addresses are not identities")
        if "" in text.split("."):
            raise ValueError("empty label in DNS name")
        try:
            dns = DNS_ID(text)
        except (ValueError, ImportError):
            raise ValueError("not a DNS name") from None
        return cls(dns.hostname.decode("ascii"), "dns", dns=dns)

    def __str__(self) -> str:
        return self.text

    def match(self, uris: Sequence[str], names: Sequence[str]) -> Optional[str]:
        """
        The identity among a certificate's URI and DNS subjectAltNames that
        this pattern accepts, or L{None}.  For a DNS pattern that is the
        name in the pattern (a C{*.example.org} certificate verifies
        C{api.example.org}).
        """
        if self.kind == "any":
            # Only names that are identities, as the other patterns take:
            # a URI that is not a valid SPIFFE ID (other schemes, "..",
            # ports, "?", control characters) or a DNS name spelt as a URI
            # (a DNS subjectAltName of "spiffe://...", which would pass for
            # the SPIFFE ID it spells) would go on into the caller identity
            # header and the authorization rules.
            spiffe = next((u for u in uris if isSPIFFE(u)), None)
            if spiffe is not None:
                return spiffe
            return next((d for d in map(dnsIdentity, names) if d is not None), None)
        if self.kind == "spiffe":
            return self.text if self.text in uris else None
        if self.kind == "spiffe-prefix":
            return next((uri for uri in uris if self._below(uri)), None)
        assert self.dns is not None
        for name in names:
            try:
                certPattern = DNSPattern.from_bytes(name.encode("utf-8"))
            except CertificateError:
                continue
            if self.dns.verify(certPattern):
                return self.text
        return None

    def _below(self, uri: str) -> bool:
        try:
            domain, segments = parseSPIFFE(uri)
        except ValueError:
            return False
        n = len(self.segments)
        return (
            domain == self.trustDomain
            and len(segments) > n
            and segments[:n] == self.segments
        )


def parsePatterns(texts: Iterable[Union[str, IdentityPattern]]) -> List[IdentityPattern]:
    """
    Patterns from text (or already parsed).

    @raise ValueError: One is invalid.
    """
    return [t if isinstance(t, IdentityPattern) else IdentityPattern.parse(t) for t in texts]


def matches(patterns: Iterable[IdentityPattern], cert: AnyCertificate) -> Optional[str]:
    """
    The identity of C{cert} that the first matching pattern accepts, or
    L{None} if none does.
    """
    uris, names = subjectAltNames(cert)
    for pattern in patterns:
        found = pattern.match(uris, names)
        if found is not None:
            return found
    return None


class IdentityMismatch(Exception):
    """
    A verified certificate's identities are none of those expected.

    @ivar expected: The patterns, as written.
    @ivar presented: The certificate's identities.
    """

    def __init__(self, expected: Sequence[str], presented: Sequence[str]) -> None:
        self.expected = list(expected)
        self.presented = list(presented)
        super().__init__(
            f"peer identity mismatch: expected {' or '.join(self.expected)}; "
            f"certificate presents {describeNames(self.presented)}"
        )


def requireMatch(patterns: Sequence[IdentityPattern], cert: AnyCertificate) -> str:
    """
    The identity of C{cert} that C{patterns} accept.

    @raise IdentityMismatch: They accept none.
    """
    found = matches(patterns, cert)
    if found is None:
        raise IdentityMismatch([p.text for p in patterns], identitiesOf(cert))
    return found
