"""
Tests for L{easymesh.authz}: the C{authorization} section of a config file
and the decisions of L{Authorizer} on the caller's identity, the method and
the normalised path.
"""

from __future__ import annotations

import textwrap
from typing import Any, Dict, Iterator, List, Optional

import pytest
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.http_headers import Headers

from easymesh.authz import AuthorizationPolicy, AuthorizationRule, Authorizer, Unauthorized
from easymesh.config.files import parseConfigText
from easymesh.config.mesh import MeshConfig, PathOptions, RouteMatch
from easymesh.config.model import ConfigError
from easymesh.config.settings import buildConfig
from easymesh.errors import BadRequest
from easymesh.message import ProxyRequest

WEB = "spiffe://example.org/ns/default/sa/web"
BILLING = "spiffe://example.org/ns/default/sa/billing"
ADMIN = "spiffe://example.org/ns/ops/sa/admin"
PROD_API = "spiffe://example.org/ns/prod/sa/api"


def values(text: str, name: str = "authz.yaml") -> Any:
    return parseConfigText(textwrap.dedent(text), name)


def policies(text: str) -> Dict[str, AuthorizationPolicy]:
    return values(text).mesh["authorization"]


def refused(text: str, name: str = "authz.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parseConfigText(textwrap.dedent(text), name)
    return str(info.value)


def authorizer(text: str, listener: str = "inbound") -> Authorizer:
    """
    The L{Authorizer} of C{listener} for a config file's text, with the
    file's path options.
    """
    mesh = MeshConfig(**values(text).mesh)
    return Authorizer(mesh.authorization[listener], mesh.paths)


def request(
    target: bytes,
    identity: Optional[str],
    method: bytes = b"GET",
    host: bytes = b"orders.internal",
    headers: Optional[Dict[bytes, List[bytes]]] = None,
) -> ProxyRequest:
    raw = Headers({b"host": [host]})
    for name, vals in (headers or {}).items():
        raw.setRawHeaders(name, vals)
    return ProxyRequest(
        method, target, raw, listener="inbound", scheme=b"https", peerIdentity=identity
    )


def allowed(auth: Authorizer, target: bytes, identity: Optional[str], **kw: Any) -> bool:
    """
    Whether C{auth} lets the request through; a refusal must be a 403
    C{unauthorized}.
    """
    error = auth.check(request(target, identity, **kw))
    if error is None:
        return True
    assert isinstance(error, Unauthorized), error
    reply = error.reply()
    assert reply.code == 403
    assert reply.headers.getRawHeaders(b"x-easymesh-error") == [b"unauthorized"]
    return False


class Log:
    def __init__(self) -> None:
        self.events: List[Dict[str, Any]] = []

    def __call__(self, event: Dict[str, Any]) -> None:
        self.events.append(event)

    def lines(self, text: str = "") -> List[str]:
        found = [formatEvent(e) for e in self.events if "log_format" in e]
        return [m for m in found if text in m]


@pytest.fixture
def log() -> Iterator[Log]:
    observer = Log()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)


ADMIN_ONLY = """\
authorization:
  inbound:
    rules:
      - match: {prefix: /admin}
        identities: ["spiffe://example.org/ns/ops/sa/admin"]
"""


# Reading the config file


