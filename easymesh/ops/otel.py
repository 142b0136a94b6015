# -*- test-case-name: tests.test_otel -*-
"""
Optional OpenTelemetry export: one span per request and hop, sent over
OTLP/HTTP to a collector, when C{--otlp-endpoint} is given and the
C{opentelemetry} extra is installed (from the checkout, C{pip install '.[opentelemetry]'}).
Without it nothing of OpenTelemetry is imported.

Each span has this hop's W3C trace ids (L{easymesh.tracing}): its span id
is the C{parent-id} this hop sent on, its parent the caller's, so the spans
of the sidecars along a request's path join into one trace.  Only sampled
traces are exported: a caller's C{sampled} flag is respected, and a trace
this sidecar starts is sampled.

The SDK's batch processor exports from a thread of its own; nothing else
of it runs on the reactor's thread but the recording of a finished span.
"""

from __future__ import annotations

from typing import Any, Optional

from easymesh import __version__


def available() -> bool:
    """
    Whether the OpenTelemetry SDK and OTLP/HTTP exporter can be imported.
    """
    import importlib.util

    return all(
        importlib.util.find_spec(name) is not None
        for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
    )


def _presetIds() -> Any:
    """
    An OpenTelemetry id generator that hands out the ids this hop already
    put in C{traceparent} (set as its C{traceId} and C{spanId}).
    """
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class PresetIds(IdGenerator):
        traceId = 0
        spanId = 0

        def generate_trace_id(self) -> int:
            return self.traceId

        def generate_span_id(self) -> int:
            return self.spanId

        def is_trace_id_random(self) -> bool:
            # They come from random.getrandbits (see easymesh.tracing).
            return True

    return PresetIds()


class OTLPTraces:
    """
    Record finished requests as spans and export them over OTLP/HTTP.

    @param endpoint: The collector's traces URL, e.g.
        C{http://127.0.0.1:4318/v1/traces}.
    @param nodeId: This sidecar's name (the C{service.instance.id}).
    """

    def __init__(self, endpoint: str, nodeId: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
            set_span_in_context,
        )

        self._api = (NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context)
        self._kinds = {"outbound": SpanKind.CLIENT, "inbound": SpanKind.SERVER}
        self._error = Status(StatusCode.ERROR)
        self._ids = _presetIds()
        resource = Resource.create(
            {"service.name": "easymesh", "service.instance.id": nodeId, "service.version": __version__}
        )
        self._provider = TracerProvider(resource=resource, id_generator=self._ids)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self._provider.get_tracer("easymesh", __version__)

    def record(
        self,
        listener: str,
        proxied: Any,
        status: int,
        started: float,
        ended: float,
        cause: Optional[str],
    ) -> None:
        """
        Export a finished request's span, if its trace is sampled.
        """
        trace = getattr(proxied, "trace", None)
        if trace is None or not trace.sampled:
            return
        NonRecordingSpan, SpanContext, TraceFlags, setSpanInContext = self._api
        traceId = int(trace.traceId, 16)
        self._ids.traceId = traceId
        self._ids.spanId = int(trace.spanId, 16)
        context = None
        if trace.parentId is not None:
            parent = SpanContext(
                traceId, int(trace.parentId, 16), True, TraceFlags(trace.flags & 0xFF)
            )
            context = setSpanInContext(NonRecordingSpan(parent))
        method = proxied.method.decode("latin-1")
        attributes = {
            "http.request.method": method,
            # The path only: a query string may carry credentials.
            "url.path": proxied.target.split(b"?", 1)[0].decode("latin-1")[:1024],
            "easymesh.listener": listener,
            "easymesh.attempts": proxied.attempts,
        }
        for key, value in (
            ("http.response.status_code", status or None),
            ("easymesh.route", proxied.route),
            ("easymesh.cluster", proxied.cluster),
            ("server.address", proxied.upstreamHost),
            ("client.address", proxied.clientAddress or None),
            ("easymesh.peer_identity", proxied.peerIdentity),
            ("error.type", cause),
        ):
            if value is not None:
                attributes[key] = value
        span = self._tracer.start_span(
            f"{method} {listener}",
            context=context,
            kind=self._kinds[listener],
            attributes=attributes,
            start_time=int(started * 1e9),
        )
        if status == 0 or status >= 500:
            span.set_status(self._error)
        span.end(end_time=int(ended * 1e9))

    def close(self) -> Any:
        """
        Export what is left and stop the exporter's thread, off the
        reactor's thread.

        @return: A L{Deferred} firing when done.
        """
        from twisted.internet.threads import deferToThread

        return deferToThread(self._provider.shutdown)
