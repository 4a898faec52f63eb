"""Watch a process's RSS (by a command-line fragment) once a second, and when
it passes a threshold capture what may explain it: the CPU of each of its
threads (gRPC core's own threads included), their native stacks (gdb), the
TCP sockets of the machine (ss) and the busiest processes. For the manager's
rare RSS blow-up under tests/test_soak.py:

    .venv/bin/python bench/watch_rss.py tests/apps/run_manager.py out.log --seconds 400 &
    PYCONTAINER_SOAK_SECONDS=240 .venv/bin/pytest -s tests/test_soak.py
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from typing import TextIO

import psutil


def _capture(process: psutil.Process, out: TextIO) -> None:
    before = {t.id: t.user_time + t.system_time for t in process.threads()}
    time.sleep(0.5)
    after = {t.id: t.user_time + t.system_time for t in process.threads()}
    busy = sorted(((after[k] - before.get(k, 0.0), k) for k in after), reverse=True)[:5]
    for seconds, tid in busy:
        try:
            name = open(f"/proc/{process.pid}/task/{tid}/comm").read().strip()  # noqa: SIM115
        except OSError:
            name = "?"
        out.write(f"thread {tid} {name}: {seconds:.2f} s CPU in 0.5 s\n")
    commands = [["ss", "-tinpa"], ["ps", "-eo", "pid,ppid,rss,pcpu,args", "--sort=-pcpu"]]
    if shutil.which("gdb"):
        commands.append(["gdb", "-p", str(process.pid), "-batch", "-ex", "thread apply all bt 25"])
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        out.write(f"=== {' '.join(command)}\n{result.stdout[-60000:]}{result.stderr[-2000:]}\n")
    out.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fragment", help="part of the watched process's command line")
    parser.add_argument("log")
    parser.add_argument("--seconds", type=float, default=400)
    parser.add_argument("--threshold-mb", type=float, default=400)
    args = parser.parse_args()
    captured: set[int] = set()
    deadline = time.monotonic() + args.seconds
    with open(args.log, "w") as out:
        while time.monotonic() < deadline:
            for process in psutil.process_iter(["cmdline"]):
                if args.fragment not in " ".join(process.info["cmdline"] or []):
                    continue
                try:
                    rss = process.memory_info().rss / 2**20
                    out.write(f"{time.strftime('%H:%M:%S')} pid {process.pid} RSS {rss:.1f} MB\n")
                    out.flush()
                    if rss > args.threshold_mb and process.pid not in captured:
                        captured.add(process.pid)
                        _capture(process, out)
                except psutil.Error:
                    continue
            time.sleep(1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
