"""The drain before a stop (issue 10), each against bare grpcio in the same run:

- drain-ack: from the manager taking a stop (Mesh.drain's start) until every
  subscribed client (real grpcio processes dialing ``xds:///orders`` under
  load, tests/apps/mesh_client.py) acknowledged the assignment marking the
  replica DRAINING (AdsServicer.wait_acknowledged's end; the settle that
  follows excluded), and from the operator's call too. Bare: BARE_ADS, a
  grpc.aio ADS server serving the same clients a service (the bytes of the
  manager's own builders) of two bare grpcio backends, which on one unary
  call pushes a changed assignment down every stream and answers once each
  stream ACKed it, with the time that took inside it (and the call's, seen
  from the caller): the least any control plane does between the request
  and the last ACK.
- failed calls: the same load through ``xds:///orders``
  (tests/apps/mesh_backend.py replicas, which refuse new calls once told to
  stop) while replicas are stopped one by one (StopContainer), and while
  the service is scaled down by one (ScaleContainer), and while one is
  evicted (EvictContainer: the stop an eviction for a higher-priority
  container makes), each scenario a phase of the same load generators, with the
  drain; bare: the same with the drain off (mesh_drain_timeout 0: a plain
  stop, as Kubernetes does, the endpoint leaving once the container left
  RUNNING); and while a changed spec is rolled out to 3 replicas
  (ApplySpecs: apply's rolling replacement), on a manager of its own.

    .venv/bin/python -m bench.mesh_drain [--clients 3] [--rounds 3] [--stops 1]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pycontainer.manager import ManagerSettings
from pycontainer.testing import ManagerHost
from pycontainer.v1 import container_pb2, manager_pb2, mesh_pb2, spec_pb2

from .harness import ROOT
from .manager_scale import _free_port
from .mesh_fleet import _readline

SERVICE = "orders"
_TIMEOUT = 60.0
_DRAIN = datetime.timedelta(seconds=5)

# argv listen bytes_dir. As bench/mesh_fleet.BARE for ADS; the unary
# /bench.Push/Push sends the next change (CHANGES alternate) down every
# stream with a nonce of its own and answers once every stream ACKed it,
# with the seconds that took (from the call's start in the server).
BARE_ADS = r"""
import asyncio, itertools, sys, grpc
from envoy.service.discovery.v3 import discovery_pb2
listen, directory = sys.argv[1], sys.argv[2]
BASE = "type.googleapis.com/envoy.config."
FULL = {BASE + t: open(f"{directory}/{t}.bin", "rb").read() for t in (
    "listener.v3.Listener", "route.v3.RouteConfiguration", "cluster.v3.Cluster",
    "endpoint.v3.ClusterLoadAssignment")}
CHANGES = [discovery_pb2.DiscoveryResponse.FromString(open(f"{directory}/{n}.bin", "rb").read())
           for n in ("change", "endpoint.v3.ClusterLoadAssignment")]
streams = {}  # queue -> the last nonce it answered
answered = asyncio.Condition()
nonces = itertools.count(100)

async def ads(request_iterator, context):
    queue = asyncio.Queue()
    streams[queue] = ""
    async def read():
        async for raw in request_iterator:
            request = discovery_pb2.DiscoveryRequest.FromString(raw)
            if not request.response_nonce:
                queue.put_nowait(FULL[request.type_url])
            else:
                streams[queue] = request.response_nonce
                async with answered:
                    answered.notify_all()
    reader = asyncio.ensure_future(read())
    try:
        while True:
            yield await queue.get()
    finally:
        reader.cancel()
        streams.pop(queue, None)

async def push(request, context):
    t0 = asyncio.get_running_loop().time()
    n = next(nonces)
    change = CHANGES[n % 2]
    change.nonce = change.version_info = str(n)
    raw = change.SerializeToString()
    for queue in streams:
        queue.put_nowait(raw)
    async with answered:
        await answered.wait_for(lambda: all(v == str(n) for v in streams.values()))
    return str(asyncio.get_running_loop().time() - t0).encode()

