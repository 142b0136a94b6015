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
C{merge_slashes} is off for routing.  A path with C{;} is also read as
servlet containers read it, each segment without its parameters
(C{/public/..;/admin} is C{/admin} to Tomcat).  Likewise for the method,
which some apps upper-case (C{post} is C{POST} to them) and answer
C{HEAD} as C{GET}, and the host, whose trailing dot most servers ignore
(C{admin.example.org.} is C{admin.example.org}).  A rule's path is matched
as most app frameworks read paths: whatever its letter case (unless the
rule says C{ignore_case: false}) and with or without a trailing slash.

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

import re
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs
from twisted.logger import Logger

from easymesh.config.mesh import PathOptions, RouteMatch
from easymesh.config.model import DEFAULT_CLUSTERS
# Unauthorized is defined with the other errors, and importable from here.
from easymesh.errors import ProxyError, Unauthorized
from easymesh.message import ProxyRequest
from easymesh.patterns import compilePattern
from easymesh.routing.matcher import compileMatch, requestHost
from easymesh.routing.paths import normalisePath
from easymesh.tls.identity import IdentityPattern, parsePatterns

_log = Logger()


#: Seconds during which the same denial (listener, caller, reason) is
#: counted rather than logged again.
QUIET = 10.0
#: Most denials whose bursts are counted at once.
MAX_BURSTS = 1024

#: The parameters of a path's segments (C{;jsessionid=...}).
_PARAMETERS = re.compile(rb";[^/]*")


@attrs.frozen
class AuthorizationRule:
    """
    Callers with one of C{identities} (patterns) may make requests that
    C{match}; others may not.

    @ivar ignoreCase: Whether the rule's path matches whatever the letter
        case of the request's path (as case-insensitive apps read it).
    """

    match: RouteMatch
    identities: Tuple[str, ...]
    ignoreCase: bool = True


@attrs.frozen
class AuthorizationPolicy:
    """
    A listener's rules, in order, and what happens when none matches.
    """

    rules: Tuple[AuthorizationRule, ...] = ()
    defaultAllow: bool = True


#: The keys each part of the C{authorization} section accepts, by where it
#: is in a file (a rule's C{match} takes a route's match keys).
AUTHORIZATION_SECTIONS = {
    "authorization": frozenset(DEFAULT_CLUSTERS),
    "authorization.LISTENER": frozenset(("default", "rules")),
    "authorization.LISTENER.rules[]": frozenset(("match", "identities", "ignore_case")),
}


def readAuthorization(node: Any, listeners: Any = None) -> Dict[str, AuthorizationPolicy]:
    """
    Read the C{authorization} section of a config file.

    @param node: Its L{easymesh.config.meshfile.Node}.
    @param listeners: The names of the HTTP listeners (the flags' two
        unless the file adds some).
    @raise easymesh.config.model.ConfigError: It is refused; the message
        names the file, line and key.
    """
    from easymesh.config.meshfile import readMatch

    policies = {}
    names = frozenset(listeners) if listeners is not None else AUTHORIZATION_SECTIONS["authorization"]
    for listener, policyNode in node.mapping(names).items():
        entries = policyNode.mapping(AUTHORIZATION_SECTIONS["authorization.LISTENER"])
        defaultAllow = True
        if "default" in entries:
            defaultAllow = entries["default"].choice(("allow", "deny")) == "allow"
        rules = []
        for ruleNode in entries["rules"].sequence() if "rules" in entries else ():
            fields = ruleNode.mapping(AUTHORIZATION_SECTIONS["authorization.LISTENER.rules[]"])
            if "identities" not in fields:
                raise ruleNode.error("needs identities")
            identities = []
            for item in fields["identities"].sequence():
                identities.append(item.text(lambda text: IdentityPattern.parse(text)))
            match = readMatch(fields["match"]) if "match" in fields else RouteMatch(prefix="/")
            ignoreCase = fields["ignore_case"].flag() if "ignore_case" in fields else True
            rules.append(AuthorizationRule(match, tuple(identities), ignoreCase))
        policies[listener] = AuthorizationPolicy(tuple(rules), defaultAllow)
    return policies


def _withoutTrailingSlash(path: str) -> str:
    return path[:-1] if len(path) > 1 and path[-1] == "/" else path


