"""The mesh across hosts (network namespaces, tests/netns_support.py): the
manager on host A serves mutual TLS and launches two replicas of a service
there (tests/apps/mesh_backend.py --tls, advertising A's address); a plain
grpcio client on host B, with a certificate of the manager's CA, reaches
``xds:///orders`` through xDS credentials: its ADS stream and its calls go
across the switch, and both replicas answer. B's cable cut, its calls fail
(no answer within their deadline); healed, they are answered again by both
replicas, the client's xDS state kept (the service stayed as it was).

The other way round (a backend on B, the client on A) is not here: the
manager launches in its own host only, and a container that joins from
another host has no spec, so no mesh service (the mesh takes it from the
spec; a Registration names none)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hosts_support import ROOT, HostManager, environment, start_manager
from netns_support import Host, Network, require_netns
from security_support import issue_files
from support import wait_until

from pycontainer.client import XDS_BOOTSTRAP_ENV, bootstrap
from pycontainer.security import CertificateAuthority, container
from pycontainer.v1 import manager_pb2, mesh_pb2, spec_pb2

BACKEND = str(ROOT / "tests/apps/mesh_backend.py")
CLIENT = str(ROOT / "tests/apps/mesh_client.py")


@dataclass
class Orders:
    """The manager on A with two TLS replicas of ``orders`` there, host B,
    and a bootstrap for a client on B (a certificate of the manager's CA)."""

    network: Network
    a: Host
    b: Host
    manager: HostManager
    bootstrap: Path


@pytest.fixture
def orders(tmp_path: Path) -> Iterator[Orders]:
    require_netns()
    with Network("mesh") as network:
        a, b = network.add_host("a"), network.add_host("b")
        state = tmp_path / "state"
        manager = start_manager(a, state)
        try:
            client = manager.client
            spec = spec_pb2.ContainerSpec(
                name="orders",
                command=[sys.executable, BACKEND, "--tls", "--listen", a.address],
                replicas=2,
                service=mesh_pb2.MeshService(name="orders"),
            )
            client.run_container(manager_pb2.RunContainerRequest(spec=spec))

            def served() -> bool:
                assert manager.process.poll() is None, manager.process.communicate(timeout=10)
                return _healthy(manager) == 2

            wait_until(served, 60, "both TLS backends on A in the mesh")
            endpoints = [
                e
                for c in client.list_containers().containers
                for e in c.identity.endpoints
                if e.name == "grpc"
            ]
            assert len(endpoints) == 2
            assert all(e.tls and e.address.startswith(f"{a.address}:") for e in endpoints)
            # A client the manager never launched: a certificate of its CA, a bootstrap.
            ca = CertificateAuthority.open(state)
            files = issue_files(ca, container("caller-1"), tmp_path / "caller-tls")
            path = tmp_path / "bootstrap.json"
            config = bootstrap(manager.address, node_id="caller-1", tls_dir=files.leaf.parent)
            path.write_text(json.dumps(config))
            yield Orders(network, a, b, manager, path)
        finally:
            manager.close()


def _healthy(manager: HostManager) -> int:
    status = manager.client.get_mesh_status()
    return len(status.services[0].healthy) if status.services else 0


def _caller(orders: Orders, *flags: str) -> subprocess.Popen[str]:
    """tests/apps/mesh_client.py on host B, through xDS credentials."""
    return orders.b.popen(
        [*(sys.executable, CLIENT, "xds:///orders", "--credentials", "xds"), *flags],
        env=environment(**{XDS_BOOTSTRAP_ENV: str(orders.bootstrap)}),
    )


def test_a_client_on_another_host_calls_a_tls_service_through_the_mesh(
    orders: Orders, tmp_path: Path
) -> None:
    result_file = tmp_path / "result.json"
    caller = _caller(
        orders, "--calls", "60", "--warm-backends", "2", "--result-file", str(result_file)
    )
    out, err = caller.communicate(timeout=120)
    assert caller.returncode == 0, (out, err[-3000:])
    result = json.loads(result_file.read_text())
    assert result.get("failed") == 0, result
    assert result["calls"] == 60, result
    assert len(result["answers"]) == 2, result  # both replicas, across the switch


class _Phases:
    """The JSON lines a mesh_client prints, one per SIGUSR1 (the calls since
    the last), read on a thread so that a wait for one is bounded."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        stdout = process.stdout
        threading.Thread(target=lambda: [self.lines.put(x) for x in stdout], daemon=True).start()

    def line(self, timeout: float = 30) -> str:
        try:
            return self.lines.get(timeout=timeout).strip()
        except queue.Empty:
            raise AssertionError(f"mesh_client printed nothing within {timeout:g}s") from None

    def next(self) -> dict[str, Any]:
        """The counts since the last phase."""
        self.process.send_signal(signal.SIGUSR1)
        phase: dict[str, Any] = json.loads(self.line())
        return phase

    def until(self, done: Any, timeout: float, what: str) -> dict[str, Any]:
        """Phases (at least 0.2 s of calls each) until ``done(phase)``; that one."""
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(0.2)  # a phase's length: calls are counted meanwhile
            phase = self.next()
            if done(phase):
                return phase
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} within {timeout:g}s; last phase {phase}")


def test_a_client_cut_off_from_the_mesh_is_answered_again_once_healed(
    orders: Orders, tmp_path: Path
) -> None:
    until = tmp_path / "enough"
    caller = _caller(
        orders,
        *("--until-file", str(until), "--warm-backends", "2"),
        *("--deadline", "1", "--concurrency", "2"),
    )
    phases = _Phases(caller)
    assert phases.line(60) == "ready"
    before = phases.until(lambda p: p["calls"] > 0, 30, "calls answered")
    assert before["failed"] == 0, before

    orders.network.cut(orders.b)
    cut_at = time.monotonic()
    phases.next()  # what was under way as the cable went
    during = phases.until(lambda p: p["failed"] > 0, 15, "calls failing in the cut")
    assert not during["answers"], during  # nothing gets through a cut
    assert _healthy(orders.manager) == 2  # the service is untouched: its replicas are on A
    cut_seconds = time.monotonic() - cut_at

    orders.network.heal(orders.b)
    healed_at = time.monotonic()
    phases.until(lambda p: len(p["answers"]) == 2, 30, "both replicas answering again")
    resumed_after = time.monotonic() - healed_at
    after = phases.until(lambda p: p["calls"] > 0, 30, "calls answered")
    assert after["failed"] == 0, after  # all well again
    until.touch()
    phases.line()  # the last phase
    assert caller.wait(30) == 0
    print(
        f"\nmesh calls failed in the cut ({cut_seconds:.1f}s);"
        f" answered {resumed_after:.1f}s after the heal"
    )
