"""The manager's CPU with many idle sessions, and aggregating WatchMetrics
(issue 9, P7), each against a bare grpc.aio process doing the same job in
the same run.

Simulated containers run in a few processes (SIM): each holds its share of
Lifecycle sessions over one channel with the connector's channel options,
beats as the real connector does (every RegistrationAck.heartbeat_interval,
the first at a random phase so beats spread evenly), and serves
Management.WatchMetrics on its own port with a realistic snapshot (process
figures, 4 RPC methods with latency histograms, 4 app metrics) at the
interval asked.

- idle: the CPU of the server process over a window while N sessions are
  connected and idle. Bare (BARE_SERVER): a grpc.aio server holding as many
  bidirectional streams with the same traffic: its ack advertises the
  heartbeat interval the manager's does, it answers each heartbeat (bytes
  built once), and gRPC keepalive pings each connection at the manager's
  liveness bound. The ratio is pycontainer's cost per session over grpcio's;
  the figure itself is what the target bounds.
- metrics: the same, while one watcher (WATCHER, raw bytes) follows
  WatchMetrics of all N containers at 1 s. Bare: the same bare server, also
  serving an aggregator that opens one WatchMetrics stream per container (a
  channel per container, as the manager dials them) and forwards their bytes,
  merged and tagged with the container id, to its caller.

CPU is user + system time of the server process (psutil) over the window,
in % of one core.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

from pycontainer.manager import ManagerSettings

_MS = datetime.timedelta(milliseconds=1)

# A simulated container process: argv target first count mode metrics_port.
SIM = r"""
import asyncio, random, sys, grpc
from pycontainer import units
from pycontainer.agent._connector import _CHANNEL_OPTIONS
from pycontainer.v1 import container_pb2, lifecycle_pb2, lifecycle_pb2_grpc, management_pb2
from pycontainer.v1 import metrics_pb2

target, mode = sys.argv[1], sys.argv[4]
first, count, mport = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])

def snapshot_bytes():
    r = management_pb2.WatchMetricsResponse()
    s = r.snapshot
    s.time.GetCurrentTime()
    s.interval.FromMilliseconds(1000)
    p = s.process
    p.pid, p.cpu_user_seconds, p.cpu_system_seconds, p.cpu_percent = 4242, 12.5, 3.25, 7.5
    p.rss_bytes, p.vms_bytes, p.threads = 80 << 20, 900 << 20, 12
    p.open_fds, p.context_switches = 40, 123456
    p.uptime.FromSeconds(3600)
    bounds = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]
    for m in ("/app.v1.Orders/Create", "/app.v1.Orders/Get", "/app.v1.Orders/List",
              "/grpc.health.v1.Health/Check"):
        rm = s.rpc_methods.add(method=m, calls_started=100000, calls_ok=99000, calls_failed=1000,
            calls_in_flight=3, calls_per_second=250.0, messages_received=100000,
            messages_sent=100000, bytes_received=12345678, bytes_sent=23456789)
        rm.status_codes["OK"] = 99000
        rm.status_codes["UNAVAILABLE"] = 1000
        h = rm.latency_seconds
        h.count, h.sum, h.min, h.max = 100000, 123.4, 0.0002, 0.9
        h.explicit_bounds.extend(bounds)
        h.bucket_counts.extend([50000, 30000, 10000, 5000, 3000, 1500, 400, 100])
    for name in ("orders_created", "queue_depth", "cache_hits", "db_latency"):
        met = s.metrics.add(name=name, description="an app metric", unit="1",
            kind=metrics_pb2.METRIC_KIND_COUNTER, scope="app")
        pt = met.points.add(as_int=123456)
        pt.attributes["region"] = "eu-west-1"
        pt.start_time.GetCurrentTime()
    return r.SerializeToString()

SNAPSHOT = snapshot_bytes()

