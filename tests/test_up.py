"""`make run`'s job, headless: a manager with embedded defaults applies the
example spec, the containers run, and a stop tears everything down through
the lifecycle."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from support import IN_CI, wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_demo_spec_applied_headless_and_torn_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # Each container's replicas that must be seen running before the stop.
    # ticker and frontend: sidecars; greeter and frontend: the mesh's services.
    replicas = {"sync-worker": 1, "async-pipeline": 2, "ticker": 1, "greeter": 3, "frontend": 1}
    if shutil.which("runc") or IN_CI:
        replicas["oci-worker"] = 1  # runc, which CI installs
    errors = (tmp_path / "up.err").open("w")  # a pipe nobody reads would fill and block up
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pycontainer.cli",
            "up",
            # What `make run` applies.
            "-f",
            "examples/demo.yaml",
            "-f",
            "examples/mesh.yaml",
            "--headless",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(state),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    lines: list[str] = []  # its stdout (the events, one a line), as it comes

    def read() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                lines.append(line)

    def reached(name: str, state_word: str) -> list[str]:
        return [line for line in list(lines) if name in line and f"-> {state_word}" in line]

    def all_running() -> bool:
        return all(len(reached(name, "RUNNING")) >= n for name, n in replicas.items())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: all_running() or proc.poll() is not None, 90, "the demo to run")
        assert proc.poll() is None, ("".join(lines), (tmp_path / "up.err").read_text())
        proc.send_signal(signal.SIGINT)  # Ctrl-C: what a user does to end it
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        errors.close()
    out = "".join(lines)
    assert proc.returncode == 0, (tmp_path / "up.err").read_text()[-3000:]
    for name in replicas:
        started = reached(name, "RUNNING")
        stopped = reached(name, "STOPPED")
        assert started, out
        assert len(stopped) == len(started), out  # every one stopped gracefully
    assert "manager shutdown" in out
    assert out.rstrip().endswith("stopped")
    assert (state / "manager.db").exists()
    # Traces of up and of every container it launched, in one file, one trace.
    spans = [json.loads(line) for line in (state / "traces.jsonl").read_text().splitlines()]
    [stop_all] = [s for s in spans if s["name"] == "pycontainer up: stop all"]
    trace_id = stop_all["context"]["trace_id"]
    hooks = [s for s in spans if s["name"] == "pycontainer.hook on_stop"]
    assert len(hooks) >= 4  # sync-worker, both async-pipeline replicas, the sidecar
    assert all(h["context"]["trace_id"] == trace_id for h in hooks)


def _pycontainer(*argv: str, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pycontainer.cli", "--manager", address, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_apply_after_up_finds_every_spec_unchanged(tmp_path: Path) -> None:
    """The README's `apply -f examples/demo.yaml` after `make run`: up applied
    the file as that owner, so nothing is created or replaced."""
    log_path = tmp_path / "up.log"
    log = log_path.open("w")  # a pipe nobody reads would fill and block up
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pycontainer.cli",
            "up",
            "-f",
            "examples/demo.yaml",
            "--headless",
            # An ephemeral port, read from what up prints: a port picked
            # free beforehand can be taken by another process meanwhile.
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        found: list[str] = []

        def serving() -> bool:
            found[:] = re.findall(r"^manager on (\S+)", log_path.read_text(), re.MULTILINE)
            return bool(found) or up.poll() is not None

        wait_until(serving, 60, "up to say its address")
        assert found, log_path.read_text()[-3000:]
        address = found[0]
        specs = 4 if shutil.which("runc") else 3
        replicas = specs + 1  # async-pipeline has two

        def containers() -> list[dict[str, Any]]:
            ps = _pycontainer("ps", "-o", "json", address=address)
            if ps.returncode != 0:
                return []
            listed: list[dict[str, Any]] = json.loads(ps.stdout)["containers"]
            return listed

        def all_running() -> bool:
            listed = containers()
            running = [c for c in listed if c["state"] == "LIFECYCLE_STATE_RUNNING"]
            return len(running) >= replicas

        wait_until(all_running, 90, "the demo containers to run")
        before = sorted(c["identity"]["id"] for c in containers())
        applied = _pycontainer("apply", "-f", "examples/demo.yaml", address=address)
        assert applied.returncode == 0, applied.stderr
        lines = applied.stdout.splitlines()
        assert len(lines) == specs, applied.stdout
        assert all(": unchanged" in line for line in lines), applied.stdout
        diff = _pycontainer("diff", "-f", "examples/demo.yaml", address=address)
        assert diff.returncode == 0, diff.stdout + diff.stderr
        assert sorted(c["identity"]["id"] for c in containers()) == before
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
        log.close()
    assert up.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]


def test_a_closed_terminal_stops_everything_gracefully(tmp_path: Path) -> None:
    """`up` in a terminal that closes (its window shut, ssh gone: SIGHUP, and
    every write to it failing) stops its containers through the lifecycle,
    as Ctrl-C does, rather than die and leave them running unowned."""
    state = tmp_path / "state"
    spec = tmp_path / "one.yaml"
    spec.write_text(
        "containers:\n"
        "  - name: hup-worker\n"
        f"    command: [{sys.executable}, examples/sync_app.py, --listen, 127.0.0.1:0,"
        " --name, hup-worker]\n"
        "    gracePeriod: 10s\n"
    )
    argv = [sys.executable, "-m", "pycontainer.cli", "up", "-f", str(spec), "--headless"]
    argv += ["--listen", "127.0.0.1:0", "--state-dir", str(state)]
    # A real terminal: the child leads a session whose controlling tty is the
    # pty; closing the master is the terminal going away (the kernel's SIGHUP).
    pid, master = pty.fork()
    if pid == 0:  # the child
        os.chdir(ROOT)
        os.execv(sys.executable, argv)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"hup-worker" not in seen or b"-> RUNNING" not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the child ended: its output is all there is
                    raise AssertionError(seen.decode(errors="replace")) from None
    finally:
        os.close(master)  # the terminal closes
    deadline = time.monotonic() + 60
    while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"up did not end after its terminal closed: {seen!r}")
        time.sleep(0.1)
    assert os.waitstatus_to_exitcode(ended[1]) == 0, seen.decode(errors="replace")
    # Stopped through the lifecycle: the container's on_stop hook ran, in
    # the trace of up's "stop all".
    spans = [json.loads(line) for line in (state / "traces.jsonl").read_text().splitlines()]
    [stop_all] = [s for s in spans if s["name"] == "pycontainer up: stop all"]
    hooks = [s for s in spans if s["name"] == "pycontainer.hook on_stop"]
    assert [h["context"]["trace_id"] for h in hooks] == [stop_all["context"]["trace_id"]]
