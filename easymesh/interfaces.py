"""
The interfaces easymesh is extended through: filters (shipped as twistd
plugins) and upstreams (one implementation per URL scheme).
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
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

        @param request: The L{easymesh.message.Request}.
        @return: L{None} to continue; a L{easymesh.message.LocalReply} to
            answer at once; or a L{Deferred} firing with either.  Raising or
            failing with an L{easymesh.errors.ProxyError} answers with its
            error reply.
        """

    def responseReceived(request, response):
        """
        Look at (and perhaps change the headers of) a response before it is
        relayed: an L{easymesh.message.Response}, from an upstream or a
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

        @param request: The L{easymesh.message.Request}, headers already
            prepared for forwarding.
        @return: A L{Deferred} firing with an L{easymesh.message.Response}
            once its head arrives, or failing with an
            L{easymesh.errors.ProxyError}.  Cancelling it abandons the
            request and its connection.
        """

    def close():
        """
        Close idle connections.

        @return: A L{Deferred} firing when they are closed.
        """


class IBodySink(Interface):
    """
    Where a L{easymesh.message.Response} delivers its body.
    """

    def bodyStarted(producer):
        """
        Called first, once: C{producer} (an L{IPushProducer}) pauses,
        resumes or stops the body's source.
        """

    def bodyData(data):
        """
        The next piece of the body.
        """

    def bodyEnded(trailers):
        """
        The body is complete; C{trailers} is a L{Headers} or L{None}.
        """

    def bodyFailed(reason):
        """
        The body was cut short; C{reason} is a L{Failure} whose value is an
        L{easymesh.errors.ProxyError}.
        """


class IResponder(Interface):
    """
    How an edge sends the response to one request; an
    L{easymesh.edge.Exchange} drives it.  The edge frames what it is given
    for its protocol.
    """

    started = Attribute("Whether the response head has been sent.")
    closed = Attribute("Whether the client's connection (or stream) is gone.")

    def sendHead(code, phrase, headers, whole=False):
        """
        Send the response head.  C{whole}: nothing follows it, neither
        body nor trailers, so that the edge may end the response with it
        (HTTP/2: one HEADERS frame ending the stream, which is how a gRPC
        client reads a Trailers-Only reply).  L{finish} is still called.
        """

    def sendData(data):
        """
        Send a piece of the response body.
        """

    def finish(trailers):
        """
        End the response, with C{trailers} (a L{Headers} or L{None}); the
        edge then tells the exchange it is done.
        """

    def abort():
        """
        Drop the client at once, so that a response cut short never passes
        for a whole one.
        """

    def closeAfterResponse():
        """
        Close the connection once this response is sent (a drain, or a
        request body not read to its end).
        """

    def setProducer(producer):
        """
        Pause and resume C{producer} (an L{IPushProducer}, or L{None} to
        forget it) as the client reads slowly or catches up.
        """

    def bodyIncomplete():
        """
        Whether the client is still sending the request body.
        """


class IConnectionTransport(ITCPTransport, IConsumer, IPushProducer):
    """
    What easymesh's protocols use of their transport, for type checking: a
    TCP or TLS connection (which Twisted's transports of both kinds are)
    that also consumes a producer's writes and can be paused and resumed.
    """


class ITunnelEnd(Interface):
    """
    One connection of a tunnel, once its protocol has switched (an
    HTTP/1.1 C{101}): bytes both ways, each direction ended on its own.
    Bytes (and an end) that arrive before L{start} are held, and reading
    is paused until then.
    """

    canHalfClose = Attribute(
        "Whether L{endWrite} ends this side's sending alone (plain TCP); "
        "over TLS it cannot, and the other side's end of sending ends the tunnel."
    )

    def start(tunnel):
        """
        Deliver to C{tunnel} from now on: C{tunnel.received(end, data)},
        C{tunnel.readEnded(end)} (the peer ended its sending) and
        C{tunnel.lost(end, reason)} (the connection is gone).
        """

    def write(data):
        """
        Send C{data}.
        """

    def endWrite():
        """
        End this side's sending (a half-close), still receiving.
        """

    def setProducer(producer):
        """
        Pause C{producer} (an L{IPushProducer}: the other end's reading)
        while this connection's send buffer is full; L{None} to forget it.
        """

    def pauseReading():
        """
        Stop reading from this connection.
        """

    def resumeReading():
        """
        Read from this connection again.
        """

    def close():
        """
        Close the connection once what is written has been sent.
        """

    def abort():
        """
        Close the connection at once.
        """
