"""
gRPC through the mesh, with grpcio clients and grpcio backends
(L{grpc_backend}), each test run three ways:

 - C{direct}: the client calls the backend itself (the control);
 - C{h2c}: client -> outbound listener -> HTTP/2 hop over h2c
   (C{--peer-protocol http2}) -> inbound listener -> C{grpc://} backend;
 - C{mtls}: client -> A's outbound -> HTTP/2 hop over mTLS with ALPN
   C{h2} -> B's inbound -> C{grpc://} backend.

The first part follows the cases of grpc's
C{doc/interop-test-descriptions.md}; the rest is what a mesh must keep:
many calls on one channel, large and compressed messages, a backend that
dies or comes back, per-call balancing, and the backend's handler
cancelled with the client's call.  Every call has a deadline, so that a
hang fails rather than stalls.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import grpc
import pytest

from tests.integration.conftest import Launcher
from tests.integration.grpcstubs import Stubs, build
from tests.integration.harness import POLL, Sidecar, freePorts, waitUntil
from tests.integration.test_mtls import ORDERS, PKI, WEB

BACKEND_SCRIPT = Path(__file__).resolve().with_name("grpc_backend.py")

#: Every call's deadline, in seconds.
DEADLINE = 20.0
MiB = 1024 * 1024
LIMIT = 64 * MiB

ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"
BACKEND_NAME = "x-backend-name"

#: Raised message limits; reconnection to a backend that was down within
#: a second (the C{direct} way talks to backends itself).
CHANNEL_OPTIONS: List[Tuple[str, Any]] = [
    ("grpc.max_receive_message_length", LIMIT),
    ("grpc.max_send_message_length", LIMIT),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]

WAYS = ["direct", "h2c", "mtls"]


# -- backends --------------------------------------------------------------


class Backend:
    """
    One L{grpc_backend} process on a loopback port, its output in a log.
    """

    def __init__(self, stubs: Stubs, directory: Path, name: str, gzip: bool = False) -> None:
        self.stubs = stubs
        self.name = name
        self.gzip = gzip
        self.port = freePorts(1)[0]
        self.logPath = directory / f"backend-{name}.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def start(self) -> "Backend":
        """
        Start it and wait, at most 20 s, for it to print C{READY}.
        """
        offset = len(self.log())
        with open(self.logPath, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(BACKEND_SCRIPT), "--stubs", str(self.stubs.directory),
                 "--port", str(self.port), "--name", self.name]
                + (["--gzip"] if self.gzip else []),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"backend {self.name} exited with {proc.returncode}:\n{self.log()}")
            return "READY" in self.log()[offset:]

        waitUntil(ready, 20.0, f"backend {self.name} ready")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.logPath.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


class Backends:
    """
    The backends started for one test (or module), all stopped at the end.
    """

    def __init__(self, stubs: Stubs, directory: Path) -> None:
        self.stubs = stubs
        self.directory = directory
        self.started: List[Backend] = []

    def __call__(self, name: str, gzip: bool = False) -> Backend:
        backend = Backend(self.stubs, self.directory, name, gzip)
        self.started.append(backend)
        return backend.start()

    def closeAll(self) -> None:
        for backend in self.started:
            backend.stop()
            tail = "\n".join(backend.log().splitlines()[-50:])
            print(f"===== {backend.logPath} =====\n{tail}")


# -- ways to reach them ------------------------------------------------------


def _clusterYaml(backends: Sequence[Backend]) -> str:
    """
    Config that makes the inbound listener's C{local} cluster all of
    C{backends}.
    """
    endpoints = ", ".join(f'"{b.url}"' for b in backends)
    return f"clusters:\n  local:\n    endpoints: [{endpoints}]\n    protocol: http2\n"


def _ordersYaml(pki: PKI) -> str:
    return f"""\
tls-cert: {pki.orders.certPath}
tls-key: {pki.orders.keyPath}
tls-ca: {pki.ca.certPath}
inbound-tls: mtls
inbound-allow:
  - {WEB}