class TestParsing:
    def test_everything(self) -> None:
        result = policies(
            """\
            authorization:
              inbound:
                default: deny
                rules:
                  - match: {prefix: /admin/, methods: [post, PUT]}
                    identities: ["spiffe://example.org/ns/ops/sa/admin"]
                  - match: {path: /healthz}
                    identities: ["*"]
                  - identities:
                      - "spiffe://example.org/ns/prod/*"
                      - api.example.org
              outbound:
                default: allow
            """
        )
        assert result == {
            "inbound": AuthorizationPolicy(
                (
                    AuthorizationRule(
                        RouteMatch(prefix="/admin/", methods=("POST", "PUT")), (ADMIN,)
                    ),
                    AuthorizationRule(RouteMatch(path="/healthz"), ("*",)),
                    AuthorizationRule(
                        RouteMatch(prefix="/"),
                        ("spiffe://example.org/ns/prod/*", "api.example.org"),
                    ),
                ),
                defaultAllow=False,
            ),
            "outbound": AuthorizationPolicy((), defaultAllow=True),
        }

    def test_defaults(self) -> None:
        """
        Without C{default} everything no rule matches is allowed; without
        C{rules} there are none; a listener not named has no policy.
        """
        assert policies("authorization:\n  inbound: {}\n") == {
            "inbound": AuthorizationPolicy((), True)
        }
        assert "authorization" not in values("node-id: web-1\n").mesh

    def test_beside_settings_and_routes(self) -> None:
        """
        The section sits beside settings and mesh keys, and reaches
        L{SidecarConfig.mesh}.
        """
        v = values(
            """\
            node-id: orders-1
            merge_slashes: true
            authorization:
              inbound:
                default: deny
            timeout: 3
            """
        )
        config = buildConfig(v, "authz.yaml")
        mesh = config.mesh()
        assert mesh.authorization == {"inbound": AuthorizationPolicy((), False)}
        assert mesh.paths.mergeSlashes is True
        assert config.node_id == "orders-1"

    @pytest.mark.parametrize(
        "text, where, reason",
        [
            (
                "authorization: []\n",
                "authz.yaml:1",
                "authorization: must be a mapping",
            ),
            (
                "authorization:\n",
                "authz.yaml:1",
                "authorization: must be a mapping",
            ),
            (
                "authorization:\n  sideways: {default: deny}\n",
                "authz.yaml:2",
                "authorization: unknown key 'sideways' (known keys: inbound, outbound)",
            ),
            (
                "authorization:\n  inbound:\n    default: maybe\n",
                "authz.yaml:3",
                "authorization.inbound.default: must be one of allow, deny, not 'maybe'",
            ),
            (
                "authorization:\n  inbound:\n    defaults: deny\n",
                "authz.yaml:3",
                "authorization.inbound: unknown key 'defaults'",
            ),
            (
                "authorization:\n  inbound: {default: deny}\n  inbound: {default: allow}\n",
                "authz.yaml:3",
                "key 'inbound' is given twice",
            ),
            (
                "authorization:\n  inbound:\n    rules: {prefix: /}\n",
                "authz.yaml:3",
                "authorization.inbound.rules: must be a list",
            ),
            (
                "authorization:\n"
                "  inbound:\n"
                "    rules:\n"
                "      - match: {prefix: /a}\n"
                "        identities: ['*']\n"
                "      - match: {prefix: /admin}\n",
                "authz.yaml:6",
                "authorization.inbound.rules.1: needs identities",
            ),
            (
                "authorization:\n  inbound:\n    rules:\n      - identity: ['*']\n",
                "authz.yaml:4",
                "authorization.inbound.rules.0: unknown key 'identity'",
            ),
            (
                "authorization:\n  inbound:\n    rules:\n      - identities: '*'\n",
                "authz.yaml:4",
                "authorization.inbound.rules.0.identities: must be a list",
            ),
            (
                "authorization:\n"
                "  inbound:\n"
                "    rules:\n"
                "      - identities:\n"
                "          - spiffe://example.org/ns/default/sa/web\n"
                "          - spiffe://example.org/ns/*/sa/web\n",
                "authz.yaml:6",
                "authorization.inbound.rules.0.identities.1: invalid identity pattern "
                "'spiffe://example.org/ns/*/sa/web'",
            ),
            (
                "authorization:\n  inbound:\n    rules:\n      - identities: [https://example.org/]\n",
                "authz.yaml:4",
                "URIs other than spiffe:// are not identities",
            ),
            (
                "authorization:\n  inbound:\n    rules:\n      - identities: [10.0.0.1]\n",
                "authz.yaml:4",
                "IP addresses are not identities",
            ),
            (
                "authorization:\n  inbound:\n    rules:\n      - identities: ['*.example.org']\n",
                "authz.yaml:4",
                "wildcard DNS certificates match plain names",
            ),
            (
                "authorization:\n  inbound:\n    rules:\n      - identities: [3]\n",
                "authz.yaml:4",
                "authorization.inbound.rules.0.identities.0: must be text, not 3",
            ),
            (
                "authorization:\n"
                "  inbound:\n"
                "    rules:\n"
                "      - match: {prefix: admin}\n"
                "        identities: ['*']\n",
                "authz.yaml:4",
                "authorization.inbound.rules.0.match.prefix: must start with /",
            ),
            (
                "authorization:\n"
                "  inbound:\n"
                "    rules:\n"
                "      - match: {prefx: /admin}\n"
                "        identities: ['*']\n",
                "authz.yaml:4",
                "authorization.inbound.rules.0.match: unknown key 'prefx'",
            ),
            (
                "authorization:\n"
                "  inbound:\n"
                "    rules:\n"
                "      - match: {prefix: /a, path: /a}\n"
                "        identities: ['*']\n",
                "authz.yaml:4",
                "must have at most one of prefix, path, regex",
            ),
            (
                "authorization:\n"
                "  inbound:\n"
                "    rules:\n"
                "      - match: {prefix: /a, methods: ['GET', 'NOT A METHOD']}\n"
                "        identities: ['*']\n",
                "authz.yaml:4",
                "authorization.inbound.rules.0.match.methods.1",
            ),
        ],
    )
    def test_refused(self, text: str, where: str, reason: str) -> None:
        """
        A bad section is refused with the file, the line and the key path.
        """
        message = refused(text)
        assert message.startswith(where + ": "), message
        assert reason in message

    def test_given_twice(self) -> None:
        message = refused(
            """\
            authorization:
              inbound: {default: deny}
            authorization:
              inbound: {default: allow}
            """
        )
        assert message.startswith("authz.yaml:3: ")
        assert "given twice" in message


