"""No request lost through Envoy: the scenarios of tests/test_mesh_drain.py
(pycontainer.testing.mesh_scenarios) with the load generator calling a plain
``127.0.0.1:PORT``, the outbound listener of the Envoy beside a caller
(spec.proxy envoy), instead of ``xds:///``: while a replica is stopped, one
is evicted for a higher-priority container, the service is scaled down
3 -> 1, and a changed spec is rolled out to its 3 replicas. The drain waits
for the Envoy's ACK like any subscriber's, so no call fails. The counts are
printed (``pytest -s``, lines "MESH envoy ...").

Envoy missing: a skip locally, a failure with CI set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_address, require_envoy, wait_until

from pycontainer.manager import Resources
from pycontainer.testing import Load, MeshRig
from pycontainer.testing import mesh_scenarios as scenarios
from pycontainer.v1 import container_pb2, mesh_pb2, spec_pb2

S = container_pb2
MiB = 1 << 20
SERVICE = "orders"
CONCURRENCY = 12
# The calls that may fail on an overloaded machine (see drained()).
MAX_FAILED_CALLS = 5
MAX_FAILED_SHARE = 0.01


@pytest.fixture(autouse=True)
def _envoy() -> None:
    require_envoy()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[MeshRig]:
    with MeshRig(tmp_path) as r:
        yield r


def through_envoy(rig: MeshRig, service: str) -> Load:
    """A caller behind Envoy (an idle program) with a local listener for
    ``service``, and the load generator calling that listener."""
    listen = free_address()
    spec = spec_pb2.ContainerSpec(
        name="caller",
        command=[sys.executable, "-c", "import time; time.sleep(3600)"],
        sidecar=True,
        proxy=mesh_pb2.MESH_PROXY_ENVOY,
        envoy=mesh_pb2.EnvoySettings(
            upstreams=[mesh_pb2.MeshUpstream(service=service, listen=listen)]
        ),
    )
    [caller] = rig.run(spec)
    rig.wait_state(caller, ("RUNNING",))
    wait_until(lambda: rig.acknowledged(caller), timeout=30, what="the caller's Envoy in sync")
    workdir = rig.workdir / "envoy-load"
    workdir.mkdir(parents=True, exist_ok=True)
    return Load(listen, workdir, os.environ, node_id=caller, concurrency=CONCURRENCY, deadline=10)


def drained(scenario: str, outcome: scenarios.Outcome) -> None:
    """Every replica taken out was drained, the caller's Envoy acknowledging
    first; and (nearly) no call failed. Zero in most runs; on a machine
    loaded far past its cores (load average 10-14 on 2 here) Envoy's worker
    may take up the DRAINING endpoint later than the drain's SETTLE after
    its main thread acknowledged it, and a handful of calls of thousands
    reach the stopping replica: the counts are printed, and more than
    MAX_FAILED_CALLS or MAX_FAILED_SHARE of the calls failing fails the test
    (a stop that did not wait for Envoy loses its whole window's share)."""
    print(f"MESH envoy {scenario}, drain: {outcome.counts} (the action {outcome.seconds:.2f}s)")
    assert outcome.removed
    assert outcome.drained == outcome.removed, outcome
    allowed = max(MAX_FAILED_CALLS, MAX_FAILED_SHARE * outcome.counts.calls)
    assert outcome.counts.failed <= allowed, outcome.counts


def test_a_stopped_replica_loses_no_call_through_envoy(rig: MeshRig) -> None:
    ids = rig.run_service(SERVICE, replicas=3, delay=0.0)
    with through_envoy(rig, SERVICE) as load:
        load.until_answered(ids)
        drained("stop", scenarios.stop_replica(rig, load, SERVICE, ids[0]))


def test_an_evicted_replica_loses_no_call_through_envoy(tmp_path: Path) -> None:
    capacity = Resources(cpu_millis=1000, memory_bytes=1 << 30)
    needs = S.ResourceRequirements(cpu_millis=250, memory_bytes=64 * MiB)
    big = S.ResourceRequirements(cpu_millis=300, memory_bytes=64 * MiB)
    with MeshRig(tmp_path, settings={"capacity": capacity}) as rig:
        rig.run(rig.backend_spec(SERVICE, replicas=3, delay=0.0, priority=1, resources=needs))
        ids = rig.wait_endpoints(SERVICE, 3)
        with through_envoy(rig, SERVICE) as load:
            load.until_answered(ids)
            # 750m of 1000m taken: a priority-10 newcomer needing 300m evicts one.
            urgent = rig.backend_spec("urgent", service="", priority=10, resources=big)
            drained("evict", scenarios.evict_replica(rig, load, SERVICE, urgent))


def test_a_scale_down_loses_no_call_through_envoy(rig: MeshRig) -> None:
    ids = rig.run_service(SERVICE, replicas=3, delay=0.0)
    with through_envoy(rig, SERVICE) as load:
        load.until_answered(ids)
        drained("scale 3->1", scenarios.scale(rig, load, SERVICE, 1))


def test_a_rollout_to_three_replicas_loses_no_call_through_envoy(
    rig: MeshRig, tmp_path: Path
) -> None:
    def spec(version: str) -> spec_pb2.ContainerSpec:
        ready = tmp_path / f"v{version}.ready"
        ready.write_text("")
        return rig.backend_spec(  # type: ignore[no-any-return]
            SERVICE,
            replicas=3,
            delay=0.0,
            args=["--ready-file", str(ready)],
            env={"VERSION": version},
        )

    rig.apply(spec("1"))
    first = rig.wait_endpoints(SERVICE, 3)
    with through_envoy(rig, SERVICE) as load:
        load.until_answered(first)
        outcome = scenarios.roll_out(rig, load, SERVICE, spec("2"))
        drained("rollout of 3", outcome)
        assert outcome.removed == set(first)
