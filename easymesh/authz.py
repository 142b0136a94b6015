# -*- test-case-name: tests.test_authz -*-
"""
Authorization of callers by their verified mTLS identity, per listener:
rules of allowed identities for request paths and methods, matched on the
normalised path (so no C{..}, C{//} or C{%2F} spelling reaches a path a
rule protects), first matching rule deciding, and a default for requests
no rule matches.

The request is forwarded byte-exact, and upstreams read paths in
different ways: some merge slashes (C{//admin} is C{/admin} to nginx),
some do not (C{/admin//..} is C{/admin/} to them).  So a request must be
allowed under every reading of its path: the one routes use (the path
options in force) and the fully normalised ones with and without slashes
merged.  C{//admin/x} is checked as C{/admin/x} even when
C{merge_slashes} is off for routing.

In the config file::

    authorization:
      inbound:
        default: deny                 # or allow (the default)
        rules:
          - match: {prefix: /admin/, methods: [POST]}
            identities: ["spiffe://example.org/ns/ops/sa/admin"]
          - match: {prefix: /}
            identities: ["spiffe://example.org/ns/prod/*"]
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import attrs
from twisted.logger import Logger

from easymesh.config.mesh import PathOptions, RouteMatch
from easymesh.config.model import DEFAULT_CLUSTERS
from easymesh.errors import ProxyError
from easymesh.message import ProxyRequest
from easymesh.routing.matcher import compileMatch, requestHost
from easymesh.routing.paths import normalisePath
from easymesh.tls.identity import IdentityPattern, parsePatterns

_log = Logger()


class Unauthorized(ProxyError):
    code = 403
    cause = "unauthorized"
    message = "the caller is not authorized for this request"


@attrs.frozen
class AuthorizationRule:
    """
    Callers with one of C{identities} (patterns) may make requests that
    C{match}; others may not.
    """

    match: RouteMatch
    identities: Tuple[str, ...]


@attrs.frozen
class AuthorizationPolicy:
    """
    A listener's rules, in order, and what happens when none matches.
    """

    rules: Tuple[AuthorizationRule, ...] = ()
    defaultAllow: bool = True


def readAuthorization(node: Any) -> Dict[str, AuthorizationPolicy]:
    """
    Read the C{authorization} section of a config file.

    @param node: Its L{easymesh.config.meshfile.Node}.
    @raise easymesh.config.model.ConfigError: It is refused; the message
        names the file, line and key.
    """
    from easymesh.config.meshfile import readMatch

    policies = {}
    for listener, policyNode in node.mapping(set(DEFAULT_CLUSTERS)).items():
        entries = policyNode.mapping({"default", "rules"})
        defaultAllow = True
        if "default" in entries:
            defaultAllow = entries["default"].choice(("allow", "deny")) == "allow"
        rules = []
        for ruleNode in entries["rules"].sequence() if "rules" in entries else ():
            fields = ruleNode.mapping({"match", "identities"})
            if "identities" not in fields:
                raise ruleNode.error("needs identities")
            identities = []
            for item in fields["identities"].sequence():
                identities.append(item.text(lambda text: IdentityPattern.parse(text)))
            match = readMatch(fields["match"]) if "match" in fields else RouteMatch(prefix="/")
            rules.append(AuthorizationRule(match, tuple(identities)))
        policies[listener] = AuthorizationPolicy(tuple(rules), defaultAllow)
    return policies


class Authorizer:
    """
    A listener's L{AuthorizationPolicy}, compiled.
    """

    def __init__(self, policy: AuthorizationPolicy, paths: PathOptions) -> None:
        self.policy = policy
        self._paths = paths
        # Every way an upstream may read the path: as routes do, and fully
        # normalised with and without slashes merged (see the module
        # docstring).
        self._readings = [paths]
        for merge in (False, True):
            reading = attrs.evolve(paths, normalize=True, mergeSlashes=merge)
            if reading not in self._readings:
                self._readings.append(reading)
        self._rules = [
            (compileMatch(rule.match), parsePatterns(rule.identities), rule)
            for rule in policy.rules
        ]

    def _readPaths(self, target: bytes) -> List[str]:
        """
        The distinct readings of C{target}'s path, the routing one first.

        @raise ProxyError: The path cannot be normalised.
        """
        paths: List[str] = []
        for options in self._readings:
            path = normalisePath(target, options)
            if path not in paths:
                paths.append(path)
        return paths

    def check(self, request: ProxyRequest) -> Optional[ProxyError]:
        """
        @return: L{None} if C{request} may proceed, else the error to
            answer with (403 C{unauthorized}, or 400 for a path that cannot
            be normalised).
        """
        try:
            paths = self._readPaths(request.target)
        except ProxyError as e:
            return e
        identity = request.peerIdentity
        uris: Tuple[str, ...] = ()
        names: Tuple[str, ...] = ()
        if identity is not None:
            if identity.startswith("spiffe://"):
                uris = (identity,)
            else:
                names = (identity,)
        host = requestHost(request.headers)
        for path in paths:
            refused = self._decide(request, path, host, uris, names)
            if refused is not None:
                return refused
        return None

    def _decide(
        self,
        request: ProxyRequest,
        path: str,
        host: str,
        uris: Tuple[str, ...],
        names: Tuple[str, ...],
    ) -> Optional[ProxyError]:
        """
        The first matching rule's decision on one reading of the path, or
        the default's.
        """
        identity = request.peerIdentity
        for predicate, patterns, rule in self._rules:
            if predicate(request.method, path, host, request.headers):
                if any(p.match(uris, names) is not None for p in patterns):
                    return None
                return self._deny(request, path, f"no rule allows {identity or 'an anonymous caller'}")
        if self.policy.defaultAllow:
            return None
        return self._deny(request, path, "no rule matches and the default is deny")

    def _deny(self, request: ProxyRequest, path: str, reason: str) -> Unauthorized:
        _log.info(
            "Denied {listener} {method} {path} from {identity}: {reason}",
            listener=request.listener,
            method=request.method.decode("latin-1"),
            path=path[:200],
            identity=request.peerIdentity or "an anonymous caller",
            reason=reason,
        )
        return Unauthorized(reason)
