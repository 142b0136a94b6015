"""
OpenTelemetry export: with C{--otlp-endpoint}, every hop sends a span over
OTLP/HTTP to a collector, and the spans of one request join into one trace;
without it, nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List

import pytest

from tests.integration.conftest import HOPS
from tests.integration.harness import request

otel = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the opentelemetry extra is not installed",
)

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module", params=HOPS)
def hop(request: pytest.FixtureRequest) -> str:
    """
    The sidecars these tests start forward from outbound to inbound over
    HTTP/1.1, then over HTTP/2.
    """
    return request.param


class Collector:
    """
    An OTLP/HTTP traces endpoint on loopback that keeps every span it is
    sent.
    """

    def __init__(self) -> None:
        self.spans: List[Any] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                message = otel.ExportTraceServiceRequest()
                message.ParseFromString(body)
                with collector.lock:
                    for resource in message.resource_spans:
                        for scope in resource.scope_spans:
                            collector.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def waitFor(self, count: int, timeout: float = 15.0) -> List[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.spans)} span(s) after {timeout}s, wanted {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    server = Collector()
    try:
        yield server
    finally:
        server.close()


def _attributes(span: Any) -> Dict[str, Any]:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = value.string_value if value.HasField("string_value") else value.int_value
    return out


def test_two_hops_make_one_trace(launch, collector):
    sidecar = launch(
        "--otlp-endpoint", collector.url, env={"OTEL_BSP_SCHEDULE_DELAY": "100"}
    )
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    reply = request(
        sidecar.outbound,
        "GET",
        "/traced?token=secret",
        headers=[("traceparent", traceparent)],
        timeout=5,
    )
    assert reply.status == 200
    spans = collector.waitFor(2)
    assert len(spans) == 2, spans
    byKind = {span.kind: span for span in spans}
    outbound = byKind[otel_kind("CLIENT")]
    inbound = byKind[otel_kind("SERVER")]
    for span in spans:
        assert span.trace_id.hex() == CLIENT_TRACE
        attributes = _attributes(span)
        assert attributes["url.path"] == "/traced"
        assert attributes["http.response.status_code"] == 200
        assert "secret" not in str(attributes)
        assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
    assert outbound.parent_span_id.hex() == CLIENT_SPAN
    assert inbound.parent_span_id == outbound.span_id
    assert _attributes(outbound)["easymesh.listener"] == "outbound"
    assert _attributes(inbound)["easymesh.cluster"] == "local"


def test_unsampled_trace_not_exported_and_new_trace_sampled(launch, collector):
    sidecar = launch(
        "--otlp-endpoint", collector.url, env={"OTEL_BSP_SCHEDULE_DELAY": "100"}
    )
    unsampled = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
    assert request(sidecar.outbound, "GET", "/quiet", headers=[("traceparent", unsampled)], timeout=5).status == 200
    assert request(sidecar.outbound, "GET", "/fresh", timeout=5).status == 200
    spans = collector.waitFor(2)
    paths = {_attributes(s)["url.path"] for s in spans}
    assert paths == {"/fresh"}, paths
    assert len({s.trace_id for s in spans}) == 1
    assert spans[0].trace_id.hex() != CLIENT_TRACE


def otel_kind(name: str) -> int:
    from opentelemetry.proto.trace.v1 import trace_pb2

    return getattr(trace_pb2.Span.SpanKind, f"SPAN_KIND_{name}")


def test_nothing_imported_without_an_endpoint():
    code = (
        "import sys\n"
        "from easymesh.tap import Options, makeService\n"
        "options = Options()\n"
        "options.parseOptions(['--admin', 'none'])\n"
        "makeService(options)\n"
        "options = Options()\n"
        "options.parseOptions([])\n"
        "makeService(options)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