"""


class Way:
    """
    How a test's client reaches its backends: the sidecars it starts (if
    any) and the channel target and options it gives the client.
    """

    def __init__(self, name: str, launcher: Launcher, directory: Path, pki: PKI) -> None:
        self.name = name
        self.launcher = launcher
        self.directory = directory
        self.pki = pki
        self.sidecars: List[Sidecar] = []

    def connect(self, backends: Sequence[Backend]) -> Tuple[str, List[Tuple[str, Any]]]:
        """
        Start what this way needs in front of C{backends}; the target and
        options of a channel to them (balanced per call over all of them).
        """
        options = list(CHANNEL_OPTIONS)
        if self.name == "direct":
            if len(backends) == 1:
                return f"127.0.0.1:{backends[0].port}", options
            addresses = ",".join(f"127.0.0.1:{b.port}" for b in backends)
            return f"ipv4:{addresses}", options + [("grpc.lb_policy_name", "round_robin")]
        n = len(self.sidecars)
        clusters = _clusterYaml(backends) if len(backends) > 1 else ""
        upstream = backends[0].url
        if self.name == "h2c":
            extra: List[str] = []
            if clusters:
                config = self.directory / f"grpc-h2c-{n}.yaml"
                config.write_text(clusters, encoding="utf-8")
                extra = ["--config", str(config)]
            sidecar = self.launcher(
                "--peer-protocol", "http2", "--access-log", "json", *extra, upstream=upstream
            )
            self.sidecars.append(sidecar)
            return f"127.0.0.1:{sidecar.outbound}", options
        assert self.name == "mtls", self.name
        config = self.directory / f"grpc-orders-{n}.yaml"
        config.write_text(_ordersYaml(self.pki) + clusters, encoding="utf-8")
        b = self.launcher(
            "--config", str(config), "--node-id", "orders", "--access-log", "json", upstream=upstream
        )
        a = self.launcher(
            *self.pki.tlsFlags(self.pki.web),
            "--peer", f"https://127.0.0.1:{b.inbound}",
            "--peer-identity", ORDERS,
            "--peer-protocol", "http2",
            "--node-id", "web",
            "--access-log", "json",
            upstream=upstream,
        )  # fmt: skip
        self.sidecars += [a, b]
        return f"127.0.0.1:{a.outbound}", options


class Client:
    """
    A channel to a target and the stubs of the test services on it.
    """

    def __init__(self, stubs: Stubs, target: str, options: List[Tuple[str, Any]], **kw: Any) -> None:
        self.pb = stubs.interop
        self.meshpb = stubs.meshtest
        self.channel = grpc.insecure_channel(target, options=options, **kw)
        self.test = stubs.interopGrpc.TestServiceStub(self.channel)
        self.unimplemented = stubs.interopGrpc.UnimplementedServiceStub(self.channel)
        self.mesh = stubs.meshtestGrpc.MeshTestServiceStub(self.channel)

    def counters(self) -> Any:
        return self.mesh.GetCounters(self.meshpb.CountersRequest(), timeout=DEADLINE)

    def close(self) -> None:
        self.channel.close()


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Stubs:
    return build(tmp_path_factory.mktemp("grpc-stubs"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("grpc-pki"))


@pytest.fixture(scope="module", params=WAYS)
def wayName(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Shared:
    """
    One backend and the way's sidecars in front of it, shared by a
    module's tests that need nothing else.
    """

    def __init__(self, way: Way, backends: Backends) -> None:
        self.way = way
        self.backends = backends
        self.backend = backends("shared")
        self.target, self.options = way.connect([self.backend])


@pytest.fixture(scope="module")
def _shared(
    wayName: str, stubs: Stubs, pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shared]:
    directory = tmp_path_factory.mktemp(f"grpc-{wayName}")
    launcher = Launcher(directory)
    backends = Backends(stubs, directory)
    try:
        yield Shared(Way(wayName, launcher, directory, pki), backends)
    finally:
        try:
            launcher.closeAll()
        finally:
            backends.closeAll()


@pytest.fixture
def shared(_shared: Shared) -> Iterator[Shared]:
    """
    The shared backend and sidecars, all running; their log lines written
    during the test are printed at teardown (and so shown if it fails).
    """
    processes = [*_shared.way.sidecars]
    for sidecar in processes:
        assert sidecar.running, sidecar.log()
    offsets = {s.logPath: len(s.log()) for s in processes}
    backendOffset = len(_shared.backend.log())
    try:
        yield _shared
    finally:
        for sidecar in processes:
            print(f"===== {sidecar.logPath} during this test =====\n{sidecar.log()[offsets[sidecar.logPath]:]}")
        print(f"===== backend during this test =====\n{_shared.backend.log()[backendOffset:]}")


@pytest.fixture
def client(shared: Shared, stubs: Stubs) -> Iterator[Client]:
    c = Client(stubs, shared.target, shared.options)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def way(wayName: str, launch: Launcher, tmp_path: Path, pki: PKI) -> Way:
    """
    The way, for a test that starts its own backends and sidecars.
    """
    return Way(wayName, launch, tmp_path, pki)


@pytest.fixture
def backends(stubs: Stubs, tmp_path: Path) -> Iterator[Backends]:
    started = Backends(stubs, tmp_path)
    try:
        yield started
    finally:
        started.closeAll()


# -- helpers -----------------------------------------------------------------


def rpcError(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def payload(pb: Any, size: int) -> Any:
    return pb.Payload(type=pb.COMPRESSABLE, body=bytes(size))


class Requests:
    """
    A request stream fed one message at a time, for a call that must wait
    on its responses; ended by L{end} (or a 20 s silence).
    """

    _END = object()

    def __init__(self) -> None:
        self._queue: "queue.Queue[Any]" = queue.Queue()

    def send(self, message: Any) -> None:
        self._queue.put(message)

    def end(self) -> None:
        self._queue.put(self._END)

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                message = self._queue.get(timeout=DEADLINE)
            except queue.Empty:
                return
            if message is self._END:
                return
            yield message


def accessLog(sidecar: Sidecar) -> List[Dict[str, Any]]:
    entries = []
    for line in sidecar.log().splitlines():
        if "[easymesh.access#info] {" in line:
            entries.append(json.loads(line.split("] ", 1)[1]))
    return entries


def stillServing(client: Client) -> None:
    """
    The channel still carries calls.
    """
    assert client.test.EmptyCall(client.pb.Empty(), timeout=DEADLINE) == client.pb.Empty()


# -- grpc's interop cases ----------------------------------------------------


def test_emptyUnary(client: Client) -> None:
    response, call = client.test.EmptyCall.with_call(client.pb.Empty(), timeout=DEADLINE)
    assert response == client.pb.Empty()
    assert call.code() == grpc.StatusCode.OK
    assert (BACKEND_NAME, "shared") in call.trailing_metadata()


def test_largeUnary(client: Client) -> None:
    pb = client.pb
    response = client.test.UnaryCall(
        pb.SimpleRequest(response_size=314159, payload=payload(pb, 271828)), timeout=DEADLINE
    )
    assert response.payload.body == bytes(314159)


def test_clientStreaming(client: Client) -> None:
    pb = client.pb
    sizes = [27182, 8, 1828, 45904]
    requests = (pb.StreamingInputCallRequest(payload=payload(pb, n)) for n in sizes)
    response = client.test.StreamingInputCall(requests, timeout=DEADLINE)
    assert response.aggregated_payload_size == 74922


def test_serverStreaming(client: Client) -> None:
    pb = client.pb
    sizes = [31415, 9, 2653, 58979]
    request = pb.StreamingOutputCallRequest(
        response_parameters=[pb.ResponseParameters(size=n) for n in sizes]
    )
    responses = client.test.StreamingOutputCall(request, timeout=DEADLINE)
    assert [len(r.payload.body) for r in responses] == sizes
    assert responses.code() == grpc.StatusCode.OK


def test_pingPong(client: Client) -> None:
    """
    Each request is answered before the next is sent: the messages of a
    bidirectional call are relayed as they come, not held for the end.
    """
    pb = client.pb
    requests = Requests()
    responses = client.test.FullDuplexCall(iter(requests), timeout=DEADLINE)
    try:
        for asked, sent in zip([31415, 9, 2653, 58979], [27182, 8, 1828, 45904]):
            requests.send(
                pb.StreamingOutputCallRequest(
                    response_parameters=[pb.ResponseParameters(size=asked)], payload=payload(pb, sent)
                )
            )
            assert len(next(responses).payload.body) == asked
    finally:
        requests.end()
    assert list(responses) == []
    assert responses.code() == grpc.StatusCode.OK


def test_emptyStream(client: Client) -> None:
    responses = client.test.FullDuplexCall(iter([]), timeout=DEADLINE)
    assert list(responses) == []
    assert responses.code() == grpc.StatusCode.OK


def test_customMetadata(client: Client) -> None:
    """
    Initial and trailing metadata, a binary value among them, come back
    from unary and bidirectional calls.
    """
    pb = client.pb
    binary = b"\x0a\x0b\x0a\x0b\x0a\x0b"
    metadata = ((ECHO_INITIAL, "test_initial_metadata_value"), (ECHO_TRAILING, binary))
    response, call = client.test.UnaryCall.with_call(
        pb.SimpleRequest(response_size=314159, payload=payload(pb, 271828)),
        metadata=metadata,
        timeout=DEADLINE,
    )
    assert len(response.payload.body) == 314159
    assert (ECHO_INITIAL, "test_initial_metadata_value") in call.initial_metadata()
    assert (ECHO_TRAILING, binary) in call.trailing_metadata()

    request = pb.StreamingOutputCallRequest(
        response_parameters=[pb.ResponseParameters(size=314159)], payload=payload(pb, 271828)
    )
    responses = client.test.FullDuplexCall(iter([request]), metadata=metadata, timeout=DEADLINE)
    assert [len(r.payload.body) for r in responses] == [314159]
    assert (ECHO_INITIAL, "test_initial_metadata_value") in responses.initial_metadata()
    assert (ECHO_TRAILING, binary) in responses.trailing_metadata()


@pytest.mark.parametrize(
    "message",
    ["test status message", "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"],
    ids=["status_code_and_message", "special_status_message"],
)
def test_statusCodeAndMessage(client: Client, message: str) -> None:
    """
    A status and message the backend sets reach the client whole, from a
    unary call (a Trailers-Only answer) and a bidirectional one.
    """
    pb = client.pb
    status = pb.EchoStatus(code=2, message=message)
    error = rpcError(lambda: client.test.UnaryCall(pb.SimpleRequest(response_status=status), timeout=DEADLINE))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNKNOWN, message)
    responses = client.test.FullDuplexCall(
        iter([pb.StreamingOutputCallRequest(response_status=status)]), timeout=DEADLINE
    )
    error = rpcError(lambda: list(responses))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNKNOWN, message)


def test_unimplementedMethod(client: Client) -> None:
    error = rpcError(lambda: client.test.UnimplementedCall(client.pb.Empty(), timeout=DEADLINE))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    stillServing(client)


def test_unimplementedService(client: Client) -> None:
    error = rpcError(lambda: client.unimplemented.UnimplementedCall(client.pb.Empty(), timeout=DEADLINE))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    stillServing(client)


def test_cancelAfterBegin(client: Client) -> None:
    requests = Requests()
    try:
        future = client.test.StreamingInputCall.future(iter(requests), timeout=DEADLINE)
        assert future.cancel()
        with pytest.raises(grpc.FutureCancelledError):
            future.result(timeout=DEADLINE)
        assert future.code() == grpc.StatusCode.CANCELLED
    finally:
        requests.end()
    stillServing(client)


def test_cancelAfterFirstResponse(client: Client) -> None:
    pb = client.pb
    requests = Requests()
    try:
        responses = client.test.FullDuplexCall(iter(requests), timeout=DEADLINE)
        requests.send(
            pb.StreamingOutputCallRequest(
                response_parameters=[pb.ResponseParameters(size=31415)], payload=payload(pb, 27182)
            )
        )
        assert len(next(responses).payload.body) == 31415
        assert responses.cancel()
        assert responses.code() == grpc.StatusCode.CANCELLED
    finally:
        requests.end()
    stillServing(client)


def test_timeoutOnSleepingServer(client: Client) -> None:
    pb = client.pb
    requests = Requests()
    try:
        responses = client.test.FullDuplexCall(iter(requests), timeout=0.001)
        requests.send(pb.StreamingOutputCallRequest(payload=payload(pb, 27182)))
        error = rpcError(lambda: list(responses))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        requests.end()
    stillServing(client)


# -- what a mesh must keep ---------------------------------------------------


@pytest.mark.slow
def test_concurrentCallsOnOneChannel(client: Client) -> None:
    """
    200 unary calls at once on one channel (twice the listener's
    C{SETTINGS_MAX_CONCURRENT_STREAMS}) all succeed, each with its own
    answer.
    """
    pb = client.pb
    futures = [
        client.test.UnaryCall.future(
            pb.SimpleRequest(response_size=1000 + i, payload=payload(pb, 2000 + i)), timeout=DEADLINE
        )
        for i in range(200)
    ]
    sizes = [len(f.result(timeout=DEADLINE).payload.body) for f in futures]
    assert sizes == [1000 + i for i in range(200)]


@pytest.mark.slow
def test_sixteenMebibytesEachWay(client: Client) -> None:
    """
    A 16 MiB request and a 16 MiB response in one unary call; and 16 MiB
    messages on a client stream and a server stream.
    """
    pb = client.pb
    size = 16 * MiB
    response = client.test.UnaryCall(
        pb.SimpleRequest(response_size=size, payload=payload(pb, size)), timeout=DEADLINE
    )
    assert len(response.payload.body) == size
    requests = (pb.StreamingInputCallRequest(payload=payload(pb, size)) for _ in range(2))
    assert client.test.StreamingInputCall(requests, timeout=DEADLINE).aggregated_payload_size == 2 * size
    request = pb.StreamingOutputCallRequest(response_parameters=[pb.ResponseParameters(size=size)] * 2)
    responses = client.test.StreamingOutputCall(request, timeout=DEADLINE)
    assert [len(r.payload.body) for r in responses] == [size, size]


def test_compressedMessagesPassUntouched(way: Way, backends: Backends, stubs: Stubs) -> None:
    """
    A gzip-compressed request (C{grpc-encoding: gzip}) and a compressed
    response pass the mesh as they are: the backend decodes the request
    (so its C{grpc-encoding} arrived), the client decodes the response,
    and each sidecar relays the compressed sizes, far below the 1 MiB of
    the messages.
    """
    backend = backends("gzip", gzip=True)
    target, options = way.connect([backend])
    c = Client(stubs, target, options, compression=grpc.Compression.Gzip)
    try:
        pb = c.pb
        response = c.test.UnaryCall(
            pb.SimpleRequest(response_size=MiB, payload=payload(pb, MiB)), timeout=DEADLINE
        )
        assert response.payload.body == bytes(MiB)
    finally:
        c.close()
    listeners = [] if way.name == "direct" else ["inbound", "outbound"]

    def logged() -> List[Dict[str, Any]]:
        return [
            e
            for sidecar in way.sidecars
            for e in accessLog(sidecar)
            if e["path"] == "/grpc.testing.TestService/UnaryCall"
        ]

    waitUntil(lambda: len(logged()) == len(listeners), 5.0, "the call in both access logs")
    calls = logged()
    assert sorted(e["listener"] for e in calls) == listeners
    for call in calls:
        assert 0 < call["bytes_in"] < 64 * 1024, call
        assert 0 < call["bytes_out"] < 64 * 1024, call


def test_backendKilledMidStream(way: Way, backends: Backends, stubs: Stubs) -> None:
    """
    A backend killed after a server stream's first message: the client's
    call ends UNAVAILABLE or INTERNAL, well before its deadline; never OK
    (a truncated stream passed for a whole one) nor UNKNOWN.
    """
    backend = backends("doomed")
    target, options = way.connect([backend])
    c = Client(stubs, target, options)
    try:
        pb = c.pb
        parameters = [pb.ResponseParameters(size=10)]
        parameters += [pb.ResponseParameters(size=10, interval_us=1_000_000) for _ in range(15)]
        responses = c.test.StreamingOutputCall(
            pb.StreamingOutputCallRequest(response_parameters=parameters), timeout=DEADLINE
        )
        assert len(next(responses).payload.body) == 10
        backend.kill()
        killed = time.monotonic()
        error = rpcError(lambda: list(responses))
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), (
            error.code(),
            error.details(),
        )
        assert time.monotonic() - killed < 5.0
    finally:
        c.close()


@pytest.mark.slow
def test_backendDownAndBack(way: Way, backends: Backends, stubs: Stubs) -> None:
    """
    While the backend is down, calls fail UNAVAILABLE at once; once it is
    back on its port, calls succeed again within a few seconds.
    """
    backend = backends("phoenix")
    target, options = way.connect([backend])
    c = Client(stubs, target, options)
    try:
        stillServing(c)
        backend.kill()
        for _ in range(5):
            started = time.monotonic()
            error = rpcError(lambda: c.test.EmptyCall(c.pb.Empty(), timeout=DEADLINE))
            assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
            assert time.monotonic() - started < 2.0
        backend.start()

        def served() -> bool:
            try:
                c.test.EmptyCall(c.pb.Empty(), timeout=1.0)
            except grpc.RpcError:
                return False
            return True

        waitUntil(served, 5.0, "a call served by the backend again", interval=0.1)
    finally:
        c.close()


@pytest.mark.slow
def test_perCallBalancing(way: Way, backends: Backends, stubs: Stubs) -> None:
    """
    60 calls on one channel (one connection to the sidecar) spread over
    three backends: each serves a fair share.
    """
    started = [backends(f"b{i}") for i in range(3)]
    target, options = way.connect(started)
    c = Client(stubs, target, options)
    try:
        served: Counter[str] = Counter()
        for _ in range(60):
            _, call = c.test.EmptyCall.with_call(c.pb.Empty(), timeout=DEADLINE)
            served.update(v for k, v in call.trailing_metadata() if k == BACKEND_NAME)
        assert sum(served.values()) == 60
        assert {name: served[name] >= 10 for name in ("b0", "b1", "b2")} == {
            "b0": True,
            "b1": True,
            "b2": True,
        }, served
    finally:
        c.close()


def _waitCounters(client: Client, what: str, predicate: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        counters = client.counters()
        if predicate(counters):
            return counters
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}; counters {counters}")
        time.sleep(POLL)


def test_deadlineCancelsBackendHandler(client: Client) -> None:
    """
    A call whose deadline passes ends DEADLINE_EXCEEDED on time, and the
    backend's handler is cancelled then rather than left to run.
    """
    before = client.counters()
    started = time.monotonic()
    error = rpcError(lambda: client.mesh.Sleep(client.meshpb.SleepRequest(millis=30_000), timeout=1.0))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3.0
    _waitCounters(
        client,
        "the backend's handler cancelled",
        lambda c: c.cancelled == before.cancelled + 1 and c.started == before.started + 1,
        3.0,
    )


def test_clientCancelCancelsBackendHandler(client: Client) -> None:
    """
    A call the client cancels (its RST_STREAM) is cancelled at the
    backend too, long before its deadline.
    """
    before = client.counters()
    future = client.mesh.Sleep.future(client.meshpb.SleepRequest(millis=30_000), timeout=DEADLINE)
    try:
        _waitCounters(client, "the call reached the backend", lambda c: c.started == before.started + 1, 5.0)
    finally:
        future.cancel()
    _waitCounters(
        client, "the backend's handler cancelled", lambda c: c.cancelled == before.cancelled + 1, 3.0
    )
    stillServing(client)


# -- gRPC health checks ------------------------------------------------------


def test_grpcHealthCheck(launch: Launcher, backends: Backends, stubs: Stubs, tmp_path: Path) -> None:
    """
    With C{health_check: {grpc: {service: ...}}}, an endpoint whose
    C{grpc.health.v1.Health} says NOT_SERVING for that service leaves
    rotation (every call goes to the other), and returns once it says
    SERVING again.
    """
    service = "grpc.testing.TestService"
    first, second = backends("first"), backends("second")
    for backend in (first, second):
        control = Client(stubs, f"127.0.0.1:{backend.port}", CHANNEL_OPTIONS)
        try:
            control.mesh.SetHealth(control.meshpb.HealthSetting(service=service, serving=True), timeout=DEADLINE)
        finally:
            control.close()
    config = tmp_path / "health.yaml"
    config.write_text(
        _clusterYaml([first, second])
        + f"    health_check: {{grpc: {{service: {service}}}, interval: 200ms, timeout: 1s,"
        " healthy_threshold: 1, unhealthy_threshold: 1}\n",
        encoding="utf-8",
    )
    sidecar = launch("--peer-protocol", "http2", "--config", str(config), upstream=first.url)
    c = Client(stubs, f"127.0.0.1:{sidecar.outbound}", CHANNEL_OPTIONS)
    control = Client(stubs, f"127.0.0.1:{first.port}", CHANNEL_OPTIONS)

    def servedBy(calls: int) -> Counter[str]:
        served: Counter[str] = Counter()
        for _ in range(calls):
            _, call = c.test.EmptyCall.with_call(c.pb.Empty(), timeout=DEADLINE)
            served.update(v for k, v in call.trailing_metadata() if k == BACKEND_NAME)
        return served

    try:
        assert set(servedBy(10)) == {"first", "second"}
        control.mesh.SetHealth(control.meshpb.HealthSetting(service=service, serving=False), timeout=DEADLINE)
        sidecar.waitForLog(lambda text: f"127.0.0.1:{first.port} is unhealthy" in text)
        assert servedBy(10) == Counter({"second": 10})
        control.mesh.SetHealth(control.meshpb.HealthSetting(service=service, serving=True), timeout=DEADLINE)
        sidecar.waitForLog(lambda text: f"127.0.0.1:{first.port} is healthy again" in text)
        assert set(servedBy(10)) == {"first", "second"}
        assert "NOT_SERVING" in sidecar.log()
    finally:
        c.close()
        control.close()
