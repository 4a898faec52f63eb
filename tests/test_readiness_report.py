"""Readiness on the Lifecycle stream: a container's registration says whether
it is ready (its grpc.health.v1 "readiness": RUNNING and every readiness
check passing), every change is sent at once, and the manager keeps it
(Entry.ready, Container.readiness), tells the mesh (Registry.serving_changed)
and derives Entry.serving from it. A real manager, real containers embedded
in sync and aio gRPC servers dialled in to it, and a raw Lifecycle stream for
a container older than the report."""

from __future__ import annotations

import datetime
import io
import queue
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from support import (
    Host,
    make_container,
    start_aio_host,
    start_container,
    start_sync_host,
    wait_container,
    wait_until,
)

import pycontainer
from pycontainer.cli import main
from pycontainer.manager._registry import Entry
from pycontainer.testing import ManagerHost
from pycontainer.v1 import container_pb2, lifecycle_pb2, lifecycle_pb2_grpc, manager_pb2

RUNNING = container_pb2.LIFECYCLE_STATE_RUNNING
STOPPING = container_pb2.LIFECYCLE_STATE_STOPPING
STOPPED = container_pb2.LIFECYCLE_STATE_STOPPED


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerHost]:
    host = ManagerHost(tmp_path / "state")
    try:
        yield host
    finally:
        host.close()


class ServingLog:
    """Registry.serving_changed, recorded: (container id, state, ready,
    serving) at each call, as the mesh would see the entry then."""

    def __init__(self, manager: ManagerHost) -> None:
        self.calls: list[tuple[str, int, bool | None, bool]] = []
        self._lock = threading.Lock()
        registry = manager.manager.registry

        async def install() -> None:
            registry.serving_changed = self._record

        manager.call(install)

    def _record(self, entry: Entry) -> None:
        with self._lock:
            self.calls.append((entry.id, entry.state, entry.ready, entry.serving))

    def of(self, container_id: str) -> list[tuple[int, bool | None, bool]]:
        with self._lock:
            return [call[1:] for call in self.calls if call[0] == container_id]


def entry_of(manager: ManagerHost, container_id: str) -> Entry:
    entry = manager.manager.registry.get(container_id)
    assert entry is not None, f"the manager does not know {container_id}"
    return entry


def ready_is(value: bool) -> Callable[[manager_pb2.Container], bool]:
    def check(c: manager_pb2.Container) -> bool:
        return bool(c.HasField("readiness") and c.readiness.ready == value)

    return check


def running_ready(value: bool) -> Callable[[manager_pb2.Container], bool]:
    ready = ready_is(value)
    return lambda c: c.state == RUNNING and c.connected and ready(c)


def host_of(kind: str, container: pycontainer.Container) -> Host:
    return start_aio_host(container) if kind == "aio" else start_sync_host(container)


def connected(
    manager: ManagerHost, kind: str, name: str, *, checks: tuple[str, ...] = (), **kwargs: object
) -> tuple[pycontainer.Container, Host]:
    """A container on a ``kind`` host with pushed readiness ``checks`` (not
    reported yet: not ready), dialled in; the manager starts it."""
    container = make_container(name, **kwargs)
    for check in checks:
        container.add_check(check)
    host = host_of(kind, container)
    container.add_endpoint("management", host.target, kind="management")
    container.connect(manager.address)
    return container, host


# -- embedded containers ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_a_readiness_check_flipping_is_seen_by_the_manager_and_the_mesh_hook(
    manager: ManagerHost, kind: str
) -> None:
    log = ServingLog(manager)
    container, host = connected(manager, kind, f"flip-{kind}", checks=("db",))
    try:
        # The manager starts it (auto start); RUNNING, but not ready.
        got = wait_container(manager.stub, container.id, running_ready(False), "RUNNING, not ready")
        assert got.readiness.time.seconds > 0
        assert not entry_of(manager, container.id).serving

        container.set_check("db", True)
        got = wait_container(manager.stub, container.id, running_ready(True), "ready")
        assert entry_of(manager, container.id).serving
        became_ready = got.readiness.time.ToNanoseconds()

        container.set_check("db", False, "db down")
        got = wait_container(manager.stub, container.id, running_ready(False), "not ready again")
        assert got.readiness.time.ToNanoseconds() >= became_ready
        assert not entry_of(manager, container.id).serving

        container.set_check("db", True)
        wait_container(manager.stub, container.id, running_ready(True), "ready again")
        # The mesh's hook was told of each flip, with the entry already changed.
        flips = [(ready, serving) for state, ready, serving in log.of(container.id)]
        changes = [flip for i, flip in enumerate(flips) if i == 0 or flip != flips[i - 1]]
        assert changes == [(False, False), (True, True), (False, False), (True, True)]
    finally:
        host.stop()


