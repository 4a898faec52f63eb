"""The manager's limits, through a real manager and real clients (typed stubs
and raw Lifecycle streams): checkpoint sizes end to end, validated input
(enums, durations, resources, priorities, names, labels, endpoints), error
messages short enough for gRPC's trailers, a bounded session outbox, grace
extension ids that are not kept, and the capacity of a lost registration."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from support import ManagerHost, connected_container, wait_until

import pycontainer
from pycontainer import limits
from pycontainer._errors import RequestError, echo, invalid_argument
from pycontainer.manager import Resources
from pycontainer.v1 import (
    container_pb2,
    lifecycle_pb2,
    lifecycle_pb2_grpc,
    manager_pb2,
    spec_pb2,
)

S = container_pb2
MiB = 1 << 20


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerHost]:
    host = ManagerHost(str(tmp_path / "state"))
    try:
        yield host
    finally:
        host.stop()


def _identity(cid: str = "raw-1", name: str = "raw", **kwargs: object) -> S.ContainerIdentity:
    return S.ContainerIdentity(id=cid, name=name, **kwargs)  # type: ignore[arg-type]


class RawSession:
    """A Lifecycle.Connect stream driven by hand: what a hostile or broken
    container can send, with no agent in the way."""

    def __init__(self, address: str, registration: lifecycle_pb2.Registration) -> None:
        self.channel = grpc.insecure_channel(address)
        self._requests: queue.Queue[lifecycle_pb2.ConnectRequest | None] = queue.Queue()
        self._requests.put(lifecycle_pb2.ConnectRequest(register=registration))
        self.call = lifecycle_pb2_grpc.LifecycleStub(self.channel).Connect(self._iterate())

    def _iterate(self) -> Iterator[lifecycle_pb2.ConnectRequest]:
        while (message := self._requests.get()) is not None:
            yield message

    def send(self, message: lifecycle_pb2.ConnectRequest) -> None:
        self._requests.put(message)

    def pending(self) -> int:
        """Requests not yet taken by gRPC to send."""
        return self._requests.qsize()

    def first(self) -> lifecycle_pb2.ConnectResponse:
        return next(self.call)

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self.channel.close()


def _register(address: str, registration: lifecycle_pb2.Registration) -> grpc.RpcError:
    """The error a registration gets (it must get one)."""
    session = RawSession(address, registration)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            session.first()
        return caught.value  # type: ignore[no-any-return]
    finally:
        session.close()


def _ids(manager: ManagerHost) -> list[str]:
    response = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
    return [c.identity.id for c in response.containers]


def _connected(manager: ManagerHost, cid: str) -> bool:
    entry = manager.manager.registry.get(cid)
    return entry is not None and entry.connected


# -- 1. checkpoints past gRPC's 4 MiB default -------------------------------------------------
def test_a_10_mib_checkpoint_is_stored_and_restored_end_to_end(manager: ManagerHost) -> None:
    state = hashlib.sha256(b"seed").digest() * (10 * MiB // 32)
    restored: list[bytes] = []
    container, host = connected_container(
        manager,
        "big",
        hooks=pycontainer.Hooks(on_checkpoint=lambda: state, on_restore=restored.append),
    )
    try:
        wait_until(lambda: container.state == pycontainer.State.RUNNING, 15, "running")
        taken = manager.stub.CheckpointContainer(
            manager_pb2.CheckpointContainerRequest(container=container.id), timeout=30
        )
        assert taken.size_bytes == len(state) == 10 * MiB
        assert taken.sha256 == hashlib.sha256(state).hexdigest()
        manager.stub.RestoreContainer(
            manager_pb2.RestoreContainerRequest(
                container=container.id, checkpoint_id=taken.checkpoint_id
            ),
            timeout=30,
        )
        assert restored == [state]
        assert manager.manager.registry.get(container.id).sessions == 1  # never dropped
    finally:
        host.stop()
        container.close()


def test_a_checkpoint_over_the_limit_is_resource_exhausted_and_the_session_stays(
    manager: ManagerHost,
) -> None:
    too_big = b"x" * (limits.MAX_CHECKPOINT_BYTES + 1)
    container, host = connected_container(
        manager, "huge", hooks=pycontainer.Hooks(on_checkpoint=lambda: too_big)
    )
    try:
        wait_until(lambda: container.state == pycontainer.State.RUNNING, 15, "running")
        with pytest.raises(grpc.RpcError) as caught:
            manager.stub.CheckpointContainer(
                manager_pb2.CheckpointContainerRequest(container=container.id), timeout=60
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = caught.value.details() or ""
        assert "MAX_CHECKPOINT_BYTES" in details
        assert str(limits.MAX_CHECKPOINT_BYTES) in details
        entry = manager.manager.registry.get(container.id)
        assert entry.connected
        assert entry.sessions == 1
        # The session still serves commands.
        manager.stub.PauseContainer(
            manager_pb2.PauseContainerRequest(container=container.id), timeout=10
        )
        assert container.state == pycontainer.State.PAUSED
    finally:
        host.stop()
        container.close()


def test_the_managers_lower_checkpoint_limit_names_its_setting(tmp_path: Path) -> None:
    manager = ManagerHost(str(tmp_path / "state"), max_checkpoint_bytes=1 * MiB)
    container, host = connected_container(
        manager, "mid", hooks=pycontainer.Hooks(on_checkpoint=lambda: b"y" * (5 * MiB))
    )
    try:
        wait_until(lambda: container.state == pycontainer.State.RUNNING, 15, "running")
        with pytest.raises(grpc.RpcError) as caught:
            manager.stub.CheckpointContainer(
                manager_pb2.CheckpointContainerRequest(container=container.id), timeout=30
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ManagerSettings.max_checkpoint_bytes" in (caught.value.details() or "")
        assert manager.manager.registry.get(container.id).sessions == 1
    finally:
        host.stop()
        container.close()
        manager.stop()


# -- 2. unchecked input is INVALID_ARGUMENT, not UNKNOWN --------------------------------------
def test_a_registration_with_an_unknown_state_is_refused_and_not_kept(
    manager: ManagerHost,
) -> None:
    error = _register(
        manager.address,
        lifecycle_pb2.Registration(identity=_identity(), state=-1),  # type: ignore[arg-type]
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert "register.state" in details
    assert "LIFECYCLE_STATE_RUNNING" in details
    assert "raw-1" not in _ids(manager)
    assert manager.manager.store.get_container("raw-1") is None


@pytest.mark.parametrize(
    ("identity", "field", "limit"),
    [
        (_identity(resources=S.ResourceRequirements(cpu_millis=-1)), "cpu_millis", "0 or more"),
        (
            _identity(resources=S.ResourceRequirements(memory_bytes=-5)),
            "memory_bytes",
            "0 or more",
        ),
        (_identity(priority=2_000_000_000), "priority", "MAX_PRIORITY"),
        (_identity(name="n" * 1_300_000), "name", "MAX_NAME_LENGTH"),
        (_identity(cid="i" * 300), "id", "MAX_NAME_LENGTH"),
        (_identity(name="bad name"), "name", "letters, digits"),
        (_identity(labels={f"k{i}": "v" for i in range(100)}), "labels", "MAX_LABELS"),
        (_identity(labels={"k": "v" * 64}), "labels", "MAX_LABEL_VALUE_LENGTH"),
        (_identity(labels={"k" * 400: "v"}), "labels", "MAX_LABEL_KEY_LENGTH"),
        (_identity(version="1" * 200), "version", "MAX_VERSION_LENGTH"),
        (
            _identity(endpoints=[S.Endpoint(name="e", address="a:1")] * 40),
            "endpoints",
            "MAX_ENDPOINTS",
        ),
        (
            _identity(endpoints=[S.Endpoint(name="e", address="a" * 5000)]),
            "address",
            "MAX_ADDRESS_LENGTH",
        ),
        (_identity(endpoints=[S.Endpoint(name="e", kind=42)]), "kind", "ENDPOINT_KIND_"),  # type: ignore[arg-type]
    ],
)
def test_a_registration_past_a_bound_is_invalid_argument_naming_it(
    manager: ManagerHost, identity: S.ContainerIdentity, field: str, limit: str
) -> None:
    error = _register(manager.address, lifecycle_pb2.Registration(identity=identity))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert field in details
    assert limit in details
    # Short enough for the trailers, whatever the input's size.
    assert len(details.encode()) < 2 * limits.MAX_ERROR_MESSAGE_BYTES
    assert _ids(manager) == []


def test_run_container_checks_enums_resources_and_priority(manager: ManagerHost) -> None:
    cases = [
        (spec_pb2.ContainerSpec(name="a", runtime=99), "spec.runtime", "RUNTIME_KIND_PROCESS"),  # type: ignore[arg-type]
        (
            spec_pb2.ContainerSpec(name="a", restart_policy=7),  # type: ignore[arg-type]
            "spec.restart_policy",
            "RESTART_POLICY_ALWAYS",
        ),
        (
            spec_pb2.ContainerSpec(name="a", resources=S.ResourceRequirements(memory_bytes=-1)),
            "spec.resources.memory_bytes",
            "0 or more",
        ),
        (spec_pb2.ContainerSpec(name="a", priority=-2_000_000_000), "spec.priority", "MIN"),
        (spec_pb2.ContainerSpec(name="a", replicas=10**6), "spec.replicas", "MAX_REPLICAS"),
        # Its replicas' ids (NAME-xxxxxxxx) must be valid names too.
        (spec_pb2.ContainerSpec(name="a" * 250), "spec.name", "MAX_SPEC_NAME_LENGTH"),
        (
            spec_pb2.ContainerSpec(name="a", grace_period=duration_pb2.Duration(seconds=2**62)),
            "spec.grace_period",
            "out of range",
        ),
    ]
    for spec, field, hint in cases:
        with pytest.raises(grpc.RpcError) as caught:
            manager.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        details = caught.value.details() or ""
        assert field in details, details
        assert hint in details, details
    with pytest.raises(grpc.RpcError) as caught:
        manager.stub.ApplySpecs(
            manager_pb2.ApplySpecsRequest(
                specs=[
                    spec_pb2.ContainerSpec(name="ok"),
                    spec_pb2.ContainerSpec(name="b", runtime=99),
                ]  # type: ignore[arg-type]
            ),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "specs[1].runtime" in (caught.value.details() or "")


def test_a_grace_of_2_to_the_62_seconds_is_invalid_argument(manager: ManagerHost) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        manager.stub.StopContainer(
            manager_pb2.StopContainerRequest(
                container="anything", grace_period=duration_pb2.Duration(seconds=2**62)
            ),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grace_period" in (caught.value.details() or "")


def test_a_huge_name_in_a_request_gets_its_status_not_a_metadata_error(
    manager: ManagerHost,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        manager.stub.GetContainer(
            manager_pb2.GetContainerRequest(container="z" * 1_000_000), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    details = caught.value.details() or ""
    assert "(1000000 bytes)" in details
    assert len(details) < 500


def test_error_messages_echo_at_most_a_bounded_prefix() -> None:
    assert echo("short") == "'short'"
    cut = echo("é" * 1000)
    assert cut.endswith("… (2000 bytes)")
    assert len(cut) < limits.MAX_ECHOED_CHARS + 20
    assert echo(b"\x00" * 10_000).endswith("(10000 bytes)")
    error = invalid_argument("field", "x" * 100_000)
    assert len(error.message.encode()) <= limits.MAX_ERROR_MESSAGE_BYTES
    assert isinstance(error, RequestError)
    assert error.message.endswith("(100007 bytes)")


# -- registration state is a claim: admission applies ------------------------------------------
def test_a_registration_claiming_running_does_not_skip_the_capacity_check(
    tmp_path: Path,
) -> None:
    manager = ManagerHost(str(tmp_path / "state"), capacity=Resources(1000, 1 << 30))
    real, host = connected_container(manager, "real", cpu_millis=800)
    fake = None
    try:
        wait_until(lambda: real.state == pycontainer.State.RUNNING, 15, "real running")
        identity = _identity(
            "fake-1",
            "fake",
            priority=1_000_000,
            resources=S.ResourceRequirements(cpu_millis=1000, memory_bytes=1 << 30),
        )
        error = _register(
            manager.address,
            lifecycle_pb2.Registration(identity=identity, state=S.LIFECYCLE_STATE_RUNNING),
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ManagerSettings.capacity" in (error.details() or "")
        assert "fake-1" not in _ids(manager)
        assert real.state == pycontainer.State.RUNNING  # nobody was evicted
        # A claim that fits is admitted (and holds its room).
        fits = _identity("small-1", "small", resources=S.ResourceRequirements(cpu_millis=100))
        fake = RawSession(
            manager.address,
            lifecycle_pb2.Registration(identity=fits, state=S.LIFECYCLE_STATE_RUNNING),
        )
        assert fake.first().WhichOneof("message") == "registered"
        assert manager.manager.registry.get("small-1").admitted
    finally:
        if fake is not None:
            fake.close()
        host.stop()
        real.close()
        manager.stop()


# -- 3. a bounded outbox; grace extension ids not kept -----------------------------------------
def _grace_request(i: int) -> lifecycle_pb2.ConnectRequest:
    """A grace extension request for no command in flight; its long id makes
    each reply a few hundred bytes, so unread replies soon fill what gRPC's
    transport buffers and the rest queue in the session's outbox."""
    return lifecycle_pb2.ConnectRequest(
        grace_extension=lifecycle_pb2.GraceExtensionRequest(
            command_id=f"{i:0200d}", extension=duration_pb2.Duration(seconds=5)
        )
    )


