"""
Tests for L{easymesh.tracing}: W3C Trace Context for a proxy hop, against
the specification's examples and the rules its test suite checks.
"""

from __future__ import annotations

import itertools
import re
from typing import Callable, List, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from easymesh.tracing import TraceContext, continueTrace, parseTraceparent

TRACE = "12345678901234567890123456789012"
PARENT = "1234567890123456"
VALID = f"00-{TRACE}-{PARENT}-01"
_OUTPUT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def counting() -> Callable[[int], int]:
    """
    A C{randbits} whose draws are 0xa1, 0xa2, ... in turn.
    """
    counter = itertools.count(0xA1)
    return lambda bits: next(counter)


def run(
    traceparent: Optional[List[str]] = None,
    tracestate: Optional[List[str]] = None,
    randbits: Optional[Callable[[int], int]] = None,
) -> Tuple[TraceContext, Headers]:
    headers = Headers()
    if traceparent is not None:
        headers.setRawHeaders(b"traceparent", [v.encode("latin-1") for v in traceparent])
    if tracestate is not None:
        headers.setRawHeaders(b"tracestate", [v.encode("latin-1") for v in tracestate])
    context = continueTrace(headers, randbits or counting())
    return context, headers


def sent(headers: Headers) -> str:
    [value] = headers.getRawHeaders(b"traceparent")
    return value.decode("ascii")


