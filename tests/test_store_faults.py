"""The state store under real faults: a full tmpfs, a read-only one, and a
write lock another process holds. The manager keeps answering (pauses,
registrations, reads), says what is wrong and where, loses nothing stored,
and writes what waited once the disk is fixed.

Mounting needs root (CI runs as root): skipped locally without it, failed in CI.
"""

from __future__ import annotations

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
from support import IN_CI, Host, ManagerHost, connected_container, wait_container, wait_until

import pycontainer
from pycontainer.manager import StartRefused
from pycontainer.manager._server import ManagerHealth
from pycontainer.manager._store import SQLiteStore
from pycontainer.v1 import container_pb2, manager_pb2

S = container_pb2
STATE_STORE = ManagerHealth.STATE_STORE


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
        if subprocess.run(["umount", str(where)], capture_output=True, timeout=10).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def _fill(directory: Path) -> Path:
    """A file that takes every free byte of ``directory``'s file system."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # Whatever a partial chunk could not take, byte by byte.
    with open(filler, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
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
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = SQLiteStore(db)
    try:
        return {r.id: r.state for r in store.list_containers()}
    finally:
        store.close()


def test_full_state_disk_answers_and_keeps_everything(tmpfs: Path) -> None:
    host = ManagerHost(tmpfs)
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
        host.stub.PauseContainer(manager_pb2.PauseContainerRequest(container=alpha.id), timeout=5)
        wait_container(host.stub, alpha.id, lambda c: c.state == S.LIFECYCLE_STATE_PAUSED, "paused")
        _wait_store(host, ok=False)
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
        assert str(tmpfs) in details and "free space" in details, details
        failing = _store_events(host)
        assert failing and "out of space" in failing[0].message, failing

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
        assert data == b"alpha state" and info.sha256 == before.sha256
    finally:
        store.close()
    # A restarted manager starts from all of it.
    again = ManagerHost(tmpfs)
    try:
        listed = again.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
        assert {c.identity.id for c in listed.containers} == {alpha.id, beta.id}
    finally:
        again.stop()
