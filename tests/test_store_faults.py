"""The state store under real faults: a full tmpfs, a read-only one at
start, an ext4 that turns itself read-only under a running manager (a
journal-aborting error, as a failing disk gives), a frozen one (fsfreeze),
and a write lock another process holds. The manager keeps answering
(pauses, registrations, reads), says what is wrong and where, loses nothing
stored, and writes what waited once the disk is fixed.

Mounting needs root and, for ext4, a loop device (CI runs as root): skipped
locally without them, failed in CI.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_support import scrape, value
from support import (
    IN_CI,
    Host,
    ManagerHost,
    connected_container,
    require_tool,
    wait_container,
    wait_until,
)

import pycontainer
from pycontainer.manager import StartRefused
from pycontainer.manager._server import ManagerHealth
from pycontainer.manager._store import SQLiteStore
from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

S = container_pb2
STATE_STORE = ManagerHealth.STATE_STORE


def _unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True, timeout=10).returncode:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        why = f"cannot mount ({' '.join(args)}): {result.stderr.strip()}"
        if IN_CI:
            pytest.fail(f"{why}: CI runs these tests as root")
        pytest.skip(why)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own, unmounted at the end."""
    where = tmp_path / "state"
    where.mkdir()
    _mount("-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(where))
    try:
        yield where
    finally:
        _unmount(where)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB ext4 on a loop device, errors=remount-ro (what a disk error
    turns read-only under a running manager), thawed and unmounted at the end."""
    mkfs = require_tool("mkfs.ext4")
    image, where = tmp_path / "state.img", tmp_path / "state"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run([mkfs, "-q", "-F", str(image)], check=True, capture_output=True, timeout=30)
    where.mkdir()
    _mount("-o", "loop,errors=remount-ro", str(image), str(where))
    try:
        yield where
    finally:
        subprocess.run(["fsfreeze", "-u", str(where)], capture_output=True, timeout=10)
        _unmount(where)


def _fill(directory: Path) -> Path:
    """A file that takes every free byte of ``directory``'s file system."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 1 << 16
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2  # what a smaller write still fits
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return filler


def _store_status(host: ManagerHost) -> int:
    stub = health_pb2_grpc.HealthStub(host.channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=STATE_STORE), timeout=2)
    return int(response.status)


