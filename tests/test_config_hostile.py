"""
Tests for L{easymesh.config}: config files that are odd or hostile (YAML
tags that cannot be constructed, keys that are not names, numbers too big
for a float, nesting too deep) are refused with a L{ConfigError} naming the
file and line, never with another exception.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from typing import Iterator

import pytest

from easymesh.__main__ import main
from easymesh.config.durations import parseDuration
from easymesh.config.files import parseConfigText
from easymesh.config.kinds import Number
from easymesh.config.model import ConfigError

HUGE = "9" * 400
OVERLONG = "9" * 5000

CLUSTER = "clusters:\n  a:\n    endpoints: [http://a:1]\n"


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parseConfigText(textwrap.dedent(text), "c.yaml")
    return info.value


@pytest.mark.parametrize(
    "text, line",
    [
        ("? [a, b]\n: 1\n", 1),
        ("timeout: 1\n? {a: 1}\n: 1\n", 2),
    ],
)
def test_topLevelKeyNotAName(text: str, line: int) -> None:
    """
    A top-level key that is a list or a mapping is refused.
    """
    error = refused(text)
    assert error.where == f"c.yaml:{line}"
    assert "keys must be names" in error.reason


@pytest.mark.parametrize(
    "text, line",
    [
        # Settings, constructed whole.
        ("timeout: !!timestamp xyz\n", 1),
        ("drain: !!int abc\n", 1),
        ("drain: !!float abc\n", 1),
        (f"pool-size: {OVERLONG}\n", 1),
        ("filter: [!!bool maybe]\n", 1),
        # Mesh keys and authorization, node by node.
        ("xff_num_trusted_hops: !!timestamp xyz\n", 1),
        ("merge_slashes: !!bool maybe\n", 1),
        ("xff_num_trusted_hops: !!int abc\n", 1),
        ("xff_num_trusted_hops: !foo 1\n", 1),
        (f"retry_buffer_limit: {OVERLONG}\n", 1),
        (CLUSTER + "    timeout: !!timestamp 2001-13-99x\n", 4),
        ("authorization:\n  inbound:\n    default: !!bool maybe\n", 3),
    ],
)
def test_unconstructableValues(text: str, line: int) -> None:
    """
    Values whose YAML tag cannot make them (a bad timestamp, boolean or
    number, an unknown tag, an integer of more digits than Python converts)
    are refused with the file and line.
    """
    error = refused(text)
    assert error.where == f"c.yaml:{line}"


@pytest.mark.parametrize(
    "text, line",
    [
        (f"pool-size: {HUGE}\n", 1),
        (f"timeout: {HUGE}\n", 1),
        (f"retry_buffer_limit: {HUGE}\n", 1),
        (CLUSTER + f"    pool_size: {HUGE}\n", 4),
        (CLUSTER + f"    timeout: {HUGE}\n", 4),
        (CLUSTER + f"    timeout: {HUGE}s\n", 4),
        (CLUSTER + "    timeout: 1" + "0" * 308 + "h\n", 4),
        (
            f"clusters:\n  a:\n    endpoints: [{{url: 'http://a:1', weight: {HUGE}}}]\n",
            3,
        ),
    ],
)
def test_numbersTooBig(text: str, line: int) -> None:
    """
    Numbers beyond a float's range, and durations that come to infinity,
    are refused.
    """
    error = refused(text)
    assert error.where == f"c.yaml:{line}"


def test_numberKindHugeInteger() -> None:
    with pytest.raises(ValueError):
        Number(1, integer=True).fromValue(10**400)
    with pytest.raises(ValueError):
        Number(0).fromValue(10**400)
    assert Number(1, integer=True).fromValue(10**20) == 10**20


@pytest.mark.parametrize("value", [10**400, "9" * 400 + "s", "1" + "0" * 308 + "h"])
def test_durationNeverInfinite(value: object) -> None:
    with pytest.raises(ValueError):
        parseDuration(value)


def aliasBomb(key: str, depth: int = 8) -> str:
    """
    A setting whose value is lists of aliases of lists, nine wide and
    C{depth} deep: a few hundred bytes that stand for 9 ** depth strings.
    """
    parts = ['&n0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, depth + 1):
        parts.append(f"&n{level} [" + ",".join([f"*n{level - 1}"] * 9) + "]")
    return f"{key}: [" + ", ".join(parts) + "]\n"


@pytest.mark.parametrize("key", ["access-log", "timeout", "peer", "outbound", "filter"])
def test_aliasBombRefusedBriefly(key: str) -> None:
    """
    A value made of aliases is refused without being written out whole in
    the error message (which would take gigabytes).
    """
    error = refused(aliasBomb(key))
    assert error.where == "c.yaml:1"
    assert f"key {key!r}" in error.reason
    assert len(str(error)) < 2000


def test_nestedTooDeep() -> None:
    error = refused("filter: " + "[" * 100000 + "\n")
    assert error.where.startswith("c.yaml")


@pytest.mark.parametrize("port", [0, 65536, 99999])
def test_dnsPortOutOfRange(port: int) -> None:
    error = refused(f"clusters:\n  a:\n    dns: {{name: a.internal, port: {port}}}\n")
    assert error.where == "c.yaml:3"
    assert "port" in error.reason


def test_dnsPortInRange() -> None:
    values = parseConfigText(
        "clusters:\n  a:\n    dns: {name: a.internal, port: 65535}\n", "c.yaml"
    )
    assert values.mesh["clusters"]["a"].dns.port == 65535


@pytest.fixture
def directory() -> Iterator[str]:
    path = tempfile.mkdtemp()
    try:
        yield path
    finally:
        shutil.rmtree(path, True)


@pytest.mark.parametrize(
    "text",
    [
        "? [a]\n: 1\n",
        "timeout: !!timestamp xyz\n",
        f"pool-size: {HUGE}\n",
        "xff_num_trusted_hops: !!int abc\n",
    ],
)
def test_checkConfigRefusesWithoutTraceback(
    directory: str, text: str, capsys: pytest.CaptureFixture
) -> None:
    path = os.path.join(directory, "c.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    assert main(["check-config", path]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:1: ")
    assert "Traceback" not in err