# Decisions


class TestDecisions:
    def test_first_matching_rule_decides(self) -> None:
        """
        Rules are tried in order and the first whose match holds decides:
        a later rule that would allow the caller does not.
        """
        auth = authorizer(
            """\
            authorization:
              inbound:
                default: allow
                rules:
                  - match: {prefix: /admin}
                    identities: ["spiffe://example.org/ns/ops/sa/admin"]
                  - match: {prefix: /}
                    identities: ["spiffe://example.org/ns/default/sa/web"]
            """
        )
        assert allowed(auth, b"/admin/users", ADMIN)
        assert not allowed(auth, b"/admin/users", WEB)
        assert allowed(auth, b"/orders", WEB)
        # The second rule matches /orders; the default is never reached.
        assert not allowed(auth, b"/orders", ADMIN)

    def test_order_reversed(self) -> None:
        """
        With the catch-all first, the admin rule is never reached.
        """
        auth = authorizer(
            """\
            authorization:
              inbound:
                rules:
                  - match: {prefix: /}
                    identities: ["spiffe://example.org/ns/default/sa/web"]
                  - match: {prefix: /admin}
                    identities: ["spiffe://example.org/ns/ops/sa/admin"]
            """
        )
        assert allowed(auth, b"/admin/users", WEB)
        assert not allowed(auth, b"/admin/users", ADMIN)

    def test_methods(self) -> None:
        """
        A rule with methods applies to those only; other methods fall
        through to the next rule or the default.
        """
        auth = authorizer(
            """\
            authorization:
              inbound:
                default: allow
                rules:
                  - match: {prefix: /orders, methods: [POST, DELETE]}
                    identities: ["spiffe://example.org/ns/default/sa/web"]
            """
        )
        assert allowed(auth, b"/orders", WEB, method=b"POST")
        assert not allowed(auth, b"/orders", BILLING, method=b"POST")
        assert not allowed(auth, b"/orders/7", BILLING, method=b"DELETE")
        assert allowed(auth, b"/orders", BILLING, method=b"GET")
        assert allowed(auth, b"/orders", None, method=b"HEAD")

    @pytest.mark.parametrize("default, expected", [("allow", True), ("deny", False)])
    def test_default(self, default: str, expected: bool) -> None:
        auth = authorizer(
            f"""\
            authorization:
              inbound:
                default: {default}
                rules:
                  - match: {{path: /healthz}}
                    identities: ["*"]
            """
        )
        assert allowed(auth, b"/healthz", WEB)
        assert allowed(auth, b"/other", WEB) is expected
        assert allowed(auth, b"/other", None) is expected

    def test_no_rules(self) -> None:
        assert allowed(authorizer("authorization:\n  inbound: {}\n"), b"/x", None)
        deny = authorizer("authorization:\n  inbound: {default: deny}\n")
        assert not allowed(deny, b"/x", WEB)
        assert not allowed(deny, b"/", ADMIN)

    def test_anonymous(self) -> None:
        """
        A caller without an identity (a listener without mTLS) is matched
        by no pattern, C{*} included.
        """
        auth = authorizer(
            """\
            authorization:
              inbound:
                rules:
                  - match: {prefix: /}
                    identities: ["*"]
            """
        )
        assert allowed(auth, b"/", WEB)
        assert not allowed(auth, b"/", None)

    def test_empty_identities_deny_everyone(self) -> None:
        auth = authorizer(
            """\
            authorization:
              inbound:
                rules:
                  - match: {prefix: /internal}
                    identities: []
            """
        )
        assert not allowed(auth, b"/internal/x", ADMIN)
        assert allowed(auth, b"/public", ADMIN)

    def test_patterns(self) -> None:
        """
        Identities are matched as exact SPIFFE IDs, SPIFFE prefixes by
        whole segments, C{*}, and DNS names.
        """
        auth = authorizer(
            """\
            authorization:
              inbound:
                default: deny
                rules:
                  - match: {prefix: /exact}
                    identities: ["spiffe://example.org/ns/default/sa/web"]
                  - match: {prefix: /prod}
                    identities: ["spiffe://example.org/ns/prod/*"]
                  - match: {prefix: /any}
                    identities: ["*"]
                  - match: {prefix: /dns}
                    identities: [api.example.org]
            """
        )
        assert allowed(auth, b"/exact", WEB)
        assert not allowed(auth, b"/exact", WEB + "/more")
        assert not allowed(auth, b"/exact", "spiffe://other.org/ns/default/sa/web")
        assert allowed(auth, b"/prod", PROD_API)
        assert not allowed(auth, b"/prod", "spiffe://example.org/ns/prod")
        assert not allowed(auth, b"/prod", "spiffe://example.org/ns/production/sa/api")
        assert not allowed(auth, b"/prod", "spiffe://example.com/ns/prod/sa/api")
        assert allowed(auth, b"/any", WEB)
        assert allowed(auth, b"/any", "api.example.org")
        assert allowed(auth, b"/dns", "api.example.org")
        assert allowed(auth, b"/dns", "API.example.org")
        assert not allowed(auth, b"/dns", "web.example.org")
        assert not allowed(auth, b"/dns", "spiffe://example.org/api.example.org")

    def test_host_and_headers(self) -> None:
        """
        A rule's match may name the host and headers, as a route's may.
        """
        auth = authorizer(
            """\
            authorization:
              inbound:
                rules:
                  - match:
                      prefix: /
                      host: admin.example.org
                    identities: ["spiffe://example.org/ns/ops/sa/admin"]
                  - match:
                      prefix: /
                      headers: {x-debug: {present: true}}
                    identities: ["spiffe://example.org/ns/ops/sa/admin"]
            """
        )
        assert not allowed(auth, b"/", WEB, host=b"admin.example.org:8443")
        assert allowed(auth, b"/", ADMIN, host=b"ADMIN.example.org")
        assert allowed(auth, b"/", WEB, host=b"orders.example.org")
        assert not allowed(auth, b"/", WEB, headers={b"x-debug": [b"1"]})

    def test_outbound_policy(self) -> None:
        """
        A policy for the outbound listener applies there: its callers are
        local and have no identity.
        """
        auth = authorizer(
            """\
            authorization:
              outbound:
                rules:
                  - match: {prefix: /admin}
                    identities: ["*"]
            """,
            "outbound",
        )
        assert not allowed(auth, b"/admin", None)
        assert allowed(auth, b"/", None)

    def test_denial_logged(self, log: Log) -> None:
        """
        A denial is logged with the listener, method, normalised path,
        identity and reason; an allowed request is not logged.
        """
        auth = authorizer(ADMIN_ONLY)
        assert allowed(auth, b"/admin", ADMIN)
        assert log.lines("Denied") == []
        assert not allowed(auth, b"/public/../admin/x?token=1", WEB, method=b"POST")
        assert not allowed(auth, b"/admin", None)
        assert log.lines("Denied") == [
            f"Denied inbound POST /admin/x from {WEB}: no rule allows {WEB}",
            "Denied inbound GET /admin from an anonymous caller: "
            "no rule allows an anonymous caller",
        ]
        deny = authorizer("authorization:\n  inbound: {default: deny}\n")
        assert not allowed(deny, b"/x", WEB)
        assert log.lines("Denied")[-1] == (
            f"Denied inbound GET /x from {WEB}: no rule matches and the default is deny"
        )

    def test_denial_bursts_counted(self, log: Log) -> None:
        """
        The same caller denied again for the same reason within ten seconds
        is counted rather than logged, so that a client retrying a denied
        request does not flood the log; the count comes with the next line.
        """
        auth = authorizer(ADMIN_ONLY)
        now = [1000.0]
        auth.clock = lambda: now[0]
        for _ in range(100):
            assert not allowed(auth, b"/admin", WEB)
        assert not allowed(auth, b"/admin", BILLING)
        assert len(log.lines("Denied")) == 2
        now[0] += 9.5
        assert not allowed(auth, b"/admin/y", WEB)
        assert len(log.lines("Denied")) == 2
        now[0] += 1
        assert not allowed(auth, b"/admin/z", WEB, method=b"POST")
        assert log.lines("Denied")[-1] == (
            f"Denied inbound POST /admin/z from {WEB}: no rule allows {WEB}"
        )
        assert log.lines("more") == [
            f"Denied 100 more request(s) from {WEB} in the last 10s: no rule allows {WEB}"
        ]

    def test_policy_object(self) -> None:
        """
        An L{Authorizer} can be built from policy objects directly, with
        patterns given as text.
        """
        policy = AuthorizationPolicy(
            (AuthorizationRule(RouteMatch(prefix="/a"), ("spiffe://example.org/ns/ops/*",)),),
            defaultAllow=False,
        )
        auth = Authorizer(policy, PathOptions())
        assert auth.policy is policy
        assert allowed(auth, b"/a/b", ADMIN)
        assert not allowed(auth, b"/a/b", WEB)
        assert not allowed(auth, b"/b", ADMIN)