@pytest.mark.parametrize(("kind", "ready"), [("sync", True), ("sync", False), ("aio", True)])
def test_the_registration_carries_the_readiness_of_a_running_container(
    manager: ManagerHost, kind: str, ready: bool
) -> None:
    log = ServingLog(manager)
    container = make_container(f"registers-{kind}-{ready}")
    container.add_check("warm", lambda: (ready, "warmed" if ready else "still warming"))
    host = host_of(kind, container)
    try:
        start_container(host)  # before it dials in: it registers RUNNING
        assert container.health.statuses()["readiness"] is ready
        container.add_endpoint("management", host.target, kind="management")
        container.connect(manager.address)
        got = wait_container(manager.stub, container.id, running_ready(ready), "registered")
        # Known from the registration itself: the mesh heard it from the first.
        calls = log.of(container.id)
        assert {ready_then for _, ready_then, _ in calls} == {ready}
        assert calls[-1] == (RUNNING, ready, ready)
        assert got.readiness.ready is ready
    finally:
        host.stop()


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_a_stop_makes_it_not_ready_before_it_ends(manager: ManagerHost, kind: str) -> None:
    log = ServingLog(manager)
    release = threading.Event()
    in_stop = threading.Event()

    def on_stop(reason: str, deadline: float) -> None:
        in_stop.set()
        release.wait(20)

    container, host = connected(
        manager, kind, f"stopping-{kind}", hooks=pycontainer.Hooks(on_stop=on_stop)
    )
    stopper: grpc.Future[manager_pb2.StopContainerResponse] | None = None
    try:
        wait_container(manager.stub, container.id, running_ready(True), "ready")
        request = manager_pb2.StopContainerRequest(container=container.id)
        request.grace_period.FromSeconds(30)
        stopper = manager.stub.StopContainer.future(request, timeout=60)
        assert in_stop.wait(15), "on_stop did not run"
        # on_stop is still running: the manager already knows it is not ready.
        got = wait_container(
            manager.stub,
            container.id,
            lambda c: c.state == STOPPING and ready_is(False)(c),
            "STOPPING and not ready",
        )
        assert got.connected
        assert not entry_of(manager, container.id).serving
        # The readiness came first: the mesh never saw a STOPPING entry as ready.
        stopping = [call for call in log.of(container.id) if call[0] == STOPPING]
        assert stopping
        assert all(ready is False for _, ready, _ in stopping)
        release.set()
        assert stopper.result(30).container.state == STOPPED
    finally:
        release.set()
        if stopper is not None:
            stopper.cancel()
        host.stop()


def test_describe_and_ps_wide_show_the_readiness(manager: ManagerHost) -> None:
    container, host = connected(manager, "sync", "shown", checks=("db",))
    try:
        wait_container(manager.stub, container.id, running_ready(False), "not ready")
        assert _ready_column(manager) == "no"
        assert re.search(r"^Ready:\s+no since \S", _describe(manager), re.M)
        container.set_check("db", True)
        wait_container(manager.stub, container.id, running_ready(True), "ready")
        assert _ready_column(manager) == "yes"
        assert re.search(r"^Ready:\s+yes since \S", _describe(manager), re.M)
    finally:
        host.stop()


def _cli(manager: ManagerHost, *argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), client=manager.client, stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    return out.getvalue()


def _ready_column(manager: ManagerHost) -> str:
    header, row = _cli(manager, "ps", "-o", "wide").splitlines()
    columns = re.split(r"\s{2,}", header)
    return re.split(r"\s{2,}", row)[columns.index("READY")]


