# -*- test-case-name: tests.test_forwarder -*-
"""
The request path of one listener, independent of its HTTP implementation:
header policy, filter chain, routing (to clusters and their upstreams), and
the mapping of failures to replies.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from easymesh.errors import ProxyError, replyFor
from easymesh.filters.chain import FilterChain
from easymesh.headers import PEER_IDENTITY, HeaderPolicy
from easymesh.message import LocalReply, ProxyRequest, Response
from easymesh.tracing import continueTrace

Reply = Response


class Forwarder:
    """
    Forward requests arriving on one listener along its routes.

    @ivar routes: Holds the current L{easymesh.routing.router.Router} of
        each listener (C{routes.routers}); read for each request, so that
        a reload takes effect for the next one.
    """

    #: Whether traces started here are sampled (when spans are exported).
    sampleNewTraces = False

    def __init__(self, policy: HeaderPolicy, chain: FilterChain, routes: Any, listener: str) -> None:
        self.policy = policy
        self.chain = chain
        self.routes = routes
        self.listener = listener
        self._authorizer: Any = None

    def forward(self, request: ProxyRequest) -> Deferred[Reply]:
        """
        Forward a request.

        @return: A L{Deferred} firing with the upstream's response (headers
            prepared for relaying, body not yet read) or a L{LocalReply}; it
            never fails, and this never raises: whatever goes wrong on the
            way (a bug included) is answered by L{replyFor}.  Cancel it if
            the client goes away.
        """
        try:
            return self._forward(request)
        except BaseException:
            return succeed(self._failed(Failure(), request))

    def _forward(self, request: ProxyRequest) -> Deferred[Reply]:
        try:
            self.policy.prepareRequest(
                request.headers, request.clientAddress, request.scheme, request.version
            )
        except ProxyError as e:
            return succeed(e.reply())
        request.trace = continueTrace(request.headers, sampleNew=self.sampleNewTraces)
        mesh = self.routes.mesh
        if mesh is not None and mesh.authorization:
            refused = self._authorize(request)
            if refused is not None:
                return succeed(refused.reply())
        if request.peerIdentity is not None:
            # Any such header from the caller has just been removed with
            # every other x-easymesh-* header, so this one cannot be forged.
            request.headers.setRawHeaders(PEER_IDENTITY, [request.peerIdentity.encode("utf-8")])
        if self.chain:
            replied: Deferred[Reply] = self.chain.requestReceived(request).addCallback(
                self._filtered, request
            )
            replied.addCallback(self._responded, request)
            return replied.addErrback(self._failed, request)
        d = self.routes.routers[self.listener].route(request)
        return d.addCallbacks(
            self._relayed, self._failed, callbackArgs=(request,), errbackArgs=(request,)
        )

    def _authorize(self, request: ProxyRequest) -> Optional[ProxyError]:
        mesh = self.routes.mesh
        policy = mesh.authorization.get(self.listener) if mesh is not None else None
        if policy is None:
            return None
        if self._authorizer is None or self._authorizer.policy is not policy:
            from easymesh.authz import Authorizer

            self._authorizer = Authorizer(policy, mesh.paths)
        return self._authorizer.check(request)

    def _filtered(self, reply: Any, request: ProxyRequest) -> Any:
        if reply is not None:
            return reply
        d = self.routes.routers[self.listener].route(request)
        return d.addCallback(self._relayed, request)

    def _relayed(self, response: Reply, request: ProxyRequest) -> Reply:
        if not isinstance(response, LocalReply):
            try:
                self.policy.prepareResponse(response.headers, request.version, request.attempts)
            except BaseException:
                failure = Failure()
                response.discard()
                return self._failed(failure, request)
        return response

    def _responded(self, response: Reply, request: ProxyRequest) -> Deferred[Reply]:
        d = self.chain.responseReceived(request, response)
        if not isinstance(response, LocalReply):
            d.addErrback(_discarding, response)
        return d

    def _failed(self, failure: Failure, request: ProxyRequest) -> LocalReply:
        """
        The one answer to every failure on the request path: its
        L{ProxyError}'s reply, or 500 C{internal_error} for a bug (which the
        listener's error log reports, with its detail, once).
        """
        return replyFor(failure)


def _discarding(failure: Failure, response: Response) -> Failure:
    """
    Drop an upstream response that will not be relayed, because what came
    after it failed; pass the failure on.
    """
    response.discard()
    return failure
