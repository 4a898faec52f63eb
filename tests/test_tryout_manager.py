"""What a new user's tryout of the manager found, each through a real manager
with real in-process containers: a scale (or run, or apply) too big changes
nothing, a name resolves the same way for every verb after re-runs, a refused
apply is not stored, an owner change alone restarts nothing, an eviction says
the restart policy brings the container back, and messages name states with
the table's words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import wait_container

from pycontainer.manager import Resources
from pycontainer.testing import ManagerHost, manager_host
from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

S = container_pb2
E = manager_pb2
IN_PROCESS = spec_pb2.RUNTIME_KIND_IN_PROCESS


def _spec(
    name: str, *, cpu: int = 0, priority: int = 0, replicas: int = 0
) -> spec_pb2.ContainerSpec:
    return spec_pb2.ContainerSpec(
        name=name,
        runtime=IN_PROCESS,
        priority=priority,
        replicas=replicas,
        resources=S.ResourceRequirements(cpu_millis=cpu),
    )


def _running(c: manager_pb2.Container) -> bool:
    return bool(c.state == S.LIFECYCLE_STATE_RUNNING and c.connected)


def _all(manager: ManagerHost) -> list[manager_pb2.Container]:
    return list(manager.stub.ListContainers(E.ListContainersRequest(), timeout=5).containers)


def _run(manager: ManagerHost, spec: spec_pb2.ContainerSpec) -> list[str]:
    response = manager.stub.RunContainer(E.RunContainerRequest(spec=spec), timeout=15)
    ids = [c.identity.id for c in response.containers]
    for cid in ids:
        wait_container(manager.stub, cid, _running, "running")
    return ids


def _end(manager: ManagerHost, name: str, container_id: str) -> None:
    """Stop by name, then close what is left of the in-process container (its
    runtime reports no exit of its own): the record may be removed after."""
    stopped = manager.stub.StopContainer(E.StopContainerRequest(container=name), timeout=30)
    assert stopped.container.identity.id == container_id
    assert stopped.container.state == S.LIFECYCLE_STATE_STOPPED
    manager.stub.KillContainer(E.KillContainerRequest(container=container_id), timeout=10)


def _event_types(manager: ManagerHost, container_id: str) -> list[int]:
    return [
        e.type for e in manager.call(lambda: _history(manager)) if e.container_id == container_id
    ]


async def _history(manager: ManagerHost) -> list[manager_pb2.Event]:
    return list(manager.manager.events.history())


@pytest.fixture
def small(tmp_path: Path) -> Iterator[ManagerHost]:
    """A manager with one core: three 300m containers fit, a fourth does not."""
    with manager_host(tmp_path / "state", capacity=Resources(cpu_millis=1000)) as host:
        yield host


# -- 1. a scale, run or apply too big changes nothing -------------------------------------
def test_scale_past_the_replicas_bound_is_invalid_and_names_it(small: ManagerHost) -> None:
    _run(small, _spec("pipe", cpu=300, priority=10))
    with pytest.raises(grpc.RpcError) as info:
        small.stub.ScaleContainer(E.ScaleContainerRequest(container="pipe", replicas=100000))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "MAX_REPLICAS" in (info.value.details() or "")
    assert "1000" in (info.value.details() or "")
    assert len(_all(small)) == 1


def test_a_scale_that_cannot_all_fit_launches_none_and_evicts_no_one(small: ManagerHost) -> None:
    [ticker] = _run(small, _spec("ticker", cpu=300, priority=0))
    [pipe] = _run(small, _spec("pipe", cpu=300, priority=10))
    # 4 more of 300m need 1200m: 400m are free and evicting ticker frees 300m.
    with pytest.raises(grpc.RpcError) as info:
        small.stub.ScaleContainer(E.ScaleContainerRequest(container="pipe", replicas=5))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "none was launched" in (info.value.details() or "")
    assert sorted(c.identity.id for c in _all(small)) == sorted([ticker, pipe])
    assert all(_running(c) for c in _all(small))
    assert E.EVENT_TYPE_EVICTED not in _event_types(small, ticker)

    # RunContainer with several replicas: the same all or nothing.
    with pytest.raises(grpc.RpcError) as info:
        small.stub.RunContainer(
            E.RunContainerRequest(spec=_spec("batch", cpu=300, priority=10, replicas=4))
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [c.identity.name for c in _all(small)].count("batch") == 0

    # What fits (with ticker evicted for it) still goes through.
    scaled = small.stub.ScaleContainer(
        E.ScaleContainerRequest(container="pipe", replicas=3), timeout=30
    )
    assert len(scaled.containers) == 3
    for c in scaled.containers:
        wait_container(small.stub, c.identity.id, _running, "running")
    wait_container(small.stub, ticker, lambda c: c.state == S.LIFECYCLE_STATE_STOPPED, "evicted")


# -- 2. one rule for names ------------------------------------------------------------------
def test_a_name_resolves_to_the_live_one_else_the_newest_ended(small: ManagerHost) -> None:
    ids = []
    for _ in range(3):  # three runs of the same name, each stopped
        [cid] = _run(small, _spec("sync-worker"))
        ids.append(cid)
        _end(small, "sync-worker", cid)
    got = small.stub.GetContainer(E.GetContainerRequest(container="sync-worker"), timeout=5)
    assert got.container.identity.id == ids[-1]
    # rm NAME removes the newest ended; the next rm the one before.
    small.stub.DeleteContainer(E.DeleteContainerRequest(container="sync-worker"), timeout=5)
    remaining = sorted(c.identity.id for c in _all(small))
    assert remaining == sorted(ids[:2])
    # A live one wins over every ended one.
    [live] = _run(small, _spec("sync-worker"))
    got = small.stub.GetContainer(E.GetContainerRequest(container="sync-worker"), timeout=5)
    assert got.container.identity.id == live
    # Two live ones are ambiguous, and the message says they are live.
    [other] = _run(small, _spec("sync-worker"))
    with pytest.raises(grpc.RpcError) as info:
        small.stub.GetContainer(E.GetContainerRequest(container="sync-worker"), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 live containers" in (info.value.details() or "")
    assert live in (info.value.details() or "")
    assert other in (info.value.details() or "")


def test_the_live_view_leaves_out_what_ended_before_this_manager(tmp_path: Path) -> None:
    from pycontainer.cli._up import shown_in_view

    state = tmp_path / "state"
    with manager_host(state) as first:
        [old] = _run(first, _spec("sync-worker"))
        _end(first, "sync-worker", old)
    with manager_host(state) as second:
        [live] = _run(second, _spec("sync-worker"))
        [ended] = _run(second, _spec("ticker"))
        _end(second, "ticker", ended)
        rows = second.call(lambda: _rows(second, shown_in_view))
        assert sorted(c.identity.id for c in rows) == sorted([live, ended])
        # ps -a still lists the old run's record.
        assert old in [c.identity.id for c in _all(second)]


async def _rows(manager: ManagerHost, view: Any) -> list[manager_pb2.Container]:
    return list(view(manager.manager))


# -- 3. a refused apply is not stored ---------------------------------------------------------
def _apply(
    manager: ManagerHost, owner: str, *specs: spec_pb2.ContainerSpec
) -> E.ApplySpecsResponse:
    return manager.stub.ApplySpecs(E.ApplySpecsRequest(specs=specs, owner=owner), timeout=60)


def _applied(manager: ManagerHost) -> dict[str, spec_pb2.ContainerSpec]:
    async def read() -> dict[str, spec_pb2.ContainerSpec]:
        return {
            a.name: spec_pb2.ContainerSpec.FromString(a.spec)
            for a in manager.manager.store.list_applied_specs()
        }

    return manager.call(read)


def test_a_refused_apply_leaves_the_applied_specs_as_they_were(small: ManagerHost) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _apply(small, "hogs", _spec("hog", cpu=1_000_000))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "hog" not in _applied(small)
    assert _all(small) == []

    _apply(small, "hogs", _spec("hog", cpu=100))
    [first] = _all(small)
    wait_container(small.stub, first.identity.id, _running, "running")
    # A replacement that cannot be admitted: the cpu-100 spec stays the desired one.
    with pytest.raises(grpc.RpcError) as info:
        _apply(small, "hogs", _spec("hog", cpu=1_000_000))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _applied(small)["hog"].resources.cpu_millis == 100
    [still] = [c for c in _all(small) if c.state != S.LIFECYCLE_STATE_FAILED]
    assert still.identity.id == first.identity.id


# -- 4. a new owner adopts, it does not replace ------------------------------------------------
def test_an_owner_change_alone_relabels_and_restarts_nothing(manager: ManagerHost) -> None:
    spec = _spec("web", replicas=2)
    _apply(manager, "demo-1e4b0635", spec)
    ids = sorted(c.identity.id for c in _all(manager))
    assert len(ids) == 2
    for cid in ids:
        wait_container(manager.stub, cid, _running, "running")

    response = _apply(manager, "demo2-99aa", spec)
    [change] = response.changes
    assert change.action == E.APPLY_ACTION_UNCHANGED
    assert "adopted 2 replicas from owner demo-1e4b0635 -> demo2-99aa" in change.detail
    after = _all(manager)
    assert sorted(c.identity.id for c in after) == ids
    assert all(_running(c) for c in after)
    assert {c.identity.labels["pycontainer.dev/owner"] for c in after} == {"demo2-99aa"}
    # The new owner's selector finds them, and a second apply is plainly unchanged.
    [again] = _apply(manager, "demo2-99aa", spec).changes
    assert again.action == E.APPLY_ACTION_UNCHANGED
    assert "adopted" not in again.detail


# -- 5. an eviction says what its restart policy does next -------------------------------------
def test_an_eviction_says_the_restart_policy_brings_it_back(manager: ManagerHost) -> None:
    always = _spec("ticker")
    always.restart_policy = spec_pb2.RESTART_POLICY_ALWAYS
    never = _spec("oneshot")
    never.restart_policy = spec_pb2.RESTART_POLICY_NEVER
    [ticker] = _run(manager, always)
    [oneshot] = _run(manager, never)
    evicted = manager.stub.EvictContainer(E.EvictContainerRequest(container="ticker"), timeout=30)
    assert evicted.container.state == S.LIFECYCLE_STATE_STOPPED
    assert evicted.container.reason == "evicted; restarting (restartPolicy Always)"
    # ...and so it does.
    wait_container(manager.stub, ticker, lambda c: c.restarts == 1 and _running(c), "restarted")
    evicted = manager.stub.EvictContainer(E.EvictContainerRequest(container="oneshot"), timeout=30)
    assert evicted.container.reason == "evicted"
    assert oneshot in [c.identity.id for c in _all(manager)]


# -- 6. states in the table's words ---------------------------------------------------------------
def test_errors_name_states_as_the_tables_do(manager: ManagerHost) -> None:
    [web] = _run(manager, _spec("web"))
    with pytest.raises(grpc.RpcError) as info:
        manager.stub.DeleteContainer(E.DeleteContainerRequest(container="web"), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = info.value.details() or ""
    assert f"container {web} is RUNNING: stop it first" in details
    assert "LIFECYCLE_STATE_" not in details
