"""The manager's scheduling and state over loopback with real in-process
containers: admission on a small capacity with priority eviction and refusal,
checkpoints that outlive the manager and restore replacements, scaling with
seed state, and grace extensions granted up to the manager's cap."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from support import Host, ManagerHost, connected_container, make_container, start_sync_host
from support import wait_until as _wait_until

import pycontainer
from pycontainer.manager import InProcessRuntime, Launch, Resources
from pycontainer.v1 import container_pb2, manager_pb2, manager_pb2_grpc, spec_pb2

S = container_pb2
E = manager_pb2
MiB = 1 << 20


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    _wait_until(predicate, timeout=timeout, what=what)


def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def _get(stub: manager_pb2_grpc.ManagerStub, container: str) -> manager_pb2.Container:
    return stub.GetContainer(
        manager_pb2.GetContainerRequest(container=container), timeout=5
    ).container


def _events(
    stub: manager_pb2_grpc.ManagerStub,
    until: Callable[[list[manager_pb2.Event]], bool],
    *,
    container: str = "",
    timeout: float = 15.0,
) -> list[manager_pb2.Event]:
    """Events (history first) up to the one after which ``until`` holds."""
    stream = stub.WatchEvents(
        manager_pb2.WatchEventsRequest(include_history=True, container=container),
        timeout=timeout,
    )
    seen: list[manager_pb2.Event] = []
    try:
        for response in stream:
            seen.append(response.event)
            if until(seen):
                return seen
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    finally:
        stream.cancel()  # type: ignore[no-untyped-call]
    lines = [f"{E.EventType.Name(e.type)} {e.container_id}: {e.message}" for e in seen]
    raise AssertionError(f"events never matched within {timeout:g}s; saw:\n" + "\n".join(lines))


def _needs(cpu_millis: int, memory_bytes: int) -> S.ResourceRequirements:
    return S.ResourceRequirements(cpu_millis=cpu_millis, memory_bytes=memory_bytes)


def _started(journal: Journal, cid: str) -> Callable[[], bool]:
    return lambda: ("start", None) in journal.of(cid)


def _of_type(events: list[manager_pb2.Event], kind: int) -> list[manager_pb2.Event]:
    return [e for e in events if e.type == kind]


@dataclass
class Journal:
    """What the hooks of many containers did, in order: (container id, hook, arg)."""

    entries: list[tuple[str, str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, cid: str, hook: str, arg: Any = None) -> None:
        with self.lock:
            self.entries.append((cid, hook, arg))

    def of(self, cid: str) -> list[tuple[str, Any]]:
        with self.lock:
            return [(hook, arg) for c, hook, arg in self.entries if c == cid]

    def hooks(self, hook: str) -> list[tuple[str, Any]]:
        with self.lock:
            return [(c, arg) for c, h, arg in self.entries if h == hook]


def _journal_hooks(journal: Journal, cid: str, checkpoint: bytes = b"") -> pycontainer.Hooks:
    def on_stop(reason: str, deadline: float) -> None:
        journal.add(cid, "stop", reason)

    def on_checkpoint() -> bytes:
        journal.add(cid, "checkpoint")
        return checkpoint or f"state of {cid}".encode()

    def on_replicate(count: int) -> bytes:
        journal.add(cid, "replicate", count)
        return f"seed for {count}".encode()

    return pycontainer.Hooks(
        on_start=lambda: journal.add(cid, "start"),
        on_stop=on_stop,
        on_checkpoint=on_checkpoint,
        on_restore=lambda state: journal.add(cid, "restore", state),
        on_replicate=on_replicate,
    )


class Factory:
    """An InProcessRuntime factory: a container on a sync host per launch,
    dialling the manager with the id it was given."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.hosts: list[Host] = []

    def __call__(self, launch: Launch) -> Host:
        spec = launch.spec
        container = make_container(
            spec.name,
            id=launch.container_id,
            priority=spec.priority,
            hooks=_journal_hooks(self.journal, launch.container_id),
        )
        host = start_sync_host(container)
        self.hosts.append(host)
        container.add_endpoint("management", host.target, kind="management")
        container.connect(launch.manager_address)
        host.close = host.stop  # type: ignore[attr-defined]  # what the runtime calls
        return host

    def stop_all(self) -> None:
        for host in self.hosts:
            host.stop()


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def factory(journal: Journal) -> Iterator[Factory]:
    f = Factory(journal)
    yield f
    f.stop_all()


