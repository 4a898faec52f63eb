"""Failover of managers in high availability: N simulated containers
registered with the leader of 3 managers on a 3-member etcd cluster; the
leader killed (kill -9); measured, from the kill: when a new leader answers,
and when every simulated container has registered with it again.

    .venv/bin/python -m bench.ha_failover --sessions 1000 --agents 2 --runs 3

The simulated containers (a few processes, each holding many Lifecycle
streams on one channel per manager) follow the leader as the real connector
does (pycontainer/agent/_connector.py): a standby's refusal names the leader
(``pycontainer-leader`` trailing metadata) and they go there at once; a
stream that ends goes to the next address. Each registration after the
first prints its CLOCK_MONOTONIC time (shared by processes).

It uses the tests' etcd cluster and manager processes (tests/etcd_support.py,
tests/ha_support.py).

With ``--mesh-kills N``, the mesh through failovers too: a service of
``--mesh-replicas`` backends (tests/apps/mesh_backend.py) the leader launches,
and a proxyless grpcio client (tests/apps/mesh_client.py) calling
``xds:///echo`` without pause, its bootstrap naming every manager; the leader
killed N times (each back as a standby before the next kill); with Envoy
installed, a program behind Envoy (a sidecar the leader launches) called
through its outbound listener as well. Reported, per kill and in all: the
calls made and the calls that failed (goal 0), and when every xDS client's
stream and every container were on the new leader::

    .venv/bin/python -m bench.ha_failover --sessions 0 --mesh-kills 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from etcd_support import etcd_cluster  # noqa: E402
from ha_mesh_support import (  # noqa: E402
    backends_killed_at_end,
    connected,
    envoy_caller,
    envoy_load,
    leading,
    mesh_load,
    pids_of,
    run_backends,
    synced,
)
from ha_support import ManagerCluster, ManagerProcess  # noqa: E402
from support import free_address, wait_until  # noqa: E402

from pycontainer.sidecar._envoy import EnvoyNotInstalled, envoy_binary  # noqa: E402
from pycontainer.testing import CallCounts  # noqa: E402

AGENT = r"""
import asyncio, random, sys, time, uuid, grpc
from pycontainer.v1 import container_pb2, lifecycle_pb2, lifecycle_pb2_grpc
targets, first, count = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
S = container_pb2
LEADER = "pycontainer-leader"

async def session(stubs, i, ready):
    ident = container_pb2.ContainerIdentity(id=f"sim-{uuid.uuid4().hex[:12]}",
        name=f"sim-{i}", labels={"set": "ha"})
    target = targets[i % len(targets)]
    registered = 0
    while True:
        queue = asyncio.Queue()
        queue.put_nowait(lifecycle_pb2.ConnectRequest(register=lifecycle_pb2.Registration(
            identity=ident, state=S.LIFECYCLE_STATE_RUNNING, pid=first + i)))
        async def requests():
            while (message := await queue.get()) is not None:
                yield message
        try:
            async for response in stubs[target](requests()):
                if response.WhichOneof("message") == "registered":
                    registered += 1
                    if registered == 1:
                        ready.release()
                    else:
                        print(f"registered {i} {time.monotonic():.6f}", flush=True)
            target = targets[(targets.index(target) + 1) % len(targets)]
        except grpc.aio.AioRpcError as exc:
            leader = dict(exc.trailing_metadata() or ()).get(LEADER)
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and leader is not None:
                if leader:
                    target = leader
                else:
                    target = targets[(targets.index(target) + 1) % len(targets)]
            else:
                target = targets[(targets.index(target) + 1) % len(targets)]
        finally:
            queue.put_nowait(None)
        await asyncio.sleep(random.uniform(0, 0.5))

async def main():
    options = [("grpc.max_concurrent_streams", 100000)]
    channels = {t: grpc.aio.insecure_channel(t, options=options) for t in targets}
    stubs = {t: lifecycle_pb2_grpc.LifecycleStub(c).Connect for t, c in channels.items()}
    ready = asyncio.Semaphore(0)
    tasks = [asyncio.ensure_future(session(stubs, i, ready)) for i in range(count)]
    for _ in range(count):
        await ready.acquire()
    print("ready", flush=True)
    await asyncio.gather(*tasks)
