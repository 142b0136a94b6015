"""
Benchmark easymesh against reference proxies, all in one run.

    python benchmarks/run.py [--rounds 3] [--duration 5] [--large] [--write]

Set-up (once): ``benchmarks/setup.sh`` installs wrk, nginx and aiohttp.

Rows: the backend alone; easymesh one hop (inbound -> backend) and two hops
(outbound -> inbound -> backend); Twisted's ReverseProxyResource; an aiohttp
proxy with a pooled session; nginx as a proxy (when installed).  The backend
is nginx when installed, else ``refs/backend.py`` (asyncio).  With two or
more cores, each proxy is pinned to core 0 and wrk and the backend to core
1.  Rounds are interleaved and medians reported.

HTTP/2 rows (when ``h2load`` is installed; Debian's nghttp2-client):
``easymesh-1hop-h2`` (h2load, 10 connections of 5 streams, to the inbound
listener over h2c), ``easymesh-2hop-h2hop`` (wrk to the outbound listener,
the hop between the listeners over h2c, ``--peer-protocol http2``), and
``nghttpx`` (Debian's nghttp2-proxy, h2c in front of the backend) beside
them.

``--baseline REV`` adds rows ``easymesh-1hop@REV`` and ``easymesh-2hop@REV``:
the same sidecar at git revision REV (a previous commit, say), run from a
copy of that revision in the same rounds, so that a change is measured
against what it changes.

gRPC rows (when grpcio is installed): ``grpc-direct`` (``refs/grpc_load.py``,
unary calls, 50 in flight on one channel, to ``refs/grpc_server.py``),
``easymesh-1hop-grpc`` (to the inbound listener, ``--upstream grpc://``) and
``easymesh-2hop-grpc`` (to the outbound listener, over an HTTP/2 hop).

``--large`` adds 1 GiB downloads and uploads through two hops of easymesh
and of nginx, with MB/s, peak RSS and a sha256 check of every byte.

``--tcp`` adds raw TCP: one connection downloading ``--tcp-size`` bytes
(1 GiB) from ``refs/tcp_source.py`` directly, through easymesh's tcp
listeners one and two hops, and through two nginx stream proxies (when
Debian's libnginx-mod-stream is installed), in MB/s with peak RSS.

``--websocket`` adds WebSocket round trips (``refs/ws_load.py``: 64-byte
messages echoed by ``refs/ws_echo.py``, 10 connections back to back)
directly, through easymesh one and two hops, and through two nginx
proxies, with CPU per round trip and peak RSS.

``--idle-streams`` adds the memory of 1,000 open HTTP/2 streams: 10 h2c
connections of 100 requests to the outbound listener of a pair whose app
never answers, with an HTTP/2 and with an HTTP/1.1 hop (RSS before and
once it has settled).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitForPort(port: int, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port} after {deadline}s")


def pin(core: Optional[int]) -> List[str]:
    if core is None or CORES < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(core)]


class Proc:
    """
    A started server process, with CPU time and peak RSS from /proc.
    """

    def __init__(self, name: str, argv: Sequence[str], port: int, core: Optional[int], env=None):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.popen = subprocess.Popen(
            pin(core) + list(argv), stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        waitForPort(port)

    def pids(self) -> List[int]:
        out = [self.popen.pid]
        with contextlib.suppress(OSError, ValueError):
            children = open(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children").read()
            out += [int(p) for p in children.split()]
        return out

    def cpuSeconds(self) -> float:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def rss(self) -> int:
        """
        The resident memory of the process (and its children) now.
        """
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def peakRSS(self) -> int:
        peak = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        return peak

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def nginxConf(directory: str, servers: str) -> str:
    path = os.path.join(directory, f"nginx-{len(os.listdir(directory))}.conf")
    with open(path, "w") as f:
        f.write(
            f"""
worker_processes 1;
daemon off;
pid {directory}/nginx-{os.getpid()}-{len(os.listdir(directory))}.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {directory};
    proxy_temp_path {directory};
    proxy_request_buffering off;
    proxy_buffering off;
    client_max_body_size 0;
    {servers}
}}
"""
        )
    return path


def startNginx(directory: str, name: str, port: int, servers: str, core: Optional[int]) -> Proc:
    conf = nginxConf(directory, servers)
    return Proc(name, ["nginx", "-p", directory, "-c", conf], port, core)


def startBackend(directory: str) -> "tuple[Proc, int, str]":
    port = freePort()
    if shutil.which("nginx"):
        servers = f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 100000;
        location / {{ default_type text/plain; return 200 "hello world\\n"; }}
    }}"""
        return startNginx(directory, "backend", port, servers, 1), port, "nginx"
    proc = Proc("backend", [PYTHON, os.path.join(HERE, "refs", "backend.py"), str(port)], port, 1)
    return proc, port, "refs/backend.py (asyncio)"


