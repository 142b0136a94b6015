# -*- test-case-name: tests.test_filters -*-
"""
The C{ratelimit} filter: a token bucket per listener; a request that cannot
get a token within the allowed wait is answered 429 with C{Retry-After}.

Arguments: C{rate=N,burst=N,max_wait=SECONDS,max_queue=N}.
"""

from __future__ import annotations

from typing import Any, Optional, cast

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from easymesh.config.kinds import Number
from easymesh.errors import TooManyRequests
from easymesh.filters.plugin import parseArgs
from easymesh.interfaces import IFilter, IFilterContext
from easymesh.message import ProxyRequest
from easymesh.tokenbucket import RateLimited, TokenBucket

_ARGS = {
    "rate": Number(0, exclusiveMinimum=True).fromText,
    "burst": Number(1, integer=True).fromText,
    "max_wait": Number(0).fromText,
    "max_queue": Number(0, integer=True).fromText,
}


@implementer(IFilter)
class RateLimitFilter:
    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket

    def requestReceived(self, request: ProxyRequest) -> Deferred[None]:
        return self.bucket.acquire().addErrback(_refuse)

    def responseReceived(self, request: ProxyRequest, response: Any) -> None:
        return None


def _refuse(failure: Failure) -> Optional[None]:
    failure.trap(RateLimited)
    raise TooManyRequests(cast(RateLimited, failure.value).wait)


def build(args: str, context: IFilterContext) -> RateLimitFilter:
    values = parseArgs(args, _ARGS)
    if "rate" not in values:
        raise ValueError("needs rate=N")
    rate = values["rate"]
    burst = values.get("burst", max(1, int(-(-rate // 1))))
    bucket = TokenBucket(
        rate,
        burst,
        context.reactor,
        maxWait=values.get("max_wait", 0.0),
        maxQueue=values.get("max_queue", 1024),
    )
    return RateLimitFilter(bucket)