async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("envoy.service.discovery.v3.AggregatedDiscoveryService",
            {"StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(ads)}),
        grpc.method_handlers_generic_handler("bench.Push",
            {"Push": grpc.unary_unary_rpc_method_handler(push)})))
    server.add_insecure_port(listen)
    await server.start()
    print("serving", flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def write_bootstrap(path: Path, server_uri: str, node_id: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": server_uri,
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {"id": node_id},
            }
        )
    )
    return path


@dataclass
class Counts:
    calls: int = 0
    failed: int = 0
    failures: dict[str, int] | None = None
    samples: dict[str, str] | None = None


# A load generator: argv target concurrency. Dials the target (xds:///NAME
# with $GRPC_XDS_BOOTSTRAP), prints "ready", then calls the backend's method
# (as tests/apps/mesh_client.py does) until its stdin ends; each line of stdin
# is answered with the counts since the last one (a phase: one scenario),
# as JSON.
LOAD = r"""
import collections, json, sys, threading, grpc
target, concurrency = sys.argv[1], int(sys.argv[2])
channel = grpc.insecure_channel(target)
grpc.channel_ready_future(channel).result(timeout=60)
call = channel.unary_unary("/pycontainer.test.Echo/Who")
lock, done = threading.Lock(), threading.Event()
answered, failures, samples = [0], collections.Counter(), {}

def worker():
    while not done.is_set():
        try:
            call(b"", timeout=10)
            with lock:
                answered[0] += 1
        except grpc.RpcError as exc:
            with lock:
                failures[exc.code().name] += 1
                samples.setdefault(exc.code().name, exc.details() or "")

threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads:
    t.start()
print("ready", flush=True)
for line in sys.stdin:
    with lock:
        phase = {"calls": answered[0] + sum(failures.values()), "failed": sum(failures.values()),
                 "failures": dict(failures), "samples": dict(samples)}
        answered[0] = 0
        failures.clear()
        samples.clear()
    print(json.dumps(phase), flush=True)
done.set()
for t in threads:
    t.join()
channel.close()
"""