async def watch(request, context):
    req = management_pb2.WatchMetricsRequest.FromString(request)
    every = 1.0
    if req.HasField("interval"):
        every = units.duration_from_proto(req.interval).total_seconds()
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        yield SNAPSHOT
        due += every
        await asyncio.sleep(max(0.0, due - loop.time()))

async def session(stub, i, ready, admitting):
    identity = container_pb2.ContainerIdentity(id=f"p7-{i}", name=f"p7-{i}", labels={"bench": "p7"})
    if mport:
        identity.endpoints.add(name="management", kind=container_pb2.ENDPOINT_KIND_MANAGEMENT,
            address=f"127.0.0.1:{mport}")
    registration = lifecycle_pb2.ConnectRequest(register=lifecycle_pb2.Registration(
        identity=identity, state=container_pb2.LIFECYCLE_STATE_RUNNING, pid=i))
    async def beat(queue, interval):
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            queue.put_nowait(lifecycle_pb2.ConnectRequest(heartbeat=lifecycle_pb2.Heartbeat(
                time=units.timestamp_to_proto(__import__("time").time()))))
            await asyncio.sleep(interval)
    registered = False
    while True:  # as the connector does: a session that fails is dialled again
        queue = asyncio.Queue()
        queue.put_nowait(registration)
        async def requests():
            while True:
                yield await queue.get()
        beats = None
        await admitting.acquire()  # a bounded storm of registrations
        admitted = True
        try:
            async for response in stub(requests()):
                if beats is not None:
                    continue
                admitting.release()
                admitted = False
                if not registered:
                    registered = True
                    ready.release()
                ack = response.registered
                if ack.HasField("heartbeat_interval"):
                    interval = units.duration_from_proto(ack.heartbeat_interval).total_seconds()
                    if interval > 0:
                        beats = asyncio.ensure_future(beat(queue, interval))
                beats = beats or asyncio.get_running_loop().create_future()
        except grpc.aio.AioRpcError:
            pass
        finally:
            if admitted:
                admitting.release()
            if beats is not None:
                beats.cancel()
        await asyncio.sleep(random.uniform(0.2, 1.0))

async def main():
    if mport:
        server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100000)])
        handler = grpc.unary_stream_rpc_method_handler(watch)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "pycontainer.v1.Management", {"WatchMetrics": handler}),))
        server.add_insecure_port(f"127.0.0.1:{mport}")
        await server.start()
    async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        if mode == "manager":
            stub = lifecycle_pb2_grpc.LifecycleStub(channel).Connect
        else:
            stub = channel.stream_stream("/bench.Hold/Hold",
                request_serializer=lifecycle_pb2.ConnectRequest.SerializeToString,
                response_deserializer=lifecycle_pb2.ConnectResponse.FromString)
        ready, admitting = asyncio.Semaphore(0), asyncio.Semaphore(50)
        tasks = [asyncio.ensure_future(session(stub, first + i, ready, admitting))
                 for i in range(count)]
        for _ in range(count):
            await ready.acquire()
        print("ready", flush=True)
        await asyncio.gather(*tasks)
asyncio.run(main())
"""

# The bare server: argv listen keepalive_ms timeout_ms heartbeat_ms [targets
# file]. Holds Lifecycle-shaped streams (an ack advertising the manager's
# heartbeat interval, then an answer to each heartbeat, gRPC keepalive at the
# manager's liveness bound) and aggregates WatchMetrics of the targets (lines
# "id address").
BARE_SERVER = r"""
import asyncio, sys, grpc
from pycontainer.v1 import lifecycle_pb2
listen = sys.argv[1]
keepalive, timeout, beat_ms = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
targets = [line.split() for line in open(sys.argv[5])] if len(sys.argv) > 5 else []
ack = lifecycle_pb2.ConnectResponse(registered=lifecycle_pb2.RegistrationAck())
ack.registered.heartbeat_interval.FromMilliseconds(beat_ms)
ACK = ack.SerializeToString()
REPLY = lifecycle_pb2.ConnectResponse(heartbeat=lifecycle_pb2.Heartbeat()).SerializeToString()

