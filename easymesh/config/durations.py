# -*- test-case-name: tests.test_mesh_config -*-
"""
Durations as written in config files: C{250ms}, C{2s}, C{1m}, C{1h}, or a
plain number of seconds.
"""

from __future__ import annotations

import math
import re
from typing import Any

from easymesh.config.kinds import isFinite

_DURATION = re.compile(r"\A([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?\Z")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parseDuration(value: Any) -> float:
    """
    Seconds for a duration.

    @raise ValueError: Not a finite, non-negative number with an optional
        unit.
    """
    if isinstance(value, bool):
        raise ValueError(f"must be a duration such as 250ms, 2s or 1m, not {value!r}")
    if isinstance(value, (int, float)):
        if not isFinite(value):
            raise ValueError(f"must be a duration such as 250ms, 2s or 1m, not {value!r}")
        if value < 0:
            raise ValueError(f"must not be negative, not {value!r}")
        return float(value)
    match = _DURATION.match(str(value).strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"must be a duration such as 250ms, 2s or 1m, not {value!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"must be a finite duration, not {value!r}")
    return seconds
