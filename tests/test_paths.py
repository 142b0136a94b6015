"""
Tests for L{easymesh.routing.paths}: request paths normalised for route
matching and authorisation.
"""

from __future__ import annotations

import re
from typing import List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from easymesh.config.mesh import ESCAPED_SLASHES, PathOptions
from easymesh.errors import BadRequest
from easymesh.routing.paths import UNRESERVED, _normaliseSlowly, normalisePath

DEFAULT = PathOptions()
MERGE = PathOptions(mergeSlashes=True)
KEEP = PathOptions(escapedSlashes="keep")
UNESCAPE = PathOptions(escapedSlashes="unescape")
RAW = PathOptions(normalize=False)
ALL_OPTIONS = [
    PathOptions(normalize=normalize, mergeSlashes=merge, escapedSlashes=action)
    for normalize in (True, False)
    for merge in (False, True)
    for action in ESCAPED_SLASHES
]


def outcome(target: bytes, options: PathOptions) -> Optional[str]:
    """
    The normalised path, or L{None} for a L{BadRequest}.
    """
    try:
        return normalisePath(target, options)
    except BadRequest:
        return None


@pytest.mark.parametrize(
    "target, expected",
    [
        # Dot-segments, plain and encoded: the classic bypasses.
        (b"/admin/../admin", "/admin"),
        (b"/public/../admin", "/admin"),
        (b"/%2e%2e/admin", "/admin"),
        (b"/public/%2E%2E/admin", "/admin"),
        (b"/public/%2e./admin", "/admin"),
        (b"/public/.%2E/admin", "/admin"),
        (b"/public/%2e/../admin", "/admin"),
        (b"/a/./b", "/a/b"),
        (b"/a/b/..", "/a/"),
        (b"/a/b/.", "/a/b/"),
        (b"/a/b/%2E", "/a/b/"),
        (b"/..", "/"),
        (b"/.", "/"),
        (b"/../a", "/a"),
        (b"/../../a/../../b", "/b"),
        (b"/public//../admin", "/public/admin"),
        (b"/a/...", "/a/..."),
        (b"/a/..b/.c", "/a/..b/.c"),
        (b"/.well-known/x", "/.well-known/x"),
        (b"/a%2E", "/a."),
        # Unreserved escapes decoded, others upper-cased.
        (b"/ad%6Din", "/admin"),
        (b"/ad%6din", "/admin"),
        (b"/%41%7e%2D%5f%30", "/A~-_0"),
        (b"/a%3f", "/a%3F"),
        (b"/a%3Fb", "/a%3Fb"),
        (b"/a%3b%3D", "/a%3B%3D"),
        (b"/%25", "/%25"),
        (b"/%252e%252e/admin", "/%252e%252e/admin"),
        (b"/a%252F", "/a%252F"),
        (b"/caf%c3%a9", "/caf%C3%A9"),
        # Raw bytes not allowed in a path are percent-encoded.
        (b"/caf\xc3\xa9", "/caf%C3%A9"),
        (b'/a"b', "/a%22b"),
        (b"/{x}|^`<>[]", "/%7Bx%7D%7C%5E%60%3C%3E%5B%5D"),
        (b"/a b", "/a%20b"),
        # Reserved characters stay as they are.
        (b"/admin;x", "/admin;x"),
        (b"/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
        # Slashes are not merged by default; trailing slashes are kept.
        (b"//admin", "//admin"),
        (b"/a//b/", "/a//b/"),
        (b"/a/b/", "/a/b/"),
        (b"/", "/"),
        # Query and fragment are not part of the path.
        (b"/a?x=/../..", "/a"),
        (b"/a?x=%2f%00", "/a"),
        (b"/a?", "/a"),
        (b"/a#frag", "/a"),
        (b"/a#x?y", "/a"),
        (b"/a/..#/b", "/"),
        (b"", "/"),
        (b"?q=1", "/"),
        (b"#", "/"),
        # The common case, unchanged.
        (b"/api/v1/users/12345/orders?limit=10", "/api/v1/users/12345/orders"),
    ],
)
def test_default(target: bytes, expected: str) -> None:
    """
    With the default options the path is normalised, slashes are not
    merged, and encoded slashes are refused.
    """
    assert normalisePath(target, DEFAULT) == expected


@pytest.mark.parametrize(
    "target, expected",
    [
        (b"//admin", "/admin"),
        (b"///a///b//", "/a/b/"),
        (b"/a//b/", "/a/b/"),
        (b"/public//../admin", "/admin"),
        (b"//../admin", "/admin"),
        (b"/a/.//./b", "/a/b"),
        (b"/a/b//..//", "/a/"),
        (b"//", "/"),
        (b"/a//?x//y", "/a/"),
    ],
)
def test_mergeSlashes(target: bytes, expected: str) -> None:
    """
    With C{mergeSlashes}, runs of C{/} become one, before dot-segments are
    removed.
    """
    assert normalisePath(target, MERGE) == expected


@pytest.mark.parametrize(
    "target, keep, unescape",
    [
        (b"/public/..%2fadmin", "/public/..%2Fadmin", "/admin"),
        (b"/public/..%2Fadmin", "/public/..%2Fadmin", "/admin"),
        (b"/admin%2F", "/admin%2F", "/admin/"),
        (b"/admin%2f", "/admin%2F", "/admin/"),
        (b"/%2F/admin", "/%2F/admin", "///admin"),
        (b"/a%5cb", "/a%5Cb", "/a/b"),
        (b"/a%5Cb", "/a%5Cb", "/a/b"),
        (b"/a\\b", "/a%5Cb", "/a/b"),
        (b"/public\\..\\admin", "/public%5C..%5Cadmin", "/admin"),
        (b"/public/..%5cadmin", "/public/..%5Cadmin", "/admin"),
        (b"/a/%2e%2e%2F%2e%2e%2fadmin", "/a/..%2F..%2Fadmin", "/admin"),
    ],
)
def test_escapedSlashes(target: bytes, keep: str, unescape: str) -> None:
    """
    C{%2F}, C{%5C} and a raw backslash are refused with C{"reject"}, kept as
    data (encoded) with C{"keep"}, and become separators with
    C{"unescape"}.
    """
    with pytest.raises(BadRequest):
        normalisePath(target, DEFAULT)
    assert normalisePath(target, KEEP) == keep
    assert normalisePath(target, UNESCAPE) == unescape


def test_escapedSlashesMerged() -> None:
    """
    Slashes decoded by C{"unescape"} are merged like raw ones.
    """
    options = PathOptions(mergeSlashes=True, escapedSlashes="unescape")
    assert normalisePath(b"/a%2F%2fb\\/c", options) == "/a/b/c"
    assert normalisePath(b"/%2F/admin", options) == "/admin"


@pytest.mark.parametrize(
    "target",
    [
        b"/a\x00",
        b"/a%00",
        b"/a%00b",
        b"/a%1f",
        b"/a%1F",
        b"/a%7f",
        b"/a%7F",
        b"/a\x7f",
        b"/a\tb",
        b"/a\r\n",
        b"/a%0d%0a",
        b"/a%09",
        b"/%",
        b"/a%",
        b"/a%4",
        b"/%G1",
        b"/%1G",
        b"/%%41",
        b"/%+1",
        b"/%_1",
        b"/% 1",
        b"/%-1",
        b"a/b",
        b"*",
        b"http://example.com/admin",
        b"%2Fadmin",
        b"\\admin",
    ],
)
def test_refused(target: bytes) -> None:
    """
    Control characters (raw or encoded), invalid escapes and targets that
    are not absolute paths are refused whatever the options.
    """
    for options in ALL_OPTIONS:
        with pytest.raises(BadRequest) as info:
            normalisePath(target, options)
        assert info.value.code == 400
        assert str(info.value)


def test_refusalMessages() -> None:
    """
    Each refusal says what was wrong.
    """
    messages = {}
    for target in [b"/a%00", b"/a\x01", b"/a%2f", b"/a%5C", b"/a\\", b"/%zz", b"x"]:
        with pytest.raises(BadRequest) as info:
            normalisePath(target, DEFAULT)
        messages[target] = str(info.value)
    assert messages == {
        b"/a%00": "percent-encoded control character 0x00 in path",
        b"/a\x01": "control character 0x01 in path",
        b"/a%2f": "percent-encoded slash or backslash %2F in path",
        b"/a%5C": "percent-encoded slash or backslash %5C in path",
        b"/a\\": "backslash in path",
        b"/%zz": "invalid percent-encoding in path",
        b"x": "request target is not an absolute path",
    }


@pytest.mark.parametrize(
    "target, options, expected",
    [
        (b"/a/../b%2e", RAW, "/a/../b%2e"),
        (b"/A%7e%41", RAW, "/A%7e%41"),
        (b"/caf\xc3\xa9", RAW, "/caf\xc3\xa9"),
        (b'/a"b', RAW, '/a"b'),
        (b"/a?x", RAW, "/a"),
        (b"/a#x", RAW, "/a"),
        (b"", RAW, "/"),
        (b"//a//b", RAW, "//a//b"),
        (b"//a//b/./", PathOptions(normalize=False, mergeSlashes=True), "/a/b/./"),
        (b"/a%2fb", PathOptions(normalize=False, escapedSlashes="keep"), "/a%2fb"),
        (b"/a\\b", PathOptions(normalize=False, escapedSlashes="keep"), "/a\\b"),
        (b"/a%2fb%5C\\c", PathOptions(normalize=False, escapedSlashes="unescape"), "/a/b//c"),
        (
            b"/a%2f%2F/b",
            PathOptions(normalize=False, mergeSlashes=True, escapedSlashes="unescape"),
            "/a/b",
        ),
    ],
)
def test_notNormalised(target: bytes, options: PathOptions, expected: str) -> None:
    """
    With C{normalize} off the path is taken as it is, but slashes are still
    merged and escaped slashes handled as configured.
    """
    assert normalisePath(target, options) == expected


@pytest.mark.parametrize("target", [b"/a%2fb", b"/a%5cb", b"/a\\b"])
def test_notNormalisedStillRejects(target: bytes) -> None:
    """
    With C{normalize} off, C{"reject"} still refuses escaped slashes and
    backslashes.
    """
    with pytest.raises(BadRequest):
        normalisePath(target, RAW)


def test_unknownAction() -> None:
    """
    An C{escapedSlashes} value that is not one of L{ESCAPED_SLASHES} is a
    programming error, not a bad request.
    """
    with pytest.raises(ValueError):
        normalisePath(b"/a%41", PathOptions(escapedSlashes="bogus"))


def removeDotSegments(path: str) -> str:
    """
    RFC 3986 section 5.2.4, step by step as the RFC writes it.
    """
    output = ""
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        elif path.startswith("/./"):
            path = path[2:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../") or path == "/..":
            path = "/" + path[4:]
            output = output[: max(output.rfind("/"), 0)]
        elif path in (".", ".."):
            path = ""
        else:
            end = path.find("/", 1)
            if end < 0:
                end = len(path)
            output += path[:end]
            path = path[end:]
    return output


#: Pieces a hostile target is made of.
PIECES = [
    "/", "//", ".", "..", "a", "admin", ";", ";x", "%2e", "%2E", "%2f", "%2F",
    "%5c", "%5C", "\\", "%41", "%7e", "%25", "%252e", "%252F", "%3f", "?", "#",
    "%", "%G1", "%4", "%00", "\x00", "\x7f", "%7F", "%1f", "\xe9", "%c3%a9",
    " ", '"', "{", "~", "+",
]

pathPieces = st.lists(st.sampled_from(PIECES), max_size=12).map(
    lambda pieces: ("/" + "".join(pieces)).encode("latin-1")
)
targets = pathPieces | st.binary(max_size=40) | st.binary(max_size=40).map(lambda b: b"/" + b)
optionsStrategy = st.builds(
    PathOptions,
    normalize=st.booleans(),
    mergeSlashes=st.booleans(),
    escapedSlashes=st.sampled_from(ESCAPED_SLASHES),
)

_UNRESERVED_ESCAPE = re.compile(
    "%(?:" + "|".join("%02X" % (c,) for c in UNRESERVED) + ")", re.IGNORECASE
)


@settings(max_examples=2000, deadline=None)
@given(targets, optionsStrategy)
def test_properties(target: bytes, options: PathOptions) -> None:
    """
    Whatever the target, the result is a normalised path or a
    L{BadRequest}, and normalising the result again changes nothing.
    """
    try:
        result = normalisePath(target, options)
    except BadRequest:
        return
    assert result.startswith("/")
    assert not any(c < " " or c == "\x7f" for c in result)
    assert "?" not in result and "#" not in result
    assert normalisePath(result.encode("latin-1"), options) == result
    segments = result.split("/")
    if options.mergeSlashes:
        assert "//" not in result
    if options.escapedSlashes != "keep":
        assert "\\" not in result
        assert "%2f" not in result.lower() and "%5c" not in result.lower()
    if options.normalize:
        assert result.isascii()
        assert "." not in segments and ".." not in segments
        assert not _UNRESERVED_ESCAPE.search(result)
        assert re.fullmatch("(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-F]{2})*", result)


@settings(max_examples=1000, deadline=None)
@given(targets, optionsStrategy)
def test_fastPath(target: bytes, options: PathOptions) -> None:
    """
    The shortcut for plain paths gives what the full algorithm gives.
    """
    path = target.partition(b"?")[0].partition(b"#")[0]
    if not path.startswith(b"/"):
        return
    try:
        slow: Optional[str] = _normaliseSlowly(path, options)
    except BadRequest:
        slow = None
    assert outcome(target, options) == slow


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="/.ab", max_size=20), st.booleans())
def test_rfcDotSegments(path: str, merge: bool) -> None:
    """
    Dot-segments are removed as RFC 3986 section 5.2.4 says; with
    C{mergeSlashes}, from the path with its slashes merged first.
    """
    path = "/" + path
    options = PathOptions(mergeSlashes=merge)
    expected = removeDotSegments(re.sub("//+", "/", path) if merge else path)
    assert normalisePath(path.encode("ascii"), options) == (expected or "/")


