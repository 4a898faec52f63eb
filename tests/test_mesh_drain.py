"""No request lost: a grpcio client process calling a service through
``xds:///`` while, in turn, a replica is stopped (and one restarted), one is
evicted for a higher-priority container, the service is scaled down 3 -> 1,
and a changed spec is rolled out to its 3 replicas. With the drain (the
endpoint DRAINING and every subscriber's ACK before the Stop) no call fails;
with a plain stop (mesh_drain_timeout 0) calls that reach a replica after it
stopped taking new ones fail. Everything is real: the manager, the backends
(processes of tests/apps/mesh_backend.py, which refuse calls once stopping
and until RUNNING, so that traffic sent to a replica too early fails too)
and the client (tests/apps/mesh_client.py). The scenarios themselves are
pycontainer.testing.mesh_scenarios, which the bench runs as well.

How reliably a plain stop shows failures depends on the window between the
backend refusing new calls and the client's picker dropping it (a few
milliseconds): no single plain scenario asserts failures; the last test
asserts that the plain stops of the module together (seven) lost calls.
The counts of every phase are printed (``pytest -s``, lines "MESH ...").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import pytest

from pycontainer.manager import Resources
from pycontainer.testing import CallCounts, MeshRig
from pycontainer.testing import mesh_scenarios as scenarios
from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

S = container_pb2
MiB = 1 << 20
SERVICE = "orders"
# Calls answer at once and 12 are in flight: the more calls a second, the
# more of them land in a plain stop's window.
DELAY = 0.0
CONCURRENCY = 12
# How long calls go on after a plain stop's removal was acknowledged: grpcio
# acknowledges before its picker changes (Mesh's SETTLE), and the calls
# picked meanwhile belong to the plain stop's count.
PICKER_LAG = 0.3
# The plain stops' counts of this module, for the last test.
PLAIN: list[CallCounts] = []


def report(scenario: str, outcome: scenarios.Outcome) -> None:
    print(
        f"MESH {scenario}: {outcome.counts} (the action {outcome.seconds:.2f}s)",
        flush=True,
    )


def drained(scenario: str, outcome: scenarios.Outcome) -> None:
    """The drain's claim: no call failed, and every replica taken out was drained."""
    report(f"{scenario}, drain", outcome)
    assert outcome.counts.failed == 0, outcome.counts
    assert outcome.removed
    assert outcome.drained == outcome.removed, outcome


def plain(scenario: str, outcome: scenarios.Outcome) -> None:
    """A plain stop: nothing drained; the failures are counted."""
    report(f"{scenario}, plain", outcome)
    PLAIN.append(outcome.counts)
    assert outcome.removed
    assert not outcome.drained, outcome
    # The replicas left took calls meanwhile.
    assert outcome.after <= set(outcome.counts.answers), outcome.counts


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[MeshRig]:
    with MeshRig(tmp_path) as r:
        yield r


def test_a_stopped_or_restarted_replica_loses_no_call_with_the_drain(rig: MeshRig) -> None:
    ids = rig.run_service(SERVICE, replicas=3, delay=DELAY)
    with rig.load(SERVICE, concurrency=CONCURRENCY) as load:
        load.until_answered(ids)
        first, second, third = ids
        # A restart stops through the same drain; the replica takes calls
        # again once it is RUNNING (it refuses them before).
        restarted = scenarios.restart_replica(rig, load, SERVICE, third)
        report("restart, drain", restarted)
        assert restarted.counts.failed == 0, restarted.counts
        assert restarted.drained == {third}
        stopped = scenarios.stop_replica(rig, load, SERVICE, first)
        drained("stop", stopped)
        assert "1 client(s) acknowledged" in rig.drains()[first]
        rig.set_drain(False)
        plain("stop", scenarios.stop_replica(rig, load, SERVICE, second, lag=PICKER_LAG))


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
            urgent = rig.backend_spec("urgent", service="", priority=10, resources=big)
            drained("evict", scenarios.evict_replica(rig, load, SERVICE, urgent))
            # 800m taken: a second newcomer of 300m evicts another, undrained.
            rig.set_drain(False)
            urgent = rig.backend_spec("urgent-2", service="", priority=10, resources=big)
            plain("evict", scenarios.evict_replica(rig, load, SERVICE, urgent, lag=PICKER_LAG))