# The normalised path: spellings of a protected path


PROTECTED = [
    b"/admin",
    b"/admin/",
    b"/admin/users",
    b"/admin?from=/public",
    b"/%61dmin/users",
    b"/%61%64%6D%69%6E",
    b"/public/../admin",
    b"/public/%2E%2E/admin",
    b"/public/%2e./admin/users",
    b"/./admin",
    b"/../../admin",
    b"//admin",
    b"///admin/users",
    b"/public//../admin",
    b"/x/..//admin",
    b"//admin//users",
    b"/admin//..",
    b"/admin#/public",
]


class TestBypassAttempts:
    @pytest.mark.parametrize("target", PROTECTED)
    def test_protected_spellings_denied(self, target: bytes) -> None:
        """
        Every spelling of a path under C{/admin} that a server may read as
        one is under the rule, with the default path options.
        """
        auth = authorizer(ADMIN_ONLY)
        assert not allowed(auth, target, WEB)
        assert allowed(auth, target, ADMIN)

    @pytest.mark.parametrize(
        "target",
        [b"/admin%2Fusers", b"/%2Fadmin", b"/public/..%2Fadmin", b"/admin%5Cx", b"/public\\..\\admin",
         b"/admin%00", b"/adm%ZZin", b"*", b"http://orders/admin"],
    )
    def test_unreadable_paths_refused(self, target: bytes) -> None:
        """
        Escaped slashes and backslashes (refused by default), control
        characters, bad escapes and targets that are not paths are a 400
        for everyone, the admin included: never let through.
        """
        auth = authorizer(ADMIN_ONLY)
        for identity in (WEB, ADMIN):
            error = auth.check(request(target, identity))
            assert isinstance(error, BadRequest), (target, error)
            assert error.reply().code == 400

    def test_unescaped_slashes(self) -> None:
        """
        With C{path_with_escaped_slashes: unescape}, C{%2F} and C{%5C} are
        separators, and a protected path spelt with them is still denied.
        """
        auth = authorizer("path_with_escaped_slashes: unescape\n" + ADMIN_ONLY)
        for target in (b"/admin%2Fusers", b"/public%2F..%2Fadmin", b"/public%5C..%5Cadmin",
                       b"/%2Fadmin"):
            assert not allowed(auth, target, WEB), target
            assert allowed(auth, target, ADMIN), target

    def test_kept_escaped_slashes(self) -> None:
        """
        With C{keep}, C{%2F} is data: C{/public%2F..%2Fadmin} is one
        segment and not under C{/admin}, but a real separator still is.
        """
        auth = authorizer("path_with_escaped_slashes: keep\n" + ADMIN_ONLY)
        assert allowed(auth, b"/public%2F..%2Fadmin", WEB)
        assert not allowed(auth, b"/admin%2Fusers", WEB)
        assert not allowed(auth, b"/public/../admin", WEB)

    @pytest.mark.parametrize("options", ["merge_slashes: true\n", "normalize_path: false\n"])
    def test_other_path_options(self, options: str) -> None:
        """
        Whatever the routing path options, dot-segments and doubled
        slashes do not reach a protected path.
        """
        auth = authorizer(options + ADMIN_ONLY)
        for target in PROTECTED:
            assert not allowed(auth, target, WEB), target

    def test_other_paths_not_caught(self) -> None:
        """
        Paths that no reading puts under C{/admin} are not denied: the
        extra readings do not make the rule wider than that.
        """
        auth = authorizer(ADMIN_ONLY)
        for target in (b"/", b"/public", b"/public//admin", b"/public/admin", b"/a/admin",
                       b"/public/..admin", b"/%2E%2Eadmin"):
            assert allowed(auth, target, WEB), target

    def test_prefix_is_textual(self) -> None:
        """
        A prefix is matched as text, as for routes: C{/admin} covers
        C{/administrator}; C{/admin/} covers C{/admin} (which apps that
        ignore a trailing slash serve alike) but not C{/administrator}.
        """
        assert not allowed(authorizer(ADMIN_ONLY), b"/administrator", WEB)
        slash = authorizer(ADMIN_ONLY.replace("/admin}", "/admin/}"))
        assert not allowed(slash, b"/admin", WEB)
        assert not allowed(slash, b"/admin/x", WEB)
        assert allowed(slash, b"/administrator", WEB)


