# -*- test-case-name: tests.test_paths -*-
"""
The path a request is routed and authorised by, normalised so that no
encoding of it reaches a route or a rule it should not (RFC 3986 section 6,
in the spirit of Envoy's C{normalize_path}, C{merge_slashes} and
C{path_with_escaped_slashes_action}).

The request itself is still forwarded byte-exact: only matching sees the
normalised path.  L{normalisePath} returns a L{str}, the form route
configuration is written in.  With C{normalize} on, it:

  1. takes the path: the target up to the first C{?} or C{#} (the query is
     not matched, and a fragment never belongs in a request target,
     RFC 9112 section 3.2);
  2. decodes escapes of unreserved characters (C{ALPHA DIGIT - . _ ~}) and
     writes every other escape in upper case (C{%2f} -> C{%2F}), RFC 3986
     sections 2.3, 6.2.2.1 and 6.2.2.2;
  3. percent-encodes, in upper case, raw bytes that may not appear in a
     path (non-ASCII bytes and C{" < > [ ] ^ ` { | }} and space), so that
     a raw C{\\xc3\\xa9} and C{%C3%A9} are one path and the result is always
     ASCII (RFC 3986 sections 2.1 and 3.3; browsers do the same);
  4. applies C{escapedSlashes} to C{%2F}, C{%5C} and a raw C{\\}:
     - C{"reject"}: any of them is a L{BadRequest}; a raw backslash is
       refused too, since some servers treat it as a separator;
     - C{"keep"}: they stay data, not separators (C{%2F}, C{%5C}; a raw
       C{\\} becomes C{%5C}); choose this only when the upstream does not
       decode them into separators either;
     - C{"unescape"}: all three become C{/}.  Envoy decodes C{%5C} to
       C{\\}; here a backslash is a separator, so that C{\\..\\} cannot
       climb past a prefix on a server that splits on it;
  5. with C{mergeSlashes}, collapses each run of C{/} into one, I{before}
     removing dot-segments (as Envoy's header validator does): servers that
     merge slashes read C{/public//../admin} as C{/admin}, not
     C{/public/admin};
  6. removes dot-segments (RFC 3986 section 5.2.4), never above the root:
     C{/../a} is C{/a}.

C{NUL} and other control characters (below 0x20, and 0x7F), raw or
escaped, an invalid escape (C{%G1}, a trailing C{%}) and a target that is
neither empty nor starts with C{/} (asterisk- or absolute-form) are
refused with L{BadRequest}; an empty path is C{/}.  Only the path is
inspected: the query is the upstream's business.  With C{normalize} off, the path is taken as it is (decoded as Latin-1) but those
refusals, C{escapedSlashes} and C{mergeSlashes} still apply.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from easymesh.config.mesh import PathOptions
from easymesh.errors import BadRequest

#: Characters that never need encoding (RFC 3986 section 2.3).
UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"

#: Characters allowed raw in a path, C{%} aside (RFC 3986 section 3.3).
PATH_CHARS = UNRESERVED + b"!$&'()*+,;=:@/"

#: Every valid pair of hex digits after a C{%}, to the octet it stands for.
_HEX_PAIRS: Dict[bytes, int] = {
    bytes((a, b)): int(chr(a) + chr(b), 16)
    for a in b"0123456789abcdefABCDEF"
    for b in b"0123456789abcdefABCDEF"
}

_SLASHES = re.compile("//+")

#: Marks an escape that is kept exactly as the client wrote it.
_VERBATIM = ""

#: For each byte, what it becomes in the result: a string, L{_VERBATIM}
#: (escapes only), or L{None} when it is refused.
_Table = Sequence[Optional[str]]


def _isControl(octet: int) -> bool:
    return octet < 0x20 or octet == 0x7F


def _buildTables(normalize: bool, escapedSlashes: str) -> Tuple[_Table, _Table]:
    """
    What raw bytes and escaped octets become for one combination of
    options.
    """
    raw: List[Optional[str]] = []
    escaped: List[Optional[str]] = []
    for octet in range(256):
        encoded = "%%%02X" % (octet,)
        if _isControl(octet):
            raw.append(None)
            escaped.append(None)
        elif octet in b"/\\":
            if escapedSlashes == "unescape":
                separator: Optional[str] = "/"
            elif escapedSlashes == "keep":
                separator = encoded if normalize else _VERBATIM
            else:
                separator = None
            escaped.append(separator)
            if octet == 0x2F:
                raw.append("/")
            elif separator == _VERBATIM:
                raw.append("\\")
            else:
                raw.append(separator)
        elif octet in PATH_CHARS:
            raw.append(chr(octet))
            if not normalize:
                escaped.append(_VERBATIM)
            elif octet in UNRESERVED:
                escaped.append(chr(octet))
            else:
                escaped.append(encoded)
        else:
            raw.append(encoded if normalize else chr(octet))
            escaped.append(encoded if normalize else _VERBATIM)
    return tuple(raw), tuple(escaped)


_TABLES: Dict[Tuple[bool, str], Tuple[_Table, _Table]] = {
    (normalize, action): _buildTables(normalize, action)
    for normalize in (True, False)
    for action in ("reject", "keep", "unescape")
}


def _refusal(octet: int, escape: bool) -> BadRequest:
    """
    The error for a byte (or escaped octet) the options refuse.
    """
    form = "percent-encoded " if escape else ""
    if _isControl(octet):
        return BadRequest(f"{form}control character 0x{octet:02X} in path")
    if escape:
        return BadRequest(f"percent-encoded slash or backslash %{octet:02X} in path")
    return BadRequest("backslash in path")


def _mapRaw(chunk: bytes, table: _Table) -> str:
    """
    Raw path bytes (no C{%}) as they appear in the result.
    """
    if not chunk.translate(None, PATH_CHARS):
        return chunk.decode("ascii")
    out = []
    for octet in chunk:
        text = table[octet]
        if text is None:
            raise _refusal(octet, escape=False)
        out.append(text)
    return "".join(out)


def _removeDotSegments(path: str, mergeSlashes: bool) -> str:
    """
    C{path}, which starts with C{/}, without C{.} and C{..} segments
    (RFC 3986 section 5.2.4, never above the root) and, if C{mergeSlashes},
    with no empty segment but a final one.
    """
    if "/." not in path and not (mergeSlashes and "//" in path):
        return path
    segments = path.split("/")
    last = len(segments) - 1
    kept: List[str] = []
    for index in range(1, last + 1):
        segment = segments[index]
        if segment == "..":
            if kept:
                kept.pop()
        elif segment == "." or (mergeSlashes and not segment and index != last):
            pass
        else:
            kept.append(segment)
            continue
        if index == last:
            kept.append("")
    return "/" + "/".join(kept)


def _normaliseSlowly(path: bytes, options: PathOptions) -> str:
    """
    The full algorithm for a C{path} starting with C{/}, without query or
    fragment.
    """
    try:
        raw, escaped = _TABLES[options.normalize, options.escapedSlashes]
    except KeyError:
        raise ValueError(f"unknown escapedSlashes action {options.escapedSlashes!r}") from None
    pieces = path.split(b"%")
    out = [_mapRaw(pieces[0], raw)]
    for piece in pieces[1:]:
        octet = _HEX_PAIRS.get(piece[:2])
        if octet is None:
            raise BadRequest("invalid percent-encoding in path")
        text = escaped[octet]
        if text is None:
            raise _refusal(octet, escape=True)
        out.append(text or "%" + piece[:2].decode("ascii"))
        out.append(_mapRaw(piece[2:], raw))
    result = "".join(out)
    if options.normalize:
        return _removeDotSegments(result, options.mergeSlashes)
    if options.mergeSlashes:
        return _SLASHES.sub("/", result)
    return result


def normalisePath(target: bytes, options: PathOptions) -> str:
    """
    The path of an origin-form request target, as routes and authorisation
    rules match it (see the module docstring for what that involves).

    @param target: The request target as received, path and optional
        C{?query}.
    @return: The normalised path: always starts with C{/}; pure ASCII when
        C{options.normalize} is on, otherwise the path's bytes as Latin-1.
    @raise BadRequest: The path is malformed, or something in it is refused
        by C{options}.
    """
    path = target.partition(b"?")[0]
    if b"#" in path:
        path = path.partition(b"#")[0]
    if path[:1] != b"/":
        if path:
            raise BadRequest("request target is not an absolute path")
        return "/"
    # Nothing to decode, encode, refuse, merge or remove: the common case.
    if (
        not path.translate(None, PATH_CHARS)
        and b"/." not in path
        and not (options.mergeSlashes and b"//" in path)
    ):
        return path.decode("ascii")
    return _normaliseSlowly(path, options)
