"""
The type checker over C{easymesh/}: C{mypy easymesh} from the project root,
with the configuration in C{setup.cfg} and the versions the test extra pins.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed: the test extra installs it on Python 3.10 and newer",
)
def test_typeCheck() -> None:
    """
    mypy, with mypy-zope for the interfaces, finds no error in C{easymesh/}.
    """
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "easymesh"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