def _describe(manager: ManagerHost) -> str:
    return _cli(manager, "describe", "shown")


# -- a container older than the report ----------------------------------------------------------
class RawSession:
    """A Lifecycle stream driven by hand: what a container of any version sends."""

    def __init__(self, manager: ManagerHost, registration: lifecycle_pb2.Registration) -> None:
        self._outbox: queue.Queue[lifecycle_pb2.ConnectRequest | None] = queue.Queue()
        self._outbox.put(lifecycle_pb2.ConnectRequest(register=registration))
        self._channel = grpc.insecure_channel(manager.address)
        self._call = lifecycle_pb2_grpc.LifecycleStub(self._channel).Connect(self._requests())
        self.responses: list[lifecycle_pb2.ConnectResponse] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[lifecycle_pb2.ConnectRequest]:
        while (message := self._outbox.get()) is not None:
            yield message

    def _read(self) -> None:
        try:
            for response in self._call:
                self.responses.append(response)
        except grpc.RpcError:
            pass

    def send(self, message: lifecycle_pb2.ConnectRequest) -> None:
        self._outbox.put(message)

    def close(self) -> None:
        self._outbox.put(None)
        self._call.cancel()
        self._reader.join(10)
        self._channel.close()


def _registration(container_id: str, **fields: object) -> lifecycle_pb2.Registration:
    return lifecycle_pb2.Registration(
        identity=container_pb2.ContainerIdentity(id=container_id, name=container_id),
        state=RUNNING,
        pid=12345,
        **fields,  # type: ignore[arg-type]
    )


def test_a_container_that_never_reports_readiness_is_ready_while_running(
    manager: ManagerHost,
) -> None:
    session = RawSession(manager, _registration("older"))
    try:
        got = wait_container(manager.stub, "older", lambda c: c.connected, "registered")
        assert not got.HasField("readiness")
        entry = entry_of(manager, "older")
        assert entry.ready is None
        assert entry.serving  # RUNNING and connected: as before the report existed
    finally:
        session.close()
    wait_container(manager.stub, "older", lambda c: not c.connected, "session ended")
    assert not entry_of(manager, "older").serving  # no session, no traffic


def test_readiness_messages_on_a_raw_stream(manager: ManagerHost) -> None:
    log = ServingLog(manager)
    since = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    readiness = lifecycle_pb2.Readiness(ready=False)
    readiness.time.FromDatetime(since)
    session = RawSession(manager, _registration("raw", readiness=readiness))
    try:
        got = wait_container(manager.stub, "raw", lambda c: c.connected, "registered")
        assert got.readiness.ready is False
        assert got.readiness.time.ToDatetime(tzinfo=datetime.UTC) == since
        calls = len(log.of("raw"))

        # The same word again changes nothing: the mesh is not told.
        session.send(lifecycle_pb2.ConnectRequest(readiness=lifecycle_pb2.Readiness(ready=False)))
        # A time no Timestamp can hold is taken as now, not kept (nor a crash).
        bad = lifecycle_pb2.Readiness(ready=True)
        bad.time.seconds = 2**62
        session.send(lifecycle_pb2.ConnectRequest(readiness=bad))
        got = wait_container(manager.stub, "raw", ready_is(True), "ready")
        now = datetime.datetime.now(datetime.UTC).timestamp()
        assert abs(got.readiness.time.seconds - now) < 60
        assert entry_of(manager, "raw").serving
        assert log.of("raw")[calls:] == [(RUNNING, True, True)]
        # The session still works: a heartbeat is answered.
        session.send(lifecycle_pb2.ConnectRequest(heartbeat=lifecycle_pb2.Heartbeat()))
        wait_until(
            lambda: any(r.WhichOneof("message") == "heartbeat" for r in session.responses),
            what="a heartbeat answered",
        )
        # A later registration without the field: back to never reported.
    finally:
        session.close()
    wait_container(manager.stub, "raw", lambda c: not c.connected, "session ended")
    session = RawSession(manager, _registration("raw"))
    try:
        got = wait_container(
            manager.stub, "raw", lambda c: c.connected and not c.HasField("readiness"), "again"
        )
        assert entry_of(manager, "raw").ready is None
    finally:
        session.close()
