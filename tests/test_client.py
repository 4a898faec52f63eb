"""pycontainer.client against a real manager and a real container: typed
methods, deadlines as timedelta, one error type that tells a refusal from a
server never reached, addresses checked before any channel is made; and
pycontainer.testing's context managers as a user's test would use them."""

from __future__ import annotations

import asyncio
import datetime
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import running_and_connected, wait_container

import pycontainer
from pycontainer.client import (
    AsyncManagementClient,
    AsyncManagerClient,
    CallError,
    ManagementClient,
    ManagerClient,
    TargetError,
    parse_listen,
    parse_target,
)
from pycontainer.testing import ManagerHost, container_host, manager_host
from pycontainer.v1 import container_pb2, manager_pb2

S = container_pb2


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50050", "127.0.0.1:50050"),
        (" localhost:80 ", "localhost:80"),
        ("[::1]:50050", "[::1]:50050"),
        ("unix:/run/pycontainer.sock", "unix:/run/pycontainer.sock"),
        ("dns:///manager.local:50050", "dns:///manager.local:50050"),
    ],
)
def test_targets_that_dial(text: str, expected: str) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1", "'127.0.0.1' has no port: write 127.0.0.1:PORT such as 127.0.0.1:50050"),
        ("50050", "'50050' has no host: write 127.0.0.1:50050 (this machine) or HOST:50050"),
        (
            "http://127.0.0.1:50050",
            "'http://127.0.0.1:50050' has a scheme (http://): gRPC addresses have none; "
            "write HOST:PORT such as 127.0.0.1:50050 (here: 127.0.0.1:50050)",
        ),
        ("", "empty address: write HOST:PORT such as 127.0.0.1:50050"),
        ("::1:50050", "an IPv6 address goes in brackets, such as [::1]:50050"),
        ("host:http", "the port 'http' is not a number"),
        ("host:0", "port 0 is out of range (1 to 65535)"),
        ("host:99999", "port 99999 is out of range (1 to 65535)"),
        (":50050", "has no host"),
    ],
)
def test_targets_refused_with_what_to_write(text: str, message: str) -> None:
    with pytest.raises(TargetError) as caught:
        parse_target(text)
    assert message in str(caught.value)
    if text:  # (an empty --manager means "the default")
        with pytest.raises(TargetError):
            ManagerClient(text)  # before any channel exists


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:0") == "127.0.0.1:0"  # any free port
    with pytest.raises(TargetError, match=r"port 99999 is out of range \(0 \(any free port\)"):
        parse_listen("127.0.0.1:99999")


def test_manager_target_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYCONTAINER_MANAGER", "127.0.0.1:1234")
    with ManagerClient() as client:
        assert client.target == "127.0.0.1:1234"
    monkeypatch.setenv("PYCONTAINER_MANAGER", "127.0.0.1")
    with pytest.raises(TargetError, match=r"^\$PYCONTAINER_MANAGER: '127.0.0.1' has no port"):
        ManagerClient()


def test_sync_clients(manager: ManagerHost, tmp_path: Path) -> None:
    settings = pycontainer.ContainerSettings(name="web", labels={"app": "web"})
    with container_host(settings, manager=manager) as web, ManagerClient(manager.address) as client:
        wait_container(manager.stub, "web", running_and_connected, "running")
        got = client.get_container(manager_pb2.GetContainerRequest(container="web")).container
        assert got.identity.name == "web"
        listed = client.list_containers(
            manager_pb2.ListContainersRequest(label_selector="app=web"),
            timeout=datetime.timedelta(seconds=5),
        )
        assert [c.identity.id for c in listed.containers] == [web.container.id]
        events = list(client.watch_events(manager_pb2.WatchEventsRequest(history_only=True)))
        assert any(e.event.type == manager_pb2.EVENT_TYPE_REGISTERED for e in events)

        with pytest.raises(CallError) as caught:
            client.get_container(manager_pb2.GetContainerRequest(container="ghost"))
        refused = caught.value
        assert (refused.code, refused.reached, refused.method) == (
            grpc.StatusCode.NOT_FOUND,
            True,
            "GetContainer",
        )
        assert refused.describe() == f"NOT_FOUND: {refused.details}"

        # A deadline as timedelta: a followed stream ends at it.
        follow = manager_pb2.WatchEventsRequest(include_history=False)
        with pytest.raises(CallError) as caught:
            list(client.watch_events(follow, timeout=datetime.timedelta(milliseconds=200)))
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

        with ManagementClient(web.address) as management:
            info = management.get_info()
            assert info.identity.id == web.container.id


def test_a_server_never_reached() -> None:
    address = _free_address()
    client = ManagerClient(address, default_timeout=datetime.timedelta(seconds=5))
    with client, pytest.raises(CallError) as caught:
        client.list_containers()
    error = caught.value
    assert error.reached is False
    assert error.target == address
    assert error.describe("the manager").startswith(f"cannot reach the manager at {address}: ")


def test_asyncio_clients(manager: ManagerHost) -> None:
    settings = pycontainer.ContainerSettings(name="api")
    with container_host(settings, manager=manager) as api:
        wait_container(manager.stub, "api", running_and_connected, "running")

        async def main() -> tuple[list[str], grpc.StatusCode, str, int]:
            async with AsyncManagerClient(manager.address) as client:
                listed = await client.list_containers()
                try:
                    await client.get_container(
                        manager_pb2.GetContainerRequest(container="ghost"),
                        timeout=datetime.timedelta(seconds=5),
                    )
                except CallError as exc:
                    code = exc.code
                history = [
                    r.event.type
                    async for r in client.watch_events(
                        manager_pb2.WatchEventsRequest(history_only=True)
                    )
                ]
            async with AsyncManagementClient(api.address) as management:
                info = await management.get_info()
            return (
                [c.identity.name for c in listed.containers],
                code,
                info.identity.id,
                len(history),
            )

        names, code, container_id, events = asyncio.run(main())
    assert names == ["api"]
    assert code == grpc.StatusCode.NOT_FOUND
    assert container_id == api.container.id
    assert events > 0


def test_testing_context_managers_run_in_process_specs(tmp_path: Path) -> None:
    """What a user's test does: a manager, a spec launched in this process."""
    from pycontainer.spec import parse_specs

    [spec] = parse_specs("name: kv\nruntime: in-process\nlabels: {app: kv}\n")
    with manager_host(tmp_path / "state") as host:
        [launched] = host.client.run_container(
            manager_pb2.RunContainerRequest(spec=spec), timeout=None
        ).containers
        assert launched.identity.name == "kv"
        [served] = host.launcher.hosts
        assert served.container.id == launched.identity.id
        assert served.management.get_info().identity.labels["app"] == "kv"
    # On exit the manager is gone (and what it launched closed with it).
    with ManagerClient(host.address) as client, pytest.raises(CallError) as caught:
        client.list_containers(timeout=datetime.timedelta(seconds=2))
    assert caught.value.reached is False


def test_the_pytest_fixtures(manager: ManagerHost, container_factory: Any) -> None:
    """pycontainer.testing.pytest_plugin's fixtures, as a user's conftest enables them."""
    first = container_factory(pycontainer.ContainerSettings(name="one"), manager=manager)
    second = container_factory(pycontainer.ContainerSettings(name="two"), start=True)
    wait_container(manager.stub, "one", running_and_connected, "running")
    assert second.container.state == pycontainer.State.RUNNING  # started, on its own
    assert second.management.get_info().identity.name == "two"
    names = [c.identity.name for c in manager.client.list_containers().containers]
    assert names == ["one"]  # the second never dialled a manager
    assert first.address != second.address