def checkout(revision: str, directory: str) -> str:
    """
    A copy of the repository at C{revision} (its tracked files), for the
    baseline rows; its path.
    """
    target = os.path.join(directory, "baseline")
    os.mkdir(target)
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", revision], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    return target


def startEasymesh(
    upstreamPort: int,
    hops: int,
    python: str = PYTHON,
    source: Optional[str] = None,
    extra: Sequence[str] = (),
    scheme: str = "http",
) -> "tuple[Proc, int]":
    """
    @param source: A copy of another revision to run instead of the
        installed one (its C{easymesh} package and plugins come first on
        the path).
    """
    env = None
    if source is not None:
        env = dict(os.environ, PYTHONPATH=source)
    outbound, inbound = freePort(), freePort()
    argv = [
        python, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "easymesh",
        "--outbound", str(outbound), "--inbound", str(inbound),
        "--upstream", f"{scheme}://127.0.0.1:{upstreamPort}",
        "--admin", f"tcp:{freePort()}:interface=127.0.0.1",
        *extra,
    ]
    proc = Proc(f"easymesh-{hops}hop", argv, inbound, 0, env)
    waitForPort(outbound)
    return proc, (outbound if hops == 2 else inbound)


def startReference(kind: str, upstreamPort: int, directory: str) -> "tuple[Proc, int]":
    port = freePort()
    if kind == "nghttpx":
        argv = [
            "nghttpx", f"--frontend=127.0.0.1,{port};no-tls", f"--backend=127.0.0.1,{upstreamPort}",
            "--workers=1", "--no-ocsp", "--log-level=ERROR", "--accesslog-file=/dev/null",
        ]  # fmt: skip
        return Proc(kind, argv, port, 0), port
    if kind == "nginx":
        servers = f"""
    upstream backend {{ server 127.0.0.1:{upstreamPort}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 100000;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
        return startNginx(directory, "nginx-proxy", port, servers, 0), port
    script = {"twisted-rproxy": "twisted_rproxy.py", "aiohttp": "aiohttp_proxy.py"}[kind]
    argv = [PYTHON, os.path.join(HERE, "refs", script), str(port), str(upstreamPort)]
    return Proc(kind, argv, port, 0), port


WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
WRK_REQUESTS = re.compile(r"(\d+) requests in")
WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)")
UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk(port: int, connections: int, duration: float) -> Dict[str, float]:
    out = subprocess.run(
        pin(1) + ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
                  f"http://127.0.0.1:{port}/bench?x=1"],
        capture_output=True, text=True, timeout=duration + 60,
    ).stdout
    latency = {m[0]: float(m[1]) * UNIT[m[2]] for m in WRK_LATENCY.findall(out)}
    errors = WRK_ERRORS.findall(out)
    if errors or not WRK_REQUESTS.search(out):
        raise RuntimeError(f"wrk saw errors on port {port}:\n{out}")
    return {
        "requests": int(WRK_REQUESTS.search(out).group(1)),
        "rps": float(WRK_RATE.search(out).group(1)),
        "p50": latency.get("50", float("nan")),
        "p99": latency.get("99", float("nan")),
    }


H2LOAD_RATE = re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s")
H2LOAD_DONE = re.compile(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed")
H2LOAD_TIME = re.compile(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)")


def h2load(port: int, clients: int, streams: int, duration: float) -> Dict[str, float]:
    """
    HTTP/2 load (prior-knowledge h2c): C{clients} connections of
    C{streams} concurrent streams each.
    """
    out = subprocess.run(
        pin(1) + ["h2load", "-c", str(clients), "-m", str(streams), "-D", str(max(1, round(duration))),
                  f"http://127.0.0.1:{port}/bench?x=1"],
        capture_output=True, text=True, timeout=duration + 60,
    ).stdout
    done, time = H2LOAD_DONE.search(out), H2LOAD_TIME.search(out)
    if not done or int(done.group(2)) or not time:
        raise RuntimeError(f"h2load saw errors on port {port}:\n{out}")
    return {
        "requests": int(done.group(1)),
        "rps": float(H2LOAD_RATE.search(out).group(1)),  # type: ignore[union-attr]
        "mean": float(time.group(5)) * UNIT[time.group(6)],
        "max": float(time.group(3)) * UNIT[time.group(4)],
    }


def measureH2(proc: Optional[Proc], port: int, duration: float, warmup: float = 1.0) -> Dict[str, float]:
    h2load(port, 10, 5, warmup)
    before = proc.cpuSeconds() if proc else 0.0
    loaded = h2load(port, 10, 5, duration)
    cpu = (proc.cpuSeconds() - before) if proc else 0.0
    single = h2load(port, 1, 1, max(2.0, duration / 2))
    return {
        "rps": loaded["rps"],
        "p50": loaded["mean"],
        "p99": loaded["max"],
        "cpu_us": cpu / loaded["requests"] * 1e6 if proc else float("nan"),
        "c1_p50": single["mean"],
        "rss": proc.peakRSS() if proc else 0,
    }


def measure(proc: Optional[Proc], port: int, duration: float, warmup: float = 1.0) -> Dict[str, float]:
    wrk(port, 50, warmup)  # warm up: pools filled, code paths hot (PyPy: JIT-compiled)
    before = proc.cpuSeconds() if proc else 0.0
    loaded = wrk(port, 50, duration)
    cpu = (proc.cpuSeconds() - before) if proc else 0.0
    single = wrk(port, 1, max(2.0, duration / 2))
    return {
        "rps": loaded["rps"],
        "p50": loaded["p50"],
        "p99": loaded["p99"],
        "cpu_us": cpu / loaded["requests"] * 1e6 if proc else float("nan"),
        "c1_p50": single["p50"],
        "c1_p99": single["p99"],
        "rss": proc.peakRSS() if proc else 0,
    }


def grpcLoad(port: int, concurrency: int, duration: float) -> Dict[str, float]:
    out = subprocess.run(
        pin(1) + [PYTHON, os.path.join(HERE, "refs", "grpc_load.py"), str(port), str(concurrency), str(duration)],
        capture_output=True, text=True, timeout=duration + 60,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"grpc_load failed on port {port}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def measureGrpc(proc: Optional[Proc], port: int, duration: float, warmup: float = 1.0) -> Dict[str, float]:
    """
    Unary gRPC calls, 50 in flight on one channel (C{refs/grpc_load.py});
    as for the HTTP/2 rows, p50 is the mean and p99 the maximum.
    """
    grpcLoad(port, 50, warmup)
    before = proc.cpuSeconds() if proc else 0.0
    loaded = grpcLoad(port, 50, duration)
    cpu = (proc.cpuSeconds() - before) if proc else 0.0
    single = grpcLoad(port, 1, max(2.0, duration / 2))
    return {
        "rps": loaded["rps"],
        "p50": loaded["mean"],
        "p99": loaded["max"],
        "cpu_us": cpu / loaded["calls"] * 1e6 if proc else float("nan"),
        "c1_p50": single["mean"],
        "rss": proc.peakRSS() if proc else 0,
    }


def hasGrpc() -> bool:
    import importlib.util

    return importlib.util.find_spec("grpc") is not None


def median(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def small(args: argparse.Namespace, directory: str) -> "tuple[List[Dict], str]":
    backend, backendPort, backendName = startBackend(directory)
    rows = ["backend", "easymesh-1hop", "easymesh-2hop", "twisted-rproxy", "aiohttp"]
    if shutil.which("nginx"):
        rows.append("nginx")
    if shutil.which("h2load"):
        rows += ["easymesh-1hop-h2", "easymesh-2hop-h2hop"]
        if shutil.which("nghttpx"):
            rows.append("nghttpx")
    if hasGrpc():
        rows += ["grpc-direct", "easymesh-1hop-grpc", "easymesh-2hop-grpc"]
    if args.rows:
        rows = ["backend"] + [r for r in rows if r in args.rows.split(",")]
    source = None
    if args.baseline:
        source = checkout(args.baseline, directory)
        rows += [f"{r}@{args.baseline}" for r in rows if r.startswith("easymesh")]
    results: Dict[str, List[Dict[str, float]]] = {r: [] for r in rows}
    grpcBackend: Optional[Proc] = None
    grpcPort = freePort()
    if any(r == "grpc-direct" or r.partition("@")[0].endswith("-grpc") for r in rows):
        grpcBackend = Proc(
            "grpc-backend", [PYTHON, os.path.join(HERE, "refs", "grpc_server.py"), str(grpcPort)], grpcPort, 1
        )
    try:
        for round in range(args.rounds):
            for row in rows:
                proc = None
                try:
                    grpc = row == "grpc-direct" or row.partition("@")[0].endswith("-grpc")
                    if row == "backend":
                        port = backendPort
                    elif row == "grpc-direct":
                        port = grpcPort
                    elif row.startswith("easymesh"):
                        name, _, revision = row.partition("@")
                        hops = int(name[len("easymesh-")])
                        h2hop = name.endswith("h2hop") or (grpc and hops == 2)
                        extra = ("--peer-protocol", "http2") if h2hop else ()
                        proc, port = startEasymesh(
                            grpcPort if grpc else backendPort,
                            hops,
                            args.easymesh_python,
                            source if revision else None,
                            extra,
                            "grpc" if grpc else "http",
                        )
                    else:
                        proc, port = startReference(row, backendPort, directory)
                    h2 = row.partition("@")[0].endswith("-h2") or row == "nghttpx"
                    run = measureGrpc if grpc else measureH2 if h2 else measure
                    results[row].append(run(proc, port, args.duration, args.warmup))
                finally:
                    if proc is not None:
                        proc.stop()
                print(f"round {round + 1} {row}: {results[row][-1]}", file=sys.stderr)
    finally:
        backend.stop()
        if grpcBackend is not None:
            grpcBackend.stop()
    table = []
    direct = median([r["c1_p50"] for r in results["backend"]])
    for row in rows:
        runs = results[row]
        table.append(
            {
                "row": row,
                "rps": median([r["rps"] for r in runs]),
                "p50_ms": median([r["p50"] for r in runs]) * 1e3,
                "p99_ms": median([r["p99"] for r in runs]) * 1e3,
                "added_ms": (median([r["c1_p50"] for r in runs]) - direct) * 1e3,
                "cpu_us": median([r["cpu_us"] for r in runs]),
                "rss_mb": max(r["rss"] for r in runs) / 2**20,
            }
        )
    return table, backendName


def ratios(table: List[Dict]) -> List[str]:
    by = {r["row"]: r for r in table}
    lines: List[str] = grpcRatios(by)
    if "easymesh-1hop" not in by or "twisted-rproxy" not in by or "easymesh-2hop" not in by:
        return lines
    one = by["easymesh-1hop"]
    for ref in ("twisted-rproxy", "aiohttp", "nginx"):
        if ref in by:
            lines.append(
                f"- CPU per request, {ref} / easymesh one hop: "
                f"{by[ref]['cpu_us'] / one['cpu_us']:.2f}x"
            )
    lines.append(
        f"- added latency at one connection, easymesh one hop / twisted-rproxy: "
        f"{one['added_ms'] / by['twisted-rproxy']['added_ms']:.2f}"
    )
    lines.append(
        f"- req/s, easymesh two hops / twisted-rproxy one hop: "
        f"{by['easymesh-2hop']['rps'] / by['twisted-rproxy']['rps']:.2f}x"
    )
    if "easymesh-1hop-h2" in by:
        h2 = by["easymesh-1hop-h2"]
        lines.append(
            f"- CPU per request, easymesh one hop HTTP/2 / HTTP/1.1: {h2['cpu_us'] / one['cpu_us']:.2f}x"
        )
        if "nghttpx" in by:
            lines.append(
                f"- CPU per request, nghttpx / easymesh one hop HTTP/2: "
                f"{by['nghttpx']['cpu_us'] / h2['cpu_us']:.2f}x"
            )
    if "easymesh-2hop-h2hop" in by:
        lines.append(
            f"- req/s, easymesh two hops with an HTTP/2 hop / with an HTTP/1.1 hop: "
            f"{by['easymesh-2hop-h2hop']['rps'] / by['easymesh-2hop']['rps']:.2f}x"
        )
    for row in table:
        name, _, revision = row["row"].partition("@")
        if revision and name in by:
            now = by[name]
            lines.append(
                f"- {name}, this revision / {revision}: CPU per request "
                f"{now['cpu_us'] / row['cpu_us']:.2f}x, p99 {now['p99_ms'] / row['p99_ms']:.2f}x, "
                f"req/s {now['rps'] / row['rps']:.2f}x"
            )
    return lines


# Large bodies.

def patternFile(directory: str, size: int) -> "tuple[str, str]":
    sys.path.insert(0, os.path.join(HERE, "refs"))
    from backend import PATTERN

    path = os.path.join(directory, "upload.bin")
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            chunk = PATTERN[: min(len(PATTERN), size - written)]
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    return path, digest.hexdigest()


def curlDownload(port: int, size: int) -> "tuple[float, str]":
    start = time.monotonic()
    curl = subprocess.Popen(
        pin(1) + ["curl", "-sS", "--fail", f"http://127.0.0.1:{port}/big?n={size}"],
        stdout=subprocess.PIPE,
    )
    digest, total = hashlib.sha256(), 0
    assert curl.stdout is not None
    while True:
        data = curl.stdout.read(1 << 20)
        if not data:
            break
        digest.update(data)
        total += len(data)
    if curl.wait() != 0 or total != size:
        raise RuntimeError(f"download failed: {total} of {size} bytes")
    return size / (time.monotonic() - start) / 1e6, digest.hexdigest()


def curlUpload(port: int, path: str) -> "tuple[float, str]":
    start = time.monotonic()
    out = subprocess.run(
        pin(1) + ["curl", "-sS", "--fail", "-X", "POST", "-H", "Content-Type: application/octet-stream",
                  "-T", path, f"http://127.0.0.1:{port}/upload"],
        capture_output=True, text=True, timeout=600,
    )
    if out.returncode:
        raise RuntimeError(f"upload failed: {out.stderr}")
    size, digest = out.stdout.split()
    return int(size) / (time.monotonic() - start) / 1e6, digest


def large(args: argparse.Namespace, directory: str) -> List[Dict]:
    size = args.large_size
    path, expected = patternFile(directory, size)
    backendPort = freePort()
    backend = Proc("large-backend", [PYTHON, os.path.join(HERE, "refs", "backend.py"), str(backendPort)], backendPort, 1)
    rows = []
    try:
        candidates = ["easymesh-2hop"] + (["nginx-2hop"] if shutil.which("nginx") else [])
        for name in candidates:
            if name == "easymesh-2hop":
                proc, port = startEasymesh(backendPort, 2, args.easymesh_python)
                procs = [proc]
            else:
                inner, innerPort = startReference("nginx", backendPort, directory)
                outer, port = startReference("nginx", innerPort, directory)
                procs = [outer, inner]
            try:
                down, downDigest = curlDownload(port, size)
                up, upDigest = curlUpload(port, path)
                rows.append(
                    {
                        "row": name,
                        "download_MBps": down,
                        "upload_MBps": up,
                        "intact": downDigest == expected and upDigest == expected,
                        "rss_mb": max(p.peakRSS() for p in procs) / 2**20,
                    }
                )
            finally:
                for p in procs:
                    p.stop()
            print(f"large {rows[-1]}", file=sys.stderr)
    finally:
        backend.stop()
    return rows


def openStreams(port: int, connections: int, streams: int) -> List[socket.socket]:
    """
    Open C{connections} prior-knowledge h2c connections to C{port}, each
    with C{streams} requests sent and left waiting.
    """
    from h2.config import H2Configuration
    from h2.connection import H2Connection

    sockets = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn = H2Connection(H2Configuration(client_side=True))
        conn.initiate_connection()
        for i in range(streams):
            conn.send_headers(
                conn.get_next_available_stream_id(),
                [(":method", "GET"), (":scheme", "http"), (":authority", "idle.test"), (":path", f"/idle/{i}")],
                end_stream=True,
            )
        sock.sendall(conn.data_to_send())
        sockets.append(sock)
    return sockets


def settledRSS(proc: Proc, limit: float = 20.0) -> int:
    """
    The process's RSS once it has stopped growing for a second (at most
    C{limit} seconds).
    """
    deadline = time.monotonic() + limit
    last = proc.rss()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = proc.rss()
        if now <= last:
            return now
        last = now
    return last


def idleStreams(args: argparse.Namespace) -> List[Dict]:
    """
    What 1,000 open HTTP/2 streams cost: 10 h2c connections of 100
    requests each to the outbound listener of a pair whose app accepts
    connections (in the kernel's backlog) and never answers, with an
    HTTP/2 and with an HTTP/1.1 hop.
    """
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4096)
    rows = []
    try:
        for hop in ("http2", "http1"):
            proc, port = startEasymesh(silent.getsockname()[1], 2, args.easymesh_python, None, ("--peer-protocol", hop))
            try:
                before = settledRSS(proc)
                sockets = openStreams(port, 10, 100)
                after = settledRSS(proc)
                for sock in sockets:
                    sock.close()
            finally:
                proc.stop()
            rows.append({"hop": hop, "idle_mb": before / 2**20, "streams_mb": after / 2**20})
            print(f"idle streams {rows[-1]}", file=sys.stderr)
    finally:
        silent.close()
    return rows


def wsLoad(port: int, connections: int, duration: float) -> Dict[str, float]:
    out = subprocess.run(
        pin(1) + [PYTHON, os.path.join(HERE, "refs", "ws_load.py"), str(port), str(connections), str(duration)],
        capture_output=True, text=True, timeout=duration + 60,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"ws_load failed on port {port}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def wsRows(args: argparse.Namespace, directory: str) -> List[Dict]:
    """
    WebSocket round trips (a 64-byte message and its echo, 10 connections
    back to back) directly to the app, through easymesh one and two hops,
    and through two nginx proxies, with the proxies' CPU per round trip
    and peak RSS (medians of C{--rounds}).
    """
    appPort = freePort()
    app = Proc("ws-app", [PYTHON, os.path.join(HERE, "refs", "ws_echo.py"), str(appPort)], appPort, 1)
    names = ["ws-direct", "easymesh-ws-1hop", "easymesh-ws-2hop"] + (["nginx-ws-2hop"] if shutil.which("nginx") else [])
    results: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    try:
        for _ in range(args.rounds):
            for name in names:
                procs: List[Proc] = []
                try:
                    if name == "ws-direct":
                        port = appPort
                    elif name.startswith("easymesh"):
                        proc, port = startEasymesh(appPort, int(name[-4]), args.easymesh_python)
                        procs = [proc]
                    else:
                        upgrade = """
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
        }}
    }}"""
                        innerPort, port = freePort(), freePort()
                        inner = startNginx(directory, "nginx-ws-inner", innerPort, upgrade.format(port=innerPort, upstream=appPort), 0)
                        outer = startNginx(directory, "nginx-ws-outer", port, upgrade.format(port=port, upstream=innerPort), 0)
                        procs = [outer, inner]
                    wsLoad(port, 10, args.warmup)
                    before = sum(p.cpuSeconds() for p in procs)
                    loaded = wsLoad(port, 10, args.duration)
                    cpu = sum(p.cpuSeconds() for p in procs) - before
                    results[name].append(
                        {
                            "rps": loaded["rps"],
                            "mean": loaded["mean"],
                            "cpu_us": cpu / loaded["count"] * 1e6 if procs else float("nan"),
                            "rss": max((p.peakRSS() for p in procs), default=0),
                        }
                    )
                finally:
                    for p in procs:
                        p.stop()
                print(f"ws {name}: {results[name][-1]}", file=sys.stderr)
    finally:
        app.stop()
    return [
        {
            "row": name,
            "rps": median([r["rps"] for r in runs]),
            "mean_ms": median([r["mean"] for r in runs]) * 1e3,
            "cpu_us": median([r["cpu_us"] for r in runs]),
            "rss_mb": median([r["rss"] for r in runs]) / 2**20,
        }
        for name, runs in results.items()
    ]


def tcpDownload(port: int, size: int) -> float:
    """
    Read C{size} bytes from a connection to C{port} (pinned like wrk);
    MB/s.
    """
    code = (
        "import socket, sys, time\n"
        "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=60)\n"
        "buf = bytearray(1 << 20); view = memoryview(buf); left = int(sys.argv[2]); t = time.monotonic()\n"
        "while left > 0:\n"
        "    n = s.recv_into(view)\n"
        "    if not n: raise SystemExit('closed early')\n"
        "    left -= n\n"
        "print(time.monotonic() - t)\n"
    )
    out = subprocess.run(
        pin(1) + [PYTHON, "-c", code, str(port), str(size)], capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(f"TCP download from {port} failed: {out.stderr[-1000:]}")
    return size / float(out.stdout) / 1e6


def tcpRows(args: argparse.Namespace, directory: str) -> List[Dict]:
    """
    Raw TCP through tcp listeners: MB/s of one connection downloading
    C{--tcp-size} bytes, direct, through easymesh one and two hops, and
    through two nginx stream proxies, with the proxies' peak RSS (medians
    of C{--rounds}).
    """
    size = args.tcp_size
    sourcePort = freePort()
    source = Proc("tcp-source", [PYTHON, os.path.join(HERE, "refs", "tcp_source.py"), str(sourcePort), str(size)],
                  sourcePort, 1)  # fmt: skip
    names = ["tcp-direct", "easymesh-tcp-1hop", "easymesh-tcp-2hop"]
    stream = os.path.exists("/usr/lib/nginx/modules/ngx_stream_module.so") and shutil.which("nginx")
    if stream:
        names.append("nginx-tcp-2hop")
    results: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    try:
        for _ in range(args.rounds):
            for name in names:
                procs: List[Proc] = []
                try:
                    if name == "tcp-direct":
                        port = sourcePort
                    elif name.startswith("easymesh"):
                        proc, port = startTCPEasymesh(directory, sourcePort, int(name[-4]), args.easymesh_python)
                        procs = [proc]
                    else:
                        inner, innerPort = startTCPNginx(directory, sourcePort)
                        outer, port = startTCPNginx(directory, innerPort)
                        procs = [outer, inner]
                    mbps = tcpDownload(port, size)
                    results[name].append({"mbps": mbps, "rss": max((p.peakRSS() for p in procs), default=0)})
                finally:
                    for p in procs:
                        p.stop()
                print(f"tcp {name}: {results[name][-1]}", file=sys.stderr)
    finally:
        source.stop()
    return [
        {
            "row": name,
            "mbps": median([r["mbps"] for r in runs]),
            "rss_mb": median([r["rss"] for r in runs]) / 2**20,
        }
        for name, runs in results.items()
    ]


def startTCPEasymesh(directory: str, sourcePort: int, hops: int, python: str) -> "tuple[Proc, int]":
    first, second = freePort(), freePort()
    config = os.path.join(directory, f"tcp-{first}.yaml")
    listeners = f"""listeners:
  - name: tcp-in
    address: tcp:{second}:interface=127.0.0.1
    protocol: tcp
    cluster: source
