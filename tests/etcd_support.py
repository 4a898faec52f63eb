"""A real etcd cluster for tests: members started on loopback on ephemeral
ports, data under the test's tmp_path, waited on by a real Status call to
every member, and stopped with no process left behind.

etcd is a system tool (Debian's etcd-server, installed by `make system-deps`):
missing, the tests that need it skip locally and fail in CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from support import free_ports, require_tool

from pycontainer._etcdpb import rpc_pb2

# How long a cluster may take to elect a leader and answer on every member.
START_TIMEOUT = 30.0
# Starts on new ports when a member found one of its ports taken.
START_ATTEMPTS = 3
# Small, so that a test that fills it does so quickly (etcd's default is 2 GiB).
TEST_QUOTA_BYTES = 256 << 20


def free_port() -> int:
    """A port the kernel has just handed out (etcd cannot bind port 0: its
    peers' URLs must be known up front)."""
    return free_ports(1)[0]


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class EtcdCluster:
    """``size`` etcd members under ``base``; start(), then ``url`` is
    ``etcd://127.0.0.1:P1,...``."""

    base: Path
    size: int = 3
    members: list[Member] = field(default_factory=list)
    binary: str = "etcd"
    quota_bytes: int = TEST_QUOTA_BYTES

    def __post_init__(self) -> None:
        for i in range(self.size):
            member_dir = self.base / f"m{i}"
            member_dir.mkdir(parents=True, exist_ok=True)
            self.members.append(Member(f"m{i}", 0, 0, member_dir / "data", member_dir / "log"))
        self._new_ports()

    def _new_ports(self) -> None:
        ports = free_ports(2 * self.size)
        for i, member in enumerate(self.members):
            member.client_port, member.peer_port = ports[2 * i], ports[2 * i + 1]
            shutil.rmtree(member.data_dir, ignore_errors=True)
        # A new token too: members of a first try must not count as peers.
        self._token = f"pycontainer-test-{uuid.uuid4().hex[:12]}"

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(m.address for m in self.members)

    @property
    def addresses(self) -> list[str]:
        return [m.address for m in self.members]

    def _command(self, member: Member, state: str) -> list[str]:
        client = f"http://{member.address}"
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            self.binary,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-state={state}",
            f"--initial-cluster-token={self._token}",
            # Old revisions go after 1,000 newer ones: the store's rewrites
            # (every record's state change) never fill the quota.
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
            f"--quota-backend-bytes={self.quota_bytes}",
            "--logger=zap",
            "--log-level=warn",
            f"--log-outputs={member.log}",
        ]

    def start(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            for member in self.members:
                self.start_member(member, state="new", wait=False)
            try:
                self.wait_healthy(self.members)
                return
            except pytest.fail.Exception:
                # Between free_ports() and etcd's bind, another process (the
                # other pytest worker) can take a port: start again on new
                # ones. Any other failure is the test's.
                lost_port = any("address already in use" in self.log_tail(m) for m in self.members)
                if not lost_port or attempt == START_ATTEMPTS:
                    raise
                self.stop()
                for member in self.members:
                    member.log.unlink(missing_ok=True)
                self._new_ports()

    def start_member(self, member: Member, *, state: str = "existing", wait: bool = True) -> None:
        member.process = subprocess.Popen(
            self._command(member, state),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if wait:
            self.wait_healthy([member])

    def wait_healthy(self, members: list[Member]) -> None:
        """Until every member answers Status with a leader known, or fail."""
        deadline = time.monotonic() + START_TIMEOUT
        for member in members:
            with grpc.insecure_channel(member.address) as channel:
                status = channel.unary_unary(
                    "/etcdserverpb.Maintenance/Status",
                    request_serializer=rpc_pb2.StatusRequest.SerializeToString,
                    response_deserializer=rpc_pb2.StatusResponse.FromString,
                )
                while True:
                    # Any of them: without it the others never elect a leader.
                    for exited in (m for m in members if not m.running):
                        pytest.fail(f"etcd member {exited.name} exited: {self.log_tail(exited)}")
                    try:
                        if status(rpc_pb2.StatusRequest(), timeout=1.0).leader:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        pytest.fail(
                            f"etcd member {member.name} not healthy within {START_TIMEOUT} s: "
                            f"{self.log_tail(member)}"
                        )
                    time.sleep(0.05)

    def raft_leader(self) -> Member:
        """The member that leads raft now (asked of a running member)."""
        for member in self.members:
            if not member.running:
                continue
            with grpc.insecure_channel(member.address) as channel:
                status = channel.unary_unary(
                    "/etcdserverpb.Maintenance/Status",
                    request_serializer=rpc_pb2.StatusRequest.SerializeToString,
                    response_deserializer=rpc_pb2.StatusResponse.FromString,
                )
                try:
                    answer = status(rpc_pb2.StatusRequest(), timeout=2.0)
                except grpc.RpcError:
                    continue
            for candidate in self.members:
                with grpc.insecure_channel(candidate.address) as channel:
                    status = channel.unary_unary(
                        "/etcdserverpb.Maintenance/Status",
                        request_serializer=rpc_pb2.StatusRequest.SerializeToString,
                        response_deserializer=rpc_pb2.StatusResponse.FromString,
                    )
                    with contextlib.suppress(grpc.RpcError):
                        own = status(rpc_pb2.StatusRequest(), timeout=2.0)
                        if own.header.member_id == answer.leader:
                            return candidate
        pytest.fail("no etcd member knows a raft leader")

    def log_tail(self, member: Member) -> str:
        with contextlib.suppress(OSError):
            return member.log.read_text()[-2000:]
        return "(no log)"

    def kill(self, member: Member) -> None:
        """kill -9 the member and reap it."""
        if member.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.process.pid, signal.SIGKILL)
            member.process.wait(timeout=10)

    def freeze(self, member: Member) -> None:
        """SIGSTOP the member (it keeps its sockets, answers nothing) and wait
        until every thread of it is stopped."""
        assert member.process is not None
        pid = member.process.pid
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        stat = Path(f"/proc/{pid}/stat")
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline, f"etcd member {member.name} did not stop"
            time.sleep(0.01)

    def thaw(self, member: Member) -> None:
        assert member.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(member.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        # SIGKILL: a member given SIGTERM hands its raft leadership over first
        # (about 7 s in all), and a test cluster's data goes with tmp_path.
        for member in self.members:
            if member.process is not None:
                self.kill(member)


@contextlib.contextmanager
def etcd_cluster(
    base: Path, size: int = 3, quota_bytes: int = TEST_QUOTA_BYTES
) -> Iterator[EtcdCluster]:
    """A started cluster of ``size`` members, stopped on exit."""
    binary = require_tool("etcd")
    cluster = EtcdCluster(base, size, binary=binary, quota_bytes=quota_bytes)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One 3-member cluster for a test module; tests keep apart by their
    keys' prefix (unique_prefix)."""
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/test-{uuid.uuid4().hex[:12]}/"