# Letter case and a trailing slash, as Express, ASP.NET and IIS read paths

EXPRESS_RULES = """\
authorization:
  inbound:
    rules:
      - match: {prefix: /admin}
        identities: ["spiffe://example.org/ns/ops/sa/admin"]
      - match: {prefix: /orders, methods: [POST, DELETE]}
        identities: ["spiffe://example.org/ns/ops/sa/admin"]
      - match: {path: /internal/reindex}
        identities: []
      - match: {regex: "/reports/[0-9]+"}
        identities: ["spiffe://example.org/ns/ops/sa/admin"]
"""


class TestCaseAndTrailingSlash:
    @pytest.mark.parametrize(
        "method, target",
        [
            (b"GET", b"/ADMIN/users"),
            (b"GET", b"/Admin/users/"),
            (b"GET", b"/aDmIn"),
            (b"POST", b"/internal/reindex/"),
            (b"POST", b"/Internal/Reindex"),
            (b"POST", b"/INTERNAL/REINDEX/"),
            (b"POST", b"/Orders/1"),
            (b"GET", b"/reports/12/"),
            (b"GET", b"/REPORTS/12"),
        ],
    )
    def test_denied_whatever_the_spelling(self, method: bytes, target: bytes) -> None:
        """
        A path an app reads as a protected one, ignoring letter case or a
        trailing slash, is denied as the protected path is.
        """
        assert not allowed(authorizer(EXPRESS_RULES), target, WEB, method=method)

    @pytest.mark.parametrize(
        "target", [b"/ADMIN/users", b"/admin/users/", b"/reports/12/", b"/Reports/12"]
    )
    def test_allowed_caller_still_allowed(self, target: bytes) -> None:
        """
        The caller a rule allows is allowed on every spelling it covers.
        """
        assert allowed(authorizer(EXPRESS_RULES), target, ADMIN)

    def test_other_paths_unaffected(self) -> None:
        for target in (b"/public", b"/internal/reindexer", b"/reports/x", b"/", b"/Public/"):
            assert allowed(authorizer(EXPRESS_RULES), target, WEB), target

    def test_exact_allow_rule_under_default_deny(self) -> None:
        """
        Under C{default: deny}, an exact rule still allows its own path,
        with or without a trailing slash: the extra spellings make no
        legitimate request fall to the default.
        """
        auth = authorizer(
            """\
            authorization:
              inbound:
                default: deny
                rules:
                  - match: {path: /healthz}
                    identities: ["*"]
            """
        )
        assert allowed(auth, b"/healthz", WEB)
        assert allowed(auth, b"/healthz/", WEB)
        assert not allowed(auth, b"/healthzz", WEB)

    def test_ignore_case_false(self) -> None:
        """
        C{ignore_case: false} keeps a rule case-sensitive, for apps that
        read paths so.
        """
        auth = authorizer(
            """\
            authorization:
              inbound:
                rules:
                  - match: {prefix: /admin}
                    identities: ["spiffe://example.org/ns/ops/sa/admin"]
                    ignore_case: false
                  - match: {regex: "/secret/[a-z]+"}
                    identities: []
                    ignore_case: false
            """
        )
        assert not allowed(auth, b"/admin/x", WEB)
        assert allowed(auth, b"/ADMIN/x", WEB)
        assert not allowed(auth, b"/secret/abc", WEB)
        assert not allowed(auth, b"/secret/abc/", WEB)
        assert allowed(auth, b"/Secret/abc", WEB)

    def test_ignore_case_must_be_a_flag(self) -> None:
        message = refused(
            """\
            authorization:
              inbound:
                rules:
                  - match: {prefix: /admin}
                    identities: []
                    ignore_case: sometimes
            """
        )
        assert "authz.yaml:6: authorization.inbound.rules.0.ignore_case" in message

    def test_rule_built_in_code(self) -> None:
        policy = AuthorizationPolicy(
            (AuthorizationRule(RouteMatch(path="/internal/reindex"), ()),)
        )
        auth = Authorizer(policy, PathOptions())
        assert not allowed(auth, b"/INTERNAL/reindex/", WEB)
        strict = Authorizer(
            AuthorizationPolicy(
                (AuthorizationRule(RouteMatch(path="/internal/reindex"), (), ignoreCase=False),)
            ),
            PathOptions(),
        )
        assert allowed(strict, b"/INTERNAL/reindex", WEB)
        assert not allowed(strict, b"/internal/reindex/", WEB)


