# -*- test-case-name: tests.test_service -*-
"""
The built-in demo app: answers every request with C{hello world}, so that a
sidecar started with no options shows the whole mesh path at once.
"""

from __future__ import annotations

from twisted.web import server
from twisted.web.resource import Resource


HELLO = b"hello world\n"


class HelloWorld(Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(HELLO))
        return b"" if request.method == b"HEAD" else HELLO


def demoSite() -> server.Site:
    site = server.Site(HelloWorld())
    site.noisy = False
    # A method, replaced on this one site: the demo app logs no requests.
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
