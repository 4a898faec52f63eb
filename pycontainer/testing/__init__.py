"""In-process managers and containers for tests (yours and pycontainer's own).

Everything here is real: a real manager serving on an ephemeral loopback port
on its own thread and event loop, real containers embedded in real gRPC
servers. Context managers for any test framework::

    from pycontainer.testing import manager_host, container_host

    with manager_host(tmp_path / "state") as manager, container_host(
        pycontainer.ContainerSettings(name="web"), manager=manager
    ) as web:
        assert manager.client.get_container(
            manager_pb2.GetContainerRequest(container="web")
        ).container.identity.name == "web"

and pytest fixtures (``manager``, ``container_factory``) with
``pytest_plugins = ["pycontainer.testing.pytest_plugin"]`` in a conftest.py.
A spec launched with ``runtime: in-process`` (RUNTIME_KIND_IN_PROCESS) runs as
an in-process container served on its own port, dialled in to the manager.

The mesh under load: :class:`MeshRig` (a manager, services of
tests/apps/mesh_backend.py replicas, grpcio load generators through
``xds:///``) and :mod:`pycontainer.testing.mesh_scenarios` (stop, restart,
evict, scale, roll out, each returning what the load counted meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent import futures
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from ..agent import Container, ContainerSettings, Hooks
from ..client import PLAINTEXT, ManagementClient, ManagerClient, Transport

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from ..manager import Manager, Runtime

__all__ = [
    "TEST_HEARTBEAT",
    "TEST_LOST_AFTER_HEARTBEATS",
    "CallCounts",
    "ContainerHost",
    "InProcessLauncher",
    "Load",
    "ManagerHost",
    "MeshRig",
    "container_host",
    "manager_host",
    "mesh_rig",
    "write_bootstrap",
]

T = TypeVar("T")

#: The heartbeat of a ManagerHost's sessions unless a test says otherwise:
#: a dropped stream shows at once, a silent session after
#: TEST_LOST_AFTER_HEARTBEATS of these (five seconds).
TEST_HEARTBEAT = datetime.timedelta(milliseconds=500)
#: Silent heartbeats before a ManagerHost declares a session lost. Not the
#: manager's 3: 1.5 s of silence was a false "lost" on a loaded CI machine
#: (a test process not scheduled for a second, then the watchdog's timer
#: firing before the heartbeat waiting in the socket was read), and the
#: container's next command failed as "not connected to the manager".
TEST_LOST_AFTER_HEARTBEATS = 10
_START_TIMEOUT = 15.0
# A graceful shutdown waits out each container's grace period at most.
_SHUTDOWN_TIMEOUT = 120.0


class ContainerHost:
    """A container embedded in a real sync gRPC server on 127.0.0.1 (an ephemeral
    port), advertising it as its Management endpoint; dialled in to a manager
    when one is given."""

    def __init__(self, container: Container, *, manager_address: str | None = None) -> None:
        self.container = container
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            interceptors=[container.server_interceptor()],
        )
        container.add_to_server(self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.address = f"127.0.0.1:{port}"
        container.add_endpoint("management", self.address, kind="management")
        self.management = ManagementClient(self.address)
        if manager_address is not None:
            container.connect(manager_address)

    def close(self) -> None:
        """Stop serving and close the container (its session ends with it)."""
        self.management.close()
        self.server.stop(None)
        self.container.close()


@contextlib.contextmanager
def container_host(
    settings: ContainerSettings,
    *,
    manager: ManagerHost | str | None = None,
    hooks: Hooks | None = None,
    start: bool = False,
) -> Iterator[ContainerHost]:
    """A served container (started at once with ``start``, else when the manager says)."""
    address = manager.address if isinstance(manager, ManagerHost) else manager
    host = ContainerHost(Container(settings, hooks=hooks), manager_address=address)
    try:
        if start:
            host.container.start()
        yield host
    finally:
        host.close()


class InProcessLauncher:
    """The factory of an InProcessRuntime: one :class:`ContainerHost` per launch,
    named and labelled by the spec, with the id the manager chose."""

    def __init__(self, make_settings: Callable[[Any], ContainerSettings] | None = None) -> None:
        self._make_settings = make_settings
        self.hosts: list[ContainerHost] = []

    def settings(self, launch: Any) -> ContainerSettings:
        if self._make_settings is not None:
            return self._make_settings(launch)
        spec = launch.spec
        return ContainerSettings(
            name=spec.name, id=launch.container_id, version="1.2.3", labels=dict(spec.labels)
        )

    def __call__(self, launch: Any) -> ContainerHost:
        host = ContainerHost(
            Container(self.settings(launch)), manager_address=launch.manager_address
        )
        self.hosts.append(host)
        return host

    def close_all(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.close()
        self.hosts.clear()


class ManagerHost:
    """A real manager on its own thread and event loop; ``client`` (a
    :class:`ManagerClient`) and ``stub`` talk to it at ``address``.

    ``listen`` is where it serves: an ephemeral loopback port unless a test
    needs a fixed one, say to start a second manager on the same state
    directory where the first one's containers dial back. ``runtimes`` replace or add to the
    manager's own (process, runc); with ``in_process`` and no ``runtimes``,
    specs of RUNTIME_KIND_IN_PROCESS run as in-process containers served by
    ``launcher``. ``settings`` are further :class:`ManagerSettings` fields
    (durations as ``timedelta``); the heartbeat (keepalive pings and, unless
    ``idle_heartbeat_interval`` says otherwise, Lifecycle heartbeats) defaults
    to half a second so that a test sees a lost session quickly, and a
    session is lost after ten silent ones (TEST_LOST_AFTER_HEARTBEATS).
    """

    def __init__(
        self,
        state_dir: str | PathLike[str],
        *,
        listen: str = "127.0.0.1:0",
        in_process: bool = True,
        runtimes: Mapping[int, Runtime] | None = None,
        tracer_provider: TracerProvider | None = None,
        **settings: Any,
    ) -> None:
        from ..manager import InProcessRuntime, Manager, ManagerSettings
        from ..v1 import spec_pb2

        self.loop = asyncio.new_event_loop()
        self.launcher = InProcessLauncher()
        self._closed = False
        if runtimes is None and in_process:
            runtimes = {spec_pb2.RUNTIME_KIND_IN_PROCESS: InProcessRuntime(self.launcher)}
        settings.setdefault("heartbeat_interval", TEST_HEARTBEAT)
        settings.setdefault("lost_after_heartbeats", TEST_LOST_AFTER_HEARTBEATS)
        # Lifecycle heartbeats as often as the keepalive pings, unless a test
        # says otherwise: a session that stops beating is seen as soon as one
        # whose connection dies.
        settings.setdefault("idle_heartbeat_interval", settings["heartbeat_interval"])
        # Plaintext unless asked for (insecure=False): then ``client`` uses the
        # admin certificate the manager issues in its state directory.
        settings.setdefault("insecure", True)
        self.settings = ManagerSettings(listen=listen, state_dir=str(state_dir), **settings)
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def main() -> None:
            box["manager"] = manager = Manager(
                self.settings,
                runtimes=dict(runtimes) if runtimes is not None else None,
                tracer_provider=tracer_provider,
            )
            await manager.start()
            ready.set()

        def thread_main() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(main())
            except BaseException as exc:
                box["error"] = exc
                ready.set()
                return
            self.loop.run_forever()

        self._thread = threading.Thread(target=thread_main, name="manager", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT):
            raise TimeoutError(f"the manager did not start within {_START_TIMEOUT:g}s")
        if "error" in box:
            self.loop.close()
            raise box["error"]
        self.manager: Manager = box["manager"]
        self.address: str = self.manager.address
        self.client = ManagerClient(self.address, transport=self._transport())
        self.channel = self.client.channel
        from ..v1 import manager_pb2_grpc

        self.stub = manager_pb2_grpc.ManagerStub(self.channel)

    def _transport(self) -> Transport:
        if self.settings.insecure:
            return PLAINTEXT
        from ..manager._trust import ADMIN_DIR
        from ..security import MANAGER

        return Transport(Path(self.settings.state_dir) / ADMIN_DIR, MANAGER)

    def call(self, coro_fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30) -> T:
        """Run ``coro_fn()`` on the manager's loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(timeout)

    def shutdown_containers(self, grace: datetime.timedelta | None = None) -> None:
        """Stop every container as a manager's shutdown does (``grace``, else
        each one's own): no restart policy replaces them."""
        self.call(lambda: self.manager.shutdown_containers(grace), timeout=_SHUTDOWN_TIMEOUT)

    def kill_launched(self) -> None:
        """SIGKILL whatever the manager's runtimes launched and is still alive."""
        for runtime in {id(r): r for r in self.manager.runtimes.values()}.values():
            with contextlib.suppress(Exception):
                self.call(runtime.close)

    def stop(self) -> None:
        """Stop serving (containers keep running, as with a real manager's exit)."""
        self.client.close()
        if not self.loop.is_closed() and self._thread.is_alive():
            self.call(self.manager.stop)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def close(self, *, graceful: bool = False) -> None:
        """Kill what it launched, stop it, and close the in-process containers;
        ``graceful`` stops every container first (:meth:`shutdown_containers`),
        so only what overran its grace period is killed. Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        if graceful:
            with contextlib.suppress(Exception):
                self.shutdown_containers()
        self.kill_launched()
        self.stop()
        self.launcher.close_all()


@contextlib.contextmanager
def manager_host(
    state_dir: str | PathLike[str], *, graceful: bool = False, **options: Any
) -> Iterator[ManagerHost]:
    """A running :class:`ManagerHost` (``options`` as its constructor takes);
    on exit everything it launched is killed (after a graceful stop of every
    container with ``graceful``) and it stops."""
    host = ManagerHost(state_dir, **options)
    try:
        yield host
    finally:
        host.close(graceful=graceful)


# The mesh under load (imported last: it builds on ManagerHost).
from ._mesh import CallCounts, Load, MeshRig, mesh_rig, write_bootstrap  # noqa: E402
