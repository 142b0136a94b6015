"""
A gRPC backend for the mesh's integration tests, run as a process of its
own:

    python grpc_backend.py --stubs DIR --port N --name NAME [--gzip]

It serves, on 127.0.0.1:N over h2c:

 - C{grpc.testing.TestService}, the server side of grpc's
   C{doc/interop-test-descriptions.md}: payloads of the asked sizes,
   C{x-grpc-test-echo-initial} echoed as initial metadata and
   C{x-grpc-test-echo-trailing-bin} as trailing metadata, the asked
   C{response_status}, streaming responses spaced by C{interval_us};
   C{UnimplementedCall} and C{grpc.testing.UnimplementedService} are not
   implemented;
 - C{easymesh.testing.MeshTestService}: C{Sleep}, whose cancellations are
   counted, C{GetCounters}, and C{SetHealth}, which sets what
   C{grpc.health.v1.Health} (also served) answers for a service (C{""}
   starts SERVING).

Every answer of the two services carries the backend's name in the
trailing metadata C{x-backend-name}.  With C{--gzip} it compresses
every answer with gzip (when the client accepts it).  It prints C{READY} once it listens,
and the compiled test protos are imported from C{--stubs}.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any, AsyncIterator, Dict, List, Tuple

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"
BACKEND = "x-backend-name"
LIMIT = 64 * 1024 * 1024

STATUS = {code.value[0]: code for code in grpc.StatusCode}


def _payload(pb: Any, size: int) -> Any:
    return pb.Payload(type=pb.COMPRESSABLE, body=bytes(size))


class Base:
    def __init__(self, name: str) -> None:
        self.name = name

    async def begin(self, context: aio.ServicerContext) -> None:
        """
        Echo the interop metadata and name this backend in the trailers.
        """
        seen = {k: v for k, v in context.invocation_metadata() or ()}
        if ECHO_INITIAL in seen:
            await context.send_initial_metadata(((ECHO_INITIAL, seen[ECHO_INITIAL]),))
        trailing: List[Tuple[str, Any]] = [(BACKEND, self.name)]
        if ECHO_TRAILING in seen:
            trailing.append((ECHO_TRAILING, seen[ECHO_TRAILING]))
        context.set_trailing_metadata(tuple(trailing))

    async def answer(self, status: Any, context: aio.ServicerContext) -> None:
        """
        End the call with the status a request asks for, if it asks for one.
        """
        if status.code:
            await context.abort(
                STATUS[status.code], status.message, trailing_metadata=context.trailing_metadata()
            )


class TestService(Base):
    def __init__(self, name: str, pb: Any) -> None:
        super().__init__(name)
        self.pb = pb

    async def EmptyCall(self, request: Any, context: aio.ServicerContext) -> Any:
        await self.begin(context)
        return self.pb.Empty()

    async def UnaryCall(self, request: Any, context: aio.ServicerContext) -> Any:
        await self.begin(context)
        await self.answer(request.response_status, context)
        return self.pb.SimpleResponse(payload=_payload(self.pb, request.response_size))

    async def StreamingOutputCall(self, request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        await self.begin(context)
        await self.answer(request.response_status, context)
        for parameters in request.response_parameters:
            if parameters.interval_us:
                await asyncio.sleep(parameters.interval_us / 1e6)
            yield self.pb.StreamingOutputCallResponse(payload=_payload(self.pb, parameters.size))

    async def StreamingInputCall(self, requests: AsyncIterator[Any], context: aio.ServicerContext) -> Any:
        await self.begin(context)
        total = 0
        async for request in requests:
            total += len(request.payload.body)
        return self.pb.StreamingInputCallResponse(aggregated_payload_size=total)

    async def FullDuplexCall(self, requests: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
        await self.begin(context)
        async for request in requests:
            await self.answer(request.response_status, context)
            for parameters in request.response_parameters:
                if parameters.interval_us:
                    await asyncio.sleep(parameters.interval_us / 1e6)
                yield self.pb.StreamingOutputCallResponse(payload=_payload(self.pb, parameters.size))

    async def UnimplementedCall(self, request: Any, context: aio.ServicerContext) -> Any:
        # What grpc's generated servicer answers for a method left out.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")


class MeshTestService(Base):
    def __init__(self, name: str, pb: Any, healthServicer: health.aio.HealthServicer) -> None:
        super().__init__(name)
        self.pb = pb
        self.health = healthServicer
        self.counters: Dict[str, int] = {"started": 0, "cancelled": 0, "finished": 0}

    async def Sleep(self, request: Any, context: aio.ServicerContext) -> Any:
        await self.begin(context)
        self.counters["started"] += 1
        try:
            await asyncio.sleep(request.millis / 1000)
        except asyncio.CancelledError:
            self.counters["cancelled"] += 1
            raise
        self.counters["finished"] += 1
        return self.pb.Done()

    async def GetCounters(self, request: Any, context: aio.ServicerContext) -> Any:
        await self.begin(context)
        return self.pb.Counters(**self.counters)

    async def SetHealth(self, request: Any, context: aio.ServicerContext) -> Any:
        await self.begin(context)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if request.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(request.service, status)
        return self.pb.Done()


async def serve(port: int, name: str, gzip: bool) -> None:
    import interop_pb2
    import interop_pb2_grpc
    import meshtest_pb2
    import meshtest_pb2_grpc

    server = aio.server(
        compression=grpc.Compression.Gzip if gzip else None,
        options=[
            ("grpc.max_receive_message_length", LIMIT),
            ("grpc.max_send_message_length", LIMIT),
            ("grpc.so_reuseport", 0),
        ]
    )
    healthServicer = health.aio.HealthServicer()
    interop_pb2_grpc.add_TestServiceServicer_to_server(TestService(name, interop_pb2), server)
    meshtest_pb2_grpc.add_MeshTestServiceServicer_to_server(
        MeshTestService(name, meshtest_pb2, healthServicer), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(healthServicer, server)
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"could not listen on 127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stubs", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="backend")
    parser.add_argument("--gzip", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)
    asyncio.run(serve(args.port, args.name, args.gzip))


if __name__ == "__main__":
    main()
