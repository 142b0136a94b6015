# -*- test-case-name: tests.test_patterns -*-
"""
Regular expressions taken from configuration (route, header and
authorization C{regex} matches), compiled so that no request can make one
run for longer than linear time in what it is matched against.

With C{google-re2} (RE2, as Envoy uses) every pattern runs in linear time,
and what RE2 cannot compile (back-references, look-arounds) is refused.
Where it cannot be imported (it has no PyPy wheel), Python's backtracking
engine is used, and a pattern is refused unless it is free of what makes
backtracking blow up: nested quantifiers (C{(a+)+}), alternation under an
unbounded quantifier (C{(a|ab)*}), back-references, look-arounds and
conditionals.  Either way a refused pattern is refused when the
configuration is loaded, never met by a request.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Protocol, Union

try:
    import re2 as _re2
except ImportError:  # pragma: no cover - depends on the interpreter
    _re2 = None

try:
    from re import _parser as _sre  # type: ignore[attr-defined]  # typeshed: no re._parser
except ImportError:  # pragma: no cover - Python before 3.11
    import sre_parse as _sre


class PatternError(ValueError):
    """
    A configured pattern that cannot be used; the message says why.
    """


class CompiledPattern(Protocol):
    def fullmatch(self, text: Any) -> Optional[Any]: ...


def engine() -> str:
    """
    The name of the engine patterns run on: C{"re2"} or C{"re"}.
    """
    return "re2" if _re2 is not None else "re"


def compilePattern(
    text: Union[str, bytes], ignoreCase: bool = False, useRE2: Optional[bool] = None
) -> CompiledPattern:
    """
    Compile a configured pattern for a linear-time match.

    @param ignoreCase: Match whatever the letter case (the pattern itself
        is not rewritten).
    @param useRE2: Force the engine (for tests); by default RE2 where it
        can be imported.
    @raise PatternError: The pattern is invalid, or could take more than
        linear time and no linear-time engine is at hand.
    """
    if useRE2 is None:
        useRE2 = _re2 is not None
    if useRE2:
        assert _re2 is not None
        options = _re2.Options()
        options.log_errors = False
        options.case_sensitive = not ignoreCase
        if isinstance(text, bytes):
            options.encoding = _re2.Options.Encoding.LATIN1
        try:
            return _re2.compile(text, options)
        except _re2.error as e:
            reason = e.args[0] if e.args else e
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise PatternError(f"not a valid regular expression (RE2 syntax): {reason}") from None
    try:
        parsed = _sre.parse(text)
        compiled = re.compile(text, re.IGNORECASE if ignoreCase else 0)
    except re.error as e:
        raise PatternError(f"not a valid regular expression: {e}") from None
    problem = _backtracking(parsed, False)
    if problem is not None:
        raise PatternError(
            f"{problem} needs backtracking, which a request can make take "
            "exponential time, and RE2 (google-re2) is not installed for this "
            "interpreter: simplify the pattern"
        )
    return compiled


_REPEATS = frozenset(("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"))


def _backtracking(items: Any, underRepeat: bool) -> Optional[str]:
    """
    What in a parsed pattern makes backtracking blow up, or L{None}.
    """
    for op, value in items:
        name = str(op)
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            return "a back-reference"
        if name in ("ASSERT", "ASSERT_NOT"):
            return "a look-around"
        if name in _REPEATS:
            low, high, sub = value
            if underRepeat and high != 1:
                return "a nested quantifier"
            problem = _backtracking(sub, underRepeat or high > 1)
            if problem is not None:
                return problem
        elif name == "SUBPATTERN":
            problem = _backtracking(value[-1], underRepeat)
            if problem is not None:
                return problem
        elif name == "BRANCH":
            if underRepeat:
                return "an alternation under a quantifier"
            for branch in value[1]:
                problem = _backtracking(branch, underRepeat)
                if problem is not None:
                    return problem
        elif name == "ATOMIC_GROUP":
            problem = _backtracking(value, underRepeat)
            if problem is not None:
                return problem
    return None