# -- 5. admission: eviction order and refusal ----------------------------------------------
def test_admission_evicts_lowest_priority_then_youngest_and_refuses_what_cannot_fit(
    tmp_path: Path, journal: Journal
) -> None:
    capacity = Resources(cpu_millis=1000, memory_bytes=1 << 30)
    manager = ManagerHost(str(tmp_path / "state"), capacity=capacity)
    hosts: list[Host] = []
    containers: dict[str, pycontainer.Container] = {}

    def connect(name: str, priority: int, cpu: int, memory: int) -> pycontainer.Container:
        container = make_container(
            name,
            priority=priority,
            cpu_millis=cpu,
            memory_bytes=memory,
            hooks=_journal_hooks(journal, name),
        )
        hosts.append(start_sync_host(container))
        container.connect(manager.address)
        containers[name] = container
        return container

    def running(name: str) -> None:
        c = containers[name]
        wait_until(lambda: c.state == pycontainer.State.RUNNING, f"{name} running")

    try:
        # 900m of 1000m taken, by priorities 1, 2 and 2 (c the youngest).
        for name, priority in (("a", 1), ("b", 2), ("c", 2)):
            connect(name, priority, 300, 128 * MiB)
            running(name)
            time.sleep(0.01)  # distinct start times

        # A priority-10 newcomer needing 600m: a goes (lowest priority, though
        # oldest), then c (the youngest of the priority-2 pair); b stays.
        connect("high", 10, 600, 256 * MiB)
        running("high")
        assert containers["a"].state == pycontainer.State.STOPPED
        assert containers["c"].state == pycontainer.State.STOPPED
        assert containers["b"].state == pycontainer.State.RUNNING
        assert journal.hooks("stop") == [("a", "evicted"), ("c", "evicted")]
        evicted = _of_type(
            _events(manager.stub, lambda seen: len(_of_type(seen, E.EVENT_TYPE_EVICTED)) == 2),
            E.EVENT_TYPE_EVICTED,
        )
        assert [e.container_name for e in evicted] == ["a", "c"]
        assert "to admit 'high' (priority 10 > 1)" in evicted[0].message
        assert "to admit 'high' (priority 10 > 2)" in evicted[1].message
        # The newcomer was admitted and started once.
        assert journal.hooks("start").count(("high", None)) == 1
        high_events = _events(
            manager.stub,
            lambda seen: any("-> LIFECYCLE_STATE_RUNNING" in e.message for e in seen),
            container="high",
        )
        sent = [e.message for e in _of_type(high_events, E.EVENT_TYPE_COMMAND_SENT)]
        assert sent == ["start"]

        # Priority 2 needing 300m with 100m free: b has the same priority and
        # high a higher one, so nothing is evicted and it is refused.
        connect("d", 2, 300, 128 * MiB)
        refused = _of_type(
            _events(
                manager.stub,
                lambda seen: bool(_of_type(seen, E.EVENT_TYPE_REFUSED)),
                container="d",
            ),
            E.EVENT_TYPE_REFUSED,
        )[0]
        assert "no running container has a priority below 2" in refused.message
        assert "short by 200m cpu" in refused.message
        # A refusal is decided in one step (no eviction was begun): it waits,
        # and nothing else happens to it, as the checks after the RunContainer
        # refusals below (served after it) show again.
        assert containers["d"].state == pycontainer.State.CREATED
        assert _get(manager.stub, "d").state == S.LIFECYCLE_STATE_CREATED
        assert journal.hooks("stop") == [("a", "evicted"), ("c", "evicted")]

        # RunContainer refuses up front, saying what is short.
        for spec, short in (
            (spec_pb2.ContainerSpec(name="huge", resources=_needs(2000, MiB)), "short by 1 cpu"),
            (
                spec_pb2.ContainerSpec(name="late", priority=2, resources=_needs(300, MiB)),
                "short by 200m cpu",
            ),
        ):
            with pytest.raises(grpc.RpcError) as info:
                manager.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = info.value.details() or ""
            assert f"cannot run {spec.name!r}" in details
            assert short in details
        assert containers["d"].state == pycontainer.State.CREATED
        assert journal.hooks("stop") == [("a", "evicted"), ("c", "evicted")]

        # Capacity released: the waiting one is admitted and started.
        manager.stub.StopContainer(
            manager_pb2.StopContainerRequest(container="high", grace_period=_seconds(5)),
            timeout=15,
        )
        running("d")
        assert journal.hooks("start").count(("d", None)) == 1
    finally:
        for host in hosts:
            host.stop()
        manager.stop()


