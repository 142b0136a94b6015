"""
easymesh: a service-mesh sidecar proxy on Twisted.

The outbound listener carries the local app's calls to a peer sidecar; the
inbound listener carries a peer's calls to the local app.
"""

__version__ = "0.1.0"


def installedVersion() -> str:
    """
    easymesh's version as its installed package metadata gives it, or
    L{__version__} when it runs from a source tree that is not installed.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("easymesh")
    except PackageNotFoundError:
        return __version__