def _pathPredicate(match: RouteMatch, ignoreCase: bool) -> Optional[Callable[[str], bool]]:
    """
    A predicate on a normalised path for C{match}'s path condition, read as
    the apps behind a sidecar commonly read paths: a trailing slash does not
    make another path (Express, ASP.NET, Rails), and, with C{ignoreCase},
    neither does letter case.  L{None} if C{match} has no path condition.
    """
    fold: Callable[[str], str] = str.lower if ignoreCase else str
    if match.path is not None:
        exact = fold(_withoutTrailingSlash(match.path))
        return lambda path: fold(_withoutTrailingSlash(path)) == exact
    if match.regex is not None:
        pattern = compilePattern(match.regex, ignoreCase)

        def matchesRegex(path: str) -> bool:
            if pattern.fullmatch(path) is not None:
                return True
            other = _withoutTrailingSlash(path)
            if other == path:
                other = path + "/"
            return pattern.fullmatch(other) is not None

        return matchesRegex
    if match.prefix is not None and match.prefix != "/":
        prefix = fold(match.prefix)
        # /admin is /admin/ to the apps that ignore a trailing slash.
        return lambda path: fold(path).startswith(prefix) or fold(path + "/") == prefix
    return None


def rulePredicate(rule: AuthorizationRule) -> Callable[[bytes, str, str, Any], bool]:
    """
    A predicate on C{(method, path, host, headers)} true when C{rule}'s
    match holds: its path condition read as L{_pathPredicate} reads it, the
    others as routes read them.
    """
    match = rule.match
    onPath = _pathPredicate(match, rule.ignoreCase)
    rest = compileMatch(attrs.evolve(match, prefix=None, path=None, regex=None))
    if onPath is None:
        return rest
    return lambda m, p, h, hd: onPath(p) and rest(m, p, h, hd)


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
            (rulePredicate(rule), parsePatterns(rule.identities), rule) for rule in policy.rules
        ]
        #: Gives the time, for bursts of denials.
        self.clock: Callable[[], float] = time.monotonic
        self._denied: Dict[Tuple[str, Optional[str], str], Tuple[float, int]] = {}

    def _readPaths(self, target: bytes) -> List[str]:
        """
        The distinct readings of C{target}'s path, the routing one first.

        @raise ProxyError: The path cannot be normalised.
        """
        targets = [target]
        path = target.split(b"?", 1)[0].split(b"#", 1)[0]
        if b";" in path:
            # As servlet containers read it: each segment without its
            # parameters, before dot-segments are removed.
            targets.append(_PARAMETERS.sub(b"", path) + target[len(path):])
        paths: List[str] = []
        for each in targets:
            for options in self._readings:
                reading = normalisePath(each, options)
                if reading not in paths:
                    paths.append(reading)
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
        # Methods are case-sensitive, but some apps upper-case them (a
        # Django or Flask app reads "post" as POST) and answer HEAD with
        # what answers GET; most servers read a fully qualified host name
        # (with its trailing dot) as the name.
        methods = [request.method]
        upper = request.method.upper()
        if upper != request.method:
            methods.append(upper)
        if upper == b"HEAD":
            methods.append(b"GET")
        host = requestHost(request.headers)
        hosts = [host]
        if host.endswith(".") and host.rstrip("."):
            hosts.append(host.rstrip("."))
        for path in paths:
            for method in methods:
                for name in hosts:
                    refused = self._decide(request, method, path, name, uris, names)
                    if refused is not None:
                        return refused
        return None

    def _decide(
        self,
        request: ProxyRequest,
        method: bytes,
        path: str,
        host: str,
        uris: Tuple[str, ...],
        names: Tuple[str, ...],
    ) -> Optional[ProxyError]:
        """
        The first matching rule's decision on one reading of the method,
        path and host, or the default's.
        """
        identity = request.peerIdentity
        for predicate, patterns, rule in self._rules:
            if predicate(method, path, host, request.headers):
                if any(p.match(uris, names) is not None for p in patterns):
                    return None
                return self._deny(request, path, f"no rule allows {identity or 'an anonymous caller'}")
        if self.policy.defaultAllow:
            return None
        return self._deny(request, path, "no rule matches and the default is deny")

    def _deny(self, request: ProxyRequest, path: str, reason: str) -> Unauthorized:
        # A burst of the same denial is one line, then one saying how many
        # more there were (as for errors: see easymesh.errorlog).
        key = (request.listener, request.peerIdentity, reason)
        now = self.clock()
        last = self._denied.get(key)
        if last is not None and now - last[0] < QUIET:
            self._denied[key] = (last[0], last[1] + 1)
            return Unauthorized(reason)
        if last is not None and last[1]:
            _log.info(
                "Denied {count} more request(s) from {identity} in the last "
                "{seconds:.0f}s: {reason}",
                count=last[1],
                identity=request.peerIdentity or "an anonymous caller",
                seconds=now - last[0],
                reason=reason,
            )
        if len(self._denied) >= MAX_BURSTS:
            self._denied.clear()
        self._denied[key] = (now, 0)
        _log.info(
            "Denied {listener} {method} {path} from {identity}: {reason}",
            listener=request.listener,
            method=request.method.decode("latin-1"),
            path=path[:200],
            identity=request.peerIdentity or "an anonymous caller",
            reason=reason,
        )
        return Unauthorized(reason)
