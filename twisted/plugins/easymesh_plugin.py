"""
The C{easymesh} twistd plugin: C{twistd -n easymesh}.
"""

from twisted.application.service import ServiceMaker

easymesh = ServiceMaker(
    "easymesh",
    "easymesh.tap",
    "A service-mesh sidecar: outbound and inbound HTTP proxies.",
    "easymesh",
)
