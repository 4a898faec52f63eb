"""`make run`'s job, headless: a manager with embedded defaults applies the
example spec, the containers run, and a stop tears everything down through
the lifecycle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from support import IN_CI

ROOT = Path(__file__).resolve().parent.parent


def test_demo_spec_applied_headless_and_torn_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pycontainer.cli",
            "up",
            "-f",
            "examples/demo.yaml",
            "--headless",
            "--duration",
            "8s",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(state),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    names = ["sync-worker", "async-pipeline", "ticker"]  # ticker: a shell loop, sidecar
    if shutil.which("runc") or IN_CI:
        names.append("oci-worker")  # runc, which CI installs
    for name in names:
        started = [line for line in out.splitlines() if name in line and "-> RUNNING" in line]
        stopped = [line for line in out.splitlines() if name in line and "-> STOPPED" in line]
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