def test_an_admission_proceeds_while_an_eviction_waits_out_its_grace_period(
    tmp_path: Path, journal: Journal
) -> None:
    """An eviction waiting for its victim's on_stop holds nothing another
    admission needs: a newcomer that fits starts meanwhile (the manager once
    held its admission lock across the eviction, so it waited)."""
    capacity = Resources(cpu_millis=1000, memory_bytes=1 << 30)
    manager = ManagerHost(str(tmp_path / "state"), capacity=capacity)
    release = threading.Event()
    hosts: list[Host] = []
    containers: dict[str, pycontainer.Container] = {}

    def slow_stop(reason: str, deadline: float) -> None:
        journal.add("low", "stop", reason)
        release.wait(20)  # until the newcomer below has started

    def connect(
        name: str, priority: int, cpu: int, hooks: pycontainer.Hooks | None = None
    ) -> pycontainer.Container:
        container = make_container(
            name,
            priority=priority,
            cpu_millis=cpu,
            memory_bytes=64 * MiB,
            hooks=hooks or _journal_hooks(journal, name),
        )
        hosts.append(start_sync_host(container))
        container.connect(manager.address)
        containers[name] = container
        return container

    def in_state(name: str, state: pycontainer.State) -> Callable[[], bool]:
        return lambda: containers[name].state == state

    try:
        connect("low", 1, 600, pycontainer.Hooks(on_stop=slow_stop))
        wait_until(in_state("low", pycontainer.State.RUNNING), "low running")
        # 600m free is not enough for high: low is evicted, and takes its time.
        connect("high", 10, 600)
        wait_until(lambda: ("stop", "evicted") in journal.of("low"), "low asked to stop")
        assert containers["low"].state == pycontainer.State.STOPPING
        # 400m is left beside high's reserved 600m: small fits, and starts
        # while the eviction still waits.
        connect("small", 1, 300)
        wait_until(in_state("small", pycontainer.State.RUNNING), "small running", timeout=10)
        assert containers["low"].state == pycontainer.State.STOPPING
        assert containers["high"].state == pycontainer.State.CREATED
        release.set()
        wait_until(in_state("high", pycontainer.State.RUNNING), "high running")
        assert containers["low"].state == pycontainer.State.STOPPED
        assert containers["small"].state == pycontainer.State.RUNNING
        assert journal.hooks("start").count(("high", None)) == 1
    finally:
        release.set()
        for host in hosts:
            host.stop()
        manager.stop()


