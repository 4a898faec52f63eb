"""The benchmark harness (bench/harness.py): a run of two cheap rows with a
tiny duration writes RESULTS.md with the machine, the rows, their ratios and
ranges; a row that raises is reported as failed and the run goes on. No
figure is asserted: a slow machine never fails a benchmark."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# median [min .. max] of a figure, and of a ratio (two decimals).
SPREAD = r"-?[\d,.]+ \[-?[\d,.]+ \.\. -?[\d,.]+\]"
RATIO = r"\d+\.\d\d \[\d+\.\d\d \.\. \d+\.\d\d\]"


def test_a_run_writes_results_with_the_machine_rows_ratios_and_ranges(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--rows",
        "p3d-logging,tls-cost",
        "--seconds",
        "0.02",
        "--rounds",
        "3",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    for field in ("date", "command", "cores", "CPU", "Python", "grpcio", "protobuf"):
        assert re.search(rf"^- {field}: \S", text, re.MULTILINE), field
    assert re.search(r"^- protobuf: .*\(backend: (upb|cpp|python)\)$", text, re.MULTILINE)
    assert "--rows p3d-logging,tls-cost" in text  # the exact command
    rows = {
        line.split("|")[2].strip(): line
        for line in text.splitlines()
        if line.startswith("| P") or line.startswith("| - ")
    }
    assert set(rows) == {"p3d-logging", "tls-cost"}
    for key, line in rows.items():
        cells = [c.strip() for c in line.strip("|").split("|")]
        _, _, _, _unit, ours, bare, ratio, *_ = cells
        assert re.fullmatch(SPREAD, ours), (key, ours)
        assert re.fullmatch(SPREAD, bare), (key, bare)
        assert re.fullmatch(RATIO, ratio), (key, ratio)
        assert re.fullmatch(r"\d+ s", cells[-1]), (key, cells[-1])  # how long the row took
    assert rows["p3d-logging"].startswith("| P3d |")
    assert "µs/call (↓)" in rows["p3d-logging"]
    assert "calls/s (↑)" in rows["tls-cost"]
    assert "2 rows measured, 0 failed." in text


def test_a_failing_row_is_reported_with_its_reason_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.harness import Context, Row, Sample, render, run_rows

    def broken(ctx: Context) -> list[Sample]:
        raise TimeoutError("no server within 60s")

    def steady(ctx: Context) -> list[Sample]:
        return [
            Sample(0.002, 0.001, ours_latencies=[0.002, 0.003], bare_latencies=[0.001])
            for _ in range(ctx.rounds)
        ]

    def too_few(ctx: Context) -> list[Sample]:
        return [Sample(1.0, 1.0)]

    rows = [
        Row("broken", "P9", "never", "a row that raises", "nothing", "s", False, broken),
        Row("steady", "P5", "p99 ≤ 10 ms", "a latency", "bare", "ms", False, steady, True, 1e3),
        Row("few", "", "context", "one round only", "bare", "x", True, too_few),
    ]
    ctx = Context(seconds=0.01, rounds=3, quick=True, scale=0.1)
    outcomes = run_rows(rows, ctx, lambda text: None)
    text = render(outcomes, ctx, "python -m bench --quick", "2026-12-01 12:00 UTC")
    lines = {
        line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| ")
    }
    assert "FAILED" in lines["broken"]
    assert "TimeoutError: no server within 60s" in lines["broken"]
    assert "FAILED" in lines["few"]
    assert "1 rounds measured, 3 needed" in lines["few"]
    assert "| 2.00 [2.00 .. 2.00] | 1.00 [1.00 .. 1.00] | 2.00 [2.00 .. 2.00] |" in lines["steady"]
    assert "| 2.00 / 3.00 | 1.00 / 1.00 |" in lines["steady"]  # p50 / p99, ours and bare
    assert "1 rows measured, 2 failed (broken, few)." in text
