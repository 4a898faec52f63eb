"""The mesh at scale (issue 10): the control plane's RSS and CPU with 1,000
endpoints in 100 services and 50 subscribed xDS clients, and a push's
fan-out time to them, each against a bare grpc.aio process doing the same
job in the same run.

    .venv/bin/python -m bench.mesh_fleet [--services 100] [--replicas 10] [--clients 50]

Three processes a side:

- the server: the manager (bench/_mesh_manager.py: the manager as it ships,
  plaintext, its process runtime replaced by one that only writes each
  launched id down) holding 100 specs of 10 replicas, each spec naming its
  service (``service: {name: svc-N}``); or BARE, a grpc.aio server answering
  the same Lifecycle streams (an ack to each registration, undecoded
  otherwise) and the same ADS streams with the same bytes (the manager's own
  resources for the same fleet, serialized once: bench/mesh_fleet._bare_bytes);
- the fleet (FLEET): 1,000 Lifecycle sessions over one channel, each
  registering RUNNING with a "grpc" endpoint, under the ids the manager
  launched (bare: ids of its own). On a command it drops one session or
  opens it again: one endpoint leaving or joining its service (a lost
  session takes a container out of the mesh at once), noting the time
  (CLOCK_MONOTONIC, shared by processes);
- the clients (CLIENTS): 50 ADS streams, a channel (and connection) each,
  subscribed as grpcio's xDS client ends up subscribed when it dials every
  service: Listener, RouteConfiguration, Cluster and ClusterLoadAssignment,
  each by its 100 names, ACKing every response (version and nonce) as it
  arrives.

Measured on each side, both held at once and measured in alternating
windows (the same noise for both):

- RSS of the server process, the clients subscribed (the manager's RSS
  before they subscribed goes in the note);
- CPU (% of a core, schedstat: bench/manager_cpu._cpu_seconds) over a window
  in which the fleet changes one endpoint CHURN_RATE times a second, each
  change pushed to the 50 clients (the bare server pushes the same bytes on
  each change); its CPU idle (no change) in the note;
- fan-out: from one endpoint change (the fleet drops or reopens a session)
  until the last of the 50 clients has its ClusterLoadAssignment and queued
  its ACK.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from pycontainer.v1 import manager_pb2, manager_pb2_grpc, mesh_pb2, spec_pb2

from .harness import ROOT
from .manager_cpu import _cpu_seconds
from .manager_scale import _free_port

#: Endpoint changes a second during the CPU window.
CHURN_RATE = 10.0
_TIMEOUT = 120.0

# The fleet: argv target mode count launches_file. Commands on stdin:
# "flip K" (drops session K, or opens it again: answers "at T", the
# monotonic time of the change),
# "churn SECONDS RATE" (answers "churned N").
FLEET = r"""
import asyncio, os, sys, time, grpc
from pycontainer.v1 import container_pb2, lifecycle_pb2
S = container_pb2
target, mode, count, launches = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
PATH = "/pycontainer.v1.Lifecycle/Connect"

def ids():
    if mode == "bare":
        return [f"fleet-{k}" for k in range(count)]
    deadline = time.monotonic() + 120
    while True:
        try:
            found = open(launches).read().split()
        except FileNotFoundError:
            found = []
        if len(found) >= count:
            return found[:count]
        if time.monotonic() > deadline:
            print(f"failed: {len(found)} of {count} launched", flush=True)
            os._exit(1)
        time.sleep(0.05)

def registration(cid, k):
    identity = S.ContainerIdentity(id=cid, name=cid)
    identity.endpoints.add(name="grpc", kind=S.ENDPOINT_KIND_GRPC, address=f"127.0.0.1:{20000 + k}")
    return lifecycle_pb2.ConnectRequest(register=lifecycle_pb2.Registration(
        identity=identity, state=S.LIFECYCLE_STATE_RUNNING, pid=1)).SerializeToString()

class Session:
    def __init__(self, connect, cid, k):
        self.connect, self.message, self.call = connect, registration(cid, k), None
    def open(self, registered):
        async def requests():
            yield self.message
            await asyncio.get_running_loop().create_future()
        self.call = self.connect(requests())
        async def follow(call):
            first = registered
            try:
                async for _ in call:
                    if first is not None:
                        first.release()
                        first = None
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass
        asyncio.ensure_future(follow(self.call))
    def drop(self):
        self.call.cancel()

