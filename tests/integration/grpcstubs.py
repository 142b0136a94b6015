"""
The Python modules of the test protos in C{grpcproto/}, compiled with
C{grpc_tools.protoc} into a directory when the tests start (nothing
generated is kept in the tree), and imported from there.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

PROTOS = Path(__file__).resolve().with_name("grpcproto")
FILES = ("interop.proto", "meshtest.proto")


def compileProtos(out: Path) -> None:
    """
    Write C{interop_pb2}, C{interop_pb2_grpc}, C{meshtest_pb2} and
    C{meshtest_pb2_grpc} into C{out}.

    @raise RuntimeError: protoc failed.
    """
    from grpc_tools import protoc

    code = protoc.main(
        ["protoc", f"-I{PROTOS}", f"--python_out={out}", f"--grpc_python_out={out}", *FILES]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed ({code}) on {FILES} in {PROTOS}")


class Stubs:
    """
    The compiled modules, importable once their directory is on
    C{sys.path} (the C{_grpc} modules import their C{_pb2} by name).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
        self.interop: ModuleType = importlib.import_module("interop_pb2")
        self.interopGrpc: ModuleType = importlib.import_module("interop_pb2_grpc")
        self.meshtest: ModuleType = importlib.import_module("meshtest_pb2")
        self.meshtestGrpc: ModuleType = importlib.import_module("meshtest_pb2_grpc")


def build(out: Path) -> Stubs:
    compileProtos(out)
    return Stubs(out)
