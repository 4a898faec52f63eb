"""Managers in high availability for tests: real `pycontainer manager`
processes on one etcd cluster (tests/etcd_support.py), each on its own
loopback address and state directory, and containers as real processes
(tests/apps/connected_app.py) given every manager's address."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from support import free_address, wait_until

from pycontainer._tls_env import INSECURE_ENV
from pycontainer.client import Transport
from pycontainer.manager._leadership import LEADER_METADATA
from pycontainer.manager._sealing import KEY_FILE
from pycontainer.security import MANAGER
from pycontainer.v1 import container_pb2, manager_pb2, manager_pb2_grpc

CLI = [sys.executable, "-m", "pycontainer.cli"]
ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "tests" / "apps" / "connected_app.py")


@dataclass
class ManagerProcess:
    address: str
    state_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None
    # More of `pycontainer manager`'s options, for this manager alone.
    args: list[str] = field(default_factory=list)

    @property
    def stub(self) -> manager_pb2_grpc.ManagerStub:
        assert self.channel is not None
        return manager_pb2_grpc.ManagerStub(self.channel)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def role(self) -> tuple[str, str]:
        """("leader", "") when it answers a read itself, ("standby", LEADER)
        when its answer (forwarded, or a refusal) names a leader, ("down", "")
        when it does not answer."""
        try:
            _, call = self.stub.ListContainers.with_call(
                manager_pb2.ListContainersRequest(), timeout=2
            )
            metadata: Any = call.trailing_metadata() or ()
        except grpc.RpcError as exc:
            metadata = exc.trailing_metadata() or ()
            named = dict(metadata).get(LEADER_METADATA)
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return "standby", str(named or "")
            return "down", ""
        named = dict(metadata).get(LEADER_METADATA)
        return ("standby", str(named)) if named is not None else ("leader", "")


@dataclass
class ManagerCluster:
    """``size`` managers on the etcd cluster of ``etcd_url``."""

    base: Path
    etcd_url: str
    size: int = 3
    leader_ttl: str = "2s"
    # More of `pycontainer manager`'s options, for every manager.
    extra_args: list[str] = field(default_factory=list)
    managers: list[ManagerProcess] = field(default_factory=list)
    # Mutual TLS instead of --insecure: the test's stubs dial with the
    # client certificate in this directory (one of the managers' CA).
    cert_dir: Path | None = None

    def __post_init__(self) -> None:
        key = os.urandom(32)
        for i in range(self.size):
            d = self.base / f"manager{i}"
            d.mkdir(parents=True, exist_ok=True)
            self.managers.append(ManagerProcess(free_address(), d / "state", d / "log"))
            share_sealing_key(key, d / "state")

    @property
    def addresses(self) -> str:
        return ",".join(m.address for m in self.managers)

    def start(self, manager: ManagerProcess) -> None:
        peers = [a for m in self.managers if (a := m.address) != manager.address]
        insecure = ["--insecure"] if self.cert_dir is None else []
        command = [
            *CLI,
            "manager",
            *insecure,
            "--listen",
            manager.address,
            "--state-dir",
            str(manager.state_dir),
            "--state",
            self.etcd_url,
            "--leader-ttl",
            self.leader_ttl,
        ]
        for peer in peers:
            command += ["--peer", peer]
        command += self.extra_args + manager.args
        env = dict(os.environ)
        if self.cert_dir is not None:
            env.pop(INSECURE_ENV, None)  # the suite's default (conftest.py)
        with manager.log.open("ab") as log:
            manager.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
                env=env,
            )
        if manager.channel is None:
            if self.cert_dir is None:
                manager.channel = grpc.insecure_channel(manager.address)
            else:
                manager.channel = Transport(self.cert_dir, MANAGER).channel(manager.address)

    def start_all(self) -> None:
        for manager in self.managers:
            self.start(manager)

    def leader(
        self, timeout: float = 30.0, exclude: ManagerProcess | None = None
    ) -> ManagerProcess:
        """The one manager that leads (every other running one serving, a
        standby naming it), waited for."""
        deadline = time.monotonic() + timeout
        seen: list[tuple[str, str]] = []
        while time.monotonic() < deadline:
            live = [m for m in self.managers if m.running and m is not exclude]
            seen = [m.role() for m in live]
            leaders = [m for m, (role, _) in zip(live, seen, strict=True) if role == "leader"]
            if len(leaders) == 1 and all(role != "down" for role, _ in seen):
                named = {n for role, n in seen if role == "standby"}
                if named <= {leaders[0].address}:
                    return leaders[0]
            time.sleep(0.05)
        raise AssertionError(f"no single leader within {timeout} s: {seen}; {self.logs()}")

    def logs(self) -> str:
        out = []
        for m in self.managers:
            with contextlib.suppress(OSError):
                out.append(f"--- {m.address}\n{m.log.read_text()[-3000:]}")
        return "\n".join(out)

    def kill(self, manager: ManagerProcess) -> None:
        if manager.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(manager.process.pid, signal.SIGKILL)
            manager.process.wait(10)

    def stop(self) -> None:
        for m in self.managers:
            if m.process is not None and m.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.process.pid, signal.SIGCONT)
                m.process.terminate()
        for m in self.managers:
            if m.process is not None:
                try:
                    m.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.kill(m)
            if m.channel is not None:
                m.channel.close()


def share_sealing_key(key: bytes, state_dir: Path) -> None:
    """The managers of one cluster seal secrets with one key (README)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / KEY_FILE
    path.write_bytes(key)
    path.chmod(0o600)


