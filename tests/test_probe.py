"""`pycontainer health ADDR` behaves as grpc_health_probe: same exit codes."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from support import make_container, start_container, start_sync_host, stop_container

from pycontainer.cli import main


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
        assert "error: no health service named 'no.such.Service'" in capsys.readouterr().err
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