def _wait_store(host: ManagerHost, ok: bool, timeout: float = 10) -> None:
    want = (
        health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    wait_until(
        lambda: _store_status(host) == want, timeout, f"state store {'ok' if ok else 'failing'}"
    )


def _store_events(host: ManagerHost) -> list[manager_pb2.Event]:
    """The retained STATE_STORE events, read through WatchEvents (history only)."""
    stream = host.stub.WatchEvents(
        manager_pb2.WatchEventsRequest(include_history=True, history_only=True), timeout=5
    )
    return [r.event for r in stream if r.event.type == manager_pb2.EVENT_TYPE_STATE_STORE]


def _running(container: pycontainer.Container) -> None:
    wait_until(lambda: container.state == pycontainer.State.RUNNING, 15, "running")


def _stored(db: Path) -> dict[str, int]:
    """Each stored container's state, after an integrity check."""
    with contextlib.closing(sqlite3.connect(db)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = SQLiteStore(db)
    try:
        return {r.id: r.state for r in store.list_containers()}
    finally:
        store.close()


def test_full_state_disk_answers_and_keeps_everything(tmpfs: Path) -> None:
    host = ManagerHost(tmpfs, http_listen="127.0.0.1:0")
    containers: list[tuple[pycontainer.Container, Host]] = []
    try:
        alpha, alpha_host = connected_container(
            host, "alpha", hooks=pycontainer.Hooks(on_checkpoint=lambda: b"alpha state")
        )
        containers.append((alpha, alpha_host))
        _running(alpha)
        before = host.stub.CheckpointContainer(
            manager_pb2.CheckpointContainerRequest(container=alpha.id), timeout=10
        )
        assert host.manager.store_writer.flushed(5)
        filler = _fill(tmpfs)

        # A Pause and a Resume answer (their records wait in memory).
        started = time.monotonic()
        host.stub.PauseContainer(
            manager_pb2.PauseContainerRequest(container=alpha.id, request_id="pause-on-full-disk"),
            timeout=5,
        )
        wait_container(host.stub, alpha.id, lambda c: c.state == S.LIFECYCLE_STATE_PAUSED, "paused")
        _wait_store(host, ok=False)
        # The manager's /metrics says so too.
        assert host.manager.http is not None
        samples = scrape(host.manager.http.url + "metrics")
        assert value(samples, "pycontainer_manager_state_store_healthy") == 0
        assert value(samples, "pycontainer_manager_state_store_write_failures_total") >= 1
        assert value(samples, "pycontainer_manager_state_store_pending_records") >= 1
        # Its outcome is queryable while the disk is full (from memory)...
        operation = host.stub.GetOperation(
            manager_pb2.GetOperationRequest(request_id="pause-on-full-disk"), timeout=2
        ).operation
        assert operation.state == manager_pb2.OPERATION_STATE_SUCCEEDED, operation
        host.stub.ResumeContainer(manager_pb2.ResumeContainerRequest(container=alpha.id), timeout=5)
        wait_container(
            host.stub, alpha.id, lambda c: c.state == S.LIFECYCLE_STATE_RUNNING, "running again"
        )
        # A new container registers, and reads serve.
        beta, beta_host = connected_container(host, "beta")
        containers.append((beta, beta_host))
        wait_container(host.stub, beta.id, lambda c: c.connected, "registered on a full disk")
        _running(beta)
        listed = host.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=2)
        assert {c.identity.id for c in listed.containers} == {alpha.id, beta.id}
        elapsed = time.monotonic() - started
        assert elapsed < 15, elapsed
        # The overall health stays SERVING: the manager serves.
        overall = health_pb2_grpc.HealthStub(host.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
        assert overall.status == health_pb2.HealthCheckResponse.SERVING

        # A checkpoint must be on disk before it is acknowledged: refused,
        # saying where and what to do.
        with pytest.raises(grpc.RpcError) as caught:
            host.stub.CheckpointContainer(
                manager_pb2.CheckpointContainerRequest(container=alpha.id), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = caught.value.details() or ""
        assert str(tmpfs) in details, details
        assert "free space" in details, details
        # So must an applied spec (the desired state a restart reconciles
        # to): refused before anything is launched.
        with pytest.raises(grpc.RpcError) as caught:
            host.stub.ApplySpecs(
                manager_pb2.ApplySpecsRequest(
                    specs=[
                        spec_pb2.ContainerSpec(
                            name="gamma", runtime=spec_pb2.RUNTIME_KIND_IN_PROCESS
                        )
                    ],
                    owner="faults",
                ),
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "spec of gamma not applied" in (caught.value.details() or "")
        listed = host.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=2)
        assert {c.identity.name for c in listed.containers} == {"alpha", "beta"}
        failing = _store_events(host)
        assert failing, "no state-store event"
        assert "out of space" in failing[0].message, failing

        # Space returns: what waited is written, and the store says so.
        filler.unlink()
        _wait_store(host, ok=True)
        assert host.manager.store_writer.flushed(5)
        assert "writes again" in _store_events(host)[-1].message
    finally:
        host.stop()
        for container, container_host in containers:
            container_host.stop()
            container.close()

    stored = _stored(tmpfs / "manager.db")
    assert stored == {alpha.id: S.LIFECYCLE_STATE_RUNNING, beta.id: S.LIFECYCLE_STATE_RUNNING}
    store = SQLiteStore(tmpfs / "manager.db")
    try:
        info, data = store.get_checkpoint(before.checkpoint_id)
        assert data == b"alpha state"
        assert info.sha256 == before.sha256
        assert store.list_applied_specs() == []  # the refused apply left nothing
    finally:
        store.close()
    # A restarted manager starts from all of it.
    again = ManagerHost(tmpfs)
    try:
        listed = again.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
        assert {c.identity.id for c in listed.containers} == {alpha.id, beta.id}
        # ... and after a restart: the journal waited in memory for the space.
        operation = again.stub.GetOperation(
            manager_pb2.GetOperationRequest(request_id="pause-on-full-disk"), timeout=2
        ).operation
        assert operation.state == manager_pb2.OPERATION_STATE_SUCCEEDED, operation
    finally:
        again.stop()


def _pause_resume(host: ManagerHost, container: pycontainer.Container) -> None:
    """A Pause and a Resume, each answered within a bound and seen by GetContainer."""
    host.stub.PauseContainer(manager_pb2.PauseContainerRequest(container=container.id), timeout=3)
    wait_container(
        host.stub, container.id, lambda c: c.state == S.LIFECYCLE_STATE_PAUSED, "paused", 5
    )
    host.stub.ResumeContainer(manager_pb2.ResumeContainerRequest(container=container.id), timeout=3)
    wait_container(
        host.stub, container.id, lambda c: c.state == S.LIFECYCLE_STATE_RUNNING, "running", 5
    )


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pycontainer.cli", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,  # examples/ is the repository's
        env={k: v for k, v in os.environ.items() if k != "PYCONTAINER_TRACES_FILE"},
    )


def test_read_only_state_dir_at_start_is_one_clear_line(tmpfs: Path) -> None:
    # A store an earlier manager left, with a container in it.
    host = ManagerHost(tmpfs)
    alpha, alpha_host = connected_container(host, "alpha")
    try:
        _running(alpha)
        assert host.manager.store_writer.flushed(5)
    finally:
        host.stop()
        alpha_host.stop()
        alpha.close()
    before = _stored(tmpfs / "manager.db")
    assert before == {alpha.id: S.LIFECYCLE_STATE_RUNNING}

    _mount("-o", "remount,ro", str(tmpfs))
    try:
        # The existing store, and a state directory yet to be made.
        for state_dir in (tmpfs, tmpfs / "fresh"):
            with pytest.raises(StartRefused) as caught:
                ManagerHost(state_dir)
            message = str(caught.value)
            assert str(state_dir) in message, message
            assert "make it writable" in message, message
            assert "\n" not in message
            for verb in (
                ("manager",),
                ("up", "--headless", "--duration", "1s", "-f", "examples/demo.yaml"),
            ):
                result = _cli(
                    *verb, "--state-dir", str(state_dir), "--listen", "127.0.0.1:0", "--insecure"
                )
                assert result.returncode == 1, result
                assert "Traceback" not in result.stderr, result.stderr
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1, result.stderr
                assert str(state_dir) in lines[0], lines
                assert "make it writable" in lines[0], lines
    finally:
        _mount("-o", "remount,rw", str(tmpfs))
    assert _stored(tmpfs / "manager.db") == before


def test_read_only_remount_under_a_running_manager(
    ext4: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", str(ext4)], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
    if not trigger.exists():
        why = f"{trigger} is missing: cannot make ext4 fail"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    host = ManagerHost(ext4)
    alpha, alpha_host = connected_container(
        host, "alpha", hooks=pycontainer.Hooks(on_checkpoint=lambda: b"alpha state")
    )
    try:
        _running(alpha)
        before = host.stub.CheckpointContainer(
            manager_pb2.CheckpointContainerRequest(container=alpha.id), timeout=10
        )
        assert host.manager.store_writer.flushed(5)
        # An error ext4 cannot go on from: it aborts its journal and remounts
        # itself read-only, under the open files (the kernel refuses a plain
        # remount,ro while files are open for writing, and a remount,rw after).
        trigger.write_text("pycontainer test")
        with pytest.raises(OSError, match="Read-only file system"):
            (ext4 / "probe").touch()

        _pause_resume(host, alpha)
        _wait_store(host, ok=False)
        listed = host.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=2)
        assert [c.identity.id for c in listed.containers] == [alpha.id]
        with pytest.raises(grpc.RpcError) as caught:
            host.stub.CheckpointContainer(
                manager_pb2.CheckpointContainerRequest(container=alpha.id), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        details = caught.value.details() or ""
        assert str(ext4) in details, details
        assert "make it writable" in details, details
        assert "cannot be written" in _store_events(host)[0].message
    finally:
        started = time.monotonic()
        host.stop()
        stopping = time.monotonic() - started
        alpha_host.stop()
        alpha.close()
    # The stop gave up on what could not be written, in a bounded time, saying so.
    assert stopping < 10, stopping
    assert any("container records not written" in r.getMessage() for r in caplog.records)

    # The operator's repair: unmount, check, mount again. What was stored
    # before the fault is all there, intact.
    image = ext4.parent / "state.img"
    _unmount(ext4)
    fsck = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, timeout=60)
    assert fsck.returncode in (0, 1), fsck  # 1: errors corrected
    _mount("-o", "loop", str(image), str(ext4))
    assert _stored(ext4 / "manager.db") == {alpha.id: S.LIFECYCLE_STATE_RUNNING}
    store = SQLiteStore(ext4 / "manager.db")
    try:
        assert store.get_checkpoint(before.checkpoint_id)[1] == b"alpha state"
    finally:
        store.close()


_HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


def test_a_store_locked_by_another_process_stalls_nothing(tmp_path: Path) -> None:
    host = ManagerHost(tmp_path / "state")
    alpha, alpha_host = connected_container(
        host, "alpha", hooks=pycontainer.Hooks(on_checkpoint=lambda: b"alpha state")
    )
    holder: subprocess.Popen[str] | None = None
    try:
        _running(alpha)
        assert host.manager.store_writer.flushed(5)
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(tmp_path / "state" / "manager.db")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"

        # Each answer within a bound shorter than one wait for the lock
        # (SQLite's busy timeout) on the loop would be, several times over.
        for _ in range(3):
            started = time.monotonic()
            _pause_resume(host, alpha)
            host.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=1)
            assert time.monotonic() - started < 10
        _wait_store(host, ok=False)
        with pytest.raises(grpc.RpcError) as caught:
            host.stub.CheckpointContainer(
                manager_pb2.CheckpointContainerRequest(container=alpha.id), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "locked by another process" in (caught.value.details() or "")

        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(10) == 0
        assert holder.stdout is not None
        holder.stdout.close()
        holder = None
        _wait_store(host, ok=True)
        assert host.manager.store_writer.flushed(5)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(10)
            assert holder.stdout is not None
            holder.stdout.close()
        host.stop()
        alpha_host.stop()
        alpha.close()
    assert _stored(tmp_path / "state" / "manager.db") == {alpha.id: S.LIFECYCLE_STATE_RUNNING}


def test_a_frozen_state_disk_stalls_nothing(ext4: Path) -> None:
    fsfreeze = require_tool("fsfreeze")
    bound = datetime.timedelta(seconds=2)
    host = ManagerHost(ext4, store_timeout=bound)
    alpha, alpha_host = connected_container(
        host, "alpha", hooks=pycontainer.Hooks(on_checkpoint=lambda: b"alpha state")
    )
    frozen = False
    try:
        _running(alpha)
        assert host.manager.store_writer.flushed(5)
        # Every write to the file system waits (in the kernel) until it thaws.
        subprocess.run([fsfreeze, "--freeze", str(ext4)], check=True, timeout=10)
        frozen = True

        for _ in range(3):
            started = time.monotonic()
            _pause_resume(host, alpha)
            host.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=1)
            assert time.monotonic() - started < 10
        # The writer's write has not returned: the store is said to fail...
        _wait_store(host, ok=False)
        assert "did not answer" in _store_events(host)[0].message
        # ...and a checkpoint is answered within the bound, not left to the
        # caller's deadline.
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            host.stub.CheckpointContainer(
                manager_pb2.CheckpointContainerRequest(container=alpha.id), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "did not answer within 2s" in (caught.value.details() or "")
        assert time.monotonic() - started < 6

        subprocess.run([fsfreeze, "--unfreeze", str(ext4)], check=True, timeout=10)
        frozen = False
        _wait_store(host, ok=True)
        assert host.manager.store_writer.flushed(5)
    finally:
        if frozen:
            subprocess.run([fsfreeze, "--unfreeze", str(ext4)], timeout=10)
        host.stop()
        alpha_host.stop()
        alpha.close()
    assert _stored(ext4 / "manager.db") == {alpha.id: S.LIFECYCLE_STATE_RUNNING}
