"""
The header hardening a user configures or sees in logs: the
C{headers-with-underscores-action} setting (flag and config key, carried
to each listener's L{HeaderPolicy}), and the access log's C{request_id},
which only ever holds a bounded run of visible characters.
"""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.http_headers import Headers

from easymesh.accesslog import AccessLog
from easymesh.config.files import readConfigFile
from easymesh.config.model import ConfigError
from easymesh.errors import HeaderWithUnderscores
from easymesh.tap import Options


# The setting


def _options(*args: str) -> Any:
    options = Options()
    options.parseOptions(list(args))
    return options.config


def test_defaultDrops() -> None:
    assert _options().headers_with_underscores_action == "drop_header"


@pytest.mark.parametrize("action", ["allow", "drop_header", "reject_request"])
def test_flag(action: str) -> None:
    config = _options("--headers-with-underscores-action", action)
    assert config.headers_with_underscores_action == action


def test_fileKey(tmp_path: Any) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("node-id: web-1\nheaders-with-underscores-action: allow\n", encoding="utf-8")
    assert readConfigFile(str(path))["headers-with-underscores-action"] == "allow"


def test_badValueRefusedWithLine(tmp_path: Any) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("node-id: web-1\n\nheaders-with-underscores-action: drop\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        readConfigFile(str(path))
    assert info.value.where == f"{path}:3"
    assert "allow, drop_header, reject_request" in info.value.reason


def test_carriedToListeners() -> None:
    """
    Both listeners' header policies apply the setting.
    """
    from twisted.internet.testing import MemoryReactorClock

    from easymesh.tap import makeService

    options = Options()
    options.parseOptions(
        ["--headers-with-underscores-action", "reject_request", "--admin", "none"]
    )
    service = makeService(options, MemoryReactorClock())
    policies = [site.resource.forwarder.policy for site in service.sites]
    assert len(policies) == 2
    for policy in policies:
        with pytest.raises(HeaderWithUnderscores):
            policy.prepareRequest(Headers({b"x_a": [b"1"]}), "10.0.0.1", b"http", b"1.1")


# The access log


def _logged(requestId: Any) -> List[Dict[str, Any]]:
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for style in ("text", "json"):
            AccessLog(style).record(
                "outbound", b"GET", b"/p", 200, 0, 2, 0.001, None, requestId, None, 0.0
            )
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e for e in events if e.get("log_namespace") == "easymesh.access"]


@pytest.mark.parametrize(
    "value",
    [
        b"1\t2026-12-02T16:00:00+0000 [easymesh.access#info] outbound GET /admin 200",
        b"a b",
        b"x" * 65000,
        b"line\r\nbreak",
    ],
)
def test_accessLogRefusesForgedRequestId(value: bytes) -> None:
    """
    A request refused before its headers were prepared still carries the
    client's C{x-request-id}: unless it is a bounded run of visible
    characters, the access log shows none.
    """
    text, json = _logged(value)
    assert text["request_id"] is None and json["request_id"] is None
    line = formatEvent(text)
    assert "\t" not in line and "easymesh.access#info" not in line
    assert line.endswith("request_id=-")


def test_accessLogTextShowsAbsentFieldsAsDash() -> None:
    """
    A request refused before it was routed has no route, cluster, upstream,
    protocol, cause or request id: the text line shows each as C{-}, never
    a Python C{None}; the JSON line has C{null}s, and both events keep the
    fields as L{None}.
    """
    text, json = _logged(None)
    line = formatEvent(text)
    assert line == (
        "outbound GET /p - 200 in=0B out=2B 1.0ms route=- cluster=- upstream=- "
        "attempts=0 error=- request_id=-"
    ), line
    assert "None" not in line
    for event in (text, json):
        assert event["error"] is None and event["route"] is None
    assert '"error":null' in formatEvent(json)


def test_accessLogTextShowsCause() -> None:
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        AccessLog("text").record(
            "inbound", b"GET", b"/p", 508, 0, 2, 0.001, None, None, "loop_detected", 0.0
        )
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("log_namespace") == "easymesh.access"]
    assert " error=loop_detected request_id=-" in formatEvent(event)


def test_accessLogKeepsValidRequestId() -> None:
    text, json = _logged(b"abc-123")
    assert formatEvent(text).endswith("request_id=abc-123")
    assert json["request_id"] == "abc-123"