def equivalentSpellings(target: bytes, options: PathOptions, choices: List[int]) -> bytes:
    """
    C{target} spelt differently but equivalently for C{options}: some
    unreserved characters percent-encoded, some escapes in the other case,
    and, depending on the options, raw bytes encoded or slashes spelt
    another way.
    """
    out = bytearray()
    index = 0
    pick = iter(choices)
    while index < len(target):
        octet = target[index]
        choice = next(pick, 0)
        if octet == 0x25:  # an escape (valid or not) goes through as it is or recased
            escape = target[index : index + 3]
            out += escape.swapcase() if choice % 2 and escape.isascii() else escape
            index += len(escape)
            continue
        if octet in b"?#":
            out += target[index:]
            break
        if choice % 3 and octet in UNRESERVED:
            out += (b"%%%02X" if choice % 3 == 1 else b"%%%02x") % (octet,)
        elif choice % 3 and options.normalize and octet >= 0x80:
            out += b"%%%02x" % (octet,)
        elif choice % 3 and options.escapedSlashes == "unescape" and octet in b"/\\" and index:
            out += (b"/", b"%2F", b"%5c", b"\\")[choice % 4]
        elif choice % 3 and options.escapedSlashes == "keep" and octet == 0x5C:
            out += b"%5c"
        else:
            out.append(octet)
        index += 1
    return bytes(out)


