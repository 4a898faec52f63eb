"""What a new user's tryout of the manager found, each through a real manager
with real in-process containers: a scale (or run, or apply) too big changes
nothing, a name resolves the same way for every verb after re-runs, a refused
apply is not stored, an owner change alone restarts nothing, an eviction says
the restart policy brings the container back, and messages name states with
the table's words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
