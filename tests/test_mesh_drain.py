"""No request lost: a grpcio client process calling a service through
``xds:///`` while, in turn, a replica is stopped, one is evicted for a
higher-priority container, the service is scaled down, and a changed spec
is rolled out to its 3 replicas. With the drain (the endpoint DRAINING and
every subscriber's ACK before the Stop) no call fails; with a plain stop
(mesh_drain_timeout 0) calls that reach a replica after it stopped taking
new ones fail. Everything is real: the manager, the backends (processes of
tests/apps/mesh_backend.py, which refuse calls once stopping and until
RUNNING) and the client (tests/apps/mesh_client.py).

How reliably the plain stop shows failures depends on the window between
the backend refusing new calls and the client's picker dropping it (a few
milliseconds): each plain scenario makes two or more such stops, and the
counts of every phase are printed (``pytest -s``). Where a plain scenario
may see none, the test says so and asserts only what is certain.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycontainer.manager import Resources
from pycontainer.testing import CallCounts, Load, MeshRig
from pycontainer.v1 import container_pb2, manager_pb2

S = container_pb2
MiB = 1 << 20
SERVICE = "orders"


# Calls answer at once and 12 are in flight: the more calls a second, the
# more of them land in a plain stop's window (a few milliseconds).
DELAY = 0.0
CONCURRENCY = 12
# How long calls go on after a plain stop's removal was acknowledged: grpcio
# acknowledges before its picker changes (Mesh's SETTLE), and the calls
# picked meanwhile belong to the plain stop's count.
PICKER_LAG = 0.3
# The plain stops' counts of this module, for the last test.
PLAIN: list[CallCounts] = []


def report(scenario: str, counts: CallCounts) -> None:
    print(f"MESH {scenario}: {counts}", flush=True)


def plain_phase(rig: MeshRig, load: Load, scenario: str) -> CallCounts:
    """The counts of a plain stop (or stops): until the client acknowledged
    the endpoints' removal, and the picker's lag after it; the load ends."""
    rig.wait_acknowledged(SERVICE)
    time.sleep(PICKER_LAG)
    counts = load.finish()
    report(scenario, counts)
    PLAIN.append(counts)
    return counts


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[MeshRig]:
    with MeshRig(tmp_path) as r:
        yield r


def test_a_stopped_replica_loses_no_call_with_the_drain(rig: MeshRig) -> None:
    ids = rig.run_service(SERVICE, replicas=3, delay=DELAY)
    with rig.load(SERVICE, concurrency=CONCURRENCY) as load:
        load.until_answered(ids)
        drained_victim, plain_victim, survivor = ids
        # A restart stops through the same drain, and the replica takes
        # calls again once it is RUNNING (it refuses them before).
        rig.host.stub.RestartContainer(
            manager_pb2.RestartContainerRequest(container=survivor), timeout=60
        )
        rig.wait_endpoints(SERVICE, 3)
        restarted = load.until_answered([survivor])
        report("restart, drain", restarted)
        assert restarted.failed == 0, restarted
        assert survivor in rig.drains()
        rig.host.stub.StopContainer(
            manager_pb2.StopContainerRequest(container=drained_victim), timeout=30
        )
        rig.wait_acknowledged(SERVICE)
        drained = load.phase()
        report("stop, drain", drained)
        assert drained.failed == 0, drained
        assert "1 client(s) acknowledged" in rig.drains()[drained_victim]

        rig.set_drain(False)
        rig.host.stub.StopContainer(
            manager_pb2.StopContainerRequest(container=plain_victim), timeout=30
        )
        plain = plain_phase(rig, load, "stop, plain")
        assert plain_victim not in rig.drains()
        assert survivor in plain.answers, plain


def test_an_evicted_replica_loses_no_call_with_the_drain(tmp_path: Path) -> None:
    capacity = Resources(cpu_millis=1000, memory_bytes=1 << 30)
    needs = S.ResourceRequirements(cpu_millis=250, memory_bytes=64 * MiB)
    big = S.ResourceRequirements(cpu_millis=300, memory_bytes=64 * MiB)
    with MeshRig(tmp_path, settings={"capacity": capacity}) as rig:
        rig.run(rig.backend_spec(SERVICE, replicas=3, delay=DELAY, priority=1, resources=needs))
        ids = rig.wait_endpoints(SERVICE, 3)
        with rig.load(SERVICE, concurrency=CONCURRENCY) as load:
            load.until_answered(ids)
            # 750m of 1000m taken: a priority-10 newcomer needing 300m evicts one.
            rig.run(rig.backend_spec("urgent", service="", priority=10, resources=big))
            left = rig.wait_endpoints(SERVICE, 2)
            [evicted] = set(ids) - set(left)
            _wait_stopped(rig, evicted)
            rig.wait_acknowledged(SERVICE)
            drained = load.phase()
            report("evict, drain", drained)
            assert drained.failed == 0, drained
            assert evicted in rig.drains()

            # 800m taken: a second newcomer of 300m evicts another, undrained.
            rig.set_drain(False)
            rig.run(rig.backend_spec("urgent-2", service="", priority=10, resources=big))
            [last] = rig.wait_endpoints(SERVICE, 1)
            [plain_evicted] = set(left) - {last}
            _wait_stopped(rig, plain_evicted)
            plain = plain_phase(rig, load, "evict, plain")
            assert plain_evicted not in rig.drains()
            assert last in plain.answers, plain


def test_a_scale_down_loses_no_call_with_the_drain(rig: MeshRig) -> None:
    ids = rig.run_service(SERVICE, replicas=3, delay=DELAY)
    with rig.load(SERVICE, concurrency=CONCURRENCY) as load:
        load.until_answered(ids)
        rig.host.stub.ScaleContainer(
            manager_pb2.ScaleContainerRequest(container=SERVICE, replicas=1), timeout=60
        )
        [kept] = rig.wait_endpoints(SERVICE, 1)
        rig.wait_acknowledged(SERVICE)
        drained = load.phase()
        report("scale 3->1, drain", drained)
        assert drained.failed == 0, drained
        assert set(rig.drains()) == set(ids) - {kept}

        rig.host.stub.ScaleContainer(
            manager_pb2.ScaleContainerRequest(container=SERVICE, replicas=3), timeout=60
        )
        again = rig.wait_endpoints(SERVICE, 3)
        load.until_answered(again)
        rig.set_drain(False)
        rig.host.stub.ScaleContainer(
            manager_pb2.ScaleContainerRequest(container=SERVICE, replicas=1), timeout=60
        )
        [kept_again] = rig.wait_endpoints(SERVICE, 1)
        plain = plain_phase(rig, load, "scale 3->1, plain")
        assert set(rig.drains()) == set(ids) - {kept}  # none more
        assert kept_again in plain.answers, plain


def test_a_rollout_to_three_replicas_loses_no_call_with_the_drain(rig: MeshRig) -> None:
    def apply(version: str) -> None:
        spec = rig.backend_spec(SERVICE, replicas=3, delay=DELAY, env={"VERSION": version})
        rig.host.stub.ApplySpecs(manager_pb2.ApplySpecsRequest(specs=[spec]), timeout=120)

    apply("1")
    first = rig.wait_endpoints(SERVICE, 3)
    with rig.load(SERVICE, concurrency=CONCURRENCY) as load:
        load.until_answered(first)
        # Surge one, wait for it ready, drain and retire one old: three times.
        apply("2")
        second = rig.wait_endpoints(SERVICE, 3, accept=lambda ids: not set(ids) & set(first))
        rig.wait_acknowledged(SERVICE)
        drained = load.phase()
        report("rollout of 3, drain", drained)
        # A replica that got a call before it was RUNNING refused it: no
        # failure means traffic went to the new ones only once RUNNING.
        assert drained.failed == 0, drained
        assert set(rig.drains()) == set(first)
        assert set(second) <= set(drained.answers), drained

        rig.set_drain(False)
        apply("3")
        third = rig.wait_endpoints(SERVICE, 3, accept=lambda ids: not set(ids) & set(second))
        plain = plain_phase(rig, load, "rollout of 3, plain")
        assert set(rig.drains()) == set(first)  # none more
        assert set(third) <= set(plain.answers), plain


def test_the_plain_stops_lost_calls_the_drain_saves() -> None:
    """The plain stops of the scenarios above, together (7 stops), lost calls:
    one stop's window is a few milliseconds and may miss every call on a
    loaded machine, so no single scenario asserts it; all of them missing
    every call did not happen in any run (their counts are printed)."""
    if len(PLAIN) < 4:
        pytest.skip("runs after the four scenarios above (run the module)")
    total = sum(c.failed for c in PLAIN)
    calls = sum(c.calls for c in PLAIN)
    print(f"MESH plain stops together: {calls} calls, {total} failed", flush=True)
    assert total > 0, [str(c) for c in PLAIN]


def _wait_stopped(rig: MeshRig, container: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = rig.host.stub.GetContainer(
            manager_pb2.GetContainerRequest(container=container), timeout=10
        ).container.state
        if state in (S.LIFECYCLE_STATE_STOPPED, S.LIFECYCLE_STATE_FAILED):
            return
        time.sleep(0.05)
    raise AssertionError(f"{container} did not stop within {timeout:g}s")