@settings(max_examples=2000, deadline=None)
@given(
    pathPieces,
    optionsStrategy.filter(lambda o: o.normalize),
    st.lists(st.integers(min_value=0, max_value=11), max_size=60),
)
def test_noEncodingBypass(target: bytes, options: PathOptions, choices: List[int]) -> None:
    """
    Spelling a target differently (encoding unreserved characters, the case
    of escapes, raw or encoded non-ASCII, and slashes where the options make
    them separators) never changes the normalised path, nor whether it is
    refused: a rule cannot be bypassed by an encoding trick.
    """
    other = equivalentSpellings(target, options, choices)
    assert outcome(other, options) == outcome(target, options), other


def test_protectedPrefix() -> None:
    """
    Every spelling of C{/admin} someone might try to sneak past a rule on
    that prefix normalises to C{/admin}, whatever the options; one that
    needs an encoded slash or backslash is refused by C{"reject"}, becomes
    C{/admin} with C{"unescape"}, and stays data with C{"keep"}.
    """
    attempts = [
        b"/public/../admin",
        b"/public/%2e%2e/admin",
        b"/public/%2E%2e/admin",
        b"/public/.%2e/admin",
        b"/%61dmin",
        b"/%2561dmin/../admin",
        b"/./admin",
        b"/public/./../admin",
        b"/public/x/../../admin",
        b"/public//../../admin",
    ]
    slashed = [
        b"/public/..%2fadmin",
        b"/public/..%5cadmin",
        b"/public\\..\\admin",
        b"/public/x%2F..%2F..%2Fadmin",
    ]
    for options in ALL_OPTIONS:
        if not options.normalize:
            continue
        for target in attempts:
            assert normalisePath(target, options) == "/admin", (target, options)
        for target in slashed:
            result = outcome(target, options)
            if options.escapedSlashes == "reject":
                assert result is None
            elif options.escapedSlashes == "unescape":
                assert result == "/admin"
            else:
                assert result is not None and result.startswith("/public")
