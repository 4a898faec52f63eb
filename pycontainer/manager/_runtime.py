"""How the manager starts containers. A runtime knows how to start and signal
a process (or object), nothing about priorities or policy."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .._tls_env import TLS_DIR_ENV
from ..agent._settings import HEALTH_LISTEN_ENV, HTTP_LISTEN_ENV
from ..client._mesh import XDS_BOOTSTRAP_ENV
from ..spec import SPEC_ENV, encode_spec
from ..v1 import spec_pb2
from ._logstore import LogStore

# Called by a runtime when a launched container's process ends: (id, exit code).
ExitListener = Callable[[str, int], Awaitable[None]]

# Signals whose default action ends a process.
_ENDING_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


@dataclass(frozen=True)
class Launch:
    """What the manager tells a runtime to start."""

    container_id: str
    spec: spec_pb2.ContainerSpec
    # The manager's Lifecycle endpoint, which the container dials.
    manager_address: str
    # The directory with the container's TLS key, certificate and trust
    # bundle ($PYCONTAINER_TLS_DIR); empty when the manager runs --insecure.
    tls_dir: str = ""
    # The gRPC xDS bootstrap file of its proxyless channels to the mesh
    # ($GRPC_XDS_BOOTSTRAP); empty for none.
    mesh_bootstrap: str = ""


class Runtime(Protocol):
    """Starts containers that then dial the manager with their id."""

    @property
    def reports_exits(self) -> bool:
        """Whether the runtime tells its exit listeners when a launched
        container's process ends (a runtime without processes cannot)."""
        ...

    def add_exit_listener(self, listener: ExitListener) -> None:
        """Call ``listener(id, exit code)`` whenever a launched container ends."""
        ...

    async def launch(self, launch: Launch) -> int:
        """Start it; the pid (0 when not a process of its own)."""
        ...

    @property
    def own_pid_namespace(self) -> bool:
        """Whether its containers see pids of a namespace of their own (runc's
        pid 1): the pid they register with says nothing on the host, so the
        manager shows the host pid the runtime launched instead."""
        ...

    def running(self, container_id: str) -> bool:
        """Whether what it launched for this id is still there."""
        ...

    def pid(self, container_id: str) -> int | None:
        """The host pid of a running container (None when not running)."""
        ...

    async def signal(self, container_id: str, signum: int) -> bool:
        """Send ``signum`` to a running container now; False when there was
        nothing running to send it to."""
        ...

    async def kill(self, container_id: str) -> None:
        """End it now (SIGKILL), past its grace period."""
        ...

    def forget(self, container_id: str) -> None:
        """Remove what it keeps of an ended container (run directories, the
        output they hold): the container's record is purged."""
        ...

    async def close(self) -> None:
        """Kill what is left (the manager is shutting down)."""
        ...


class ExitListeners:
    """The exit listeners of a runtime that reports exits."""

    reports_exits = True

    def __init__(self) -> None:
        self._exit_listeners: list[ExitListener] = []

    def add_exit_listener(self, listener: ExitListener) -> None:
        self._exit_listeners.append(listener)

    async def _exited(self, container_id: str, code: int) -> None:
        for listener in list(self._exit_listeners):
            await listener(container_id, code)


# An in-process container factory: builds a container object for the spec,
# connects it to the manager, and returns something with close().
Factory = Callable[[Launch], Any]


class InProcessRuntime:
    """Containers as objects in the manager's own process (tests, embedding)."""

    def __init__(self, factory: Factory) -> None:
        self._factory = factory
        self._objects: dict[str, Any] = {}

    # Its containers share the manager's process: none exits on its own.
    reports_exits = False
    own_pid_namespace = False

    def add_exit_listener(self, listener: ExitListener) -> None:
        """Nothing to report (see reports_exits)."""

    def running(self, container_id: str) -> bool:
        return container_id in self._objects

    def pid(self, container_id: str) -> int | None:
        return os.getpid() if container_id in self._objects else None

    async def signal(self, container_id: str, signum: int) -> bool:
        """An object has no process of its own: a signal that would end one
        closes it; any other cannot be delivered."""
        if container_id not in self._objects or signum not in _ENDING_SIGNALS:
            return False
        await self.kill(container_id)
        return True

    async def launch(self, launch: Launch) -> int:
        self._objects[launch.container_id] = await asyncio.to_thread(self._factory, launch)
        return os.getpid()

    async def kill(self, container_id: str) -> None:
        obj = self._objects.pop(container_id, None)
        if obj is not None:
            await asyncio.to_thread(obj.close)

    def forget(self, container_id: str) -> None:
        """Nothing kept."""

    async def close(self) -> None:
        for container_id in list(self._objects):
            await self.kill(container_id)


