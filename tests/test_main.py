"""
Tests for the command lines' help and version: C{python -m easymesh} and
the C{twistd easymesh} plugin's options.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from easymesh import __version__, installedVersion
from easymesh.__main__ import USAGE, main
from easymesh.tap import Options

REPO = Path(__file__).resolve().parents[1]


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_installedVersion() -> None:
    """
    The version is the installed package's metadata, which the source
    tree's C{__version__} made.
    """
    assert installedVersion() == version("easymesh") == __version__


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{--help} prints the usage, in plain text, on standard output and
    succeeds.
    """
    assert main([flag]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (USAGE, "")
    assert out.startswith("usage: python -m easymesh COMMAND")
    for command in ("check-config FILE", "certs DIR", "causes [--update docs/troubleshooting.md]", "--version"):
        assert command in out
    assert "{" not in out


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["--versions"]])
def test_usageError(args: list, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", USAGE)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr() == (f"easymesh {version('easymesh')}\n", "")


def test_pythonDashM() -> None:
    """
    The module run as a program: help and version succeed.
    """
    helped = run("-m", "easymesh", "--help")
    assert (helped.returncode, helped.stdout, helped.stderr) == (0, USAGE, "")
    shown = run("-m", "easymesh", "--version")
    assert (shown.returncode, shown.stdout) == (0, f"easymesh {version('easymesh')}\n")


def test_pluginVersion(capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{twistd easymesh --version} names easymesh's version, not Twisted's,
    and exits with success before any other option is checked.
    """
    with pytest.raises(SystemExit) as exited:
        Options().parseOptions(["--version", "--timeout", "not-a-number"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"easymesh {version('easymesh')}\n"
    assert "Show easymesh's version and exit." in str(Options())


def test_twistdVersion() -> None:
    """
    The plugin's C{--version} through a real C{twistd}.
    """
    shown = run(
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
        "easymesh",
        "--version",
    )
    assert (shown.returncode, shown.stdout) == (0, f"easymesh {version('easymesh')}\n"), shown.stderr