class Clients:
    """``n`` grpcio processes calling ``xds:///orders`` (LOAD), counted by
    phase (:meth:`phase`)."""

    def __init__(self, workdir: Path, server_uri: str, n: int, concurrency: int = 2) -> None:
        self.procs = []
        for i in range(n):
            boot = write_bootstrap(workdir / f"bootstrap-{i}.json", server_uri, f"bench-{i}")
            env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(boot)}
            command = [sys.executable, "-c", LOAD, f"xds:///{SERVICE}", str(concurrency)]
            proc = subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self.procs.append(proc)
        for proc in self.procs:
            line = _readline(proc, "a load generator")
            if line != "ready":
                self.kill()
                raise RuntimeError(f"a client did not get ready: {line!r}")

    def phase(self) -> Counts:
        """The counts of every client since the last phase (or the start)."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
        total = Counts(failures={}, samples={})
        for proc in self.procs:
            out = json.loads(_readline(proc, "a load generator"))
            total.calls += out["calls"]
            total.failed += out["failed"]
            assert total.failures is not None
            assert total.samples is not None
            for code, n in out["failures"].items():
                total.failures[code] = total.failures.get(code, 0) + n
            total.samples.update(out["samples"])
        return total

    def close(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def kill(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)


def _timed_drains(host: ManagerHost) -> list[tuple[float, float]]:
    """(perf_counter() at the start of each stop's drain, and when its wait
    for the ACKs ended with every client answered), appended as they happen."""
    ads = host.manager.mesh.ads
    stopper = host.manager.stopper
    inner_wait, inner_drain = ads.wait_acknowledged, stopper.drain
    assert inner_drain is not None
    started: list[float] = []
    ends: list[tuple[float, float]] = []

    async def drain(entry: Any, grace: datetime.timedelta) -> datetime.timedelta:
        started.append(time.perf_counter())
        return await inner_drain(entry, grace)

    async def timed(names: Any, seconds: float) -> list[str]:
        waiting = await inner_wait(names, seconds)
        if not waiting and started:
            ends.append((started.pop(), time.perf_counter()))
        return waiting

    stopper.drain = drain
    ads.wait_acknowledged = timed
    return ends


def _healthy(host: ManagerHost) -> list[str]:
    status = host.stub.GetMeshStatus(
        manager_pb2.GetMeshStatusRequest(service=SERVICE), timeout=_TIMEOUT
    )
    return list(status.services[0].healthy) if status.services else []


def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + _TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {_TIMEOUT:g}s")
        time.sleep(0.05)


@dataclass
class StopRun:
    """One manager's stops under load: drain-ack times (with the drain) and
    the calls and failures the clients counted."""

    # From the drain's start (the stop taken by the manager) to the last ACK.
    drain_ack: list[float]
    # From the operator's StopContainer call to the last ACK.
    call_ack: list[float]
    counts: Counts
    stops: int


#: The scenarios of a round, each a phase of the load.
SCENARIOS = ("stop", "scale-down", "evict")


def stops_under_load(
    drain: bool, clients: int, rounds: int, per_round: int
) -> dict[str, list[StopRun]]:
    """A manager with a service of backends (two more than it takes away),
    ``clients`` load generators through xds:/// and ``rounds`` of, for each
    scenario: the scenario, the load's counts of it (a phase). "stop":
    ``per_round`` replicas stopped one by one (StopContainer); "scale-down":
    the service scaled down by one (ScaleContainer: the youngest replica
    stops); "evict": one replica evicted (EvictContainer: the eviction's
    stop, as for a higher-priority container). One StopRun a round, by
    scenario."""
    replicas = rounds * (per_round + 2) + 2
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as state:
        host = _manager(state, drain)
        load: Clients | None = None
        try:
            ends = _timed_drains(host)
            spec = spec_pb2.ContainerSpec(
                name=SERVICE,
                command=[sys.executable, str(ROOT / "tests/apps/mesh_backend.py")],
                working_dir=str(ROOT),
                replicas=replicas,
                service=mesh_pb2.MeshService(name=SERVICE),
            )
            host.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=_TIMEOUT)
            _wait(lambda: len(_healthy(host)) == replicas, f"{replicas} replicas in the mesh")
            out: dict[str, list[StopRun]] = {scenario: [] for scenario in SCENARIOS}

            def drained(t0: float, times: list[float], calls: list[float]) -> None:
                if drain:
                    if not ends:
                        raise RuntimeError("a drain did not see every client's ACK")
                    start, end = ends.pop()
                    times.append(end - start)
                    calls.append(end - t0)

            load = Clients(Path(state), host.address, clients)
            time.sleep(0.3)  # calls reach every replica
            load.phase()  # the warm-up's counts are no scenario's
            for _ in range(rounds):
                for scenario in SCENARIOS:
                    times: list[float] = []
                    calls: list[float] = []
                    if scenario == "stop":
                        for victim in _healthy(host)[:per_round]:
                            t0 = time.perf_counter()
                            host.stub.StopContainer(
                                manager_pb2.StopContainerRequest(container=victim),
                                timeout=_TIMEOUT,
                            )
                            drained(t0, times, calls)
                            _wait(lambda v=victim: _stopped(host, v), f"{victim} stopped")
                    elif scenario == "scale-down":
                        t0 = time.perf_counter()
                        host.stub.ScaleContainer(
                            manager_pb2.ScaleContainerRequest(
                                container=SERVICE, replicas=len(_live(host)) - 1
                            ),
                            timeout=_TIMEOUT,
                        )
                        drained(t0, times, calls)
                    else:
                        victim = _healthy(host)[0]
                        t0 = time.perf_counter()
                        host.stub.EvictContainer(
                            manager_pb2.EvictContainerRequest(container=victim), timeout=_TIMEOUT
                        )
                        drained(t0, times, calls)
                        _wait(lambda v=victim: v not in _live(host), f"{victim} evicted")
                    time.sleep(0.2)  # the load goes on after the stop
                    stops = per_round if scenario == "stop" else 1
                    out[scenario].append(StopRun(times, calls, load.phase(), stops))
            load.close()
            load = None
            return out
        finally:
            if load is not None:
                load.kill()
            host.close()


def _manager(state: str, drain: bool) -> ManagerHost:
    # The manager's own heartbeats (ManagerHost's are a test's: every 0.5 s).
    defaults = ManagerSettings()
    return ManagerHost(
        state,
        mesh_drain_timeout=_DRAIN if drain else datetime.timedelta(0),
        heartbeat_interval=defaults.heartbeat_interval,
        idle_heartbeat_interval=defaults.idle_heartbeat_interval,
        lost_after_heartbeats=defaults.lost_after_heartbeats,
    )


def rollouts_under_load(drain: bool, clients: int, rounds: int, replicas: int = 3) -> list[StopRun]:
    """A service of ``replicas`` applied (ApplySpecs), load generators
    through xds:///, then ``rounds`` of: a changed spec applied (its rolling
    replacement: a new replica ready, then an old one stopped, one at a
    time), the load's counts of it."""
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as state:
        host = _manager(state, drain)
        load: Clients | None = None
        try:
            ends = _timed_drains(host)
            spec = spec_pb2.ContainerSpec(
                name=SERVICE,
                command=[sys.executable, str(ROOT / "tests/apps/mesh_backend.py")],
                working_dir=str(ROOT),
                replicas=replicas,
                service=mesh_pb2.MeshService(name=SERVICE),
                env={"BENCH_ROLLOUT": "0"},
            )
            apply = manager_pb2.ApplySpecsRequest(specs=[spec], owner="bench")
            host.stub.ApplySpecs(apply, timeout=_TIMEOUT)
            _wait(lambda: len(_healthy(host)) == replicas, f"{replicas} replicas in the mesh")
            out = []
            load = Clients(Path(state), host.address, clients)
            time.sleep(0.3)  # calls reach every replica
            load.phase()  # the warm-up's counts are no rollout's
            for r in range(rounds):
                old = set(_healthy(host))
                spec.env["BENCH_ROLLOUT"] = str(r + 1)
                t0 = time.perf_counter()
                host.stub.ApplySpecs(
                    manager_pb2.ApplySpecsRequest(specs=[spec], owner="bench"), timeout=_TIMEOUT
                )
                _wait(
                    lambda o=old: len(set(_healthy(host)) - o) == replicas,
                    f"{replicas} new replicas in the mesh",
                )
                times, calls = [], []
                while drain and ends:
                    start, end = ends.pop(0)
                    times.append(end - start)
                    calls.append(end - t0)
                if drain and len(times) != replicas:
                    raise RuntimeError(f"{len(times)} of {replicas} drains saw every ACK")
                time.sleep(0.2)  # the load goes on after the rollout
                out.append(StopRun(times, calls, load.phase(), replicas))
            load.close()
            load = None
            return out
        finally:
            if load is not None:
                load.kill()
            host.close()