class ProcessRuntime(ExitListeners):
    """Local processes: the spec's command, with PYCONTAINER_* variables that
    tell an embedded pycontainer which manager to dial and which id it has.

    A program's stdout and stderr go to ``logs`` (a relay per run writes
    them into the log store), or nowhere without one: never to the
    manager's own terminal."""

    own_pid_namespace = False

    def __init__(self, logs: LogStore | None = None) -> None:
        super().__init__()
        self._logs = logs
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    async def launch(self, launch: Launch) -> int:
        spec = launch.spec
        if not spec.command:
            raise ValueError("spec.command is empty: give the program and its arguments")
        env = {
            **os.environ,
            **dict(spec.env),
            "PYCONTAINER_MANAGER": launch.manager_address,
            "PYCONTAINER_CONTAINER_ID": launch.container_id,
            "PYCONTAINER_NAME": spec.name,
        }
        # Its own certificate, or none: never one the manager's environment had.
        env.pop(TLS_DIR_ENV, None)
        if launch.tls_dir:
            env[TLS_DIR_ENV] = launch.tls_dir
        # Its own xDS bootstrap, or none: never the manager's environment's.
        env.pop(XDS_BOOTSTRAP_ENV, None)
        if launch.mesh_bootstrap:
            env[XDS_BOOTSTRAP_ENV] = launch.mesh_bootstrap
        # Its own health port, or none: never one the manager's environment had.
        env.pop(HEALTH_LISTEN_ENV, None)
        if spec.health_listen:
            env[HEALTH_LISTEN_ENV] = spec.health_listen
        # Its own HTTP face, or none, likewise.
        env.pop(HTTP_LISTEN_ENV, None)
        if spec.http_listen:
            env[HTTP_LISTEN_ENV] = spec.http_listen
        command = list(spec.command)
        if command[0] == "python":  # the manager's own interpreter, as users expect
            command[0] = sys.executable
        if spec.sidecar:
            # A program that does not embed pycontainer: the sidecar hosts the
            # Management API for it and maps the lifecycle onto signals.
            command, sidecar_env = sidecar_launch(spec)
            env.update(sidecar_env)
        if self._logs is not None:
            out, err = await self._logs.open_run(launch.container_id)
        else:
            out = err = os.open(os.devnull, os.O_WRONLY)
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=spec.working_dir or None,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # signals to the group reach its children
            )
        finally:
            # The program has its copies; the relay sees EOF when they close.
            for fd in {out, err}:
                os.close(fd)
        self._processes[launch.container_id] = process
        watcher = asyncio.ensure_future(self._watch(launch.container_id, process))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return process.pid

    async def _watch(self, container_id: str, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        # Only the latest launch of an id speaks for it: the end of one a
        # restart replaced is not the new one's exit.
        if self._processes.get(container_id) is process:
            del self._processes[container_id]
            await self._exited(container_id, code)

    def running(self, container_id: str) -> bool:
        # Until _watch has reported the exit, not merely until the returncode
        # is set (a loop turn earlier): a restart that relaunched in between
        # had the old run's late exit report settle the new run as ended.
        return container_id in self._processes

    def pid(self, container_id: str) -> int | None:
        process = self._processes.get(container_id)
        return process.pid if process is not None else None

    async def signal(self, container_id: str, signum: int) -> bool:
        """To the process group it was started as (start_new_session), as a
        terminal's Ctrl-C reaches a shell's children too."""
        process = self._processes.get(container_id)
        if process is None or process.returncode is not None:
            return False
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return False
        return True

    async def kill(self, container_id: str) -> None:
        await self.signal(container_id, signal.SIGKILL)

    def forget(self, container_id: str) -> None:
        """Nothing kept (its output is not captured here)."""

    async def close(self) -> None:
        for container_id in list(self._processes):
            await self.kill(container_id)
        if self._watchers:
            await asyncio.wait(self._watchers, timeout=5)


def sidecar_launch(spec: spec_pb2.ContainerSpec) -> tuple[list[str], dict[str, str]]:
    """The command and the environment that run ``spec``'s program under the
    sidecar. The sidecar gets the spec itself in $PYCONTAINER_SPEC, resolved
    as this runtime resolves a command: ``python`` is the manager's own
    interpreter, and the working directory (where the sidecar is started)
    absolute, so that the sidecar giving it to the program changes nothing.
    ``-P``: the working directory must not shadow the installed pycontainer
    (``-I`` would also drop PYTHONPATH and the user's site-packages)."""
    resolved = spec_pb2.ContainerSpec()
    resolved.CopyFrom(spec)
    if resolved.command and resolved.command[0] == "python":
        resolved.command[0] = sys.executable
    if resolved.working_dir:
        resolved.working_dir = os.path.abspath(resolved.working_dir)
    command = [sys.executable, "-P", "-m", "pycontainer.sidecar"]
    return command, {SPEC_ENV: encode_spec(resolved)}
