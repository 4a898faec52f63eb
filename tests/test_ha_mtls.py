"""Managers in high availability with mutual TLS: three real managers on a
real 3-member etcd cluster sharing one external CA (--ca-cert/--ca-key) and
one sealing key, containers holding certificates of that CA. The leader
killed (-9), every container is back on the next one over mutual TLS; the
CLI given every address and a client certificate reaches the leader; a
standby checks the caller's roles itself before it forwards a read."""

from __future__ import annotations

import datetime
import os
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from etcd_support import etcd_cluster
from ha_support import CLI, ROOT, ManagerCluster, all_back, apps
from security_support import issue_files
from support import free_address, wait_until

from pycontainer._tls_env import BOOTSTRAP_TOKEN_ENV, CA_PIN_ENV, JOIN_ENV, TLS_DIR_ENV
from pycontainer.client import Transport
from pycontainer.security import MANAGER, CertificateAuthority, container, user
from pycontainer.units import duration_to_proto
from pycontainer.v1 import container_pb2, manager_pb2, manager_pb2_grpc

S = container_pb2
# A 2 s lease, its successor's campaign and every container's reconnect
# (with TLS handshakes) on a loaded machine: well within this.
FAILOVER_BOUND = 30.0


def test_leader_killed_containers_back_over_mtls_and_the_cli_finds_the_next(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.open(tmp_path / "ca")
    admin = issue_files(ca, user("admin"), tmp_path / "admin").leaf.parent
    stranger = issue_files(ca, user("stranger"), tmp_path / "stranger").leaf.parent

    def container_tls(name: str) -> dict[str, str]:
        files = issue_files(ca, container(name), tmp_path / f"{name}-tls")
        return {TLS_DIR_ENV: str(files.leaf.parent), "PYCONTAINER_CONTAINER_ID": name}

    with etcd_cluster(tmp_path / "etcd") as etcd:
        managers = _sharing_the_ca(tmp_path, etcd.url, admin)
        try:
            managers.start_all()
            with apps(
                tmp_path, managers.addresses, 2, prefix="tls", env_for=container_tls
            ) as fleet:
                names = [app.name for app in fleet]
                leader = managers.leader()
                wait_until(
                    lambda: all_back(leader, names, over_tls=True),
                    FAILOVER_BOUND,
                    f"every container on the leader over mTLS: {managers.logs()}",
                )
                # A standby authorises as the leader does: a caller without
                # the read role is refused there, never forwarded.
                standby = next(m for m in managers.managers if m is not leader)
                with (
                    Transport(stranger, MANAGER).channel(standby.address) as channel,
                    pytest.raises(grpc.RpcError) as denied,
                ):
                    manager_pb2_grpc.ManagerStub(channel).ListContainers(
                        manager_pb2.ListContainersRequest(), timeout=10
                    )
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "needs the read role" in (denied.value.details() or "")
                # The admin's read through the standby: the leader's answer.
                listed = standby.stub.ListContainers(
                    manager_pb2.ListContainersRequest(), timeout=10
                )
                assert sorted(c.identity.name for c in listed.containers) == names

                killed = time.monotonic()
                managers.kill(leader)
                successor = managers.leader(FAILOVER_BOUND, exclude=leader)
                wait_until(
                    lambda: all_back(successor, names, over_tls=True),
                    FAILOVER_BOUND,
                    f"every container on the successor over mTLS: {managers.logs()}",
                )
                print(
                    f"mTLS failover: {len(names)} containers back in "
                    f"{time.monotonic() - killed:.2f} s"
                )
                assert all(app.state().get("calls", {}).get("start") == 1 for app in fleet)
                # The CLI, the dead leader's address first, with a client
                # certificate: it finds the successor, reads and writes there.
                everyone = ",".join(
                    [leader.address, *(m.address for m in managers.managers if m is not leader)]
                )
                for verb in (["ps"], ["pause", names[0]], ["resume", names[0]]):
                    done = subprocess.run(
                        [*CLI, "--cert-dir", str(admin), "--manager", everyone, *verb],
                        capture_output=True,
                        text=True,
                        timeout=60,
                        cwd=ROOT,
                        env=_secure_env(),
                    )
                    assert done.returncode == 0, (verb, done.stderr)
                    if verb == ["ps"]:
                        assert all(name in done.stdout for name in names), done.stdout
                calls = fleet[0].state()["calls"]
                assert (calls.get("pause"), calls.get("resume")) == (1, 1)
        finally:
            managers.stop()


def _secure_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYCONTAINER_INSECURE"}


def test_a_token_made_on_the_leader_joins_a_container_at_its_successor(tmp_path: Path) -> None:
    """Bootstrap tokens live in etcd with the rest of the state: one made on
    the leader is redeemed by its successor after a kill -9. The container
    is given every manager's join address, the dead leader's first (and a
    standby's, which serves none): it joins at the first that answers."""
    ca = CertificateAuthority.open(tmp_path / "ca")
    admin = issue_files(ca, user("admin"), tmp_path / "admin").leaf.parent
    with etcd_cluster(tmp_path / "etcd") as etcd:
        managers = _sharing_the_ca(tmp_path, etcd.url, admin)
        try:
            joins = {m.address: free_address() for m in managers.managers}
            for m in managers.managers:
                m.args = ["--join-listen", joins[m.address]]
            managers.start_all()
            leader = managers.leader()
            made = manager_pb2_grpc.ManagerStub(leader.channel).CreateBootstrapToken(
                manager_pb2.CreateBootstrapTokenRequest(
                    container_id="tok-0",
                    uses=1,
                    ttl=duration_to_proto(datetime.timedelta(minutes=10)),
                ),
                timeout=10,
            )
            assert made.join_address == joins[leader.address]
            managers.kill(leader)
            successor = managers.leader(FAILOVER_BOUND, exclude=leader)
            every_join = ",".join(
                [
                    joins[leader.address],
                    *(joins[m.address] for m in managers.managers if m is not leader),
                ]
            )

            def joining(name: str) -> dict[str, str]:
                return {
                    BOOTSTRAP_TOKEN_ENV: made.token,
                    JOIN_ENV: every_join,
                    CA_PIN_ENV: made.ca_pin,
                    TLS_DIR_ENV: str(tmp_path / f"{name}-tls"),
                    "PYCONTAINER_CONTAINER_ID": name,
                }

            with apps(tmp_path, managers.addresses, 1, prefix="tok", env_for=joining):
                wait_until(
                    lambda: all_back(successor, ["tok-0"], over_tls=True),
                    FAILOVER_BOUND,
                    f"the joined container on the successor: {managers.logs()}",
                )
            [token] = (
                manager_pb2_grpc.ManagerStub(successor.channel)
                .ListBootstrapTokens(manager_pb2.ListBootstrapTokensRequest(), timeout=10)
                .tokens
            )
            assert token.token_id == made.token_id
            assert token.uses_left == 0
            tried = (tmp_path / "tok-0.log").read_text()
            assert f"cannot reach the join server at {joins[leader.address]}" in tried
            assert "joined as spiffe://pycontainer.local/container/tok-0" in tried
        finally:
            managers.stop()


def _sharing_the_ca(tmp_path: Path, etcd_url: str, admin: Path) -> ManagerCluster:
    """Managers sharing the external CA under ``tmp_path/ca``; the test's
    stubs dial with ``admin``'s certificate."""
    ca = tmp_path / "ca"
    return ManagerCluster(
        tmp_path / "m",
        etcd_url,
        cert_dir=admin,
        extra_args=["--ca-cert", str(ca / "ca.pem"), "--ca-key", str(ca / "ca-key.pem")],
    )
