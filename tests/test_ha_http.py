"""The HTTP face of managers in high availability (real managers on a real
etcd, each given --http-listen): a standby serves its probes and a /metrics
saying it does not lead, and 503 naming the leader for the rest; the
leader's face moves with the leadership (a step-down, a kill -9), each on
its manager's one --http-listen."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcd_support import etcd_cluster
from ha_support import ManagerCluster, ManagerProcess, start_each_on_a_free_port
from prometheus_client.parser import text_string_to_metric_families
from support import wait_until

from pycontainer.manager._exclusive import StartRefused
from pycontainer.manager._settings import ManagerSettings
from pycontainer.manager._standby import Standby, standby_message
from pycontainer.manager._trust import Trust


@dataclass
class _Cluster:
    managers: ManagerCluster
    http: dict[str, str]  # manager address -> its --http-listen


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Cluster]:
    base = tmp_path_factory.mktemp("ha-http")
    with etcd_cluster(base / "etcd", size=1) as etcd:
        managers = ManagerCluster(base / "m", etcd.url)
        try:
            http = start_each_on_a_free_port(
                managers, "--http-listen", lambda m, address: _status(address, "/livez") == 200
            )
            yield _Cluster(managers, http)
        finally:
            managers.stop()


def _get(address: str, path: str) -> tuple[int, dict[str, str], str]:
    """GET http://ADDRESS/PATH: status, headers and body (an error status too)."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read().decode()


def _status(address: str, path: str) -> int:
    """The status of GET ``path``; 0 when nothing answers."""
    try:
        return _get(address, path)[0]
    except OSError:
        return 0


def _leader_gauge(address: str) -> float | None:
    """pycontainer_manager_leader on ADDRESS's /metrics (None when it is missing)."""
    status, _, body = _get(address, "/metrics")
    assert status == 200, body
    for family in text_string_to_metric_families(body):
        if family.name == "pycontainer_manager_leader":
            [sample] = family.samples
            return sample.value
    return None


def test_a_standby_serves_its_probes_and_metrics_and_names_the_leader(
    cluster: _Cluster,
) -> None:
    leader = cluster.managers.leader()
    standbys = [m for m in cluster.managers.managers if m is not leader]
    assert _leader_gauge(cluster.http[leader.address]) == 1
    for standby in standbys:
        http = cluster.http[standby.address]
        # Live and ready, as its grpc.health.v1 says (StandbyHealth).
        assert _get(http, "/livez")[0] == 200
        assert _get(http, "/readyz")[:3:2] == (200, "ok\n")
        status, _, body = _get(http, "/healthz?verbose")
        assert status == 200
        assert f"[+]standby (the leader is at {leader.address}) ok" in body.splitlines()
        assert _get(http, "/readyz?bogus=1")[0] == 400
        assert _leader_gauge(http) == 0
        # The leader's routes: 503 naming its gRPC address, try again later.
        for path in ("/metrics/containers", "/containers/x/metrics", "/ui/", "/ui/api/containers"):
            status, headers, body = _get(http, path)
            assert (status, body) == (503, standby_message(leader.address) + "\n"), path
            assert int(headers["Retry-After"]) >= 1
    # The leader's face serves them.
    assert _get(cluster.http[leader.address], "/metrics/containers")[0] == 200


def test_the_leaders_face_follows_the_leadership_through_a_step_down_and_a_kill(
    cluster: _Cluster,
) -> None:
    managers = cluster.managers
    # A leader stopped past its lease steps down once resumed: its Manager's
    # face stops, a standby's binds the same port again.
    deposed = managers.leader()
    assert deposed.process is not None
    os.kill(deposed.process.pid, signal.SIGSTOP)
    try:
        successor = managers.leader(exclude=deposed)
    finally:
        os.kill(deposed.process.pid, signal.SIGCONT)
    _wait_for_gauge(cluster, successor, 1)
    _wait_for_gauge(cluster, deposed, 0)
    # kill -9: the next leader's standby face stops, its Manager's binds.
    managers.kill(successor)
    leader = managers.leader(exclude=successor)
    _wait_for_gauge(cluster, leader, 1)
    http = cluster.http[leader.address]
    assert _get(http, "/metrics/containers")[0] == 200
    assert _get(http, "/readyz")[0] == 200
    # The standby left names its new leader.
    [standby] = [m for m in managers.managers if m.running and m is not leader]
    wait_until(
        lambda: (
            _get(cluster.http[standby.address], "/metrics/containers")[2]
            == standby_message(leader.address) + "\n"
        ),
        10,
        "the standby naming the new leader",
    )
    assert _leader_gauge(cluster.http[standby.address]) == 0


def _wait_for_gauge(cluster: _Cluster, manager: ManagerProcess, value: int) -> None:
    """Until ``manager``'s HTTP face says pycontainer_manager_leader ``value``
    (between two faces its port answers nothing for a moment)."""
    http = cluster.http[manager.address]

    def says() -> bool:
        try:
            return _leader_gauge(http) == value
        except OSError:
            return False

    wait_until(says, 30, f"{http} saying pycontainer_manager_leader {value}")


def test_a_standby_refuses_an_http_listen_in_use(tmp_path: Path) -> None:
    """Refused as the leader's face is (one line naming --http-listen), when
    the standby is made: before anything of it serves."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        settings = ManagerSettings(
            state_dir=str(tmp_path), listen="127.0.0.1:0", insecure=True, http_listen=address
        )

        async def main() -> None:
            trust = Trust(settings)
            trust.open()
            with pytest.raises(StartRefused) as refused:
                Standby(settings, trust)
            assert "it is already in use (another manager?)" in str(refused.value)
            assert str(refused.value).endswith("or give this one another --http-listen")

        asyncio.run(main())
