"""Operations (AIP-155 request ids): every mutating call has an outcome the
operator can query by its request id, a retry with the same id never acts
twice, a manager killed mid-command reports it INTERRUPTED afterwards, and
the audit trail (events with their actors) survives restarts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support import (
    ManagerHost,
    free_address,
    running_and_connected,
    start_sync_host,
    wait_container,
    wait_until,
)

import pycontainer
from pycontainer.cli import main
from pycontainer.cli._errors import CliError
from pycontainer.cli._operation import once
from pycontainer.client import PLAINTEXT, AsyncManagerClient, CallError, ManagerClient
from pycontainer.manager import Manager, ManagerSettings, StartRefused
from pycontainer.manager._events import SEQUENCE_RESERVATION
from pycontainer.manager._journal import Journal
from pycontainer.manager._operations import Operations
from pycontainer.manager._store import OperationRecord, SQLiteStore
from pycontainer.testing import manager_host
from pycontainer.v1 import container_pb2, manager_pb2, manager_pb2_grpc, spec_pb2

S = container_pb2
E = manager_pb2
REPO = Path(__file__).resolve().parent.parent
RUN_MANAGER = "tests/apps/run_manager.py"
APP = "tests/apps/connected_app.py"


class PauseHook:
    """An on_pause hook that counts its calls and, while ``hold`` is clear, blocks."""

    def __init__(self, *, hold: bool = False) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self._lock = threading.Lock()

    def __call__(self) -> None:
        self.entered.set()
        self.release.wait(60)
        with self._lock:
            self.calls += 1


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerHost]:
    with manager_host(tmp_path / "state") as host:
        yield host


@contextlib.contextmanager
def pausable(
    manager: ManagerHost | str, name: str, hook: PauseHook
) -> Iterator[pycontainer.Container]:
    address = manager if isinstance(manager, str) else manager.address
    container = pycontainer.Container(
        pycontainer.ContainerSettings(name=name), hooks=pycontainer.Hooks(on_pause=hook)
    )
    host = start_sync_host(container)
    container.add_endpoint("management", host.target, kind="management")
    connection = container.connect(address)
    try:
        yield container
    finally:
        hook.release.set()
        connection.close()
        host.stop()


def _operation(stub: manager_pb2_grpc.ManagerStub, request_id: str) -> manager_pb2.Operation:
    return stub.GetOperation(E.GetOperationRequest(request_id=request_id), timeout=5).operation


def _pause(name: str, request_id: str = "") -> manager_pb2.PauseContainerRequest:
    return E.PauseContainerRequest(container=name, request_id=request_id)


# -- once per request id -------------------------------------------------------------------
def test_the_same_request_id_twice_pauses_once_and_answers_the_same(
    manager: ManagerHost,
) -> None:
    hook = PauseHook()
    with pausable(manager, "twice", hook):
        wait_container(manager.stub, "twice", running_and_connected, "running")
        request_id = str(uuid.uuid4())
        first = manager.stub.PauseContainer(_pause("twice", request_id), timeout=30)
        second = manager.stub.PauseContainer(_pause("twice", request_id), timeout=30)
        assert hook.calls == 1
        assert first == second
        assert first.container.state == S.LIFECYCLE_STATE_PAUSED
        # A second pause with a new id is a new call: refused, the container is PAUSED.
        with pytest.raises(grpc.RpcError) as refused:
            manager.stub.PauseContainer(_pause("twice", str(uuid.uuid4())), timeout=30)
        assert refused.value.code() != grpc.StatusCode.OK
        assert hook.calls == 1
        operation = _operation(manager.stub, request_id)
        assert operation.method == "PauseContainer"
        assert operation.target == "twice"
        assert operation.state == E.OPERATION_STATE_SUCCEEDED
        assert operation.status.code == 0
        assert operation.actor.startswith("anonymous (insecure)")
        assert operation.end_time.ToNanoseconds() >= operation.start_time.ToNanoseconds() > 0
        response = E.PauseContainerResponse()
        assert operation.response.Unpack(response)
        assert response == first


def test_a_request_id_used_for_another_call_is_invalid(manager: ManagerHost) -> None:
    hook = PauseHook()
    with pausable(manager, "reused", hook):
        wait_container(manager.stub, "reused", running_and_connected, "running")
        request_id = str(uuid.uuid4())
        manager.stub.PauseContainer(_pause("reused", request_id), timeout=30)
        for other in (
            E.ResumeContainerRequest(container="reused", request_id=request_id),
            E.PauseContainerRequest(container="other", request_id=request_id),
        ):
            call = getattr(manager.stub, type(other).__name__.removesuffix("Request"))
            with pytest.raises(grpc.RpcError) as info:
                call(other, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "a new request needs a new id" in (info.value.details() or "")
        assert _operation(manager.stub, request_id).state == E.OPERATION_STATE_SUCCEEDED
        # A huge target is kept cut (the call itself fails: no such container).
        with pytest.raises(grpc.RpcError):
            manager.stub.PauseContainer(_pause("y" * 100_000, "huge"), timeout=10)
        huge = _operation(manager.stub, "huge")
        assert huge.state == E.OPERATION_STATE_FAILED
        assert huge.target.endswith("… (100000 characters)")
        assert len(huge.target) < 1100
        for bad in ("x" * 65, "not a uuid!"):
            with pytest.raises(grpc.RpcError) as info:
                manager.stub.PauseContainer(_pause("reused", bad), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "request_id" in (info.value.details() or "")


def test_a_request_without_an_id_gets_one_back_in_the_trailing_metadata(
    manager: ManagerHost,
) -> None:
    hook = PauseHook()
    with pausable(manager, "anon", hook):
        wait_container(manager.stub, "anon", running_and_connected, "running")
        _, call = manager.stub.PauseContainer.with_call(_pause("anon"), timeout=30)
        assigned = dict(call.trailing_metadata() or ())["pycontainer-request-id"]
        assert uuid.UUID(str(assigned))
        assert _operation(manager.stub, str(assigned)).state == E.OPERATION_STATE_SUCCEEDED
        # A failed call gets its id back too.
        with pytest.raises(grpc.RpcError) as info:
            manager.stub.PauseContainer(_pause("ghost"), timeout=30)
        metadata = dict(info.value.trailing_metadata() or ())  # type: ignore[attr-defined]
        ghost = _operation(manager.stub, str(metadata["pycontainer-request-id"]))
        assert ghost.state == E.OPERATION_STATE_FAILED
        assert ghost.status.code == grpc.StatusCode.NOT_FOUND.value[0]
        # A failed call is an operation too, with its status.
        with pytest.raises(grpc.RpcError):
            manager.stub.PauseContainer(_pause("anon", "failed-1"), timeout=30)
        failed = _operation(manager.stub, "failed-1")
        assert failed.state == E.OPERATION_STATE_FAILED
        assert failed.status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], failed
        assert failed.status.message
        listed = manager.stub.ListOperations(
            E.ListOperationsRequest(container="anon"), timeout=5
        ).operations
        assert [o.request_id for o in listed] == ["failed-1", str(assigned)]
    with pytest.raises(grpc.RpcError) as info:
        _operation(manager.stub, "never-sent")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_run_and_restart_twice_with_one_id_each_act_once(manager: ManagerHost) -> None:
    spec = spec_pb2.ContainerSpec(
        name="phoenix",
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
        command=["python", APP, "--name", "phoenix"],
        working_dir=str(REPO),
    )
    run = E.RunContainerRequest(spec=spec, request_id=str(uuid.uuid4()))
    [launched] = manager.stub.RunContainer(run, timeout=30).containers
    assert manager.stub.RunContainer(run, timeout=30).containers == [launched]
    listed = manager.stub.ListContainers(E.ListContainersRequest(), timeout=5).containers
    assert [c.identity.id for c in listed] == [launched.identity.id]
    cid = launched.identity.id
    wait_container(manager.stub, cid, running_and_connected, "running", timeout=30)
    restart = E.RestartContainerRequest(container=cid, request_id=str(uuid.uuid4()))
    restart.grace_period.FromSeconds(5)
    first = manager.stub.RestartContainer(restart, timeout=60).container
    second = manager.stub.RestartContainer(restart, timeout=60).container
    assert first.restarts == second.restarts == 1
    assert (
        manager.stub.GetContainer(
            E.GetContainerRequest(container=cid), timeout=5
        ).container.restarts
        == 1
    )
    # A new id is a new restart.
    restart.request_id = str(uuid.uuid4())
    assert manager.stub.RestartContainer(restart, timeout=60).container.restarts == 2
    stop = E.StopContainerRequest(container=cid)
    stop.grace_period.FromSeconds(5)
    manager.stub.StopContainer(stop, timeout=30)


# -- a lost answer ---------------------------------------------------------------------------
def test_a_pause_whose_caller_timed_out_still_succeeds_and_says_so(
    manager: ManagerHost,
) -> None:
    hook = PauseHook(hold=True)
    with pausable(manager, "slow", hook):
        wait_container(manager.stub, "slow", running_and_connected, "running")
        request_id = str(uuid.uuid4())
        with pytest.raises(grpc.RpcError) as info:
            manager.stub.PauseContainer(_pause("slow", request_id), timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert hook.entered.wait(10)
        assert _operation(manager.stub, request_id).state == E.OPERATION_STATE_RUNNING
        # A retry while it runs waits for it (and pauses nothing again).
        waiting = manager.stub.PauseContainer.future(_pause("slow", request_id), timeout=30)
        wait_until(
            lambda: (
                [e.type for e in _history(manager.stub) if e.request_id == request_id].count(
                    E.EVENT_TYPE_REQUESTED
                )
                == 2
            ),
            10,
            "the retry to reach the manager",
        )
        hook.release.set()
        wait_until(
            lambda: _operation(manager.stub, request_id).state != E.OPERATION_STATE_RUNNING,
            20,
            "the pause to end",
        )
        operation = _operation(manager.stub, request_id)
        assert operation.state == E.OPERATION_STATE_SUCCEEDED, operation
        response = E.PauseContainerResponse()
        assert operation.response.Unpack(response)
        assert response.container.state == S.LIFECYCLE_STATE_PAUSED
        # The retry the CLI would make returns that outcome, pausing nothing again.
        assert waiting.result(30) == response
        again = manager.stub.PauseContainer(_pause("slow", request_id), timeout=30)
        assert again == response
        assert hook.calls == 1


def test_the_cli_retries_once_with_the_same_id_then_names_it(manager: ManagerHost) -> None:
    hook = PauseHook(hold=True)
    client: ManagerClient = manager.client
    with pausable(manager, "cli-slow", hook):
        wait_container(manager.stub, "cli-slow", running_and_connected, "running")
        request = _pause("cli-slow", str(uuid.uuid4()))
        short = datetime.timedelta(milliseconds=500)
        attempts: list[str] = []

        def pause(r: manager_pb2.PauseContainerRequest) -> manager_pb2.PauseContainerResponse:
            attempts.append(r.request_id)
            return client.pause_container(r, timeout=short)

        with pytest.raises(CliError) as info:
            once(client, pause, request)
        assert attempts == [request.request_id] * 2  # retried once, with the same id
        assert f"pycontainer operation {request.request_id}" in info.value.message
        hook.release.set()
        wait_until(
            lambda: (
                _operation(manager.stub, request.request_id).state == E.OPERATION_STATE_SUCCEEDED
            ),
            20,
            "the pause to succeed",
        )
        out, err = io.StringIO(), io.StringIO()
        code = main(["operation", request.request_id], client=client, stdout=out, stderr=err)
        assert code == 0, err.getvalue()
        text = out.getvalue()
        for word in ("PauseContainer", "cli-slow", "SUCCEEDED", "anonymous (insecure)", "OK"):
            assert word in text, text
        assert hook.calls == 1
        out = io.StringIO()
        assert main(["operation", request.request_id, "-o", "json"], client=client, stdout=out) == 0
        data = json.loads(out.getvalue())
        assert data["state"] == "OPERATION_STATE_SUCCEEDED"
        assert data["response"]["container"]["state"] == "LIFECYCLE_STATE_PAUSED"
        # A verb sends a fresh id of its own; the new pause is refused (already paused).
        code = main(["pause", "cli-slow"], client=client, stdout=out, stderr=err)
        assert code == 1
        listed = client.list_operations(E.ListOperationsRequest(container="cli-slow"))
        assert len(listed.operations) == 2
        assert listed.operations[0].state == E.OPERATION_STATE_FAILED
        assert listed.operations[0].request_id != request.request_id
        out = io.StringIO()
        code = main(["operation", "--container", "cli-slow"], client=client, stdout=out)
        assert code == 0
        rows = out.getvalue().splitlines()
        assert rows[0].split()[:3] == ["REQUEST", "ID", "METHOD"]
        assert [row.split()[0] for row in rows[1:]] == [o.request_id for o in listed.operations]
        assert "FAILED" in rows[1]
        assert "SUCCEEDED" in rows[2]
        # One that failed exits 1.
        code = main(["operation", listed.operations[0].request_id], client=client, stdout=out)
        assert code == 1
        out = io.StringIO()
        assert main(["operation", "nope"], client=client, stdout=out, stderr=err) == 1
        assert "NOT_FOUND" in err.getvalue()


def test_the_clients_name_the_request_id_of_a_failed_call(manager: ManagerHost) -> None:
    request = E.PauseContainerRequest(container="ghost")
    with pytest.raises(CallError) as info:
        manager.client.pause_container(request)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert request.request_id == ""  # the caller's message is left alone
    assert _operation(manager.stub, info.value.request_id).state == E.OPERATION_STATE_FAILED

    async def aio() -> str:
        async with AsyncManagerClient(manager.address, transport=PLAINTEXT) as client:
            with pytest.raises(CallError) as info:
                await client.pause_container(request)
            operation = await client.get_operation(
                E.GetOperationRequest(request_id=info.value.request_id)
            )
            assert operation.operation.state == E.OPERATION_STATE_FAILED
            with pytest.raises(CallError) as bad:
                await client.list_operations(E.ListOperationsRequest(page_size=-1))
            assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
            return info.value.request_id

    second = asyncio.run(aio())
    assert second != info.value.request_id  # a new call, a new id


# -- a manager that dies -------------------------------------------------------------------
def _start_manager(tmp_path: Path, address: str, state: Path, tag: str) -> subprocess.Popen[bytes]:
    out = open(tmp_path / f"manager-{tag}.out", "wb")  # noqa: SIM115 - closed in _reap
    proc = subprocess.Popen(
        [sys.executable, RUN_MANAGER, "--listen", address, "--state-dir", str(state)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    proc._files = (out,)  # type: ignore[attr-defined]
    return proc


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    for f in getattr(proc, "_files", ()):
        f.close()


def _serving(stub: manager_pb2_grpc.ManagerStub) -> bool:
    try:
        stub.GetVersion(E.GetVersionRequest(), timeout=1)
    except grpc.RpcError:
        return False
    return True


def _history(stub: manager_pb2_grpc.ManagerStub) -> list[manager_pb2.Event]:
    request = E.WatchEventsRequest(history_only=True)
    return [r.event for r in stub.WatchEvents(request, timeout=10)]


def test_a_command_running_when_the_manager_is_killed_is_interrupted_not_lost(
    tmp_path: Path,
) -> None:
    address, state = free_address(), tmp_path / "state"
    managers = [_start_manager(tmp_path, address, state, "first")]
    channel = grpc.insecure_channel(address)
    stub = manager_pb2_grpc.ManagerStub(channel)
    hook = PauseHook(hold=True)
    try:
        wait_until(lambda: _serving(stub), 20, "the first manager serving")
        with pausable(address, "doomed", hook):
            wait_container(stub, "doomed", running_and_connected, "running")
            request_id = str(uuid.uuid4())
            pause = stub.PauseContainer.future(_pause("doomed", request_id), timeout=30)
            assert hook.entered.wait(10)
            assert _operation(stub, request_id).state == E.OPERATION_STATE_RUNNING
            before = _history(stub)
            managers[0].kill()  # SIGKILL: no chance to write anything more
            managers[0].wait(10)
            with pytest.raises(grpc.RpcError):
                pause.result(30)

            managers.append(_start_manager(tmp_path, address, state, "second"))
            wait_until(lambda: _serving(stub), 20, "the second manager serving")
            operation = _operation(stub, request_id)
            assert operation.state == E.OPERATION_STATE_INTERRUPTED, operation
            assert "check the container's state" in operation.status.message
            assert "pycontainer describe doomed" in operation.status.message
            assert operation.actor.startswith("anonymous (insecure)")
            # A retry with the same id is told so; it does not pause again.
            with pytest.raises(grpc.RpcError) as info:
                stub.PauseContainer(_pause("doomed", request_id), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNKNOWN
            assert "check the container's state" in (info.value.details() or "")
            # The audit trail survived: the request, its actor and its id (and
            # the retry's own request after it).
            after = _history(stub)
            old = max(e.sequence for e in before)
            requested = [
                e for e in after if e.type == E.EVENT_TYPE_REQUESTED and e.request_id == request_id
            ]
            assert [e.sequence <= old for e in requested] == [True, False], requested
            assert requested[0] in before
            assert requested[0].actor == operation.actor
            # Numbers go on after the dead manager's reservation: never one of
            # its own again (its last events may not have been written).
            new = [e for e in after if e not in before]
            assert new
            assert min(e.sequence for e in new) > SEQUENCE_RESERVATION > old
            hook.release.set()
            assert hook.calls <= 1  # the first pause's hook, never a second
    finally:
        channel.close()
        for proc in managers:
            _reap(proc)


def test_events_with_actors_survive_a_restart_in_watch_events_history(tmp_path: Path) -> None:
    state = tmp_path / "state"
    hook = PauseHook()
    with manager_host(state) as first:
        with pausable(first, "kept", hook):
            wait_container(first.stub, "kept", running_and_connected, "running")
            first.stub.PauseContainer(_pause("kept", "kept-pause"), timeout=30)
        before = _history(first.stub)
    with manager_host(state) as second:
        after = _history(second.stub)
        # Every event of the first manager is in the second's history (fewer
        # than it retains), in order, before any of its own.
        assert after[: len(before)] == before
        audit = next(e for e in after if e.request_id == "kept-pause")
        assert audit.type == E.EVENT_TYPE_REQUESTED
        assert audit.actor.startswith("anonymous (insecure)")
        assert "PauseContainer 'kept'" in audit.message
        assert _operation(second.stub, "kept-pause").state == E.OPERATION_STATE_SUCCEEDED
        response = E.PauseContainerResponse()
        assert _operation(second.stub, "kept-pause").response.Unpack(response)
        assert response.container.identity.name == "kept"
        # New events number on from the old ones, without a gap after a clean stop.
        numbers = [e.sequence for e in after]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        with pytest.raises(grpc.RpcError):
            second.stub.PauseContainer(_pause("nobody", "later"), timeout=10)
        newest = _history(second.stub)[-1]
        assert newest.request_id == "later"
        assert newest.sequence > max(e.sequence for e in before)


def test_a_manager_refused_the_state_directory_interrupts_nothing(
    manager: ManagerHost, tmp_path: Path
) -> None:
    hook = PauseHook(hold=True)
    with pausable(manager, "held", hook):
        wait_container(manager.stub, "held", running_and_connected, "running")
        request_id = str(uuid.uuid4())
        pause = manager.stub.PauseContainer.future(_pause("held", request_id), timeout=30)
        assert hook.entered.wait(10)

        async def second() -> None:
            settings = ManagerSettings(
                listen="127.0.0.1:0", state_dir=tmp_path / "state", insecure=True
            )
            other = Manager(settings)
            with pytest.raises(StartRefused):
                await other.start()
            await asyncio.to_thread(other.journal.close)
            other.store.close()

        asyncio.run(second())
        reader = SQLiteStore(tmp_path / "state" / "manager.db")
        try:
            stored = reader.get_operation(request_id)
        finally:
            reader.close()
        assert stored is not None
        assert stored.state == E.OPERATION_STATE_RUNNING  # not INTERRUPTED by the refused one
        hook.release.set()
        pause.result(30)
        assert _operation(manager.stub, request_id).state == E.OPERATION_STATE_SUCCEEDED


# -- bounds ----------------------------------------------------------------------------------
def _record(n: int, state: int = E.OPERATION_STATE_SUCCEEDED) -> OperationRecord:
    return OperationRecord(
        request_id=f"op-{n}",
        method="PauseContainer",
        target="c",
        actor="a",
        fingerprint="f",
        state=state,
        start_time=float(n),
    )


def test_the_store_keeps_the_newest_operations_and_events(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "manager.db")
    try:
        store.open_journal()
        for n in range(30):
            event = E.Event(sequence=n + 1, message=f"e{n}")
            store.write_journal(
                [_record(n)],
                [(event.sequence, event.SerializeToString())],
                operations_kept=10,
                events_kept=5,
            )
        kept = store.list_operations(100)
        assert [o.request_id for o in kept] == [f"op-{n}" for n in range(20, 30)]
        events = store.recent_events(100)
        assert [sequence for sequence, _ in events] == [26, 27, 28, 29, 30]
        assert store.last_event_sequence() == 30
        # A reservation raises it; what is written after raises it further.
        store.write_journal([], [], operations_kept=10, events_kept=5, event_sequence=1000)
        assert store.last_event_sequence() == 1000
        late = E.Event(sequence=1001)
        store.write_journal(
            [],
            [(1001, late.SerializeToString())],
            operations_kept=10,
            events_kept=5,
            event_sequence=40,  # a clean stop's last, set before the batch's own
        )
        assert store.last_event_sequence() == 1001
        # Replacing an operation keeps one row (its place and its fields).
        store.write_journal(
            [_record(25, E.OPERATION_STATE_FAILED)], [], operations_kept=10, events_kept=5
        )
        assert len(store.list_operations(100)) == 10
        got = store.get_operation("op-25")
        assert got is not None
        assert got.state == E.OPERATION_STATE_FAILED
    finally:
        store.close()


def test_operations_in_memory_are_bounded_and_a_restart_interrupts_the_running(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "manager.db")

    async def scenario() -> None:
        journal = Journal(store, operations_kept=3)
        operations = Operations(journal, kept=3)
        operations.open()
        for n in range(5):
            response = await operations.run(
                request_id=f"r{n}",
                method="GetVersion",
                request=E.PauseContainerRequest(container=str(n)),
                target=str(n),
                actor="tester",
                action=lambda n=n: _version(n),
                response_type=E.GetVersionResponse,
            )
            assert response.version == str(n)
        with pytest.raises(Exception, match="no operation 'r0'"):
            await operations.get("r0")
        assert (await operations.get("r4")).state == E.OPERATION_STATE_SUCCEEDED
        assert [o.request_id for o in operations.list("", 0)] == ["r4", "r3", "r2"]
        await asyncio.to_thread(journal.close)
        assert [o.request_id for o in store.list_operations(100)] == ["r2", "r3", "r4"]
        # One left RUNNING (a manager that died mid-call): the next one interrupts it.
        store.write_journal(
            [_record(9, E.OPERATION_STATE_RUNNING)], [], operations_kept=3, events_kept=5
        )
        reopened = Operations(Journal(store, operations_kept=3), kept=3)
        reopened.open()
        interrupted = await reopened.get("op-9")
        assert interrupted.state == E.OPERATION_STATE_INTERRUPTED
        assert "check the container's state" in interrupted.status.message
        await reopened.close()
        stored = store.get_operation("op-9")
        assert stored is not None
        assert stored.state == E.OPERATION_STATE_INTERRUPTED

    try:
        asyncio.run(scenario())
    finally:
        store.close()


async def _version(n: int) -> manager_pb2.GetVersionResponse:
    return E.GetVersionResponse(version=str(n))


def test_the_operation_and_event_tables_clip_a_long_target_and_say_the_state_plainly(
    manager: ManagerHost,
) -> None:
    """A call naming a 250-character container (refused: there is none) is one row
    whose target is clipped, so the other columns stay readable; states read
    FAILED, not OPERATION_STATE_FAILED."""
    client: ManagerClient = manager.client
    long_name = "x" * 250
    err = io.StringIO()
    assert main(["pause", long_name], client=client, stdout=io.StringIO(), stderr=err) == 1
    out = io.StringIO()
    assert main(["operation"], client=client, stdout=out) == 0
    header, row = out.getvalue().splitlines()[:2]
    assert header.split() == ["REQUEST", "ID", "METHOD", "TARGET", "STATE", "AGE", "ACTOR"]
    assert "x" * 47 + "…" in row
    assert long_name not in row
    assert row.split()[1:5:2] == ["PauseContainer", "FAILED"]
    assert "anonymous (insecure)" in row
    out = io.StringIO()
    [listed] = client.list_operations(manager_pb2.ListOperationsRequest(page_size=1)).operations
    assert main(["operation", listed.request_id], client=client, stdout=out) == 1
    assert "OPERATION_STATE_" not in out.getvalue()
    assert "FAILED" in out.getvalue()
    out = io.StringIO()
    assert main(["events"], client=client, stdout=out) == 0
    [requested] = [line for line in out.getvalue().splitlines() if " REQUESTED " in line]
    assert requested.split()[2] == "x" * 47 + "…"
