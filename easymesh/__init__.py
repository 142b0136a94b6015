"""
easymesh: a service-mesh sidecar proxy on Twisted.

The outbound listener carries the local app's calls to a peer sidecar; the
inbound listener carries a peer's calls to the local app.
"""

__version__ = "0.1.0"
