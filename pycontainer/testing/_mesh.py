"""A mesh under load, for the "no request lost" tests and their bench rows.

Everything is real: a :class:`~pycontainer.testing.ManagerHost` (the
manager, its ADS), a service of N replicas of ``tests/apps/mesh_backend.py``
launched by it as processes, and ``tests/apps/mesh_client.py``, a plain
grpcio process dialling ``xds:///SERVICE`` with a bootstrap naming the
manager, calling until the rig tells it to stop. A test (or a bench row)
starts the load, does something to the service (stop, evict, scale down,
roll out) and reads the client's counts::

    with MeshRig(tmp_path, drain=True) as rig:
        ids = rig.run_service("orders", replicas=3)
        with rig.load("orders") as load:
            rig.host.stub.StopContainer(...)
            counts = load.finish()
        assert counts.failed == 0

The apps live in the source tree's tests/apps (a checkout, not an installed
wheel): :func:`apps_dir` finds them, or ``PYCONTAINER_TEST_APPS`` names the
directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import ManagerHost

__all__ = [
    "BACKEND_METHOD",
    "CallCounts",
    "Load",
    "MeshRig",
    "apps_dir",
    "mesh_rig",
    "write_bootstrap",
]

#: The method the backend serves and the client calls.
BACKEND_METHOD = "/pycontainer.test.Echo/Who"
# How long a load generator may take to dial the mesh and be ready.
_CLIENT_READY = 30.0
# How long it may take to answer a summary (its calls in flight end first).
_CLIENT_ANSWER = 30.0


def apps_dir() -> Path:
    """The directory of mesh_backend.py and mesh_client.py."""
    named = os.environ.get("PYCONTAINER_TEST_APPS")
    where = Path(named) if named else Path(__file__).resolve().parents[2] / "tests" / "apps"
    if not (where / "mesh_backend.py").is_file():
        raise FileNotFoundError(
            f"no mesh_backend.py in {where}: run from a source checkout, or set "
            "PYCONTAINER_TEST_APPS to the directory of tests/apps"
        )
    return where


def write_bootstrap(path: Path, server_uri: str, node_id: str) -> Path:
    """A gRPC xDS bootstrap (GRPC_XDS_BOOTSTRAP) naming the manager's ADS at
    ``server_uri``, in plaintext. (Until ``pycontainer mesh bootstrap`` and
    pycontainer.client write one: this is the one place that writes it here.)"""
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": server_uri,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": node_id, "locality": {}},
    }
    path.write_text(json.dumps(bootstrap, indent=2))
    return path


@dataclass(frozen=True)
class CallCounts:
    """What a load generator counted (over one phase of its run; phases add up)."""

    calls: int
    failed: int
    # Status code name -> failed calls.
    failures: Mapping[str, int]
    # Status code name -> the first failure's message.
    samples: Mapping[str, str]
    # Backend container id -> calls it answered.
    answers: Mapping[str, int]
    seconds: float

    @classmethod
    def from_json(cls, line: str) -> CallCounts:
        raw = json.loads(line)
        if "error" in raw:
            raise RuntimeError(f"the load generator failed: {raw['error']}")
        return cls(
            calls=raw["calls"],
            failed=raw["failed"],
            failures=raw["failures"],
            samples=raw["samples"],
            answers=raw["answers"],
            seconds=raw["seconds"],
        )

    def __add__(self, other: CallCounts) -> CallCounts:
        def add(x: Mapping[str, int], y: Mapping[str, int]) -> dict[str, int]:
            return {k: x.get(k, 0) + y.get(k, 0) for k in sorted(x.keys() | y.keys())}

        return CallCounts(
            self.calls + other.calls,
            self.failed + other.failed,
            add(self.failures, other.failures),
            {**other.samples, **self.samples},
            add(self.answers, other.answers),
            self.seconds + other.seconds,
        )

    def __str__(self) -> str:
        failures = ", ".join(f"{code} {n}" for code, n in sorted(self.failures.items()))
        return (
            f"{self.calls} calls, {self.failed} failed"
            + (f" ({failures}: {next(iter(self.samples.values()), '')})" if failures else "")
            + f" in {self.seconds:.2f}s"
        )


class Load:
    """A running mesh_client.py: calls until :meth:`finish`."""

    def __init__(
        self,
        target: str,
        workdir: Path,
        env: Mapping[str, str],
        *,
        node_id: str,
        concurrency: int,
        deadline: float,
    ) -> None:
        self.node_id = node_id
        self._until = workdir / "until"
        self._until.unlink(missing_ok=True)
        self._stderr_path = workdir / "client.stderr"
        self._stderr = self._stderr_path.open("w")
        self._process = subprocess.Popen(
            [
                sys.executable,
                str(apps_dir() / "mesh_client.py"),
                target,
                "--until-file",
                str(self._until),
                "--concurrency",
                str(concurrency),
                "--deadline",
                str(deadline),
                "--ready-timeout",
                str(_CLIENT_READY),
            ],
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._finished = False
        first = self._line(_CLIENT_READY + 10)
        if first != "ready":
            self.close()
            raise RuntimeError(
                f"the load generator did not get ready: {first or '(no output)'}; "
                f"its stderr: {(workdir / 'client.stderr').read_text()[-2000:]}"
            )

    def _line(self, timeout: float) -> str:
        assert self._process.stdout is not None
        # A bounded read: the client answers or is killed.
        timer = _Timer(timeout, self._process.kill)
        try:
            return self._process.stdout.readline().strip()
        finally:
            timer.cancel()

    def _counts(self) -> CallCounts:
        line = self._line(_CLIENT_ANSWER)
        if not line:
            raise RuntimeError(
                f"the load generator gave no counts within {_CLIENT_ANSWER:g}s (exit status "
                f"{self._process.poll()}); its stderr: {self._stderr_path.read_text()[-2000:]}"
            )
        return CallCounts.from_json(line)

    def phase(self) -> CallCounts:
        """The counts since the last phase (or the start); the load goes on."""
        self._process.send_signal(signal.SIGUSR1)
        return self._counts()

    def until_answered(self, ids: Iterable[str], timeout: float = 20.0) -> CallCounts:
        """Go on until every one of ``ids`` has answered a call (a new
        replica took traffic); the counts of the phases meanwhile."""
        wanted = set(ids)
        total = CallCounts(0, 0, {}, {}, {}, 0.0)
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(0.2)
            total += self.phase()
            if wanted <= set(total.answers):
                return total
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(wanted - set(total.answers)))
                raise TimeoutError(f"{missing} answered no call within {timeout:g}s: {total}")

    def finish(self) -> CallCounts:
        """Stop calling; the counts since the last phase."""
        self._until.write_text("")
        counts = self._counts()
        self._process.wait(10)
        self._finished = True
        return counts

    def close(self) -> None:
        if not self._finished:
            self._until.write_text("")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(5)
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(5)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> Load:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Timer:
    """Calls ``action`` after ``seconds`` unless cancelled (a thread timer)."""

    def __init__(self, seconds: float, action: Callable[[], None]) -> None:
        import threading

        self._timer = threading.Timer(seconds, action)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()


@dataclass
class MeshRig:
    """A manager, the services it runs, and load generators through its mesh.

    ``drain`` sets the manager's mesh_drain_timeout (5 s, or 0: a plain stop);
    ``settings`` are further ManagerHost settings (``capacity``, ...)."""

    workdir: Path
    drain: bool = True
    settings: Mapping[str, Any] = field(default_factory=dict)
    host: ManagerHost = field(init=False)
    _clients: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        settings = dict(self.settings)
        settings.setdefault(
            "mesh_drain_timeout",
            datetime.timedelta(seconds=5) if self.drain else datetime.timedelta(0),
        )
        from . import ManagerHost

        self.host = ManagerHost(self.workdir / "manager", **settings)

    # -- the drain, on or off ----------------------------------------------------------------
    def set_drain(self, drain: bool | datetime.timedelta) -> None:
        """Turn the drain on (5 s, or the given bound) or off for the next stops."""
        if isinstance(drain, bool):
            drain = datetime.timedelta(seconds=5) if drain else datetime.timedelta(0)
        self.host.manager.mesh.drain_timeout = drain
        self.drain = drain > datetime.timedelta(0)

    # -- services ----------------------------------------------------------------------------
    def backend_spec(
        self,
        name: str,
        *,
        service: str | None = None,
        replicas: int = 1,
        delay: float = 0.01,
        args: Sequence[str] = (),
        **fields: Any,
    ) -> Any:
        """A spec of ``replicas`` mesh_backend.py processes serving ``service``
        (``name`` unless given; "" for none)."""
        from ..v1 import mesh_pb2, spec_pb2

        spec = spec_pb2.ContainerSpec(
            name=name,
            command=[
                sys.executable,
                str(apps_dir() / "mesh_backend.py"),
                "--delay",
                str(delay),
                *args,
            ],
            replicas=replicas,
            **fields,
        )
        service = name if service is None else service
        if service:
            spec.service.CopyFrom(mesh_pb2.MeshService(name=service))
        return spec

    def run(self, spec: Any) -> list[str]:
        """RunContainer ``spec``: the ids of its replicas."""
        from ..v1 import manager_pb2

        response = self.host.stub.RunContainer(
            manager_pb2.RunContainerRequest(spec=spec), timeout=60
        )
        return [c.identity.id for c in response.containers]

    def apply(self, *specs: Any, owner: str = "") -> Any:
        """ApplySpecs ``specs`` (as ``pycontainer apply`` does); the response."""
        from ..v1 import manager_pb2

        return self.host.stub.ApplySpecs(
            manager_pb2.ApplySpecsRequest(specs=list(specs), owner=owner), timeout=300
        )

    def run_service(self, name: str, replicas: int = 3, **options: Any) -> list[str]:
        """Run ``replicas`` backends serving ``name``; their ids, once every
        one of them is an endpoint."""
        self.run(self.backend_spec(name, replicas=replicas, **options))
        return self.wait_endpoints(name, replicas)

    def endpoints(self, service: str) -> tuple[list[str], list[str]]:
        """(healthy, draining) container ids of ``service`` as the mesh has them."""
        from ..v1 import manager_pb2

        status = self.host.stub.GetMeshStatus(manager_pb2.GetMeshStatusRequest(), timeout=10)
        for view in status.services:
            if view.name == service:
                return list(view.healthy), list(view.draining)
        return [], []

    def wait_endpoints(
        self,
        service: str,
        count: int,
        timeout: float = 30.0,
        accept: Callable[[list[str]], bool] | None = None,
    ) -> list[str]:
        """Wait until ``service`` has ``count`` healthy endpoints (and none
        draining; ``accept`` may ask more of them); their ids."""
        deadline = time.monotonic() + timeout
        healthy: list[str] = []
        draining: list[str] = []
        while time.monotonic() < deadline:
            healthy, draining = self.endpoints(service)
            if len(healthy) == count and not draining and (accept is None or accept(healthy)):
                return healthy
            time.sleep(0.05)
        raise TimeoutError(
            f"service {service} has endpoints {healthy} (draining {draining}), "
            f"not {count}, after {timeout:g}s"
        )

    def wait_state(self, container: str, states: Sequence[str], timeout: float = 30.0) -> None:
        """Wait until ``container`` is in one of ``states`` (RUNNING, STOPPED, ...)."""
        from ..v1 import container_pb2, manager_pb2

        wanted = {container_pb2.LifecycleState.Value(f"LIFECYCLE_STATE_{s}") for s in states}
        deadline = time.monotonic() + timeout
        while True:
            state = self.host.stub.GetContainer(
                manager_pb2.GetContainerRequest(container=container), timeout=10
            ).container.state
            if state in wanted:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{container} is {container_pb2.LifecycleState.Name(state)}, not "
                    f"{' or '.join(states)}, after {timeout:g}s"
                )
            time.sleep(0.05)

    def acknowledged(self, node_id: str) -> bool:
        """Whether client ``node_id`` acknowledged the mesh's current version
        of every type it subscribed to."""
        from ..v1 import manager_pb2

        status = self.host.stub.GetMeshStatus(manager_pb2.GetMeshStatusRequest(), timeout=10)
        clients = [c for c in status.clients if c.node_id == node_id]
        return bool(clients) and all(
            r.acked_version == r.sent_version and not r.nack_error
            for c in clients
            for r in c.resources
        )

    def events(self, container: str = "") -> list[str]:
        """The retained events' messages (of ``container``, or all), oldest first,
        each as "CONTAINER_ID: MESSAGE"."""
        from ..v1 import manager_pb2

        stream = self.host.stub.WatchEvents(
            manager_pb2.WatchEventsRequest(
                include_history=True, history_only=True, container=container
            ),
            timeout=10,
        )
        return [f"{r.event.container_id}: {r.event.message}" for r in stream]

    def drains(self) -> dict[str, str]:
        """Container id -> the event saying a stop drained it from the mesh."""
        out = {}
        for line in self.events():
            container_id, _, message = line.partition(": ")
            if message.startswith("drained from mesh service"):
                out[container_id] = message
        return out

    def wait_acknowledged(self, service: str, timeout: float = 30.0) -> None:
        """Wait until every client subscribed to ``service``'s assignments has
        acknowledged them as they are now (what the drain waits for): what a
        change did to its endpoints has reached them."""
        from ..manager._xds._resources import cluster_names

        mesh = self.host.manager.mesh

        async def wait() -> list[str]:
            await asyncio.sleep(0)  # a rebuild already scheduled goes first
            view = mesh.view(service)
            names = list(cluster_names(view)) if view is not None else []
            return await mesh.ads.wait_acknowledged(names, timeout)

        waiting = self.host.call(wait, timeout + 5)
        if waiting:
            raise TimeoutError(
                f"clients {', '.join(waiting)} did not acknowledge {service} within {timeout:g}s"
            )

    # -- load ----------------------------------------------------------------------------------
    def client_env(self, node_id: str) -> dict[str, str]:
        """The environment of a grpcio process dialling the mesh as ``node_id``."""
        bootstrap = write_bootstrap(
            self.workdir / f"{node_id}.bootstrap.json", self.host.address, node_id
        )
        return dict(os.environ, GRPC_XDS_BOOTSTRAP=str(bootstrap))

    def load(self, service: str, *, concurrency: int = 8, deadline: float = 10.0) -> Load:
        """A load generator calling ``xds:///SERVICE`` until it is finished."""
        self._clients += 1
        node_id = f"load-{self._clients}"
        workdir = self.workdir / node_id
        workdir.mkdir(parents=True, exist_ok=True)
        return Load(
            f"xds:///{service}",
            workdir,
            self.client_env(node_id),
            node_id=node_id,
            concurrency=concurrency,
            deadline=deadline,
        )

    # -- the end -------------------------------------------------------------------------------
    def close(self) -> None:
        self.host.close()

    def __enter__(self) -> MeshRig:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def mesh_rig(workdir: Path, **options: Any) -> Iterator[MeshRig]:
    """A :class:`MeshRig` closed on exit."""
    rig = MeshRig(workdir, **options)
    try:
        yield rig
    finally:
        rig.close()
