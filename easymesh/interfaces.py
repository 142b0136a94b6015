"""
The interfaces easymesh is extended through: filters (shipped as twistd
plugins) and upstreams (one implementation per URL scheme).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IFilterContext(Interface):
    """
    What a filter factory is told about the listener it builds a filter for.
    """

    listener = Attribute("The listener's name: 'outbound' or 'inbound'.")
    reactor = Attribute("The reactor; filters take time from it (IReactorTime).")


class IFilterFactory(Interface):
    """
    A named kind of filter, discovered with C{twisted.plugin.getPlugins}.
    A plugin module provides both this and L{twisted.plugin.IPlugin}; it
    should import its heavy parts only inside L{build}.
    """

    name = Attribute("The name used in --filter NAME[:ARGS].")
    description = Attribute("One line for --help and the README.")

    def build(args, context):
        """
        Build the filter for one listener.  State shared by that listener's
        requests (a token bucket, say) lives in the returned filter.

        @param args: The text after C{NAME:}, or C{""}.
        @type args: L{str}
        @param context: The listener's L{IFilterContext}.

        @return: An L{IFilter} provider.
        @raise ValueError: C{args} are invalid; the message says why.
        """


class IFilter(Interface):
    """
    One stage of a listener's filter chain.  Request hooks run in chain
    order, response hooks in reverse order.
    """

    def requestReceived(request):
        """
        Look at (and perhaps change) a request before it is forwarded.

        @param request: The L{easymesh.message.ProxyRequest}.
        @return: L{None} to continue; a L{easymesh.message.LocalReply} to
            answer at once; or a L{Deferred} firing with either.  Raising or
            failing with an L{easymesh.errors.ProxyError} answers with its
            error reply.
        """

    def responseReceived(request, response):
        """
        Look at (and perhaps change the headers of) a response before it is
        relayed: an upstream's L{twisted.web.iweb.IResponse} or a
        L{easymesh.message.LocalReply}.

        @return: L{None} or a L{Deferred} firing with L{None} when done.
        """


class IUpstream(Interface):
    """
    Access to one upstream service over one protocol, keyed by the scheme of
    its URL (see L{easymesh.upstream.upstreamFor}).
    """

    url = Attribute("The L{easymesh.config.addresses.UpstreamURL} served.")

    def request(request):
        """
        Send a request upstream.

        @param request: The L{easymesh.message.ProxyRequest}, headers already
            prepared for forwarding.
        @return: A L{Deferred} firing with an L{twisted.web.iweb.IResponse}
            once its headers arrive, or failing with an
            L{easymesh.errors.ProxyError} (or a failure that
            L{easymesh.errors.classify} maps to one).  Cancelling it abandons
            the request and its connection.
        """

    def close():
        """
        Close idle connections.

        @return: A L{Deferred} firing when they are closed.
        """
