"""`pycontainer health ADDR` behaves as grpc_health_probe: same exit codes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import make_container, start_container, start_sync_host, stop_container

from pycontainer.cli import main
from pycontainer.testing import manager_host


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_exit_codes_follow_the_lifecycle(capsys: pytest.CaptureFixture[str]) -> None:
    host = start_sync_host(make_container("probed"))
    try:
        assert main(["health", host.target]) == 4  # created, not started
        assert "NOT_SERVING" in capsys.readouterr().err
        start_container(host)
        assert main(["health", host.target]) == 0
        assert main(["health", host.target, "--service", "readiness"]) == 0
        assert main(["health", host.target, "--service", "no.such.Service"]) == 3
        assert "no health service named 'no.such.Service'" in capsys.readouterr().err
        stop_container(host)
        assert main(["health", host.target]) == 4
    finally:
        host.stop()


def test_connection_failed_and_bad_usage() -> None:
    assert main(["health", f"127.0.0.1:{_free_port()}", "--connect-timeout", "300ms"]) == 2
    assert main(["health"]) == 1


def test_console_script_runs_as_a_process() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pycontainer.cli",
            "health",
            f"127.0.0.1:{_free_port()}",
            "--connect-timeout",
            "200ms",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "failed to connect" in result.stderr


def test_a_mutual_tls_port_is_named_as_such_with_where_to_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plaintext probe of a mutual-TLS port (the manager's, by default) only sees
    the connection time out: the probe says the port serves TLS and to probe
    the plaintext health port instead."""
    monkeypatch.delenv("PYCONTAINER_INSECURE", raising=False)
    with manager_host(tmp_path / "state", insecure=False) as secure:
        code = main(["health", secure.address, "--service", "state-store"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"error: {secure.address} serves TLS" in err
    assert "--health-listen" in err
    # Nothing there at all is still "failed to connect".
    assert main(["health", f"127.0.0.1:{_free_port()}", "--connect-timeout", "300ms"]) == 2
    assert "failed to connect service" in capsys.readouterr().err
