"""
Reference: Twisted's own twisted.web.proxy.ReverseProxyResource, one hop.

    python twisted_rproxy.py LISTEN_PORT UPSTREAM_PORT
"""

import sys

from twisted.internet import reactor
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import Site

listen, upstream = int(sys.argv[1]), int(sys.argv[2])
site = Site(ReverseProxyResource("127.0.0.1", upstream, b""))
site.log = lambda request: None
reactor.listenTCP(listen, site, interface="127.0.0.1")
reactor.run()
