"""Managers with their state on etcd (--state etcd://...): real manager
processes on a real 3-member etcd cluster."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from etcd_support import EtcdCluster, free_port, shared_etcd
from support import (
    connected_container,
    free_address,
    running_and_connected,
    wait_container,
    wait_until,
)

from pycontainer.client._leader import LEADER_METADATA
from pycontainer.manager._etcd import EtcdStore
from pycontainer.manager._sealing import KEY_FILE
from pycontainer.v1 import manager_pb2, manager_pb2_grpc

__all__ = ["shared_etcd"]

CLI = [sys.executable, "-m", "pycontainer.cli"]
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def manager_process(
    state_dir: Path, state: str, address: str, *, lead: bool = True
) -> Iterator[tuple[subprocess.Popen[str], manager_pb2_grpc.ManagerStub]]:
    """`pycontainer manager --state STATE` serving on ``address``, and a stub
    to it; with ``lead``, once it leads (a standby until then, which refuses
    every call)."""
    proc = subprocess.Popen(
        [
            *CLI,
            "manager",
            "--insecure",
            "--listen",
            address,
            "--state-dir",
            str(state_dir),
            "--state",
            state,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    channel = grpc.insecure_channel(address)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("manager serving on"), (line, proc.stderr and proc.stderr.read())
        if lead:
            led = proc.stdout.readline()
            assert led.startswith("leading (epoch "), (led, proc.stderr and proc.stderr.read())
        yield proc, manager_pb2_grpc.ManagerStub(channel)
    finally:
        channel.close()
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_a_second_manager_on_the_same_etcd_sees_the_first_ones_container(
    shared_etcd: EtcdCluster, tmp_path: Path
) -> None:
    first_address = free_address()
    with manager_process(tmp_path / "a", shared_etcd.url, first_address) as (first_process, first):

        class _Address:  # what connected_container reads of a ManagerHost
            address = first_address

        container, host = connected_container(_Address(), "on-etcd")  # type: ignore[arg-type]
        try:
            registered = wait_container(first, "on-etcd", running_and_connected, "running")
            # The record reaches etcd (written behind by the first manager).
            reader = EtcdStore(shared_etcd.url)
            try:
                wait_until(
                    lambda: any(r.id == registered.identity.id for r in reader.list_containers()),
                    20,
                    "the record on etcd",
                )
            finally:
                reader.close()
            # Another manager, on another machine's state directory, same etcd:
            # a standby while the first leads (_leadership), the leader once
            # the first is gone, with the first one's record.
            # One sealing key for the managers of one cluster (README).
            (tmp_path / "b").mkdir()
            shutil.copy2(tmp_path / "a" / KEY_FILE, tmp_path / "b" / KEY_FILE)
            with manager_process(tmp_path / "b", shared_etcd.url, free_address(), lead=False) as (
                _,
                second,
            ):
                # Its reads forwarded to the leader, its writes refused naming it.
                listed = second.ListContainers(manager_pb2.ListContainersRequest(), timeout=10)
                assert [c.identity.name for c in listed.containers] == ["on-etcd"]
                with pytest.raises(grpc.RpcError) as refused:
                    second.StopContainer(
                        manager_pb2.StopContainerRequest(container="on-etcd"), timeout=10
                    )
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert f"the leader is at {first_address}" in (refused.value.details() or "")
                first_process.terminate()
                first_process.wait(30)
                seen = _leader_view(second, "on-etcd")
                assert seen.identity.id == registered.identity.id
                assert seen.identity.name == "on-etcd"
        finally:
            container.close()
            host.stop()


def _leader_view(stub: manager_pb2_grpc.ManagerStub, name: str) -> Any:
    """GetContainer of ``name``, once the manager leads (a standby's answers,
    forwarded or refused, name a leader: pycontainer-leader)."""
    box: dict[str, Any] = {}

    def answered() -> bool:
        try:
            got, call = stub.GetContainer.with_call(
                manager_pb2.GetContainerRequest(container=name), timeout=5
            )
            box["c"] = got.container
        except grpc.RpcError as exc:
            # The standby cannot reach the leader it knew, or refuses knowing
            # none; then, for an instant, nothing on its address (the
            # standby's server gone, the leader's not yet up).
            waiting = (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.UNAVAILABLE,
            )
            if exc.code() in waiting:
                return False
            raise
        return LEADER_METADATA not in dict(call.trailing_metadata() or ())

    wait_until(answered, 30, f"{name} on the next leader")
    return box["c"]


def test_a_bad_state_url_is_one_line_saying_what_to_write(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "manager", "--insecure", "--listen", "127.0.0.1:0", "--state", "http://h1:2379"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert "--state" in line
    assert "etcd://HOST:PORT" in line


def test_an_unreachable_etcd_refuses_the_start_naming_it(tmp_path: Path) -> None:
    url = f"etcd://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [*CLI, "manager", "--insecure", "--listen", "127.0.0.1:0", "--state", url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert "cannot open the state store on etcd" in line
    assert url.removeprefix("etcd://") in line
