"""Managers in high availability: three real manager processes on a real
3-member etcd cluster, containers as real processes given every manager's
address. One leads; standbys forward reads to it and refuse writes naming
it; the leader killed, a new one leads within a bounded time and every
container is back on it with nothing lost or run twice; a leader frozen
past its lease steps down and its writes land nowhere; an etcd member
killed, the service carries on."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from etcd_support import EtcdCluster, etcd_cluster
from ha_support import (
    APP,
    CLI,
    ROOT,
    AppProcess,
    ManagerCluster,
    all_back,
    apps,
    manager_cluster,
)
from support import wait_until

from pycontainer.manager._etcd import EtcdStore
from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

S = container_pb2
# The election with a 2 s lease: a successor within the TTL and a campaign
# call, and a reconnect of every container, well within this on a loaded machine.
FAILOVER_BOUND = 30.0


def _started_once(fleet: list[AppProcess]) -> bool:
    return all(app.state().get("calls", {}).get("start") == 1 for app in fleet)


def test_one_leader_and_standbys_naming_it(tmp_path: Path) -> None:
    with (
        etcd_cluster(tmp_path / "etcd") as etcd,
        manager_cluster(tmp_path / "m", etcd.url) as managers,
    ):
        leader = managers.leader()
        for other in managers.managers:
            if other is leader:
                continue
            role, named = other.role()
            assert (role, named) == ("standby", leader.address)
            with pytest.raises(grpc.RpcError) as refused:
                other.stub.StopContainer(manager_pb2.StopContainerRequest(container="x"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert refused.value.details() == (
                f"this manager is a standby; the leader is at {leader.address}"
            )
            # The CLI given a standby alone: its reads answered (forwarded
            # to the leader), its writes made there (the refusal followed).
            done = subprocess.run(
                [*CLI, "--insecure", "--manager", other.address, "ps"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        # A manager with a sealing key of its own is refused its start.
        done = subprocess.run(
            [
                *CLI,
                "manager",
                "--insecure",
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                str(tmp_path / "stranger"),
                "--state",
                etcd.url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert "is not the key the other managers of this etcd cluster seal secrets with" in (
            done.stderr
        )
        # Given every address, the CLI finds the leader (standbys first).
        standbys_first = [m.address for m in managers.managers if m is not leader]
        everyone = ",".join([*standbys_first, leader.address])
        done = subprocess.run(
            [*CLI, "--insecure", "--manager", everyone, "ps"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # Answered (no containers yet).
        assert done.returncode == 0, done.stderr
        assert "standby" not in done.stderr


def test_leader_killed_every_container_back_on_the_next_nothing_lost(tmp_path: Path) -> None:
    count = 3
    with (
        etcd_cluster(tmp_path / "etcd") as etcd,
        manager_cluster(tmp_path / "m", etcd.url) as managers,
        apps(tmp_path, managers.addresses, count) as fleet,
    ):
        names = [app.name for app in fleet]
        leader = managers.leader()
        wait_until(lambda: all_back(leader, names), FAILOVER_BOUND, "every container on the leader")
        wait_until(lambda: _started_once(fleet), 20, "every container started")
        taken = leader.stub.CheckpointContainer(
            manager_pb2.CheckpointContainerRequest(container=names[0]), timeout=20
        )
        assert taken.size_bytes > 0

        killed = time.monotonic()
        managers.kill(leader)
        successor = managers.leader(FAILOVER_BOUND, exclude=leader)
        elected = time.monotonic() - killed
        wait_until(
            lambda: all_back(successor, names), FAILOVER_BOUND, "every container on the successor"
        )
        back = time.monotonic() - killed
        print(f"failover: leader in {elected:.2f} s, {count} containers back in {back:.2f} s")
        assert successor is not leader
        # No command ran twice: each was started once, by the first leader.
        assert _started_once(fleet), [app.state() for app in fleet]
        # The successor commands them (its epoch above the first's: accepted).
        successor.stub.PauseContainer(
            manager_pb2.PauseContainerRequest(container=names[1]), timeout=20
        )
        successor.stub.ResumeContainer(
            manager_pb2.ResumeContainerRequest(container=names[1]), timeout=20
        )
        calls = fleet[1].state()["calls"]
        assert (calls.get("start"), calls.get("pause"), calls.get("resume")) == (1, 1, 1)
        # The checkpoint the first leader took is the successor's to restore.
        store = EtcdStore(etcd.url)
        try:
            latest = store.latest_checkpoint(names[0])
        finally:
            store.close()
        assert latest is not None
        assert latest.id == taken.checkpoint_id


def test_a_leader_frozen_past_its_lease_steps_down_and_writes_nothing(tmp_path: Path) -> None:
    with (
        etcd_cluster(tmp_path / "etcd") as etcd,
        manager_cluster(tmp_path / "m", etcd.url) as managers,
        apps(tmp_path, managers.addresses, 1) as fleet,
    ):
        name = fleet[0].name
        leader = managers.leader()
        wait_until(lambda: all_back(leader, [name]), FAILOVER_BOUND, "the container on the leader")
        assert leader.process is not None
        os.kill(leader.process.pid, signal.SIGSTOP)
        try:
            successor = managers.leader(FAILOVER_BOUND, exclude=leader)
        finally:
            os.kill(leader.process.pid, signal.SIGCONT)
        # Resumed, it finds its lease lapsed and steps down: a standby naming
        # the successor.
        wait_until(
            lambda: leader.role() == ("standby", successor.address),
            FAILOVER_BOUND,
            f"the resumed leader a standby naming {successor.address}: {managers.logs()}",
        )
        wait_until(
            lambda: all_back(successor, [name]), FAILOVER_BOUND, "the container on the successor"
        )
        log = leader.log.read_text()
        [deposed] = _epochs(log)
        assert f"stepped down (epoch {deposed}: " in log
        # The successor's term is a later one: its epoch, on its writes'
        # compares, is one the deposed leader's writes can never pass.
        [current] = _epochs(successor.log.read_text())
        assert current > deposed
        assert successor.role() == ("leader", "")
        # What the deposed one wrote after resuming (its sessions' ends) was
        # refused by the fence, landing nowhere.
        assert "write refused: the fence no longer holds" in log


def _epochs(log: str) -> list[int]:
    return [int(m) for m in re.findall(r"^leading \(epoch (\d+)\)$", log, re.MULTILINE)]


def test_an_etcd_member_killed_the_service_carries_on(tmp_path: Path) -> None:
    with (
        etcd_cluster(tmp_path / "etcd") as etcd,
        # The default TTL, not the other tests' 2 s: the member killed leads
        # raft, and an election (etcd's 1 to 2 s by default) can outlast a
        # 2 s lease's local deadline (the README's "prefer 3-5 s").
        manager_cluster(tmp_path / "m", etcd.url, leader_ttl="4s") as managers,
        apps(tmp_path, managers.addresses, 1) as fleet,
    ):
        name = fleet[0].name
        leader = managers.leader()
        wait_until(lambda: all_back(leader, [name]), FAILOVER_BOUND, "the container on the leader")
        terms = leader.log.read_text().count("leading (epoch")
        _kill_one_member(etcd)
        # The same leader keeps leading (its lease renewed through the others)
        # and takes writes: a checkpoint lands.
        taken = leader.stub.CheckpointContainer(
            manager_pb2.CheckpointContainerRequest(container=name), timeout=30
        )
        assert taken.size_bytes > 0
        assert managers.leader(FAILOVER_BOUND) is leader
        # Leading still in the term it had, not again after stepping down.
        assert leader.log.read_text().count("leading (epoch") == terms, managers.logs()


def _kill_one_member(etcd: EtcdCluster) -> None:
    etcd.kill(etcd.raft_leader())


__all__ = ["ManagerCluster"]


def test_a_container_the_leader_launched_follows_the_next(tmp_path: Path) -> None:
    """The leader gives what it launches every manager's address
    ($PYCONTAINER_MANAGER): killed, its successor gets the container back."""
    with (
        etcd_cluster(tmp_path / "etcd") as etcd,
        manager_cluster(tmp_path / "m", etcd.url) as managers,
    ):
        leader = managers.leader()
        state_file = tmp_path / "launched.json"
        spec = spec_pb2.ContainerSpec(
            name="launched",
            runtime=spec_pb2.RUNTIME_KIND_PROCESS,
            command=["python", APP, "--state-file", str(state_file)],
            working_dir=str(ROOT),
        )
        leader.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=30)
        try:
            wait_until(lambda: all_back(leader, ["launched"]), FAILOVER_BOUND, "it on the leader")
            env = Path(f"/proc/{_pid(state_file)}/environ").read_bytes().split(b"\0")
            given = next(v for v in env if v.startswith(b"PYCONTAINER_MANAGER="))
            assert given.decode().split("=", 1)[1].split(",") == [
                leader.address,
                *(m.address for m in managers.managers if m is not leader),
            ]
            managers.kill(leader)
            successor = managers.leader(FAILOVER_BOUND, exclude=leader)
            wait_until(
                lambda: all_back(successor, ["launched"]), FAILOVER_BOUND, "it on the successor"
            )
            assert json.loads(state_file.read_text())["calls"].get("start") == 1
        finally:
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.kill(_pid(state_file), signal.SIGKILL)


def _pid(state_file: Path) -> int:
    return int(json.loads(state_file.read_text())["pid"])
