"""Manager.StopContainers: every live container a label selector matches (or
all), stopped in one request, through the real manager and the CLI."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from support import (
    Host,
    connected_container,
    make_container,
    start_sync_host,
    wait_container,
    wait_until,
)
from test_cli import cli
from test_readiness_report import RawSession, _registration

import pycontainer
from pycontainer.manager import Resources
from pycontainer.testing import ManagerHost
from pycontainer.v1 import container_pb2, lifecycle_pb2, manager_pb2

S = container_pb2
RUNNING, STOPPING, STOPPED = (
    S.LIFECYCLE_STATE_RUNNING,
    S.LIFECYCLE_STATE_STOPPING,
    S.LIFECYCLE_STATE_STOPPED,
)


def _connected(manager: ManagerHost, *names: str) -> list[tuple[pycontainer.Container, Host]]:
    made = [connected_container(manager, name) for name in names]
    wait_until(
        lambda: all(c.state == pycontainer.State.RUNNING for c, _ in made), what="all running"
    )
    return made


def test_a_selector_stops_every_match_in_one_request_and_no_other(manager: ManagerHost) -> None:
    made = _connected(manager, "web", "api", "db")
    try:
        stopped = manager.stub.StopContainers(
            manager_pb2.StopContainersRequest(label_selector="app in (web,api)", message="bulk"),
            timeout=30,
        )
        assert [r.container.identity.name for r in stopped.results] == ["api", "web"]
        assert all(r.status.code == 0 and not r.killed for r in stopped.results)
        assert all(r.container.state == S.LIFECYCLE_STATE_STOPPED for r in stopped.results)
        assert [c.state for c, _ in made] == [
            pycontainer.State.STOPPED,  # web
            pycontainer.State.STOPPED,  # api
            pycontainer.State.RUNNING,  # db
        ]
        # The ended ones are not live any more: a second request finds none.
        again = manager.stub.StopContainers(
            manager_pb2.StopContainersRequest(label_selector="app in (web,api)"), timeout=30
        )
        assert list(again.results) == []
        # all stops what is left.
        rest = manager.stub.StopContainers(manager_pb2.StopContainersRequest(all=True), timeout=30)
        assert [r.container.identity.name for r in rest.results] == ["db"]
        assert made[2][0].state == pycontainer.State.STOPPED
    finally:
        for _, host in made:
            host.stop()


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        (manager_pb2.StopContainersRequest(label_selector="!!!"), "label_selector"),
        (manager_pb2.StopContainersRequest(), "give a label selector"),
        (manager_pb2.StopContainersRequest(label_selector="   "), "give a label selector"),
        (manager_pb2.StopContainersRequest(label_selector="app=web", all=True), "not both"),
    ],
)
def test_a_bad_selector_is_invalid_argument_and_stops_nothing(
    manager: ManagerHost, request_: manager_pb2.StopContainersRequest, says: str
) -> None:
    [(container, host)] = _connected(manager, "web")
    try:
        with pytest.raises(grpc.RpcError) as info:
            manager.stub.StopContainers(request_, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in (info.value.details() or "")
        assert container.state == pycontainer.State.RUNNING
    finally:
        host.stop()


def test_cli_stop_l_is_one_request_and_prints_each_container(manager: ManagerHost) -> None:
    made = _connected(manager, "web", "api")
    web, api = made[0][0], made[1][0]
    try:
        run = cli(manager, "stop", "-l", "app=web", "--grace", "5s")
        assert run.code == 0, run.err
        assert run.lines == [f"web ({web.id}): STOPPED"]
        assert api.state == pycontainer.State.RUNNING
        # One StopContainers operation, not one StopContainer per container.
        operations = manager.stub.ListOperations(manager_pb2.ListOperationsRequest(), timeout=10)
        methods = [o.method for o in operations.operations]
        assert "StopContainers" in methods
        assert "StopContainer" not in methods
        run = cli(manager, "stop", "--all")
        assert run.code == 0, run.err
        assert run.lines == [f"api ({api.id}): STOPPED"]
        none = cli(manager, "stop", "-l", "app=ghost")
        assert (none.code, none.out, none.err) == (0, "", "no live containers match\n")
    finally:
        for _, host in made:
            host.stop()


def test_what_waits_for_room_is_admitted_once_a_bulk_stop_frees_it(tmp_path: Path) -> None:
    """Admission after a release looks at the containers in CREATED only, in
    passes shared by the releases: both waiting ones still start, once."""
    manager = ManagerHost(
        str(tmp_path / "state"), capacity=Resources(cpu_millis=1000, memory_bytes=1 << 30)
    )
    hosts: list[Host] = []
    starts: list[str] = []

    def connect(name: str, priority: int, cpu: int) -> pycontainer.Container:
        hooks = pycontainer.Hooks(on_start=lambda: starts.append(name))
        container = make_container(name, priority=priority, cpu_millis=cpu, hooks=hooks)
        hosts.append(start_sync_host(container))
        container.connect(manager.address)
        return container

    try:
        old = [connect(name, 5, 300) for name in ("a", "b", "c")]
        wait_until(lambda: all(c.state == pycontainer.State.RUNNING for c in old), what="old")
        # 900m of 1000m held: neither fits, and their priority evicts nobody.
        waiting = [connect("d", 1, 500), connect("e", 2, 500)]
        wait_until(
            lambda: sum(e.type == manager_pb2.EVENT_TYPE_REFUSED for e in _history(manager)) == 2,
            what="both refused",
        )
        assert all(c.state == pycontainer.State.CREATED for c in waiting)
        stopped = manager.stub.StopContainers(
            manager_pb2.StopContainersRequest(label_selector="app in (a,b,c)"), timeout=30
        )
        assert len(stopped.results) == 3
        wait_until(
            lambda: all(c.state == pycontainer.State.RUNNING for c in waiting),
            what="both admitted and started",
        )
        assert sorted(starts) == ["a", "b", "c", "d", "e"]  # each started once
    finally:
        for host in hosts:
            host.stop()
        manager.stop()


def _history(manager: ManagerHost) -> list[manager_pb2.Event]:
    events = manager.stub.WatchEvents(manager_pb2.WatchEventsRequest(history_only=True), timeout=10)
    return [response.event for response in events]


def test_a_stop_a_container_ends_without_answering_succeeds_when_its_session_closes(
    manager: ManagerHost,
) -> None:
    """The manager's stop reaches a container already stopping by itself
    (SIGTERM; make run's Ctrl-C at that moment): it ends STOPPED and closes
    its session without answering the command (a sidecar was seen to). The
    stop succeeds then, not at its time limit (grace + 60 s of extensions +
    10 s: make run's Ctrl-C waited 80 s). A real Lifecycle stream, driven by
    hand, is that container."""
    session = RawSession(manager, _registration("self-stopping"))
    try:
        wait_container(manager.stub, "self-stopping", lambda c: c.connected, "registered")
        request = manager_pb2.StopContainerRequest(container="self-stopping")
        request.grace_period.FromSeconds(10)
        stop = manager.stub.StopContainer.future(request, timeout=30)
        wait_until(lambda: _commands(session, "stop"), 10, "the stop command sent")
        for before, after in ((RUNNING, STOPPING), (STOPPING, STOPPED)):
            session.send(
                lifecycle_pb2.ConnectRequest(
                    state_change=lifecycle_pb2.StateChange(from_state=before, to_state=after)
                )
            )
        wait_container(
            manager.stub, "self-stopping", lambda c: c.state == STOPPED, "stopped, unanswered"
        )
        session.close()  # ends its session, the command never answered
        assert stop.result().container.state == STOPPED  # well within the 30 s
    finally:
        session.close()


def _commands(session: RawSession, action: str) -> list[lifecycle_pb2.Command]:
    return [
        r.command
        for r in session.responses
        if r.WhichOneof("message") == "command" and r.command.WhichOneof("action") == action
    ]