def test_a_scale_down_loses_no_call_with_the_drain(rig: MeshRig) -> None:
    ids = rig.run_service(SERVICE, replicas=3, delay=DELAY)
    with rig.load(SERVICE, concurrency=CONCURRENCY) as load:
        load.until_answered(ids)
        drained("scale 3->1", scenarios.scale(rig, load, SERVICE, 1))
        again = scenarios.scale(rig, load, SERVICE, 3)
        load.until_answered(again.after)
        rig.set_drain(False)
        plain("scale 3->1", scenarios.scale(rig, load, SERVICE, 1, lag=PICKER_LAG))


def test_a_rollout_to_three_replicas_loses_no_call_with_the_drain(
    rig: MeshRig, tmp_path: Path
) -> None:
    def spec(version: str) -> spec_pb2.ContainerSpec:
        # Ready only once the version's file exists (refusing calls before).
        ready = tmp_path / f"v{version}.ready"
        args = ["--ready-file", str(ready)]
        return rig.backend_spec(  # type: ignore[no-any-return]
            SERVICE, replicas=3, delay=DELAY, args=args, env={"VERSION": version}
        )

    (tmp_path / "v1.ready").write_text("")
    rig.apply(spec("1"))
    first = rig.wait_endpoints(SERVICE, 3)
    with rig.load(SERVICE, concurrency=CONCURRENCY) as load:
        load.until_answered(first)
        # Surge one, wait for it ready, drain and retire one old: three times.
        # A replica sent a call before it is RUNNING and ready refuses it: no
        # failure means the new ones got traffic only then. The first new one
        # is held RUNNING and not ready while calls go on.
        with futures.ThreadPoolExecutor(1) as pool:
            rolling = pool.submit(scenarios.roll_out, rig, load, SERVICE, spec("2"))
            surged = _new_running(rig, set(first))
            healthy, draining = rig.endpoints(SERVICE)
            assert surged not in healthy + draining
            held = load.until_answered(first)  # calls go on meanwhile
            (tmp_path / "v2.ready").write_text("")
            second = rolling.result(timeout=300)
        second = scenarios.Outcome(
            held + second.counts, second.before, second.after, second.drained, second.seconds
        )
        drained("rollout of 3", second)
        assert second.added <= set(second.counts.answers), second.counts
        rig.set_drain(False)
        (tmp_path / "v3.ready").write_text("")
        plain("rollout of 3", scenarios.roll_out(rig, load, SERVICE, spec("3"), lag=PICKER_LAG))


def _new_running(rig: MeshRig, old: set[str], timeout: float = 60.0) -> str:
    """The id of a replica of SERVICE not in ``old`` once it is RUNNING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = rig.host.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=10)
        for container in listed.containers:
            if (
                container.identity.name == SERVICE
                and container.identity.id not in old
                and container.state == S.LIFECYCLE_STATE_RUNNING
            ):
                return container.identity.id
        time.sleep(0.05)
    raise AssertionError(f"no new replica of {SERVICE} RUNNING within {timeout:g}s")


def test_the_plain_stops_lost_calls_the_drain_saves() -> None:
    """The plain stops of the scenarios above, together (seven), lost calls:
    one stop's window is a few milliseconds and may miss every call, so no
    single scenario asserts it; all seven missing every call did not happen
    in any run here (their counts are printed)."""
    if len(PLAIN) < 4:
        pytest.skip("runs after the four scenarios above (run the whole module)")
    failed = sum(c.failed for c in PLAIN)
    calls = sum(c.calls for c in PLAIN)
    print(f"MESH plain stops together: {calls} calls, {failed} failed", flush=True)
    assert failed > 0, [str(c) for c in PLAIN]
