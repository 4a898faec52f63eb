"""Manager.StopContainers: every live container a label selector matches (or
all), stopped in one request, through the real manager and the CLI."""

from __future__ import annotations

import grpc
import pytest
from support import Host, connected_container, wait_until
from test_cli import cli

import pycontainer
from pycontainer.testing import ManagerHost
from pycontainer.v1 import container_pb2, manager_pb2

S = container_pb2


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