def test_unread_heartbeats_and_replies_are_bounded(manager: ManagerHost) -> None:
    session = RawSession(
        manager.address, lifecycle_pb2.Registration(identity=_identity("reader-1", "reader"))
    )
    try:
        assert session.first().WhichOneof("message") == "registered"  # and never read again
        entry = manager.manager.registry.get("reader-1")
        live = entry.session
        assert live is not None

        # Fill gRPC's buffers until replies queue in the outbox.
        sent = 0
        while live.outbox.qsize() <= limits.SESSION_OUTBOX_SOFT:
            assert sent < 200_000, "replies never queued: the transport took them all"
            for _ in range(500):
                session.send(_grace_request(sent))
                sent += 1
            wait_until(lambda: session.pending() == 0, 30, "requests sent")
        # Heartbeats now queue no replies; a state report after them says
        # when the manager has read them all.
        heartbeat = lifecycle_pb2.ConnectRequest(heartbeat=lifecycle_pb2.Heartbeat())
        for _ in range(10_000):
            session.send(heartbeat)
        session.send(
            lifecycle_pb2.ConnectRequest(
                state_change=lifecycle_pb2.StateChange(
                    from_state=S.LIFECYCLE_STATE_CREATED, to_state=S.LIFECYCLE_STATE_STARTING
                )
            )
        )
        wait_until(lambda: entry.state == S.LIFECYCLE_STATE_STARTING, 60, "heartbeats read")
        assert entry.session is live, entry.error
        queued = list(live.outbox._queue)  # type: ignore[attr-defined]
        heartbeats = [m for m in queued if m is not None and m.HasField("heartbeat")]
        assert len(heartbeats) <= limits.SESSION_OUTBOX_SOFT

        # Replies that are not heartbeats are not dropped: past the hard
        # bound the session ends, its reason on the record.
        largest = 0

        def watch() -> None:
            nonlocal largest
            while entry.session is live:
                largest = max(largest, live.outbox.qsize())
                # Sampled, not spun: a spinning thread starves the manager's
                # loop in this process of the GIL (40 s instead of 3).
                time.sleep(0.0005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for i in range(limits.SESSION_OUTBOX_HARD * 3):
            session.send(_grace_request(sent + i))
        wait_until(lambda: entry.session is None, 60, "the session closed at the hard bound")
        watcher.join(5)
        assert largest <= limits.SESSION_OUTBOX_HARD
        assert "SESSION_OUTBOX_HARD" in entry.error
        # No grace extension is recorded for what is not a stop in flight.
        assert manager.manager.sessions.granted(f"{0:0200d}") == 0.0
        assert not manager.manager.sessions._granted
    finally:
        session.close()


# -- 4. a lost registration's capacity is released after the heartbeat timeout -----------------
def test_a_lost_registrations_capacity_goes_to_what_waits(tmp_path: Path) -> None:
    manager = ManagerHost(str(tmp_path / "state"), capacity=Resources(1000, 1 << 30))
    holder = RawSession(
        manager.address,
        lifecycle_pb2.Registration(
            identity=_identity(
                "holder-1", "holder", resources=S.ResourceRequirements(cpu_millis=800)
            ),
            state=S.LIFECYCLE_STATE_RUNNING,
        ),
    )
    waiting = host = None
    try:
        assert holder.first().WhichOneof("message") == "registered"
        waiting, host = connected_container(manager, "waiting", cpu_millis=500)
        wait_until(lambda: _connected(manager, waiting.id), 10, "waiting registered")
        assert waiting.state == pycontainer.State.CREATED  # no room yet
        holder.close()  # the registration disconnects and never comes back
        wait_until(
            lambda: waiting.state == pycontainer.State.RUNNING, 20, "waiting admitted and started"
        )
        entry = manager.manager.registry.get("holder-1")
        assert not entry.admitted
        assert not entry.connected
    finally:
        holder.close()
        if host is not None:
            host.stop()
        if waiting is not None:
            waiting.close()
        manager.stop()


def test_a_record_from_an_earlier_manager_that_never_returns_releases_its_room(
    tmp_path: Path,
) -> None:
    state_dir = str(tmp_path / "state")
    capacity = Resources(1000, 1 << 30)
    first = ManagerHost(state_dir, capacity=capacity)
    holder = RawSession(
        first.address,
        lifecycle_pb2.Registration(
            identity=_identity("gone-1", "gone", resources=S.ResourceRequirements(cpu_millis=800)),
            state=S.LIFECYCLE_STATE_RUNNING,
        ),
    )
    try:
        assert holder.first().WhichOneof("message") == "registered"
    finally:
        holder.close()
        first.stop()
    second = ManagerHost(state_dir, capacity=capacity)
    waiting = host = None
    try:
        assert second.manager.registry.get("gone-1").admitted  # as the record says
        waiting, host = connected_container(second, "after", cpu_millis=500)
        wait_until(lambda: waiting.state == pycontainer.State.RUNNING, 20, "admitted once released")
        assert not second.manager.registry.get("gone-1").admitted
    finally:
        if host is not None:
            host.stop()
        if waiting is not None:
            waiting.close()
        second.stop()


def test_a_stored_record_past_the_bounds_is_not_served_but_kept(tmp_path: Path) -> None:
    from pycontainer.manager import SQLiteStore
    from pycontainer.manager._store import ContainerRecord

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    store = SQLiteStore(state_dir / "manager.db")
    for cid, name in (("huge-1", "n" * 1_300_000), ("fine-1", "fine")):
        store.put_container(
            ContainerRecord(
                id=cid,
                name=name,
                spec=b"",
                labels={},
                priority=0,
                cpu_millis=0,
                memory_bytes=0,
                state=S.LIFECYCLE_STATE_STOPPED,
                create_time=1.0,
            )
        )
    store.close()
    manager = ManagerHost(str(state_dir))
    try:
        assert _ids(manager) == ["fine-1"]  # a default client's listing works
        assert manager.manager.store.get_container("huge-1") is not None  # nothing lost
    finally:
        manager.stop()


def test_containers_past_max_containers_are_resource_exhausted(
    manager: ManagerHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_CONTAINERS", 2)
    sessions = [
        RawSession(manager.address, lifecycle_pb2.Registration(identity=_identity(f"c-{i}", "c")))
        for i in range(2)
    ]
    try:
        for session in sessions:
            assert session.first().WhichOneof("message") == "registered"
        error = _register(manager.address, lifecycle_pb2.Registration(identity=_identity("c-2")))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "MAX_CONTAINERS" in (error.details() or "")
        # An ended one makes room: the longest ended is forgotten for the newcomer.
        sessions[0].send(
            lifecycle_pb2.ConnectRequest(
                state_change=lifecycle_pb2.StateChange(
                    from_state=S.LIFECYCLE_STATE_CREATED, to_state=S.LIFECYCLE_STATE_STOPPED
                )
            )
        )
        ended = manager.manager.registry.get("c-0")
        wait_until(lambda: ended.state == S.LIFECYCLE_STATE_STOPPED, 10, "c-0 stopped")
        sessions[0].close()
        wait_until(lambda: not _connected(manager, "c-0"), 10, "c-0 disconnected")
        newcomer = RawSession(
            manager.address, lifecycle_pb2.Registration(identity=_identity("c-2"))
        )
        sessions.append(newcomer)
        assert newcomer.first().WhichOneof("message") == "registered"
        assert sorted(_ids(manager)) == ["c-1", "c-2"]
    finally:
        for session in sessions:
            session.close()


def test_list_and_watch_requests_are_checked_too(manager: ManagerHost) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        manager.stub.ListContainers(manager_pb2.ListContainersRequest(states=[99]), timeout=5)  # type: ignore[list-item]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "states: unknown LifecycleState 99" in (caught.value.details() or "")
    request = manager_pb2.ManagerWatchMetricsRequest()
    request.interval.seconds = 2**62
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(manager.stub.WatchMetrics(request, timeout=5)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "interval" in (caught.value.details() or "")
