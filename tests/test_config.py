"""
Tests for L{easymesh.config}: value kinds, addresses, the settings table,
the YAML reader and the L{SidecarConfig} model.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock

from easymesh.config import (
    ConfigError,
    FilterSpec,
    ListenerConfig,
    PoolSettings,
    RateLimit,
    SidecarConfig,
)
from easymesh.config.addresses import (
    UpstreamURL,
    checkEndpoint,
    checkFilterSpec,
    checkURL,
    endpointNormaliser,
    tcpPortOf,
)
from easymesh.config.files import parseConfigText, readConfigFile
from easymesh.config.kinds import Choice, ListOf, Number, Setting, Text
from easymesh.config.settings import BY_NAME, SETTINGS, buildConfig
from easymesh.filters.chain import FilterContext


def configError(text: str, name: str = "c.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parseConfigText(text, name)
    return info.value


# Kinds


class TestNumber:
    def test_fromTextParses(self) -> None:
        assert Number(1, integer=True).fromText("5") == 5
        assert Number(0, exclusiveMinimum=True).fromText("2.5") == 2.5

    def test_fromTextRefusesWords(self) -> None:
        with pytest.raises(ValueError, match=r"must be an integer >= 1, not 'five'"):
            Number(1, integer=True).fromText("five")
        with pytest.raises(ValueError, match=r"not '1.5'"):
            Number(1, integer=True).fromText("1.5")

    def test_fromValueTypes(self) -> None:
        kind = Number(0)
        assert kind.fromValue(3) == 3.0
        assert isinstance(kind.fromValue(3), float)
        integer = Number(0, integer=True)
        assert integer.fromValue(5.0) == 5
        assert isinstance(integer.fromValue(5.0), int)
        for bad in ["5", True, False, None, [5], math.inf, -math.inf, math.nan]:
            with pytest.raises(ValueError, match="must be a number >= 0"):
                kind.fromValue(bad)

    def test_bounds(self) -> None:
        assert Number(0).fromValue(0) == 0
        with pytest.raises(ValueError, match=r"must be a number > 0, not 0"):
            Number(0, exclusiveMinimum=True).fromValue(0)
        with pytest.raises(ValueError, match=r"must be a number >= 0, not -1"):
            Number(0).fromValue(-1)
        with pytest.raises(ValueError, match=r"must be an integer >= 1, not 0"):
            Number(1, integer=True).fromValue(0)


class TestTextChoiceList:
    def test_text(self) -> None:
        kind = Text("a word", str.upper)
        assert kind.fromValue("abc") == "ABC"
        for bad in ["", 5, None, ["abc"], True]:
            with pytest.raises(ValueError, match="must be a word"):
                kind.fromValue(bad)

    def test_choice(self) -> None:
        kind = Choice(("off", "text"))
        assert kind.fromValue("text") == "text"
        assert kind.fromText("off") == "off"
        with pytest.raises(ValueError, match=r"must be one of off, text, not 'xml'"):
            kind.fromValue("xml")

    def test_listOf(self) -> None:
        kind = ListOf(Text("a word"))
        assert kind.fromValue(["a", "b"]) == ("a", "b")
        assert kind.fromValue([]) == ()
        assert kind.fromText("a") == ("a",)
        with pytest.raises(ValueError, match="must be a list of a word, not 'a'"):
            kind.fromValue("a")
        with pytest.raises(ValueError, match="item 1: must be a word, not 3"):
            kind.fromValue(["a", 3])

    def test_setting(self) -> None:
        setting = Setting("max-queue", Number(0), "help")
        assert setting.attribute == "max_queue"
        assert not setting.repeatable
        assert Setting("filter", ListOf(), "help").repeatable


# Addresses


class TestEndpoints:
    def test_bareOutboundPort(self) -> None:
        assert BY_NAME["outbound"].kind.fromText("9000") == "tcp:9000:interface=127.0.0.1"
        assert BY_NAME["demo"].kind.fromText("7000") == "tcp:7000:interface=127.0.0.1"

    def test_bareInboundPort(self) -> None:
        assert BY_NAME["inbound"].kind.fromText("9000") == "tcp:9000"

    def test_fullStringsKept(self) -> None:
        normalise = endpointNormaliser("127.0.0.1")
        for text in ["tcp:9000", "tcp:9000:interface=0.0.0.0", "unix:/tmp/x.sock"]:
            assert normalise(text) == text

    def test_portOutOfRange(self) -> None:
        with pytest.raises(ValueError, match="port 65536 is out of range"):
            endpointNormaliser(None)("65536")

    @pytest.mark.parametrize(
        "text, reason",
        [
            ("tcp:notaport", "invalid literal"),
            ("nosuch:1", "Unknown endpoint type: 'nosuch'"),
            ("-1", "Unknown endpoint type"),
            ("", "Unknown endpoint type"),
        ],
    )
    def test_badEndpoint(self, text: str, reason: str) -> None:
        with pytest.raises(ValueError) as info:
            endpointNormaliser(None)(text)
        message = str(info.value)
        assert f"invalid endpoint {text!r}" in message
        assert reason in message

    def test_systemdOutsideSystemd(self) -> None:
        """
        A C{systemd:} endpoint in a process not started by systemd socket
        activation is refused with a message that says what is missing.
        """
        for text in ["systemd:domain=INET:name=inbound", "systemd:domain=INET:index=0"]:
            with pytest.raises(ValueError) as info:
                checkEndpoint(text)
            message = str(info.value)
            assert text in message
            assert "LISTEN_FDS" in message
            assert "socket activation" in message


class TestTcpPortOf:
    @pytest.mark.parametrize(
        "description, expected",
        [
            ("tcp:8083", ("127.0.0.1", 8083)),
            ("tcp:8083:interface=0.0.0.0", ("127.0.0.1", 8083)),
            ("tcp:8083:interface=10.1.2.3", ("10.1.2.3", 8083)),
            ("tcp:port=8083:interface=10.1.2.3", ("10.1.2.3", 8083)),
            ("tcp:interface=10.1.2.3:port=8083", ("10.1.2.3", 8083)),
            ("tcp6:8083", ("::1", 8083)),
            ("unix:/tmp/x", None),
            ("systemd:domain=INET:index=0", None),
            ("tcp:interface=10.1.2.3", None),
        ],
    )
    def test_tcpPortOf(self, description: str, expected: Any) -> None:
        assert tcpPortOf(description) == expected

    @pytest.mark.parametrize(
        "description", [r"tcp6:8083:interface=\:\:1", r"tcp6:8083:interface=\:\:"]
    )
    def test_ipv6Interface(self, description: str) -> None:
        checkEndpoint(description)
        assert tcpPortOf(description) == ("::1", 8083)


class TestUpstreamURL:
    @pytest.mark.parametrize(
        "text, scheme, host, port, normal",
        [
            ("http://app", "http", "app", 80, "http://app"),
            ("http://app/", "http", "app", 80, "http://app"),
            ("https://app:443", "https", "app", 443, "https://app"),
            ("http://app:8080", "http", "app", 8080, "http://app:8080"),
            ("HTTP://App.Example:80/", "http", "app.example", 80, "http://app.example"),
            ("http://[::1]:8080", "http", "::1", 8080, "http://[::1]:8080"),
        ],
    )
    def test_parse(self, text: str, scheme: str, host: str, port: int, normal: str) -> None:
        url = UpstreamURL.parse(text)
        assert (url.scheme, url.host, url.port) == (scheme, host, port)
        assert str(url) == normal
        assert checkURL(text) == normal

    @pytest.mark.parametrize(
        "text, reason",
        [
            ("http://app/api", "give only scheme, host and port"),
            ("http://app?x=1", "give only scheme, host and port"),
            ("http://app#frag", "give only scheme, host and port"),
            ("ftp://app", "the scheme must be one of http, https"),
            ("app:8080", "the scheme must be one of http, https"),
            ("http://user:secret@app", "credentials are not allowed"),
            ("http://user@app", "credentials are not allowed"),
            ("http://", "no host"),
            ("http://app:99999", "invalid URL"),
        ],
    )
    def test_refused(self, text: str, reason: str) -> None:
        with pytest.raises(ValueError) as info:
            UpstreamURL.parse(text)
        assert f"invalid URL {text!r}" in str(info.value)
        assert reason in str(info.value)


def test_checkFilterSpec() -> None:
    assert checkFilterSpec("ratelimit") == "ratelimit"
    assert checkFilterSpec("acme.add-header_2:a=b,c=d") == "acme.add-header_2:a=b,c=d"
    for bad in ["", ":args", "bad name", "bad/name:x"]:
        with pytest.raises(ValueError, match="expected NAME\\[:ARGS\\]"):
            checkFilterSpec(bad)


# Settings table


def test_settingsMatchModel() -> None:
    """
    Every setting is an attribute of L{SidecarConfig}, and every attribute but
    the file's mesh sections is a setting; concrete defaults shown in help
    are the model's defaults.
    """
    fields = {f.name for f in attrs.fields(SidecarConfig)} - {"meshFile"}
    assert {s.attribute for s in SETTINGS} == fields
    defaults = SidecarConfig()
    for setting in SETTINGS:
        if setting.default is not None and not isinstance(setting.default, str):
            assert getattr(defaults, setting.attribute) == setting.default
    assert BY_NAME["outbound"].default == defaults.outbound
    assert set(BY_NAME) == {s.name for s in SETTINGS}


def test_buildConfig() -> None:
    config = buildConfig({"pool-size": 3, "connect-timeout": 1.5, "filter": ("a",)})
    assert config == SidecarConfig(pool_size=3, connect_timeout=1.5, filter=("a",))


def test_buildConfigErrorNamesSource() -> None:
    with pytest.raises(ConfigError) as info:
        buildConfig({"burst": 5}, "c.yaml")
    assert info.value.where == "c.yaml: burst"
    assert info.value.reason == "needs rate"
    assert str(info.value) == "c.yaml: burst: needs rate"


# Files


class TestParseConfigText:
    def test_everyKey(self) -> None:
        text = """\