@contextlib.contextmanager
def manager_cluster(
    base: Path, etcd_url: str, size: int = 3, leader_ttl: str = "2s"
) -> Iterator[ManagerCluster]:
    cluster = ManagerCluster(base, etcd_url, size, leader_ttl)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class AppProcess:
    name: str
    state_file: Path
    process: subprocess.Popen[bytes]

    def state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data


@contextlib.contextmanager
def apps(
    base: Path,
    managers: str,
    count: int,
    prefix: str = "ha",
    env_for: Callable[[str], dict[str, str]] | None = None,
) -> Iterator[list[AppProcess]]:
    """``count`` connected_app.py processes given every manager's address
    (and ``env_for(name)``'s environment, mutual TLS's say)."""
    started: list[AppProcess] = []
    try:
        for i in range(count):
            name = f"{prefix}-{i}"
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            if env_for is not None:
                env.pop(INSECURE_ENV, None)
                env.update(env_for(name))
            state_file = base / f"{name}.json"
            with (base / f"{name}.log").open("ab") as log:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        APP,
                        "--name",
                        name,
                        "--manager",
                        managers,
                        "--state-file",
                        str(state_file),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=ROOT,
                    start_new_session=True,
                )
            started.append(AppProcess(name, state_file, process))
        yield started
    finally:
        for app in started:
            if app.process.poll() is None:
                app.process.kill()
        for app in started:
            app.process.wait(10)


def all_back(leader: ManagerProcess, names: list[str], *, over_tls: bool = False) -> bool:
    """Whether every container of ``names`` is RUNNING and connected on
    ``leader`` (``over_tls``: its Management endpoints serving TLS too)."""
    try:
        listed = leader.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
    except grpc.RpcError:
        return False
    on = {
        c.identity.name
        for c in listed.containers
        if c.state == container_pb2.LIFECYCLE_STATE_RUNNING
        and c.connected
        and (
            not over_tls
            or all(
                e.tls
                for e in c.identity.endpoints
                if e.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT
            )
        )
    }
    return set(names) <= on


def serving_on_a_free_port(
    managers: ManagerCluster,
    manager: ManagerProcess,
    ports: dict[str, str],
    flag: str,
    serving: Callable[[], bool],
) -> None:
    """Wait until ``manager`` is ``serving``. A free port picked for ``flag``
    (its address in ``ports``, by the manager's address) can be taken by
    another process (the suite's other worker) before the manager binds it:
    then it is started again on another, a few times."""
    for _ in range(3):
        wait_until(
            lambda: serving() or not manager.running,
            30,
            f"manager {manager.address} serving with {flag} {ports[manager.address]}",
        )
        if manager.running:
            return
        if flag not in manager.log.read_text():
            raise AssertionError(f"manager {manager.address} ended: {manager.log.read_text()}")
        ports[manager.address] = free_address()
        manager.args = [flag, ports[manager.address]]
        manager.log.write_text("")
        managers.start(manager)
    raise AssertionError(f"manager {manager.address} never got a free {flag} port")


def start_each_on_a_free_port(
    managers: ManagerCluster, flag: str, serving: Callable[[ManagerProcess, str], bool]
) -> dict[str, str]:
    """Start every manager of ``managers`` with ``flag`` on a free address of
    its own and wait until each is ``serving`` (given the manager and that
    address), moving one whose port was taken (serving_on_a_free_port); the
    addresses by manager address."""
    ports = {}
    for m in managers.managers:
        ports[m.address] = free_address()
        m.args = [flag, ports[m.address]]
    managers.start_all()
    for m in managers.managers:
        serving_on_a_free_port(managers, m, ports, flag, lambda m=m: serving(m, ports[m.address]))
    return ports