async def main():
    options = [("grpc.max_concurrent_streams", 100000)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        connect = channel.stream_stream(PATH)
        sessions = [Session(connect, cid, k) for k, cid in enumerate(ids())]
        registered = asyncio.Semaphore(0)
        for s in sessions:
            s.open(registered)
        for _ in sessions:
            await registered.acquire()
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        up = [True] * len(sessions)
        def flip(k):
            t = time.monotonic()
            if up[k]:
                sessions[k].drop()
            else:
                sessions[k].open(None)
            up[k] = not up[k]
            return t
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            words = line.split()
            if words[0] == "flip":
                print(f"at {flip(int(words[1])):.6f}", flush=True)
            elif words[0] == "churn":
                seconds, rate = float(words[1]), float(words[2])
                n, t0 = 0, time.monotonic()
                while time.monotonic() - t0 < seconds:
                    flip((n // 2) % len(sessions))
                    n += 1
                    await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
                print(f"churned {n}", flush=True)
asyncio.run(main())
"""

# The clients: argv target streams services. Prints "ready" once every
# stream has every resource; on "mark" answers "marked", then "acked T" once
# every stream got a ClusterLoadAssignment after the mark (T: the last).
CLIENTS = r"""
import asyncio, sys, time, grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
target, count, services = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
BASE = "type.googleapis.com/envoy.config."
LDS, RDS = BASE + "listener.v3.Listener", BASE + "route.v3.RouteConfiguration"
CDS, EDS = BASE + "cluster.v3.Cluster", BASE + "endpoint.v3.ClusterLoadAssignment"
NAMES = [f"svc-{i}" for i in range(services)]
marked = False
streams = []

class Stream:
    def __init__(self, i):
        self.i, self.queue, self.have, self.after_mark = i, asyncio.Queue(), {}, None
        self.ready = asyncio.Event()
    async def run(self):
        node = base_pb2.Node(id=f"bench-client-{self.i}", user_agent_name="gRPC Python",
                             user_agent_version=grpc.__version__)
        for n, type_url in enumerate((LDS, RDS, CDS, EDS)):
            self.queue.put_nowait(discovery_pb2.DiscoveryRequest(
                node=node if n == 0 else None, type_url=type_url, resource_names=NAMES))
        async def requests():
            while True:
                yield await self.queue.get()
        channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        call = channel.stream_stream(PATH,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString)(requests())
        async for response in call:
            now = time.monotonic()
            self.queue.put_nowait(discovery_pb2.DiscoveryRequest(version_info=response.version_info,
                response_nonce=response.nonce, type_url=response.type_url, resource_names=NAMES))
            kind = response.type_url
            self.have[kind] = self.have.get(kind, 0) + len(response.resources)
            if len(self.have) == 4 and min(self.have.values()) >= services:
                self.ready.set()
            if marked and response.type_url == EDS and self.after_mark is None:
                self.after_mark = now
                if all(s.after_mark is not None for s in streams):
                    print(f"acked {max(s.after_mark for s in streams):.6f}", flush=True)

async def main():
    global marked
    streams.extend(Stream(i) for i in range(count))
    tasks = [asyncio.ensure_future(s.run()) for s in streams]
    waiting = asyncio.ensure_future(asyncio.gather(*(s.ready.wait() for s in streams)))
    await asyncio.wait({waiting, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        if t.done():
            t.result()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "mark":
            for s in streams:
                s.after_mark = None
            marked = True
            print("marked", flush=True)
asyncio.run(main())
"""

# The bare server: argv listen bytes_dir. Lifecycle streams get an ack to
# their first message; ADS streams the full set of a type on a type's first
# request (the bytes in bytes_dir); each session that opens or ends pushes
# the prebuilt change (one ClusterLoadAssignment) down every ADS stream.
BARE = r"""
import asyncio, sys, grpc
from envoy.service.discovery.v3 import discovery_pb2
from pycontainer.v1 import lifecycle_pb2
listen, directory = sys.argv[1], sys.argv[2]
BASE = "type.googleapis.com/envoy.config."
FULL = {BASE + t: open(f"{directory}/{t}.bin", "rb").read() for t in (
    "listener.v3.Listener", "route.v3.RouteConfiguration", "cluster.v3.Cluster",
    "endpoint.v3.ClusterLoadAssignment")}
CHANGE = open(f"{directory}/change.bin", "rb").read()
ACK = lifecycle_pb2.ConnectResponse(registered=lifecycle_pb2.RegistrationAck()).SerializeToString()
queues = set()

def push():
    for queue in queues:
        queue.put_nowait(CHANGE)

async def connect(request_iterator, context):
    first = True
    try:
        async for _ in request_iterator:
            if first:
                first = False
                yield ACK
                push()
    finally:
        push()

async def ads(request_iterator, context):
    queue = asyncio.Queue()
    queues.add(queue)
    async def read():
        async for raw in request_iterator:
            request = discovery_pb2.DiscoveryRequest.FromString(raw)
            if not request.response_nonce:
                queue.put_nowait(FULL[request.type_url])
    reader = asyncio.ensure_future(read())
    try:
        while True:
            yield await queue.get()
    finally:
        reader.cancel()
        queues.discard(queue)

async def main():
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100000)])
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("pycontainer.v1.Lifecycle",
            {"Connect": grpc.stream_stream_rpc_method_handler(connect)}),
        grpc.method_handlers_generic_handler("envoy.service.discovery.v3.AggregatedDiscoveryService",
            {"StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(ads)})))
    server.add_insecure_port(listen)
    await server.start()
    print("serving", flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def _bare_bytes(directory: Path, services: int, replicas: int) -> None:
    """The manager's resources for the fleet, each type's full set as one
    DiscoveryResponse, and the change (one assignment without its first
    endpoint), serialized once for the bare server."""
    from envoy.service.discovery.v3 import discovery_pb2

    from pycontainer.manager._xds import _resources
    from pycontainer.manager._xds._model import MeshEndpoint, ServiceSettings, ServiceView

    def view(s: int, skip: int = 0) -> ServiceView:
        endpoints = tuple(
            MeshEndpoint(f"fleet-{k}", "127.0.0.1", 20000 + k, 1, "", False, False)
            for k in range(s * replicas + skip, (s + 1) * replicas)
        )
        return ServiceView(f"svc-{s}", ServiceSettings(), {f"svc-{s}": endpoints})

    merged: dict[str, list[object]] = {t: [] for t in _resources.TYPES}
    for s in range(services):
        for type_url, resources in _resources.build(view(s)).by_type.items():
            merged[type_url].extend(resources.values())
    for type_url, resources in merged.items():
        response = discovery_pb2.DiscoveryResponse(
            version_info="1", nonce="1", type_url=type_url, resources=resources
        )
        name = type_url.removeprefix("type.googleapis.com/envoy.config.")
        (directory / f"{name}.bin").write_bytes(response.SerializeToString())
    change = _resources.build(view(0, skip=1)).by_type[_resources.ENDPOINT]
    response = discovery_pb2.DiscoveryResponse(
        version_info="2", nonce="2", type_url=_resources.ENDPOINT, resources=change.values()
    )
    (directory / "change.bin").write_bytes(response.SerializeToString())


def _readline(proc: subprocess.Popen[str], what: str, timeout: float = _TIMEOUT) -> str:
    """The next line ``proc`` says, within ``timeout`` (else it is killed: a
    row fails, it never hangs the run)."""
    assert proc.stdout is not None
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        line = proc.stdout.readline()
    finally:
        timer.cancel()
    if not line:
        raise RuntimeError(f"{what} exited ({proc.wait(5)}) before answering within {timeout:g}s")
    return line.strip()


def _ask(proc: subprocess.Popen[str], line: str, what: str) -> str:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return _readline(proc, what)


def _spawn(command: list[str], stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _end(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _run_specs(target: str, services: int, replicas: int) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = manager_pb2_grpc.ManagerStub(channel)
        for s in range(services):
            spec = spec_pb2.ContainerSpec(
                name=f"svc-{s}",
                runtime=spec_pb2.RUNTIME_KIND_PROCESS,
                command=["fleet"],
                replicas=replicas,
                service=mesh_pb2.MeshService(name=f"svc-{s}"),
            )
            stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=_TIMEOUT)
        deadline = time.monotonic() + _TIMEOUT
        while True:
            status = stub.GetMeshStatus(manager_pb2.GetMeshStatusRequest(), timeout=_TIMEOUT)
            healthy = sum(len(s.healthy) for s in status.services)
            if healthy == services * replicas:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{healthy} of {services * replicas} endpoints in the mesh")
            time.sleep(0.1)


def _cpu(pid: int, fleet: subprocess.Popen[str], seconds: float, rate: float) -> float:
    server = psutil.Process(pid)
    before = _cpu_seconds(server)
    t0 = time.perf_counter()
    if rate:
        answer = _ask(fleet, f"churn {seconds} {rate}", "the fleet")
        if not answer.startswith("churned"):
            raise RuntimeError(f"the fleet answered {answer!r}")
    else:
        time.sleep(seconds)
    busy = _cpu_seconds(server) - before
    return 100.0 * busy / (time.perf_counter() - t0)


@dataclass
class Fleet:
    """One side held: its server, fleet and subscribed clients."""

    bare: bool
    pid: int
    fleet: subprocess.Popen[str]
    clients: subprocess.Popen[str]
    # RSS (MiB) and CPU under churn (%) before the clients subscribed (what
    # the fleet's changes cost without a push), and the seconds they took to.
    rss_unsubscribed: float
    cpu_unsubscribed: float
    subscribe_s: float
    # The last session of the fleet.
    last: int

    def rss(self) -> float:
        return float(psutil.Process(self.pid).memory_info().rss) / 2**20

    def cpu(self, seconds: float, rate: float) -> float:
        """% of a core over ``seconds`` with ``rate`` endpoint changes a second
        (0: idle)."""
        return _cpu(self.pid, self.fleet, seconds, rate)

    def fan_out(self) -> float:
        """Seconds from one endpoint change to the last client's ACK of it."""
        if _ask(self.clients, "mark", "the clients") != "marked":
            raise RuntimeError("the clients did not mark")
        # A session of the last service, dropped then opened again (the
        # churn flips the first ones).
        at = _ask(self.fleet, f"flip {self.last}", "the fleet")
        acked = _readline(self.clients, "the clients")
        if not at.startswith("at ") or not acked.startswith("acked "):
            raise RuntimeError(f"the fleet said {at!r}, the clients {acked!r}")
        return float(acked.split()[1]) - float(at.split()[1])


@contextlib.contextmanager
def held(
    bare: bool, services: int, replicas: int, clients: int, window: float = 1.0
) -> Iterator[Fleet]:
    """One side set up: the server, its fleet, then (after a churn window
    of ``window`` seconds without them) the clients subscribed."""
    endpoints = services * replicas
    target = f"127.0.0.1:{_free_port()}"
    with (
        tempfile.TemporaryDirectory(prefix="bench-mesh-") as state,
        contextlib.ExitStack() as stack,
    ):
        directory = Path(state)
        launches = directory / "launches"
        if bare:
            _bare_bytes(directory, services, replicas)
            command = [sys.executable, "-c", BARE, target, state]
        else:
            command = [sys.executable, "-m", "bench._mesh_manager", target, state, str(launches)]
        server = _spawn(command)
        stack.callback(_end, server)
        if _readline(server, "the server") != "serving":
            raise RuntimeError("the server did not start")
        mode = "bare" if bare else "manager"
        fleet = _spawn(
            [sys.executable, "-c", FLEET, target, mode, str(endpoints), str(launches)], True
        )
        stack.callback(_end, fleet)
        if not bare:
            _run_specs(target, services, replicas)
        if _readline(fleet, "the fleet") != "ready":
            raise RuntimeError("the fleet did not register")
        time.sleep(0.5)
        rss_unsubscribed = float(psutil.Process(server.pid).memory_info().rss) / 2**20
        cpu_unsubscribed = _cpu(server.pid, fleet, window, CHURN_RATE)
        t0 = time.perf_counter()
        subscribers = _spawn(
            [sys.executable, "-c", CLIENTS, target, str(clients), str(services)], True
        )
        stack.callback(_end, subscribers)
        if _readline(subscribers, "the clients") != "ready":
            raise RuntimeError("the clients did not get every resource")
        subscribe_s = time.perf_counter() - t0
        time.sleep(0.5)
        yield Fleet(
            bare,
            server.pid,
            fleet,
            subscribers,
            rss_unsubscribed,
            cpu_unsubscribed,
            subscribe_s,
            endpoints - 1,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--only", choices=("bare", "manager"))
    parser.add_argument(
        "--profile", type=Path, help="cProfile the manager's churn window into FILE"
    )
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["BENCH_PROFILE"] = str(args.profile.resolve())
        with held(False, args.services, args.replicas, args.clients) as f:
            os.kill(f.pid, signal.SIGUSR1)
            print("cpu under churn", f.cpu(args.window, CHURN_RATE), file=sys.stderr)
            fan = [f.fan_out() for _ in range(args.pushes)]
            print("fan-out ms", statistics.median(fan) * 1e3, file=sys.stderr)
            os.kill(f.pid, signal.SIGUSR1)
            time.sleep(1.0)
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(40)
        return 0
    out: dict[str, object] = {}
    for side in ("bare", "manager"):
        if args.only and args.only != side:
            continue
        with held(side == "bare", args.services, args.replicas, args.clients) as f:
            fan = [f.fan_out() for _ in range(args.pushes)]
            out[side] = {
                "rss_mib": f.rss(),
                "rss_unsubscribed_mib": f.rss_unsubscribed,
                "cpu_churn_unsubscribed": f.cpu_unsubscribed,
                "subscribe_s": f.subscribe_s,
                "cpu_idle": f.cpu(args.window, 0),
                "cpu_churn": f.cpu(args.window, CHURN_RATE),
                "fan_out_ms_median": statistics.median(fan) * 1e3,
                "fan_out_ms_max": max(fan) * 1e3,
            }
        print(side, json.dumps(out[side]), file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