asyncio.run(main())
"""


class _Agent:
    def __init__(self, targets: str, first: int, count: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", AGENT, targets, str(first), str(count)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        self.ready = threading.Event()
        self.times: dict[int, float] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("ready"):
                self.ready.set()
            elif line.startswith("registered"):
                _, i, at = line.split()
                with self._lock:
                    self.times[int(i)] = float(at)

    def since(self, t0: float) -> list[float]:
        with self._lock:
            return [t for t in self.times.values() if t > t0]

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def run(sessions: int, agents: int, runs: int, ttl: str) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="ha-failover-") as tmp,
        etcd_cluster(Path(tmp) / "etcd") as etcd,
    ):
        managers = ManagerCluster(Path(tmp) / "m", etcd.url, 3, ttl, ["--heartbeat", "600s"])
        fleet: list[_Agent] = []
        try:
            managers.start_all()
            leader = managers.leader(60)
            per = sessions // agents
            fleet = [_Agent(managers.addresses, k * per, per) for k in range(agents)]
            for agent in fleet:
                if not agent.ready.wait(300):
                    raise SystemExit("the simulated containers did not all register")
            elected, back = [], []
            for _ in range(runs):
                t0 = time.monotonic()
                managers.kill(leader)
                successor = managers.leader(60, exclude=leader)
                elected.append(time.monotonic() - t0)
                deadline = time.monotonic() + 120
                while sum(len(a.since(t0)) for a in fleet) < per * agents:
                    if time.monotonic() > deadline:
                        raise SystemExit("not every container came back within 120 s")
                    time.sleep(0.01)
                last = max(max(a.since(t0)) for a in fleet)
                back.append(last - t0)
                print(
                    f"kill -9 of the leader: new leader answering in {elected[-1]:.2f} s, "
                    f"all {per * agents} containers registered on it in {back[-1]:.2f} s",
                    flush=True,
                )
                managers.start(leader)  # back as a standby for the next run
                leader = successor
                time.sleep(2)
            print(
                f"{runs} runs, {per * agents} containers, leader TTL {ttl}: new leader "
                f"p50 {statistics.median(elected):.2f} s; all back p50 "
                f"{statistics.median(back):.2f} s, max {max(back):.2f} s"
            )
        finally:
            for agent in fleet:
                agent.stop()
            managers.stop()


def _arrived(
    leader: ManagerProcess, nodes: set[str], containers: set[str], t0: float, on: dict[str, float]
) -> bool:
    """Whether every xDS client of ``nodes`` and every one of ``containers``
    is on ``leader``; ``on`` gets when each was first seen there (from t0)."""
    for n in nodes:
        if n not in on and synced(leader, n):
            on[n] = time.monotonic() - t0
    if "containers" not in on and connected(leader, containers):
        on["containers"] = time.monotonic() - t0
    return len(on) == len(nodes) + 1


def run_mesh(kills: int, ttl: str, replicas: int, concurrency: int) -> CallCounts:
    """Failed mesh calls through ``kills`` kills of the leader, of a
    proxyless client and (Envoy installed) of a program behind Envoy; the
    total counts of both."""
    service, node_id = "echo", "bench-load"
    try:
        envoy_binary()
        with_envoy = True
    except EnvoyNotInstalled as exc:
        print(f"mesh: no Envoy ({exc}): the proxyless client alone", flush=True)
        with_envoy = False
    with (
        tempfile.TemporaryDirectory(prefix="ha-mesh-") as tmp,
        etcd_cluster(Path(tmp) / "etcd") as etcd,
        contextlib.ExitStack() as stack,
    ):
        managers = ManagerCluster(Path(tmp) / "m", etcd.url, 3, ttl)
        stack.callback(managers.stop)
        managers.start_all()
        leader, epoch = leading(managers)
        pids = stack.enter_context(backends_killed_at_end(managers))
        ids = run_backends(leader, service, replicas)
        nodes = {node_id}
        addresses = [m.address for m in managers.managers]
        loads = {
            "proxyless": stack.enter_context(
                mesh_load(Path(tmp) / "load", service, addresses, node_id, concurrency)
            )
        }
        if with_envoy:
            listen = free_address()
            nodes.add(envoy_caller(leader, service, listen))
            loads["envoy"] = stack.enter_context(
                envoy_load(Path(tmp) / "envoy-load", listen, concurrency)
            )
        pids += pids_of(leader)
        wait_until(lambda: all(synced(leader, n) for n in nodes), 30, "the clients on the leader")
        totals = {kind: load.until_answered(ids) for kind, load in loads.items()}
        containers = set(ids) | (nodes - {node_id})
        for kill in range(1, kills + 1):
            # Who leads now (the highest epoch printed): on a loaded machine
            # the leadership may have moved on by itself since the last kill.
            leader, epoch = leading(managers)
            t0 = time.monotonic()
            managers.kill(leader)
            successor, epoch = leading(managers, after=epoch)
            elected = time.monotonic() - t0
            # When each xDS client's stream, and every container, was on it.
            on: dict[str, float] = {}
            wait_until(
                lambda s=successor, on=on, t0=t0: _arrived(s, nodes, containers, t0, on),
                60,
                "every xDS client's stream and every container on the new leader",
            )
            back = time.monotonic() - t0
            where = ", ".join(
                f"{'proxyless' if n == node_id else 'envoy' if n != 'containers' else n} {at:.2f} s"
                for n, at in sorted(on.items(), key=lambda item: item[1])
            )
            meanwhile = []
            for kind, load in loads.items():
                counts = load.phase()
                totals[kind] += counts
                meanwhile.append(f"{kind} {counts}")
            print(
                f"mesh, kill -9 {kill} of the leader: new leader in {elected:.2f} s, every "
                f"xDS client's stream and container on it in {back:.2f} s ({where}); calls "
                "meanwhile: " + "; ".join(meanwhile),
                flush=True,
            )
            managers.start(leader)  # back as a standby for the next kill
            time.sleep(2)
        for kind, load in loads.items():
            totals[kind] += load.finish()
        for kind, total in totals.items():
            print(
                f"mesh ({kind}) through {kills} kills of the leader (TTL {ttl}, {replicas} "
                f"backends, {concurrency} calls at a time): {total.failed} failed calls of "
                f"{total.calls} (goal 0)"
                + (f"; {dict(total.failures)}: {dict(total.samples)}" if total.failed else ""),
                flush=True,
            )
        return sum(totals.values(), CallCounts(0, 0, {}, {}, {}, 0.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ttl", default="2s", help="the managers' --leader-ttl")
    parser.add_argument(
        "--mesh-kills", type=int, default=0, help="also the mesh through this many kills"
    )
    parser.add_argument("--mesh-replicas", type=int, default=3)
    parser.add_argument("--mesh-concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    if args.sessions > 0:
        run(args.sessions, args.agents, args.runs, args.ttl)
    if args.mesh_kills > 0:
        total = run_mesh(args.mesh_kills, args.ttl, args.mesh_replicas, args.mesh_concurrency)
        if total.failed:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