def _live(host: ManagerHost) -> list[str]:
    """Ids of the service's replicas not ended (what ScaleContainer counts)."""
    listed = host.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=_TIMEOUT)
    ended = (container_pb2.LIFECYCLE_STATE_STOPPED, container_pb2.LIFECYCLE_STATE_FAILED)
    return [
        c.identity.id
        for c in listed.containers
        if c.identity.name == SERVICE and c.state not in ended
    ]


def _stopped(host: ManagerHost, container: str) -> bool:
    state = host.stub.GetContainer(
        manager_pb2.GetContainerRequest(container=container), timeout=_TIMEOUT
    ).container.state
    return bool(state == container_pb2.LIFECYCLE_STATE_STOPPED)


# -- the bare drain: a push to the same clients and their ACKs ------------------------------
def _bare_backend() -> tuple[grpc.Server, list[int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "pycontainer.test.Echo",
                {"Who": grpc.unary_unary_rpc_method_handler(lambda r, c: b"bare")},
            ),
        )
    )
    ports = [server.add_insecure_port("127.0.0.1:0") for _ in range(2)]
    server.start()
    return server, ports


def _bare_bytes(directory: Path, ports: list[int]) -> None:
    from envoy.service.discovery.v3 import discovery_pb2

    from pycontainer.manager._xds import _resources
    from pycontainer.manager._xds._model import MeshEndpoint, ServiceSettings, ServiceView

    def view(draining: bool) -> ServiceView:
        endpoints = tuple(
            MeshEndpoint(f"bare-{i}", "127.0.0.1", port, 1, "", draining and i == 0, False)
            for i, port in enumerate(ports)
        )
        return ServiceView(SERVICE, ServiceSettings(), {SERVICE: endpoints})

    for type_url, resources in _resources.build(view(False)).by_type.items():
        response = discovery_pb2.DiscoveryResponse(
            version_info="1", nonce="1", type_url=type_url, resources=resources.values()
        )
        name = type_url.removeprefix("type.googleapis.com/envoy.config.")
        (directory / f"{name}.bin").write_bytes(response.SerializeToString())
    change = _resources.build(view(True)).by_type[_resources.ENDPOINT]
    response = discovery_pb2.DiscoveryResponse(
        version_info="2", nonce="2", type_url=_resources.ENDPOINT, resources=change.values()
    )
    (directory / "change.bin").write_bytes(response.SerializeToString())


