# -*- test-case-name: tests.test_tracing -*-
"""
W3C Trace Context (Level 1, U{https://www.w3.org/TR/trace-context/}) for one
proxy hop.

A request with a valid C{traceparent} keeps its trace id and flags; the hop
gets a new span id, which becomes the C{parent-id} the next hop sees.
C{tracestate} passes through unchanged (the sidecar adds no entry of its
own).  A request without a valid C{traceparent} starts a new trace, and any
C{tracestate} it carries is dropped: without a valid C{traceparent} it is
not parsed (section 3.3) and is discarded (section 4.1, processing model).

Choices the specification leaves open:

  - A trace the sidecar starts has flags C{00}: the sidecar records
    nothing, and I{"it should be set to 0 as the default option when the
    trace is initiated by this component"} (section 3.2.2.5.1, sampled
    flag).  A tracer behind the sidecar makes the recording decision.
  - A version C{00} header's flags are passed on as received, bits the
    sidecar does not interpret included.  Level 1 has vendors set the
    flags it does not define to zero (section 3.2.2.5.2); the sidecar sets
    none, it relays the caller's, and Level 2 defines bit 1 (C{random}),
    which a hop that cleared it would lose.  A higher version's flags are
    cut down to the C{sampled} bit, the only one parsed there (section
    3.2.4, versioning).
  - A version C{00} value is exactly 55 characters: anything after the
    flags makes it invalid (as the W3C test suite checks), while a higher
    version may carry more fields after a C{-}.
  - Optional white space around the value is ignored, as around any HTTP
    field value; upper-case hex is invalid (section 3.2.2, HEXDIGLC).
  - More than one C{traceparent} field is invalid: the trace restarts.

B3 headers (C{b3}, C{x-b3-*}) are left as they are.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Optional, Tuple

import attrs
from twisted.web.http_headers import Headers

from easymesh.twistedprivate import encodeName, rawHeaders

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"

#: The C{sampled} bit of C{trace-flags}.
SAMPLED = 0x01

_TRACEPARENT = encodeName(TRACEPARENT)
_TRACESTATE = encodeName(TRACESTATE)

_HEX = "[0-9a-f]"
# Version 00 is exactly these 55 characters.
_V00 = re.compile(rf"00-({_HEX}{{32}})-({_HEX}{{16}})-({_HEX}{{2}})")
# A higher version: the version 00 fields first, then nothing or "-...".
_FUTURE = re.compile(rf"({_HEX}{{2}})-({_HEX}{{32}})-({_HEX}{{16}})-({_HEX}{{2}})(?:-.*)?", re.S)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@attrs.frozen
class TraceContext:
    """
    This hop's place in a trace.

    @ivar traceId: 32 lower-case hex digits.
    @ivar spanId: This hop's 16 hex digits, sent on as C{parent-id}.
    @ivar parentId: The caller's C{parent-id}, or L{None} if this hop started
        the trace.
    @ivar flags: The C{trace-flags} byte sent on.
    """

    traceId: str
    spanId: str
    parentId: Optional[str]
    flags: int

    @property
    def sampled(self) -> bool:
        """
        Whether the caller may have recorded trace data.
        """
        return bool(self.flags & SAMPLED)

    @property
    def traceparent(self) -> str:
        """
        The C{traceparent} value for the next hop.
        """
        return f"00-{self.traceId}-{self.spanId}-{self.flags:02x}"


def parseTraceparent(value: bytes) -> Optional[Tuple[str, str, int]]:
    """
    The trace id, parent id and flags of one C{traceparent} field value, or
    L{None} if it is invalid.
    """
    # Fields past version 00's are not looked at, whatever their bytes.
    text = value.decode("latin-1").strip(" \t")
    match = _V00.fullmatch(text)
    if match is not None:
        traceId, parentId, flags = match.groups()
        mask = 0xFF
    else:
        match = _FUTURE.fullmatch(text)
        if match is None or match.group(1) in ("00", "ff"):
            return None
        traceId, parentId, flags = match.group(2, 3, 4)
        mask = SAMPLED
    if traceId == _ZERO_TRACE or parentId == _ZERO_SPAN:
        return None
    return traceId, parentId, int(flags, 16) & mask


def _newId(randbits: Callable[[int], int], bits: int) -> str:
    # An all-zero id is invalid; a zero draw (or a broken source) gives 1.
    value = (randbits(bits) & ((1 << bits) - 1)) or 1
    return f"{value:0{bits // 4}x}"


def continueTrace(
    headers: Headers,
    randbits: Callable[[int], int] = random.getrandbits,
    sampleNew: bool = False,
) -> TraceContext:
    """
    Continue the trace in the request C{headers}, or start one, and set
    their C{traceparent} to this hop's.

    @param randbits: Makes new ids, like L{random.getrandbits}.
    @param sampleNew: Set the C{sampled} flag of a trace started here (when
        this sidecar records spans).
    """
    # Headers keeps names in one canonical form: work on that directly, as
    # this runs for every request.
    raw = rawHeaders(headers)
    values = raw.get(_TRACEPARENT)
    parsed = parseTraceparent(values[0]) if values is not None and len(values) == 1 else None
    if parsed is None:
        flags = SAMPLED if sampleNew else 0
        context = TraceContext(_newId(randbits, 128), _newId(randbits, 64), None, flags)
        raw.pop(_TRACESTATE, None)
    else:
        traceId, parentId, flags = parsed
        context = TraceContext(traceId, _newId(randbits, 64), parentId, flags)
    raw[_TRACEPARENT] = [context.traceparent.encode("ascii")]
    return context
