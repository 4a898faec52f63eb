"""The manager's server: one manager per address and per state directory, and
its own health in the model containers serve (grpc.health.v1 Check, Watch
and List with "", "liveness" and "readiness")."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import ManagerHost, wait_until

from pycontainer import _reflection

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "pycontainer.cli"]
MANAGER = [*CLI, "manager"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def first(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A manager in a process of its own: its address and state directory."""
    state = tmp_path / "state"
    out = tmp_path / "first.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [*MANAGER, "--listen", "127.0.0.1:0", "--state-dir", str(state)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: "serving on " in out.read_text() or proc.poll() is not None,
            20,
            "the first manager to serve",
        )
        text = out.read_text()
        assert "serving on " in text, text
        yield text.split("serving on ", 1)[1].split()[0], state
        assert proc.poll() is None, "the first manager ended: " + out.read_text()
    finally:
        proc.terminate()
        proc.wait(20)


def _second(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MANAGER, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("flag", ["--health-listen", "--join-listen", "--http-listen"])
def test_a_side_port_in_use_names_its_own_flag(tmp_path: Path, flag: str) -> None:
    """The address in use was given by --health-listen, --join-listen (a mutual-TLS
    manager: an --insecure one has no join port) or --http-listen: the one line says to change
    that flag, not --listen."""
    env = {k: v for k, v in os.environ.items() if k != "PYCONTAINER_INSECURE"}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        second = subprocess.run(
            [*MANAGER, "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "s"), flag, taken],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert second.returncode == 1
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("error: cannot listen on " + taken)
    assert lines[0].endswith(f"or give this one another {flag}")


def test_a_second_manager_on_the_same_port_is_refused_in_one_line(
    first: tuple[str, Path], tmp_path: Path
) -> None:
    address, _ = first
    second = _second("--listen", address, "--state-dir", str(tmp_path / "other"))
    assert second.returncode != 0
    assert second.stdout == ""
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("error: cannot listen on " + address)
    assert "already in use" in lines[0]
    # The first still has the port to itself and answers.
    with grpc.insecure_channel(address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert check.status == SERVING


def test_a_second_manager_on_the_same_state_directory_is_refused(
    first: tuple[str, Path],
) -> None:
    _, state = first
    second = _second("--listen", "127.0.0.1:0", "--state-dir", str(state))
    assert second.returncode != 0
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.stderr
    assert "state directory" in lines[0]
    assert str(state.resolve()) in lines[0]
    assert "in use by another manager" in lines[0]


def test_the_state_directory_is_free_again_once_a_manager_stops(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    ManagerHost(state).stop()
    again = ManagerHost(state)  # the lock went with the first
    again.stop()


def test_the_managers_health_check_list_and_watch(tmp_path: Path) -> None:
    manager = ManagerHost(str(tmp_path / "state"))
    try:
        _check_health(manager)
    finally:
        if manager._thread.is_alive():  # it failed before its shutdown
            manager.stop()


def _check_health(manager: ManagerHost) -> None:
    health = health_pb2_grpc.HealthStub(manager.channel)
    for service in ("", "liveness", "readiness", "pycontainer.v1.Manager"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == SERVING, service
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    list_request, list_response = _reflection.health_list_messages()
    listed = manager.channel.unary_unary(
        "/grpc.health.v1.Health/List",
        request_serializer=list_request.SerializeToString,
        response_deserializer=list_response.FromString,
    )(list_request(), timeout=5)
    statuses = {name: s.status for name, s in listed.statuses.items()}
    assert {"", "liveness", "readiness"} <= set(statuses)
    assert set(statuses.values()) == {SERVING}

    # Readiness goes NOT_SERVING when the shutdown starts; liveness stays.
    seen: dict[str, list[int]] = {"readiness": [], "liveness": []}

    def watch(service: str) -> None:
        with grpc.insecure_channel(manager.address) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=service), timeout=30
            )
            try:
                for response in stream:
                    seen[service].append(response.status)
            except grpc.RpcError:
                pass  # the server went away

    watchers = [threading.Thread(target=watch, args=(s,), daemon=True) for s in seen]
    for watcher in watchers:
        watcher.start()
    wait_until(lambda: all(seen.values()), 10, "both watches to start")
    manager.stop()
    for watcher in watchers:
        watcher.join(15)
    assert seen["readiness"] == [SERVING, NOT_SERVING]
    assert seen["liveness"] == [SERVING]


def test_up_on_a_port_in_use_is_refused_in_one_line(
    first: tuple[str, Path], tmp_path: Path
) -> None:
    address, _ = first
    spec = tmp_path / "one.yaml"
    spec.write_text("containers:\n  - name: one\n    command: [python, -c, 'print(1)']\n")
    state = str(tmp_path / "up-state")
    up = subprocess.run(
        [*CLI, "up", "-f", str(spec), "--headless", "--listen", address, "--state-dir", state],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert up.returncode != 0
    lines = up.stderr.splitlines()
    assert len(lines) == 1, up.stderr
    assert lines[0].startswith("error: cannot listen on " + address)


@pytest.mark.parametrize(
    ("listen", "says"),
    [("127.0.0.1:99999", "port 99999 is out of range"), ("127.0.0.1", "has no port")],
)
def test_a_malformed_listen_address_is_a_usage_error(
    tmp_path: Path, listen: str, says: str
) -> None:
    # Caught by the command line's grammar, before any server exists: argparse's
    # usage and one error line naming the mistake (the command's exit status 1
    # for a mistake; 2 is kept for an unreachable manager).
    second = _second("--listen", listen, "--state-dir", str(tmp_path / "state"))
    assert second.returncode == 1
    assert second.stderr.startswith("usage: pycontainer manager")
    assert "Traceback" not in second.stderr
    assert says in second.stderr.splitlines()[-1], second.stderr


def test_an_address_that_cannot_be_served_is_one_line(tmp_path: Path) -> None:
    second = _second(
        "--listen", "no-such-host.invalid:5000", "--state-dir", str(tmp_path / "state")
    )
    assert second.returncode != 0
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.stderr
    assert "cannot resolve" in lines[0]