# Other readings of the method and the host


class TestOtherReadings:
    def test_lower_case_method(self) -> None:
        """
        Methods are case-sensitive, but some apps read them upper-cased
        (Django, Werkzeug): a rule on C{POST} holds for C{post} too.
        """
        auth = authorizer(
            """\
            authorization:
              inbound:
                default: allow
                rules:
                  - match: {prefix: /orders, methods: [POST]}
                    identities: ["spiffe://example.org/ns/default/sa/web"]
            """
        )
        for method in (b"post", b"Post", b"pOST"):
            assert not allowed(auth, b"/orders", BILLING, method=method), method
            assert allowed(auth, b"/orders", WEB, method=method), method
        assert allowed(auth, b"/orders", BILLING, method=b"get")

    def test_lower_case_method_default_deny(self) -> None:
        """
        A rule that allows C{GET} only still refuses C{get} to others, and
        the default still applies to methods no rule names.
        """
        auth = authorizer(
            """\
            authorization:
              inbound:
                default: deny
                rules:
                  - match: {prefix: /, methods: [GET]}
                    identities: ["*"]
            """
        )
        assert allowed(auth, b"/x", WEB, method=b"GET")
        assert not allowed(auth, b"/x", None, method=b"get")
        assert not allowed(auth, b"/x", WEB, method=b"post")

    def test_head_is_read_as_get(self) -> None:
        """
        Apps answer C{HEAD} by running what answers C{GET}: a rule on
        C{GET} holds for C{HEAD} too, but not the other way round.
        """
        auth = authorizer(
            """            authorization:
              inbound:
                default: allow
                rules:
                  - match: {prefix: /export, methods: [GET]}
                    identities: ["spiffe://example.org/ns/ops/sa/admin"]
                  - match: {prefix: /peek, methods: [HEAD]}
                    identities: ["spiffe://example.org/ns/ops/sa/admin"]
            """
        )
        for method in (b"HEAD", b"head"):
            assert not allowed(auth, b"/export", WEB, method=method), method
            assert allowed(auth, b"/export", ADMIN, method=method), method
        assert allowed(auth, b"/peek", WEB, method=b"GET")

    @pytest.mark.parametrize(
        "target",
        [b"/public/..;/admin", b"/public/..;x=1/admin/users", b"/public/%2E%2E;/admin",
         b"/admin;jsessionid=1/users", b"/;x/admin", b"/public;/../admin"],
    )
    def test_path_parameters(self, target: bytes) -> None:
        """
        Servlet containers drop C{;parameters} from each segment before
        they resolve dot-segments (C{/public/..;/admin} is C{/admin} to
        Tomcat): a rule holds for the path read that way too.
        """
        auth = authorizer(ADMIN_ONLY)
        assert not allowed(auth, target, WEB), target
        assert allowed(auth, target, ADMIN), target
        slash = authorizer(ADMIN_ONLY.replace("/admin}", "/admin/}"))
        assert not allowed(slash, b"/admin;x/users", WEB)

    def test_path_parameters_elsewhere_not_caught(self) -> None:
        auth = authorizer(ADMIN_ONLY)
        for target in (b"/public;x=1", b"/public/a;b/c", b"/x?;/../admin", b"/x?a=..;/admin"):
            assert allowed(auth, target, WEB), target

    @pytest.mark.parametrize(
        "host",
        [b"admin.example.org.", b"admin.example.org.:8443", b"ADMIN.example.org.",
         b"x.admin.example.org."],
    )
    def test_host_with_trailing_dot(self, host: bytes) -> None:
        """
        A fully qualified host name (with its trailing dot) names the same
        host to most servers: a rule on the host holds for it too.
        """
        auth = authorizer(
            """\
            authorization:
              inbound:
                rules:
                  - match: {prefix: /, host: admin.example.org}
                    identities: ["spiffe://example.org/ns/ops/sa/admin"]
                  - match: {prefix: /, host: "*.admin.example.org"}
                    identities: ["spiffe://example.org/ns/ops/sa/admin"]
            """
        )
        assert not allowed(auth, b"/", WEB, host=host)
        assert allowed(auth, b"/", ADMIN, host=host)
        assert allowed(auth, b"/", WEB, host=b"orders.example.org.")