# -- 6. checkpoints across a manager restart -----------------------------------------------
def test_checkpoint_outlives_the_manager_and_restores_into_replacements(
    tmp_path: Path, journal: Journal, factory: Factory
) -> None:
    state_dir = str(tmp_path / "state")
    first = ManagerHost(state_dir)
    original, original_host = connected_container(
        first, "kv", hooks=pycontainer.Hooks(on_checkpoint=lambda: b"kv-state-42")
    )
    try:
        wait_until(lambda: original.state == pycontainer.State.RUNNING, "original running")
        taken = first.stub.CheckpointContainer(
            manager_pb2.CheckpointContainerRequest(container="kv"), timeout=10
        )
        assert taken.size_bytes == len(b"kv-state-42")
        assert taken.sha256 == hashlib.sha256(b"kv-state-42").hexdigest()
    finally:
        original_host.stop()
        first.stop()

    in_process = {spec_pb2.RUNTIME_KIND_IN_PROCESS: InProcessRuntime(factory)}
    second = ManagerHost(state_dir, runtimes=in_process)
    replacement, replacement_host = connected_container(
        second, "kv", hooks=_journal_hooks(journal, "replacement")
    )
    try:
        remembered = _get(second.stub, original.id)  # from the state dir
        assert remembered.last_checkpoint_id == taken.checkpoint_id
        assert not remembered.connected
        wait_until(lambda: replacement.state == pycontainer.State.RUNNING, "replacement running")
        # No checkpoint id: the newest of the name.
        second.stub.RestoreContainer(
            manager_pb2.RestoreContainerRequest(container=replacement.id), timeout=10
        )
        assert journal.of("replacement") == [("start", None), ("restore", b"kv-state-42")]

        # CHECKPOINT_POLICY_ON_STOP: restored from the newest checkpoint before it starts...
        spec = spec_pb2.ContainerSpec(
            name="kv",
            runtime=spec_pb2.RUNTIME_KIND_IN_PROCESS,
            checkpoint_policy=spec_pb2.CHECKPOINT_POLICY_ON_STOP,
        )
        [launched] = second.stub.RunContainer(
            manager_pb2.RunContainerRequest(spec=spec), timeout=15
        ).containers
        cid = launched.identity.id
        wait_until(lambda: ("start", None) in journal.of(cid), "launched started")
        assert journal.of(cid) == [("restore", b"kv-state-42"), ("start", None)]

        # ...and an eviction checkpoints it first.
        second.stub.EvictContainer(
            manager_pb2.EvictContainerRequest(container=cid, grace_period=_seconds(5)),
            timeout=15,
        )
        assert journal.of(cid)[2:] == [("checkpoint", None), ("stop", "evicted")]
        evicted = _get(second.stub, cid)
        assert evicted.state == S.LIFECYCLE_STATE_STOPPED
        assert evicted.last_checkpoint_id not in ("", taken.checkpoint_id)
        kinds = [
            e.type
            for e in _events(
                second.stub,
                lambda seen: bool(_of_type(seen, E.EVENT_TYPE_CHECKPOINTED)),
                container=cid,
            )
        ]
        assert E.EVENT_TYPE_EVICTED in kinds

        # Its successor starts from what the eviction saved.
        [successor] = second.stub.RunContainer(
            manager_pb2.RunContainerRequest(spec=spec), timeout=15
        ).containers
        sid = successor.identity.id
        wait_until(lambda: ("start", None) in journal.of(sid), "successor started")
        assert journal.of(sid) == [("restore", f"state of {cid}".encode()), ("start", None)]
    finally:
        replacement_host.stop()
        second.stop()


