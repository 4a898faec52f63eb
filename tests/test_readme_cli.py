"""Every `.venv/bin/pycontainer` command of the README, as a user types it,
against `pycontainer up` running the demo spec (what `make run` runs)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from support import wait_until

ROOT = Path(__file__).resolve().parent.parent
PYCONTAINER = ROOT / ".venv" / "bin" / "pycontainer"
# Verbs that follow until interrupted: run briefly, then Ctrl-C them.
LIVE = ("logs -f", "top", "events -w", "pycontainer run ")


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        out += [line for line in block.splitlines() if line.startswith(".venv/bin/pycontainer ")]
    return out


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_readme_cli_commands(tmp_path: Path) -> None:
    # `manager` and `health` run against other servers: tests/test_examples.py.
    commands = [
        c
        for c in _commands()
        if not c.startswith((".venv/bin/pycontainer manager", ".venv/bin/pycontainer health"))
    ]
    assert len(commands) >= 15
    address = _free_address()
    env = {**os.environ, "PYCONTAINER_MANAGER": address}
    log = (tmp_path / "up.log").open("w")  # a pipe nobody reads would fill and block up
    log = (tmp_path / "up.log").open("w")  # a pipe nobody reads would fill and stall up
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pycontainer.cli",
            "up",
            "-f",
            "examples/demo.yaml",
            "--headless",
            "--listen",
            address,
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def running() -> bool:
            ps = subprocess.run(
                [str(PYCONTAINER), "ps", "-o", "json"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
            )
            return ps.returncode == 0 and ps.stdout.count("LIFECYCLE_STATE_RUNNING") >= 4

        wait_until(running, 60, "the demo containers to run")
        for command in commands:
            argv = shlex.split(command)
            argv[0] = str(ROOT / argv[0])
            if any(live in command for live in LIVE):
                proc = subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                time.sleep(3)
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=30)
                # 143: the sidecar exits with its program's status (stopped by SIGTERM).
                assert proc.returncode in (0, 130, -2, 143), (command, err)
                assert out.strip() or err.strip(), command
                continue
            result = subprocess.run(
                argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr, command
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
        log.close()
        Path("/tmp/sync-worker.pb.gz").unlink(missing_ok=True)
    assert up.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]


def test_readme_manager_command_serves_until_sigterm(tmp_path: Path) -> None:
    """The README's `pycontainer manager` line (on a free port), as typed."""
    [line] = [c for c in _commands() if c.startswith(".venv/bin/pycontainer manager")]
    address = _free_address()
    argv = shlex.split(line.replace("127.0.0.1:50050", address))
    argv[0] = str(ROOT / argv[0])
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"manager serving on {address}"
        ps = subprocess.run(
            [str(PYCONTAINER), "--manager", address, "ps"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ps.returncode == 0, ps.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    assert (tmp_path / "state" / "manager.db").exists()
