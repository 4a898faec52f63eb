"""The mesh on managers in high availability, for tests/test_ha_mesh.py and
bench/ha_failover.py: who leads (by the epochs the managers print), what a
manager's mesh status says, a service of backends the leader launches, and a
proxyless load generator whose bootstrap names every manager."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from ha_support import ManagerCluster, ManagerProcess
from support import wait_until

from pycontainer.client import write_bootstrap
from pycontainer.testing import Load
from pycontainer.testing._mesh import apps_dir
from pycontainer.v1 import container_pb2, manager_pb2, mesh_pb2, spec_pb2

S = container_pb2
_LEADING = re.compile(r"^leading \(epoch (\d+)\)", re.MULTILINE)


def epoch_of(manager: ManagerProcess) -> int:
    """The last epoch ``manager`` printed it leads in (0: none)."""
    try:
        text = manager.log.read_text()
    except OSError:
        return 0
    return max((int(e) for e in _LEADING.findall(text)), default=0)


def leading(
    managers: ManagerCluster, after: int = 0, timeout: float = 60.0
) -> tuple[ManagerProcess, int]:
    """The running manager that printed "leading (epoch N)" with the highest
    N above ``after``, and N, waited for."""

    def find() -> tuple[ManagerProcess, int] | None:
        best = max(
            ((m, epoch_of(m)) for m in managers.managers if m.running),
            key=lambda pair: pair[1],
            default=None,
        )
        return best if best is not None and best[1] > after else None

    wait_until(lambda: find() is not None, timeout, f"a manager leading after epoch {after}")
    found = find()
    assert found is not None
    return found


def mesh_status(manager: ManagerProcess) -> manager_pb2.GetMeshStatusResponse | None:
    try:
        return manager.stub.GetMeshStatus(manager_pb2.GetMeshStatusRequest(), timeout=5)
    except grpc.RpcError:
        return None


def healthy(manager: ManagerProcess, service: str) -> set[str]:
    status = mesh_status(manager)
    if status is None:
        return set()
    return {i for s in status.services if s.name == service for i in s.healthy}


def synced(manager: ManagerProcess, node_id: str) -> bool:
    """Client ``node_id`` is on ``manager``'s ADS (directly or through a
    standby) and acknowledged all it was sent."""
    status = mesh_status(manager)
    if status is None:
        return False
    clients = [c for c in status.clients if c.node_id == node_id]
    return bool(clients) and all(
        r.acked_version == r.sent_version and r.sent_version and not r.nack_error
        for c in clients
        for r in c.resources
    )


def connected(manager: ManagerProcess, ids: set[str]) -> bool:
    """Every one of ``ids`` is RUNNING with a session on ``manager``."""
    try:
        listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
    except grpc.RpcError:
        return False
    on = {
        c.identity.id
        for c in listed.containers
        if c.connected and c.state == S.LIFECYCLE_STATE_RUNNING
    }
    return ids <= on


def backend_spec(service: str, replicas: int) -> spec_pb2.ContainerSpec:
    return spec_pb2.ContainerSpec(
        name=service,
        command=[sys.executable, str(apps_dir() / "mesh_backend.py"), "--delay", "0.005"],
        replicas=replicas,
        service=mesh_pb2.MeshService(name=service),
    )


# A program behind Envoy that only calls out: a load generator is its
# stand-in, dialling the outbound listener it would dial.
IDLE_PROGRAM = [
    sys.executable,
    "-c",
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "time.sleep(3600)",
]


def envoy_caller(leader: ManagerProcess, service: str, listen: str) -> str:
    """A program behind Envoy (a sidecar the leader launches, spec.proxy
    envoy) whose outbound listener on ``listen`` reaches ``service``; its
    id (Envoy's node id), once Envoy acknowledged all it was sent."""
    spec = spec_pb2.ContainerSpec(
        name="caller",
        command=IDLE_PROGRAM,
        sidecar=True,
        proxy=mesh_pb2.MESH_PROXY_ENVOY,
        envoy=mesh_pb2.EnvoySettings(
            upstreams=[mesh_pb2.MeshUpstream(service=service, listen=listen)]
        ),
    )
    [me] = leader.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=spec), timeout=60
    ).containers
    node_id: str = me.identity.id
    wait_until(lambda: synced(leader, node_id), 60, "Envoy on the leader")
    return node_id


def run_backends(leader: ManagerProcess, service: str, replicas: int) -> set[str]:
    """``replicas`` backends of ``service`` run by the leader; their ids,
    once every one is an endpoint."""
    spec = backend_spec(service, replicas)
    ran = leader.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=60)
    ids = {c.identity.id for c in ran.containers}
    wait_until(lambda: healthy(leader, service) == ids, 60, "every backend an endpoint")
    return ids


@contextlib.contextmanager
def backends_killed_at_end(managers: ManagerCluster) -> Iterator[list[int]]:
    """The backends outlive the manager that launched them (kill -9): they
    are killed at the end (the pids given, and those a manager still lists)."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for m in managers.managers:
            if m.running:
                with contextlib.suppress(grpc.RpcError):
                    listed = m.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
                    pids += [c.pid for c in listed.containers if c.pid]
        for pid in set(pids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def pids_of(manager: ManagerProcess) -> list[int]:
    listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=10)
    return [c.pid for c in listed.containers if c.pid]


def envoy_load(workdir: Path, listen: str, concurrency: int = 4) -> Load:
    """tests/apps/mesh_client.py calling Envoy's outbound listener ``listen``."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Load(listen, workdir, dict(os.environ), node_id="", concurrency=concurrency, deadline=10)


def mesh_load(
    workdir: Path,
    service: str,
    managers: Sequence[str],
    node_id: str,
    concurrency: int = 4,
) -> Load:
    """tests/apps/mesh_client.py calling ``xds:///SERVICE`` with a bootstrap
    naming ``managers`` (in that order: the first is where its xDS channel
    goes first)."""
    workdir.mkdir(parents=True, exist_ok=True)
    bootstrap = write_bootstrap(workdir / "bootstrap.json", list(managers), node_id=node_id)
    env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(bootstrap))
    return Load(
        f"xds:///{service}", workdir, env, node_id=node_id, concurrency=concurrency, deadline=10
    )