async def hold(request_iterator, context):
    # The registration gets the ack, each heartbeat its answer (undecoded).
    answer = ACK
    async for _ in request_iterator:
        yield answer
        answer = REPLY

def tag(cid):
    # MetricsSnapshot.container_id (6) in WatchMetricsResponse.snapshot (1).
    raw = cid.encode()
    inner = bytes([0x32, len(raw)]) + raw
    return bytes([0x0A, len(inner)]) + inner

async def watch(request, context):
    queue = asyncio.Queue(maxsize=64)
    channels = []
    async def pump(cid, address):
        channel = grpc.aio.insecure_channel(address)
        channels.append(channel)
        suffix = tag(cid)
        async for raw in channel.unary_stream("/pycontainer.v1.Management/WatchMetrics")(request):
            await queue.put(raw + suffix)
    tasks = [asyncio.ensure_future(pump(c, a)) for c, a in targets]
    try:
        while True:
            yield await queue.get()
    finally:
        for t in tasks:
            t.cancel()
        for c in channels:
            await c.close(None)

async def main():
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 20000),
        ("grpc.server.max_pending_requests_hard_limit", 40000),
        ("grpc.max_concurrent_streams", 100000),
        ("grpc.keepalive_time_ms", keepalive), ("grpc.keepalive_timeout_ms", timeout),
        ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Hold", {
        "Hold": grpc.stream_stream_rpc_method_handler(hold)}),
        grpc.method_handlers_generic_handler("bench.Agg", {
        "Watch": grpc.unary_stream_rpc_method_handler(watch)})))
    server.add_insecure_port(listen)
    await server.start()
    print("serving", flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""

# The watcher: argv target method count. Follows one merged stream (raw
# bytes), prints "ready" once it has `count` snapshots, then on each line of
# stdin the number received so far.
WATCHER = r"""
import asyncio, sys, grpc
from pycontainer.v1 import manager_pb2
target, method, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
received = 0
async def main():
    global received
    request = manager_pb2.ManagerWatchMetricsRequest(label_selector="bench=p7").SerializeToString()
    async with grpc.aio.insecure_channel(target) as channel:
        async def follow():
            global received
            async for _ in channel.unary_stream(method)(request):
                received += 1
                if received == count:
                    print("ready", flush=True)
        task = asyncio.ensure_future(follow())
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            if task.done():
                task.result()
            print(received, flush=True)
asyncio.run(main())
"""


@dataclass(frozen=True)
class CpuFigure:
    """CPU of a server process over a window, in % of one core, and the
    snapshots a watcher got per second over the same window (0 without one)."""

    cpu_percent: float
    snapshots_per_second: float = 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _liveness_ms() -> tuple[int, int, int]:
    """The manager's defaults in ms: keepalive ping interval and timeout (its
    liveness bound), and the heartbeat interval its RegistrationAck advertises."""
    settings = ManagerSettings()
    interval = int(settings.heartbeat_interval.total_seconds() * 1000)
    beat = int(getattr(settings, "idle_heartbeat_interval", settings.heartbeat_interval) / _MS)
    return interval, interval * max(1, settings.lost_after_heartbeats - 1), beat


def _readline(proc: subprocess.Popen[str], what: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} exited ({proc.wait(5)}) before answering")
    return line.strip()


def _cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of every thread of ``proc``, to the nanosecond: the scheduler's
    own account (/proc/PID/task/TID/schedstat), not /proc/PID/stat's 10 ms
    ticks, so that a window of a few seconds resolves a fraction of a percent.
    A thread that ends inside a window takes its time with it (the servers'
    threads live as long as they do)."""
    total = 0
    for task in os.scandir(f"/proc/{proc.pid}/task"):
        try:
            with open(f"{task.path}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended since the listing
    return total / 1e9


@contextlib.contextmanager
def _server(bare: bool, targets: list[tuple[str, str]]) -> Iterator[tuple[str, int, int]]:
    """(address, pid, port of the first sim's metrics server) of a manager or
    a bare server; sims for ``targets`` will serve at the ports given."""
    port = _free_port()
    target = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-p7-") as state:
        if bare:
            keepalive, timeout, beat = _liveness_ms()
            command = [sys.executable, "-c", BARE_SERVER, target, str(keepalive), str(timeout)]
            command.append(str(beat))
            if targets:
                listing = f"{state}/targets"
                with open(listing, "w") as f:
                    f.writelines(f"{cid} {address}\n" for cid, address in targets)
                command.append(listing)
        else:
            # The manager as it ships, with its default heartbeat; plaintext
            # because the simulated containers dial plaintext.
            command = [sys.executable, "-m", "pycontainer.cli", "manager", "--listen", target]
            command += ["--state-dir", state, "--insecure"]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            _readline(server, "the server")
            yield target, server.pid, port
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@dataclass
class Held:
    """A server holding its sessions (and a watcher following them): CPU
    figures over windows of it, as many as asked."""

    pid: int
    watcher: subprocess.Popen[str] | None

    def window(self, seconds: float) -> CpuFigure:
        server = psutil.Process(self.pid)
        before = _cpu_seconds(server)
        got_before = _ask(self.watcher)
        t0 = time.perf_counter()
        time.sleep(seconds)
        busy = _cpu_seconds(server) - before
        got = _ask(self.watcher) - got_before
        elapsed = time.perf_counter() - t0
        return CpuFigure(100.0 * busy / elapsed, got / elapsed)


@contextlib.contextmanager
def held(sessions: int, processes: int, bare: bool, metrics: bool) -> Iterator[Held]:
    """A manager (or the bare server) holding ``sessions`` idle sessions from
    ``processes`` sim processes; with ``metrics``, while a watcher follows
    all their WatchMetrics at 1 s."""
    per = sessions // processes
    ports = [_free_port() if metrics else 0 for _ in range(processes)]
    targets = [
        (f"p7-{p * per + i}", f"127.0.0.1:{ports[p]}")
        for p in range(processes)
        for i in range(per)
        if metrics
    ]
    with contextlib.ExitStack() as stack:
        target, pid, _ = stack.enter_context(_server(bare, targets))
        sims = []
        for p in range(processes):
            mode = "bare" if bare else "manager"
            command = [sys.executable, "-c", SIM, target, str(p * per), str(per), mode]
            # Its stderr is grpc.aio's noise about streams that failed and were dialled again.
            sim = subprocess.Popen(
                [*command, str(ports[p])],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            stack.callback(_end, sim)
            sims.append(sim)
        for sim in sims:
            if _readline(sim, "a simulated container process") != "ready":
                raise RuntimeError("a simulated container process did not connect")
        watcher = None
        if metrics:
            method = "/bench.Agg/Watch" if bare else "/pycontainer.v1.Manager/WatchMetrics"
            watcher = subprocess.Popen(
                [sys.executable, "-c", WATCHER, target, method, str(per * processes)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            stack.callback(_end, watcher)
            if _readline(watcher, "the watcher") != "ready":
                raise RuntimeError("the watcher got no snapshots")
        time.sleep(2.0)  # registrations and the first snapshots settle
        yield Held(pid, watcher)


def measure(sessions: int, processes: int, bare: bool, window: float, metrics: bool) -> CpuFigure:
    """One window of a server set up for it (see held)."""
    with held(sessions, processes, bare, metrics) as server:
        return server.window(window)


def _ask(watcher: subprocess.Popen[str] | None) -> int:
    if watcher is None:
        return 0
    assert watcher.stdin is not None
    watcher.stdin.write("\n")
    watcher.stdin.flush()
    return int(_readline(watcher, "the watcher"))


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