"""
    clusters = f"""clusters:
  source:
    endpoints: ["tcp://127.0.0.1:{sourcePort}"]
"""
    if hops == 2:
        listeners += f"""  - name: tcp-out
    address: tcp:{first}:interface=127.0.0.1
    protocol: tcp
    cluster: hop
"""
        clusters += f"""  hop:
    endpoints: ["tcp://127.0.0.1:{second}"]
"""
    with open(config, "w") as f:
        f.write(listeners + clusters)
    argv = [
        python, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "easymesh",
        "--config", config, "--outbound", str(freePort()), "--inbound", f"tcp:{freePort()}:interface=127.0.0.1",
        "--demo", str(freePort()), "--admin", f"tcp:{freePort()}:interface=127.0.0.1",
    ]  # fmt: skip
    port = first if hops == 2 else second
    proc = Proc(f"easymesh-tcp-{hops}hop", argv, port, 0)
    return proc, port


def startTCPNginx(directory: str, upstreamPort: int) -> "tuple[Proc, int]":
    port = freePort()
    path = os.path.join(directory, f"nginx-stream-{port}.conf")
    with open(path, "w") as f:
        f.write(
            f"""
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
pid {directory}/nginx-stream-{port}.pid;
error_log stderr error;
events {{ worker_connections 1024; }}
stream {{
    server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{upstreamPort}; }}
}}
"""
        )
    return Proc("nginx-stream", ["nginx", "-p", directory, "-c", path], port, 0), port


def versions(backendName: str, args: argparse.Namespace) -> str:
    def version(argv: List[str]) -> str:
        with contextlib.suppress(Exception):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        return "not installed"

    import twisted

    return "\n".join(
        [
            f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"- machine: {platform.machine()}, {CORES} cores, {platform.processor() or platform.uname().release}",
            f"- Python: {platform.python_implementation()} {platform.python_version()}, Twisted {twisted.__version__}"
            + (f"; easymesh on {version([args.easymesh_python, '--version'])}" if args.easymesh_python != PYTHON else ""),
            f"- backend: {backendName}; wrk: {version(['wrk', '-v'])}; nginx: {version(['nginx', '-v'])}",
            f"- pinning: {'proxy on core 0, wrk and backend on core 1' if CORES >= 2 else 'none (one core)'}",
        ]
    )


def grpcRatios(by: Dict[str, Dict]) -> List[str]:
    """
    CPU per unary gRPC call per hop against easymesh's CPU per HTTP/1.1
    request (one hop) in the same run, and calls per second against
    grpcio alone.
    """
    lines: List[str] = []
    http1 = by.get("easymesh-1hop")
    for name, hops in (("easymesh-1hop-grpc", 1), ("easymesh-2hop-grpc", 2)):
        row = by.get(name)
        if row is None:
            continue
        if http1 is not None:
            lines.append(
                f"- CPU per unary gRPC call per hop, {name} / easymesh-1hop's per HTTP/1.1 request: "
                f"{row['cpu_us'] / hops / http1['cpu_us']:.2f}x"
            )
        if "grpc-direct" in by:
            lines.append(f"- calls/s, {name} / grpc-direct: {row['rps'] / by['grpc-direct']['rps']:.2f}x")
    return lines


def render(
    table: List[Dict],
    largeRows: List[Dict],
    args: argparse.Namespace,
    backendName: str,
    idleRows: Sequence[Dict] = (),
    tcp: Sequence[Dict] = (),
    ws: Sequence[Dict] = (),
) -> str:
    lines = [
        "## Environment", "", versions(backendName, args), "",
        f"## Small requests (wrk -c50 for {args.duration:g}s, medians of {args.rounds} interleaved rounds)", "",
        "| row | req/s | p50 ms | p99 ms | added ms (c1 p50) | CPU µs/req | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['row']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['added_ms']:.3f} | {r['cpu_us']:.0f} | {r['rss_mb']:.1f} |"
        )
    if any(r["row"].endswith(("-h2", "grpc")) or r["row"] in ("nghttpx", "grpc-direct") for r in table):
        lines += [
            "",
            "HTTP/2 rows (`-h2`, `nghttpx`) are h2load, 10 connections of 5 streams; gRPC rows (`grpc`) are "
            "`refs/grpc_load.py`, unary calls, 50 in flight on one channel. Neither reports percentiles, so "
            "their p50 is the mean and their p99 the maximum.",
        ]
    lines += ["", "Ratios:", ""] + ratios(table)
    if largeRows:
        lines += [
            "", f"## Large bodies ({args.large_size / 2**30:g} GiB each way, two hops)", "",
            "| row | download MB/s | upload MB/s | bytes intact | peak RSS MB |",
            "|---|---:|---:|---|---:|",
        ]
        for r in largeRows:
            lines.append(
                f"| {r['row']} | {r['download_MBps']:.0f} | {r['upload_MBps']:.0f} | "
                f"{'yes' if r['intact'] else 'NO'} | {r['rss_mb']:.1f} |"
            )
    if ws:
        lines += [
            "", "## WebSocket (64-byte messages echoed, 10 connections back to back)", "",
            "| row | round trips/s | mean ms | CPU µs/round trip | peak RSS MB |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in ws:
            lines.append(
                f"| {r['row']} | {r['rps']:.0f} | {r['mean_ms']:.2f} | {r['cpu_us']:.0f} | {r['rss_mb']:.1f} |"
            )
    if tcp:
        lines += [
            "", f"## Raw TCP ({args.tcp_size / 2**20:g} MiB downloaded through tcp listeners, one connection)", "",
            "| row | MB/s | peak RSS MB |",
            "|---|---:|---:|",
        ]
        for r in tcp:
            lines.append(f"| {r['row']} | {r['mbps']:.0f} | {r['rss_mb']:.1f} |")
        by = {r["row"]: r for r in tcp}
        if "nginx-tcp-2hop" in by:
            lines += [
                "",
                f"- MB/s, easymesh two hops / nginx two hops: "
                f"{by['easymesh-tcp-2hop']['mbps'] / by['nginx-tcp-2hop']['mbps']:.2f}x",
            ]
    if idleRows:
        lines += [
            "", "## 1,000 open HTTP/2 streams (10 h2c connections of 100, two hops, the app never answers)", "",
            "| hop | RSS idle MB | RSS with the streams open MB | added MB |",
            "|---|---:|---:|---:|",
        ]
        for r in idleRows:
            lines.append(
                f"| {r['hop']} | {r['idle_mb']:.1f} | {r['streams_mb']:.1f} | {r['streams_mb'] - r['idle_mb']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rows", help="comma-separated rows to run (default: all)")
    parser.add_argument(
        "--easymesh-python", default=PYTHON,
        help="the interpreter easymesh runs on (e.g. a PyPy venv's python); references run on this one",
    )
    parser.add_argument(
        "--baseline", metavar="REV", help="also measure easymesh at this git revision, in the same rounds"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--large-size", type=int, default=2**30)
    parser.add_argument(
        "--idle-streams", action="store_true", help="also measure the memory of 1,000 open HTTP/2 streams"
    )
    parser.add_argument("--tcp", action="store_true", help="also measure raw TCP through tcp listeners")
    parser.add_argument("--websocket", action="store_true", help="also measure WebSocket round trips")
    parser.add_argument("--tcp-size", type=int, default=1 << 30)
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS.md")
    parser.add_argument("--json", help="also write raw results to this file")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: run benchmarks/setup.sh")
    with tempfile.TemporaryDirectory(prefix="easymesh-bench-") as directory:
        table, backendName = small(args, directory)
        largeRows = large(args, directory) if args.large else []
        tcp = tcpRows(args, directory) if args.tcp else []
        ws = wsRows(args, directory) if args.websocket else []
    idleRows = idleStreams(args) if args.idle_streams else []
    text = render(table, largeRows, args, backendName, idleRows, tcp, ws)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"small": table, "large": largeRows, "idle_streams": idleRows, "tcp": tcp, "websocket": ws}, f, indent=2
            )
    if args.write:
        with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
            f.write("# Benchmark results\n\nMade by `python benchmarks/run.py --large --write`.\n\n" + text)


if __name__ == "__main__":
    main()