class ContinueTests(SynchronousTestCase):
    def test_specExampleSampled(self) -> None:
        """
        A valid header keeps its trace id and flags; the hop gets a new span
        id, and the caller's becomes C{parentId}.
        """
        context, headers = run(["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"])
        self.assertEqual(
            context,
            TraceContext(
                "4bf92f3577b34da6a3ce929d0e0e4736", "00000000000000a1", "00f067aa0ba902b7", 1
            ),
        )
        self.assertTrue(context.sampled)
        self.assertEqual(sent(headers), "00-4bf92f3577b34da6a3ce929d0e0e4736-00000000000000a1-01")

    def test_specExampleNotSampled(self) -> None:
        context, headers = run(["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"])
        self.assertFalse(context.sampled)
        self.assertEqual(context.parentId, "00f067aa0ba902b7")
        self.assertEqual(sent(headers), "00-4bf92f3577b34da6a3ce929d0e0e4736-00000000000000a1-00")

    def test_tracestatePassesThrough(self) -> None:
        """
        With a valid C{traceparent}, C{tracestate} fields pass unchanged and
        in order, empty ones included.
        """
        state = ["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", "", "foo=1 \t, bar=2"]
        context, headers = run(
            ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"], state
        )
        self.assertEqual(context.traceId, "0af7651916cd43dd8448eb211c80319c")
        self.assertEqual(
            headers.getRawHeaders(b"tracestate"), [s.encode("ascii") for s in state]
        )

    def test_otherFlagsKept(self) -> None:
        """
        A version 00 header's flags pass on as received.
        """
        for flags in ["02", "03", "ff", "00"]:
            context, headers = run([f"00-{TRACE}-{PARENT}-{flags}"])
            self.assertEqual(context.flags, int(flags, 16))
            self.assertTrue(sent(headers).endswith("-" + flags))

    def test_headerNameAnyCase(self) -> None:
        for name in [b"TraceParent", b"TRACEPARENT", b"TrAcEpArEnT"]:
            headers = Headers({name: [VALID.encode("ascii")]})
            self.assertEqual(continueTrace(headers, counting()).traceId, TRACE)
            self.assertEqual(len(headers.getRawHeaders(b"traceparent")), 1)

    def test_optionalWhiteSpace(self) -> None:
        for value in [" " + VALID, "\t" + VALID, VALID + " ", VALID + "\t", "\t " + VALID + " \t"]:
            context, headers = run([value])
            self.assertEqual(context.traceId, TRACE, value)
            self.assertEqual(context.parentId, PARENT)

    def test_futureVersion(self) -> None:
        """
        A higher version is parsed as far as version 00 goes; only its
        C{sampled} bit is used, and version 00 is sent on.
        """
        for value in [
            f"cc-{TRACE}-{PARENT}-01",
            f"cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like",
            f"01-{TRACE}-{PARENT}-01-",
        ]:
            context, headers = run([value])
            self.assertEqual((context.traceId, context.parentId, context.flags), (TRACE, PARENT, 1))
            self.assertEqual(sent(headers), f"00-{TRACE}-00000000000000a1-01")
        context, headers = run([f"fe-{TRACE}-{PARENT}-0b-x"])
        self.assertEqual(context.flags, 1)
        context, headers = run([f"fe-{TRACE}-{PARENT}-fe"])
        self.assertEqual(context.flags, 0)

    def test_b3Untouched(self) -> None:
        headers = Headers(
            {
                b"traceparent": [VALID.encode("ascii")],
                b"b3": [b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"],
                b"x-b3-traceid": [b"463ac35c9f6413ad48485a3953bb6124"],
                b"x-b3-spanid": [b"a2fb4a1d1a96d312"],
                b"x-b3-sampled": [b"1"],
            }
        )
        continueTrace(headers, counting())
        self.assertEqual(
            headers.getRawHeaders(b"b3"), [b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"]
        )
        self.assertEqual(headers.getRawHeaders(b"x-b3-traceid"), [b"463ac35c9f6413ad48485a3953bb6124"])
        self.assertEqual(headers.getRawHeaders(b"x-b3-spanid"), [b"a2fb4a1d1a96d312"])
        self.assertEqual(headers.getRawHeaders(b"x-b3-sampled"), [b"1"])


#: Invalid values, from the specification's test suite and its rules.
INVALID = [
    # Version 00 is exactly 55 characters.
    f"00-{TRACE}-{PARENT}-01.",
    f"00-{TRACE}-{PARENT}-01-what-the-future-will-be-like",
    # A higher version must have "-" or nothing after the flags.
    f"cc-{TRACE}-{PARENT}-01.what-the-future-will-be-like",
    f"cc-{TRACE}-{PARENT}-0",
    f"ff-{TRACE}-{PARENT}-01",
    f".0-{TRACE}-{PARENT}-01",
    f"0.-{TRACE}-{PARENT}-01",
    f"000-{TRACE}-{PARENT}-01",
    f"0000-{TRACE}-{PARENT}-01",
    f"0-{TRACE}-{PARENT}-01",
    f"00-{'0' * 32}-{PARENT}-01",
    f"00-.2345678901234567890123456789012-{PARENT}-01",
    f"00-1234567890123456789012345678901.-{PARENT}-01",
    f"00-{TRACE}3-{PARENT}-01",
    f"00-{TRACE[:-1]}-{PARENT}-01",
    f"00-{TRACE}-{'0' * 16}-01",
    f"00-{TRACE}-.234567890123456-01",
    f"00-{TRACE}-123456789012345.-01",
    f"00-{TRACE}-{PARENT}7-01",
    f"00-{TRACE}-{PARENT[:-1]}-01",
    f"00-{TRACE}-{PARENT}-.0",
    f"00-{TRACE}-{PARENT}-0.",
    f"00-{TRACE}-{PARENT}-001",
    f"00-{TRACE}-{PARENT}-1",
    # Upper-case hex is not HEXDIGLC.
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
    f"00-{TRACE}-{PARENT}-0A",
    f"0A-{TRACE}-{PARENT}-01",
    f"cc-{TRACE}-{'0' * 16}-01",
    f"00_{TRACE}_{PARENT}_01",
    "",
    " ",
    f"00-{TRACE}-{PARENT}-01\u00e9",
    f"00-{TRACE}-{PARENT}-01,00-{TRACE}-{PARENT}-01",
]


class RestartTests(SynchronousTestCase):
    def assertRestarted(self, context: TraceContext, headers: Headers) -> None:
        self.assertEqual(
            context, TraceContext("000000000000000000000000000000a1", "00000000000000a2", None, 0)
        )
        self.assertEqual(sent(headers), "00-000000000000000000000000000000a1-00000000000000a2-00")
        self.assertIsNone(headers.getRawHeaders(b"tracestate"))

    def test_absent(self) -> None:
        """
        Without C{traceparent}, a new trace starts, not sampled.
        """
        self.assertRestarted(*run())

    def test_tracestateWithoutTraceparent(self) -> None:
        """
        A C{tracestate} without a C{traceparent} is discarded.
        """
        self.assertRestarted(*run(None, ["foo=1,bar=2"]))

    def test_invalid(self) -> None:
        """
        An invalid C{traceparent} restarts the trace and drops
        C{tracestate}.
        """
        for value in INVALID:
            self.assertIsNone(parseTraceparent(value.encode("utf-8")), value)
            self.assertRestarted(*run([value], ["congo=t61rcWkgMzE"]))

    def test_duplicated(self) -> None:
        """
        Two C{traceparent} fields, even valid and equal ones, restart the
        trace.
        """
        for values in [
            [f"00-{TRACE[:-1]}1-{PARENT}-01", VALID],
            [VALID, VALID],
        ]:
            self.assertRestarted(*run(values, ["foo=1"]))

    def test_zeroDraw(self) -> None:
        """
        New ids are never all zero, whatever C{randbits} gives.
        """
        context, headers = run(randbits=lambda bits: 0)
        self.assertEqual(sent(headers), f"00-{'0' * 31}1-{'0' * 15}1-00")
        context, headers = run(randbits=lambda bits: 1 << bits)
        self.assertEqual(sent(headers), f"00-{'0' * 31}1-{'0' * 15}1-00")

    def test_defaultRandomness(self) -> None:
        """
        By default, new ids are random.
        """
        first = continueTrace(Headers())
        second = continueTrace(Headers())
        self.assertNotEqual(first.traceId, second.traceId)
        self.assertNotEqual(first.spanId, second.spanId)


def _valid(context: TraceContext, headers: Headers) -> None:
    [value] = headers.getRawHeaders(b"traceparent")
    match = _OUTPUT.fullmatch(value.decode("ascii"))
    assert match is not None, value
    assert match.groups() == (context.traceId, context.spanId, f"{context.flags:02x}")
    assert context.traceId != "0" * 32
    assert context.spanId != "0" * 16
    assert parseTraceparent(value) == (context.traceId, context.spanId, context.flags)


_hexTrace = st.integers(1, 2**128 - 1).map(lambda n: f"{n:032x}")
_hexSpan = st.integers(1, 2**64 - 1).map(lambda n: f"{n:016x}")
_flags = st.integers(0, 255)
_ows = st.text(" \t", max_size=3)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.binary(max_size=80), max_size=3), st.lists(st.binary(max_size=20), max_size=2))
def test_alwaysValid(traceparents: List[bytes], tracestates: List[bytes]) -> None:
    """
    Whatever comes in, exactly one valid version 00 C{traceparent} goes out;
    C{tracestate} is kept only when the trace continues.
    """
    headers = Headers()
    if traceparents:
        headers.setRawHeaders(b"traceparent", traceparents)
    if tracestates:
        headers.setRawHeaders(b"tracestate", tracestates)
    context = continueTrace(headers)
    _valid(context, headers)
    if context.parentId is None:
        assert headers.getRawHeaders(b"tracestate") is None
    else:
        assert headers.getRawHeaders(b"tracestate") == (tracestates or None)


@settings(max_examples=300, deadline=None, database=None)
@given(
    _hexTrace,
    _hexSpan,
    _flags,
    st.one_of(st.just("00"), st.integers(1, 254).map(lambda v: f"{v:02x}")),
    st.one_of(st.just(""), st.text(max_size=20).map(lambda t: "-" + t)),
    _ows,
    _ows,
)
def test_keepsValidTrace(
    traceId: str, parentId: str, flags: int, version: str, tail: str, before: str, after: str
) -> None:
    """
    A valid C{traceparent} (any version, with optional white space) keeps
    its trace id; the caller's id becomes C{parentId} and the hop gets a new
    span id.
    """
    if version == "00":
        tail = ""
    value = f"{before}{version}-{traceId}-{parentId}-{flags:02x}{tail}{after}"
    headers = Headers({b"traceparent": [value.encode("utf-8")]})
    context = continueTrace(headers, counting())
    _valid(context, headers)
    assert context.traceId == traceId
    assert context.parentId == parentId
    assert context.spanId == "00000000000000a1"
    assert context.flags == (flags if version == "00" else flags & 1)
