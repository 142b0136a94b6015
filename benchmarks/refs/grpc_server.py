"""
The gRPC backend of the benchmark: grpc.aio, one unary method
(/bench.Echo/Say) that answers with the bytes it is sent.

    python grpc_server.py PORT
"""

import asyncio
import sys

import grpc


async def say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def main(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(say)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Say": handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
