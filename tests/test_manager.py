"""The manager over loopback with real containers: registration, commands
through the operator API, events, label selectors, errors."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from support import connected_container, wait_until

import pycontainer
from pycontainer._errors import RequestError
from pycontainer.testing import ManagerHost
from pycontainer.v1 import container_pb2, manager_pb2

S = container_pb2


def _state(manager: ManagerHost, name: str) -> int:
    return manager.stub.GetContainer(
        manager_pb2.GetContainerRequest(container=name), timeout=5
    ).container.state


def test_register_start_pause_resume_stop(manager: ManagerHost) -> None:
    calls: list[str] = []
    hooks = pycontainer.Hooks(
        on_start=lambda: calls.append("start"),
        on_pause=lambda: calls.append("pause"),
        on_resume=lambda: calls.append("resume"),
        on_stop=lambda reason, deadline: calls.append(f"stop:{reason}"),
    )
    container, host = connected_container(manager, "web", hooks=hooks, priority=3)
    try:
        wait_until(lambda: container.state == pycontainer.State.RUNNING, what="auto start")
        listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
        assert [c.identity.name for c in listed.containers] == ["web"]
        got = listed.containers[0]
        assert got.connected
        assert got.identity.priority == 3
        assert got.pid > 0
        manager.stub.PauseContainer(manager_pb2.PauseContainerRequest(container="web"), timeout=10)
        assert container.state == pycontainer.State.PAUSED
        wait_until(lambda: _state(manager, "web") == S.LIFECYCLE_STATE_PAUSED, what="paused")
        with pytest.raises(grpc.RpcError) as info:
            manager.stub.PauseContainer(
                manager_pb2.PauseContainerRequest(container="web"), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "PAUSED" in info.value.details()
        manager.stub.ResumeContainer(
            manager_pb2.ResumeContainerRequest(container=container.id), timeout=10
        )
        manager.stub.StopContainer(manager_pb2.StopContainerRequest(container="web"), timeout=10)
        assert container.state == pycontainer.State.STOPPED
        assert calls == ["start", "pause", "resume", "stop:requested"]
        wait_until(lambda: _state(manager, "web") == S.LIFECYCLE_STATE_STOPPED, what="stopped")
        events = manager.stub.WatchEvents(
            manager_pb2.WatchEventsRequest(include_history=True, container="web"), timeout=5
        )
        seen = []
        for response in events:
            seen.append(response.event)
            if "-> LIFECYCLE_STATE_STOPPED" in response.event.message:
                break
        events.cancel()
        kinds = {e.type for e in seen}
        assert manager_pb2.EVENT_TYPE_REGISTERED in kinds
        assert manager_pb2.EVENT_TYPE_COMMAND_SENT in kinds
        assert [e.sequence for e in seen] == sorted(e.sequence for e in seen)
    finally:
        host.stop()


def test_errors_name_what_to_fix(manager: ManagerHost) -> None:
    with pytest.raises(grpc.RpcError) as info:
        manager.stub.GetContainer(manager_pb2.GetContainerRequest(container="ghost"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        manager.stub.ListContainers(
            manager_pb2.ListContainersRequest(label_selector="a b=c"), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "label_selector" in info.value.details()
    # The rich status the container side sends too (pycontainer._errors).
    status = rpc_status.from_call(info.value)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["label_selector"]

    # The project's own server interceptor (the one containers use) counted
    # both failures (a call is counted once its handler has returned, just
    # after the client has its status).
    def failed() -> dict[str, tuple[int, int]]:
        return {
            f.method.rsplit("/", 1)[-1]: (f.calls_started, f.calls_failed)
            for f in manager.manager.rpc_stats.figures()
        }

    wait_until(
        lambda: failed() == {"GetContainer": (1, 1), "ListContainers": (1, 1)},
        what="both failures counted by the interceptor",
    )


def test_a_stopped_container_is_deleted_for_good(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    manager = ManagerHost(state)
    container, host = connected_container(manager, "web")
    try:
        wait_until(lambda: container.state == pycontainer.State.RUNNING, what="auto start")
        with pytest.raises(RequestError) as info:
            manager.call(lambda: manager.manager.delete_container("web"))
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "stop it first" in info.value.message
        manager.stub.StopContainer(manager_pb2.StopContainerRequest(container="web"), timeout=10)
        wait_until(lambda: _state(manager, "web") == S.LIFECYCLE_STATE_STOPPED, what="stopped")
        manager.call(lambda: manager.manager.delete_container("web"))
        with pytest.raises(grpc.RpcError) as gone:
            manager.stub.GetContainer(manager_pb2.GetContainerRequest(container="web"), timeout=5)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        host.stop()
        manager.stop()
    again = ManagerHost(state)  # the record went from the state store too
    try:
        listed = again.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
        assert list(listed.containers) == []
    finally:
        again.stop()


def test_label_selector_and_state_filter(manager: ManagerHost) -> None:
    a, host_a = connected_container(manager, "alpha")
    b, host_b = connected_container(manager, "beta")
    try:
        wait_until(lambda: a.state == b.state == pycontainer.State.RUNNING, what="both running")
        sel = manager.stub.ListContainers(
            manager_pb2.ListContainersRequest(label_selector="app=alpha"), timeout=5
        )
        assert [c.identity.name for c in sel.containers] == ["alpha"]
        sel = manager.stub.ListContainers(
            manager_pb2.ListContainersRequest(label_selector="app!=alpha,app"), timeout=5
        )
        assert [c.identity.name for c in sel.containers] == ["beta"]
        manager.stub.StopContainer(manager_pb2.StopContainerRequest(container="beta"), timeout=10)
        wait_until(lambda: _state(manager, "beta") == S.LIFECYCLE_STATE_STOPPED, what="stop")
        running = manager.stub.ListContainers(
            manager_pb2.ListContainersRequest(states=[S.LIFECYCLE_STATE_RUNNING]), timeout=5
        )
        assert [c.identity.name for c in running.containers] == ["alpha"]
    finally:
        host_a.stop()
        host_b.stop()
