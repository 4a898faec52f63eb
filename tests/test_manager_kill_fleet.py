"""kill -9 of the manager with many containers connected (bench/reconnect.py,
smaller): every container keeps running, dials the successor on the same
address and state back in with backoff, its registration and checkpoint are
kept byte-exact, and no hook runs twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS = 150
WORKERS = 3
# All back well within this of the successor's spawn (about 3-5 s here; the
# containers' backoff is at most 10 s, so a slow start still fits).
BACK_WITHIN = 30.0


def test_a_killed_managers_containers_all_come_back_to_its_successor() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "reconnect.py"),
            "--containers",
            str(CONTAINERS),
            "--workers",
            str(WORKERS),
            "--checkpoint-bytes",
            "4096",
            "--timeout",
            "60",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.splitlines()[-1])
    n = CONTAINERS
    assert result["back_seconds"] < BACK_WITHIN, result
    # The successor knew every container from its state store before any
    # dialled back, and kept each one's last checkpoint id.
    assert result["registrations_kept"] == n
    assert result["checkpoints_stored_exact"] == n
    assert result["checkpoint_ids_kept"] == n
    assert result["checkpoints_restored_exact"] == n
    # start, checkpoint and restore once each: no start again on reconnect.
    assert result["hooks_run_twice"] == 0
    assert result["hooks_as_expected"] == n
    assert result["sessions_not_two"] == 0
    assert result["states_after"] == ["LIFECYCLE_STATE_RUNNING"]
    # A kill ends sessions that spoke plaintext fine: no container takes
    # that for a manager serving mutual TLS.
    assert "serves mutual TLS" not in done.stderr