# a full configuration
outbound: "9000"
inbound: tcp:9001
peer: http://peer.example:9001/
upstream: https://app.example
demo: tcp:7000:interface=127.0.0.1
timeout: 2.5
connect-timeout: 1
pool-size: 4
pool-idle: 3
rate: 10
burst: 20
max-wait: 0.5
max-queue: 7
filter: [ratelimit]
outbound-filter:
  - acme:x=1
inbound-filter: []
access-log: json
drain: 0
node-id: web-1
"""
        assert parseConfigText(text, "c.yaml") == {
            "outbound": "tcp:9000:interface=127.0.0.1",
            "inbound": "tcp:9001",
            "peer": "http://peer.example:9001",
            "upstream": "https://app.example",
            "demo": "tcp:7000:interface=127.0.0.1",
            "timeout": 2.5,
            "connect-timeout": 1.0,
            "pool-size": 4,
            "pool-idle": 3.0,
            "rate": 10.0,
            "burst": 20,
            "max-wait": 0.5,
            "max-queue": 7,
            "filter": ("ratelimit",),
            "outbound-filter": ("acme:x=1",),
            "inbound-filter": (),
            "access-log": "json",
            "drain": 0.0,
            "node-id": "web-1",
        }

    def test_empty(self) -> None:
        assert parseConfigText("", "c.yaml") == {}
        assert parseConfigText("# only a comment\n", "c.yaml") == {}

    def test_bareInboundPortQuoted(self) -> None:
        assert parseConfigText("inbound: '9000'\n", "c.yaml") == {"inbound": "tcp:9000"}

    def test_bareOutboundPortNumber(self) -> None:
        assert parseConfigText("outbound: 9000\ninbound: 9001\n", "c.yaml") == {
            "outbound": "tcp:9000:interface=127.0.0.1",
            "inbound": "tcp:9001",
        }

    def test_unknownKey(self) -> None:
        error = configError("timeout: 1\npool_sise: 5\n")
        assert error.where == "c.yaml:2"
        assert "unknown key 'pool_sise'" in error.reason
        assert "pool-size" in error.reason
        assert str(error).startswith("c.yaml:2: unknown key 'pool_sise'")

    def test_eitherSpelling(self) -> None:
        """
        Settings may be spelt with underscores, mesh keys with dashes.
        """
        values = parseConfigText("pool_size: 5\nmerge-slashes: true\n", "c.yaml")
        assert values["pool-size"] == 5
        assert values.lines["pool-size"] == 1
        assert values.mesh["paths"].mergeSlashes is True

    @pytest.mark.parametrize(
        "text, line, key, reason",
        [
            ('pool-size: "5"\n', 1, "pool-size", "must be an integer >= 1, not '5'"),
            ("\npool-size: true\n", 2, "pool-size", "must be an integer >= 1, not True"),
            ("pool-size: 2.5\n", 1, "pool-size", "must be an integer >= 1, not 2.5"),
            ("timeout: 0\n", 1, "timeout", "must be a number > 0, not 0"),
            ("timeout: -1\n", 1, "timeout", "must be a number > 0, not -1"),
            ("timeout: .inf\n", 1, "timeout", "must be a number > 0, not inf"),
            ("pool-size: 0\n", 1, "pool-size", "must be an integer >= 1, not 0"),
            ("max-wait: -0.5\n", 1, "max-wait", "must be a number >= 0"),
            ("access-log: yes\n", 1, "access-log", "must be one of off, text, json"),
            ("drain: null\n", 1, "drain", "must be a number >= 0, not None"),
            (
                "peer: [http://a]\n",
                1,
                "peer",
                "must be an http:// or https:// URL, not ['http://a']",
            ),
            ("node-id: {a: 1}\n", 1, "node-id", "must be a name of ASCII letters"),
            ("node-id: 'web 1'\n", 1, "node-id", "must be a name of ASCII letters"),
            ("filter: ratelimit\n", 1, "filter", "must be a list of NAME[:ARGS]"),
            ("filter: [ok, 'bad name']\n", 1, "filter", "item 1: invalid filter"),
            ("timeout: 1\ntimeout: 2\n", 2, "timeout", "is given twice"),
            ("timeout: !!python/object:os.system x\n", 1, "timeout", "constructor"),
            ("drain: 1\npool-size: 100000000000000000000000000000\n", 2, "pool-size",
             "must be at most 10,000"),
            ("max-head-size: 1e29\n", 1, "max-head-size", "must be"),
            ("max-headers: 5000\n", 1, "max-headers", "must be at most 1,000"),
        ],
    )
    def test_badValue(self, text: str, line: int, key: str, reason: str) -> None:
        error = configError(text)
        assert error.where == f"c.yaml:{line}"
        assert f"key {key!r}" in error.reason
        assert reason in error.reason

    def test_invalidSyntax(self) -> None:
        error = configError("timeout: 1\ndrain: 2\n  bad: indent\n")
        assert error.where == "c.yaml:3"
        assert error.reason.startswith("not valid YAML:")

    def test_invalidSyntaxUnclosed(self) -> None:
        error = configError("timeout: 1\npeer: 'unclosed\n")
        assert error.where.startswith("c.yaml:")
        assert "not valid YAML" in error.reason

    def test_notAMapping(self) -> None:
        error = configError("# comment\n- timeout\n- 1\n")
        assert error.where == "c.yaml:2"
        assert "must be a mapping" in error.reason

    @pytest.mark.parametrize(
        "url, reason",
        [
            ("http://app/path", "give only scheme, host and port"),
            ("http://app?q=1", "give only scheme, host and port"),
            ("ftp://app", "the scheme must be one of http, https"),
            ("http://u:p@app", "credentials are not allowed"),
        ],
    )
    @pytest.mark.parametrize("key", ["peer", "upstream"])
    def test_badURL(self, key: str, url: str, reason: str) -> None:
        error = configError(f"drain: 1\n{key}: {url}\n")
        assert error.where == "c.yaml:2"
        assert f"key {key!r}" in error.reason
        assert reason in error.reason

    @pytest.mark.parametrize("key", ["outbound", "inbound", "demo"])
    def test_badEndpoint(self, key: str) -> None:
        error = configError(f"{key}: tcp:notaport\n")
        assert error.where == "c.yaml:1"
        assert f"key {key!r}: invalid endpoint 'tcp:notaport'" in error.reason

    def test_systemdEndpoint(self) -> None:
        error = configError("inbound: systemd:domain=INET:name=inbound\n")
        assert error.where == "c.yaml:1"
        assert "key 'inbound'" in error.reason
        assert "LISTEN_FDS" in error.reason


class TestReadConfigFile:
    def test_read(self, tmp_path: Any) -> None:
        path = tmp_path / "sidecar.yaml"
        path.write_text("rate: 5\nfilter:\n  - ratelimit\n", encoding="utf-8")
        assert readConfigFile(str(path)) == {"rate": 5.0, "filter": ("ratelimit",)}

    def test_errorNamesFile(self, tmp_path: Any) -> None:
        path = tmp_path / "sidecar.yaml"
        path.write_text("rate: 5\n\nburst: '3'\n", encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            readConfigFile(str(path))
        assert info.value.where == f"{path}:3"
        assert "key 'burst'" in info.value.reason

    def test_missing(self, tmp_path: Any) -> None:
        path = str(tmp_path / "nope.yaml")
        with pytest.raises(ConfigError) as info:
            readConfigFile(path)
        assert info.value.where == path
        assert "cannot read the file" in info.value.reason

    def test_notUTF8(self, tmp_path: Any) -> None:
        path = tmp_path / "latin1.yaml"
        path.write_bytes(b"node-id: caf\xe9\n")
        with pytest.raises(ConfigError) as info:
            readConfigFile(str(path))
        assert info.value.where == str(path)
        assert "cannot read the file" in info.value.reason

    def test_burstWithoutRate(self, tmp_path: Any) -> None:
        """
        A combination refused by the model names the file and the key.
        """
        path = tmp_path / "sidecar.yaml"
        path.write_text("drain: 1\nburst: 3\n", encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            buildConfig(readConfigFile(str(path)), str(path))
        assert info.value.where == f"{path}:2"
        assert info.value.reason == "key 'burst': needs rate"

    def test_burstWithoutRateNamesLine(self, tmp_path: Any) -> None:
        path = tmp_path / "sidecar.yaml"
        path.write_text("drain: 1\nburst: 3\n", encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            buildConfig(readConfigFile(str(path)), str(path))
        assert info.value.where.startswith(f"{path}:2")


# Model


LOCAL_INBOUND = UpstreamURL("http", "127.0.0.1", 8083)
DEMO = UpstreamURL("http", "127.0.0.1", 6060)


class TestSidecarConfig:
    def test_defaultListeners(self) -> None:
        """
        With no settings, the outbound listener forwards to this sidecar's
        own inbound listener and the inbound listener to the demo app.
        """
        outbound, inbound = SidecarConfig().listeners()
        assert outbound == ListenerConfig(
            "outbound", "tcp:8082:interface=127.0.0.1", LOCAL_INBOUND, ()
        )
        assert inbound == ListenerConfig("inbound", "tcp:8083", DEMO, ())
        assert SidecarConfig().runsDemo

    @pytest.mark.parametrize(
        "inboundEndpoint, peer",
        [
            ("tcp:9001", UpstreamURL("http", "127.0.0.1", 9001)),
            ("tcp:9001:interface=0.0.0.0", UpstreamURL("http", "127.0.0.1", 9001)),
            ("tcp:9001:interface=10.0.0.5", UpstreamURL("http", "10.0.0.5", 9001)),
        ],
    )
    def test_defaultPeerIsOwnInbound(self, inboundEndpoint: str, peer: UpstreamURL) -> None:
        outbound, _ = SidecarConfig(inbound=inboundEndpoint).listeners()
        assert outbound.target == peer

    def test_defaultPeerIPv6(self) -> None:
        outbound, _ = SidecarConfig(inbound=r"tcp6:8083:interface=\:\:1").listeners()
        assert outbound.target == UpstreamURL("http", "::1", 8083)

    def test_explicitPeerAndUpstream(self) -> None:
        config = SidecarConfig(
            peer="https://peer.example:9443", upstream="http://127.0.0.1:5000"
        )
        outbound, inbound = config.listeners()
        assert outbound.target == UpstreamURL("https", "peer.example", 9443)
        assert inbound.target == UpstreamURL("http", "127.0.0.1", 5000)
        assert not config.runsDemo

    def test_nonTcpInboundNeedsPeer(self) -> None:
        with pytest.raises(ConfigError) as info:
            SidecarConfig(inbound="unix:/tmp/in.sock")
        assert info.value.where == "peer"
        assert "unix:/tmp/in.sock" in info.value.reason
        config = SidecarConfig(inbound="unix:/tmp/in.sock", peer="http://peer")
        assert config.listeners()[0].target == UpstreamURL("http", "peer", 80)

    def test_nonTcpDemoNeedsUpstream(self) -> None:
        with pytest.raises(ConfigError) as info:
            SidecarConfig(demo="unix:/tmp/demo.sock")
        assert info.value.where == "demo"
        SidecarConfig(demo="unix:/tmp/demo.sock", upstream="http://app")

    def test_burstNeedsRate(self) -> None:
        with pytest.raises(ConfigError) as info:
            SidecarConfig(burst=3)
        assert (info.value.where, info.value.reason) == ("burst", "needs rate")

    def test_rateLimitInboundOnlyAndFirst(self) -> None:
        config = SidecarConfig(
            rate=5,
            max_wait=0.25,
            max_queue=9,
            filter=("shared:a=1",),
            inbound_filter=("mine",),
            outbound_filter=("theirs:x",),
        )
        outbound, inbound = config.listeners()
        assert outbound.filters == (
            FilterSpec("shared", "a=1"),
            FilterSpec("theirs", "x"),
        )
        assert inbound.filters == (
            FilterSpec("ratelimit", "rate=5,burst=5,max_wait=0.25,max_queue=9"),
            FilterSpec("shared", "a=1"),
            FilterSpec("mine", ""),
        )

    def test_rateLimitDefaults(self) -> None:
        assert SidecarConfig().rateLimit is None
        assert SidecarConfig(rate=2.5).rateLimit == RateLimit(2.5, 3, 0.0, 1024)
        assert SidecarConfig(rate=0.2).rateLimit == RateLimit(0.2, 1, 0.0, 1024)
        assert SidecarConfig(rate=2, burst=7).rateLimit == RateLimit(2, 7, 0.0, 1024)

    def test_rateLimitArgsBuildTheConfiguredBucket(self) -> None:
        config = SidecarConfig(rate=2.5, burst=4, max_wait=1.5, max_queue=3)
        spec = config.listeners()[1].filters[0]
        bucket = _buildRateLimit(spec).bucket
        assert (bucket.rate, bucket.burst, bucket.maxWait, bucket.maxQueue) == (
            2.5,
            4,
            1.5,
            3,
        )

    @pytest.mark.parametrize("rate, maxWait", [(1234567.0, 0.0), (2.0, 0.1234567)])
    def test_rateLimitArgsKeepPrecision(self, rate: float, maxWait: float) -> None:
        spec = SidecarConfig(rate=rate, max_wait=maxWait).listeners()[1].filters[0]
        bucket = _buildRateLimit(spec).bucket
        assert (bucket.rate, bucket.maxWait) == (rate, maxWait)

    def test_filterOnBothListeners(self) -> None:
        outbound, inbound = SidecarConfig(filter=("a", "b:x=1")).listeners()
        expected = (FilterSpec("a", ""), FilterSpec("b", "x=1"))
        assert outbound.filters == expected
        assert inbound.filters == expected

    def test_filterSpecParse(self) -> None:
        assert FilterSpec.parse("acme") == FilterSpec("acme", "")
        assert FilterSpec.parse("acme:a=b:c") == FilterSpec("acme", "a=b:c")

    def test_pool(self) -> None:
        config = SidecarConfig(pool_size=3, pool_idle=2, connect_timeout=1, timeout=9)
        assert config.pool == PoolSettings(3, 2, 1, 9)

    def test_nodeId(self) -> None:
        assert SidecarConfig(node_id="web-1").nodeId == "web-1"
        default = SidecarConfig().nodeId
        assert default and "." not in default


def _buildRateLimit(spec: FilterSpec) -> Any:
    from easymesh.filters import ratelimit

    assert spec.name == "ratelimit"
    return ratelimit.build(spec.args, FilterContext("inbound", Clock()))