# -- 7. scaling ------------------------------------------------------------------------------
def test_scale_up_seeds_new_replicas_and_scale_down_stops_the_youngest(
    tmp_path: Path, journal: Journal, factory: Factory
) -> None:
    in_process = {spec_pb2.RUNTIME_KIND_IN_PROCESS: InProcessRuntime(factory)}
    manager = ManagerHost(str(tmp_path / "state"), runtimes=in_process)
    loner, loner_host = connected_container(manager, "loner")
    try:
        spec = spec_pb2.ContainerSpec(name="worker", runtime=spec_pb2.RUNTIME_KIND_IN_PROCESS)
        [first] = manager.stub.RunContainer(
            manager_pb2.RunContainerRequest(spec=spec), timeout=15
        ).containers
        first_id = first.identity.id
        wait_until(lambda: journal.of(first_id) == [("start", None)], "first replica started")

        scaled = manager.stub.ScaleContainer(
            manager_pb2.ScaleContainerRequest(container="worker", replicas=3), timeout=15
        )
        ids = [c.identity.id for c in scaled.containers]
        assert len(ids) == 3
        assert first_id in ids
        new = [i for i in ids if i != first_id]
        assert journal.of(first_id) == [("start", None), ("replicate", 2)]
        for cid in new:
            wait_until(_started(journal, cid), f"{cid} started")
            # The seed reached on_restore before on_start.
            assert journal.of(cid) == [("restore", b"seed for 2"), ("start", None)]
        listed = manager.stub.ListContainers(
            manager_pb2.ListContainersRequest(
                label_selector="app=worker", states=[S.LIFECYCLE_STATE_RUNNING]
            ),
            timeout=5,
        )
        assert sorted(c.identity.id for c in listed.containers) == sorted(ids)

        # Down to one: the youngest go first, with reason "scaled down".
        youngest_first = sorted(
            new, key=lambda i: _get(manager.stub, i).create_time.ToNanoseconds(), reverse=True
        )
        down = manager.stub.ScaleContainer(
            manager_pb2.ScaleContainerRequest(container=first_id, replicas=1), timeout=30
        )
        assert [c.identity.id for c in down.containers] == [first_id]
        assert journal.hooks("stop") == [(cid, "scaled down") for cid in youngest_first]
        for cid in new:
            assert _get(manager.stub, cid).state == S.LIFECYCLE_STATE_STOPPED
        assert _get(manager.stub, first_id).state == S.LIFECYCLE_STATE_RUNNING

        # A container that dialled in on its own has no spec to scale from.
        wait_until(lambda: loner.state == pycontainer.State.RUNNING, "loner running")
        with pytest.raises(grpc.RpcError) as info:
            manager.stub.ScaleContainer(
                manager_pb2.ScaleContainerRequest(container="loner", replicas=2), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no spec" in (info.value.details() or "")
    finally:
        loner_host.stop()
        manager.stop()


# -- 8. grace extensions -------------------------------------------------------------------
def test_on_stop_gets_grace_extensions_up_to_the_managers_cap(tmp_path: Path) -> None:
    manager = ManagerHost(str(tmp_path / "state"), max_grace_extension=timedelta(seconds=2))
    granted: list[timedelta] = []
    done: list[str] = []
    box: dict[str, pycontainer.Container] = {}

    def on_stop(reason: str, deadline: float) -> None:
        container = box["c"]
        granted.append(container.request_grace_extension(timedelta(seconds=10), "flushing"))
        granted.append(container.request_grace_extension(timedelta(seconds=5), "still flushing"))
        # Just past the 0.5 s grace (``deadline`` is its end), well within 0.5 + 2 s.
        time.sleep(max(0.0, deadline + 0.2 - time.monotonic()))
        done.append(reason)

    container, host = connected_container(
        manager, "flusher", hooks=pycontainer.Hooks(on_stop=on_stop)
    )
    box["c"] = container
    try:
        wait_until(lambda: container.state == pycontainer.State.RUNNING, "running")
        stopped = manager.stub.StopContainer(
            manager_pb2.StopContainerRequest(container="flusher", grace_period=_seconds(0.5)),
            timeout=30,
        )
        assert stopped.container.state == S.LIFECYCLE_STATE_STOPPED
        assert container.state == pycontainer.State.STOPPED
        assert granted == [timedelta(seconds=2), timedelta(0)]  # the cap is for the whole stop
        assert done == ["requested"]
        grants = [
            e.message
            for e in _events(
                manager.stub,
                lambda seen: sum("grace extension" in e.message for e in seen) == 2,
                container="flusher",
            )
            if "grace extension" in e.message
        ]
        assert grants == [
            "grace extension of 10s asked (flushing): granted 2s",
            "grace extension of 5s asked (still flushing): granted 0s",
        ]
    finally:
        host.stop()
        manager.stop()
