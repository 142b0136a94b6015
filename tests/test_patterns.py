"""
Tests for L{easymesh.patterns}: configured regular expressions run in
linear time, and what could not is refused when the configuration loads.
"""

from __future__ import annotations

import textwrap

import pytest

from easymesh.config.files import parseConfigText
from easymesh.config.mesh import MeshConfig
from easymesh.config.model import ConfigError
from easymesh.patterns import PatternError, compilePattern, engine
from easymesh.routing.matcher import RouteTable

EXPONENTIAL = r"/files/([a-z]+/?)+\.txt"


def test_re2_used_where_installed() -> None:
    """
    On CPython, where google-re2 has wheels, patterns run on RE2.
    """
    import platform

    if platform.python_implementation() != "CPython":
        pytest.skip("RE2 is installed only on CPython")
    assert engine() == "re2"


def test_exponential_pattern_matches_in_linear_time() -> None:
    """
    A pattern that makes a backtracking engine take time doubling with
    each character answers at once on RE2, for a path long enough that
    Python's C{re} would not return for minutes.
    """
    pattern = compilePattern(EXPONENTIAL, useRE2=True)
    assert pattern.fullmatch("/files/" + "a" * 5000 + "!") is None
    assert pattern.fullmatch("/files/a/bc/d.txt") is not None


def test_route_regex_on_re2() -> None:
    mesh = MeshConfig(
        **parseConfigText(
            textwrap.dedent(
                f"""\
                routes:
                  outbound:
                    - match: {{regex: '{EXPONENTIAL}'}}
                      direct_response: {{status: 200, body: file}}
                    - match: {{prefix: /}}
                      cluster: peer
                """
            ),
            "redos.yaml",
        ).mesh
    )
    from twisted.web.http_headers import Headers

    table = RouteTable(mesh.routes["outbound"])
    route = table.match(b"GET", "/files/" + "a" * 40 + "!", Headers())
    assert route is not None and route.cluster == "peer"
    route = table.match(b"GET", "/files/x/y.txt", Headers())
    assert route is not None and route.directResponse is not None


@pytest.mark.parametrize("useRE2", [True, False])
def test_ignore_case(useRE2: bool) -> None:
    pattern = compilePattern("/admin/[a-z]+", ignoreCase=True, useRE2=useRE2)
    assert pattern.fullmatch("/ADMIN/Users") is not None
    assert compilePattern("/admin/[a-z]+", useRE2=useRE2).fullmatch("/ADMIN/users") is None


@pytest.mark.parametrize("text", [r"(a)\1", r"/x(?=y)", r"/x(?!y)", r"(?<=a)b"])
def test_re2_refuses_backtracking_syntax(text: str) -> None:
    with pytest.raises(PatternError, match="not a valid regular expression"):
        compilePattern(text, useRE2=True)


@pytest.mark.parametrize(
    "text, problem",
    [
        (EXPONENTIAL, "nested quantifier"),
        (r"(a+)+b", "nested quantifier"),
        (r"(?:a*)*", "nested quantifier"),
        (r"(a|ab)*c", "alternation under a quantifier"),
        (r"(a)\1", "back-reference"),
        (r"/x(?=y)", "look-around"),
        (r"(?<!a)b", "look-around"),
    ],
)
def test_fallback_refuses_backtracking(text: str, problem: str) -> None:
    """
    Without RE2 (PyPy), a pattern that needs backtracking is refused with
    a reason, rather than left for a request to trigger.
    """
    with pytest.raises(PatternError, match=problem):
        compilePattern(text, useRE2=False)


@pytest.mark.parametrize(
    "text", [r"/api/v[0-9]+/.*", r"/x{2,5}", r"(ab)+", r"/(users|orders)/[0-9]+", r"/a?b?c"]
)
def test_fallback_keeps_linear_patterns(text: str) -> None:
    assert compilePattern(text, useRE2=False) is not None


def test_fallback_refused_at_load_with_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Where RE2 cannot be imported, a configuration with such a pattern is
    refused with its file and line.
    """
    import easymesh.patterns

    monkeypatch.setattr(easymesh.patterns, "_re2", None)
    with pytest.raises(ConfigError) as info:
        parseConfigText(
            textwrap.dedent(
                f"""\
                routes:
                  outbound:
                    - match: {{prefix: /}}
                      cluster: peer
                    - match: {{regex: '{EXPONENTIAL}'}}
                      cluster: peer
                """
            ),
            "redos.yaml",
        )
    message = str(info.value)
    assert message.startswith("redos.yaml:5: routes.outbound.1.match.regex: a nested quantifier")
    assert "RE2" in message


def test_re2_syntax_refused_at_load_with_line() -> None:
    with pytest.raises(ConfigError) as info:
        parseConfigText(
            "authorization:\n  inbound:\n    rules:\n"
            "      - match: {regex: '/a(?=b)'}\n        identities: []\n",
            "authz.yaml",
        )
    assert str(info.value).startswith("authz.yaml:4: authorization.inbound.rules.0.match.regex:")