@contextlib.contextmanager
def bare_pusher(clients: int) -> Iterator[Any]:
    """A bare ADS server with ``clients`` grpcio load generators through it;
    yields a function timing one push until every client ACKed it."""
    with tempfile.TemporaryDirectory(prefix="bench-drain-bare-") as state:
        backend, ports = _bare_backend()
        directory = Path(state)
        _bare_bytes(directory, ports)
        target = f"127.0.0.1:{_free_port()}"
        server = subprocess.Popen(
            [sys.executable, "-c", BARE_ADS, target, state], stdout=subprocess.PIPE, text=True
        )
        load: Clients | None = None
        try:
            if _readline(server, "the bare ADS server") != "serving":
                raise RuntimeError("the bare ADS server did not start")
            load = Clients(directory, target, clients)
            time.sleep(0.3)
            channel = grpc.insecure_channel(target)
            push = channel.unary_unary("/bench.Push/Push")
            push(b"", timeout=_TIMEOUT)  # warm

            def timed() -> tuple[float, float]:
                t0 = time.perf_counter()
                inside = float(push(b"", timeout=_TIMEOUT))
                return inside, time.perf_counter() - t0

            yield timed
            channel.close()
        finally:
            if load is not None:
                load.kill()
            server.kill()
            server.wait(10)
            backend.stop(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stops", type=int, default=1, help="stops a round")
    args = parser.parse_args(argv)
    with bare_pusher(args.clients) as push:
        bare = [push() for _ in range(args.rounds * (args.stops + 1))]
    ours = stops_under_load(True, args.clients, args.rounds, args.stops)
    plain = stops_under_load(False, args.clients, args.rounds, args.stops)
    ours["rollout"] = rollouts_under_load(True, args.clients, args.rounds)
    plain["rollout"] = rollouts_under_load(False, args.clients, args.rounds)
    scenarios = (*SCENARIOS, "rollout")
    runs = [r for scenario in scenarios for r in ours[scenario]]
    print(
        json.dumps(
            {
                "drain_ack_ms": [round(t * 1e3, 2) for r in runs for t in r.drain_ack],
                "call_ack_ms": [round(t * 1e3, 2) for r in runs for t in r.call_ack],
                "bare_push_ack_ms": [round(t * 1e3, 2) for t, _ in bare],
                "bare_call_ack_ms": [round(t * 1e3, 2) for _, t in bare],
                "drained": {s: [r.counts.__dict__ for r in ours[s]] for s in scenarios},
                "plain": {s: [r.counts.__dict__ for r in plain[s]] for s in scenarios},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
