"""Server instructions per call, counted by callgrind: a figure a loaded
machine does not move (the CPU-time rows swing by tens of percent on 2 shared
cores). Each server of bench/capacity.py runs under valgrind; after a warm-up,
4 client threads make N calls while callgrind counts, then the server idles as
long while it counts again (its background threads), and the difference over
N is the figure.

    .venv/bin/python -m bench.callgrind KIND [N]     # KIND of bench/capacity.py

prints Ir per call of bare grpcio's server and of pycontainer's, and their
ratio (bare ÷ ours). Kinds: health-sync, health-aio, echo-interceptor,
echo-embedded (no watchers), and health-sync-noop / echo-noop (bare grpcio
with 2 empty interceptors as "ours": what grpcio charges for interceptors).
Needs valgrind; a run takes a few minutes (Python starts slowly under it).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from .capacity import ECHO, HEALTH_CHECK

WARMUP = 200


def _totals(path: Path) -> int:
    text = path.read_text() if path.exists() else ""
    return sum(int(n) for n in re.findall(r"^totals:\s*(\d+)", text, re.M))


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def per_call(kind: str, side: str, calls: int) -> int:
    """Instructions the ``side`` ("bare" or "ours") server of ``kind`` runs per call."""
    method = ECHO if kind.startswith("echo") else HEALTH_CHECK
    request = b"x" if method == ECHO else b""
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.callgrind",
                "--serve",
                kind,
                side,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert server.stdin is not None
        assert server.stdout is not None
        try:
            port = int(server.stdout.readline())
            pid = str(server.pid)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(method)
                for _ in range(WARMUP):
                    call(request, timeout=60)
                _control("-i", "on", pid)
                started = time.monotonic()
                with futures.ThreadPoolExecutor(4) as pool:
                    list(
                        pool.map(
                            lambda _: [call(request, timeout=60) for _ in range(calls // 4)],
                            range(4),
                        )
                    )
                took = time.monotonic() - started
                _control("-i", "off", pid)
                _control("-d", pid)
                # The same time idle: what the process runs meanwhile anyway.
                _control("-i", "on", pid)
                time.sleep(took)
                _control("-i", "off", pid)
                _control("-d", pid)
            time.sleep(1)
            busy, idle = _totals(Path(f"{out}.1")), _totals(Path(f"{out}.2"))
            return (busy - idle) // (calls // 4 * 4)
        finally:
            server.stdin.close()
            server.wait(120)


class _Link:
    """What bench.capacity._serve talks to: the port on stdout, "stop" at EOF."""

    def __init__(self) -> None:
        self._sent = False

    def send(self, value: object) -> None:
        if not self._sent:
            print(value, flush=True)
            self._sent = True

    def recv(self) -> str:
        sys.stdin.read()
        return "stop"


def main(argv: list[str]) -> None:
    if argv[:1] == ["--serve"]:
        from .capacity import _serve

        link: Any = _Link()  # a Connection as far as _serve is concerned
        _serve(argv[1], argv[2] == "ours", "bench-capacity-0001", None, link)
        return
    kind = argv[0]
    calls = int(argv[1]) if len(argv) > 1 else 400
    with futures.ThreadPoolExecutor(2) as pool:
        bare, ours = pool.map(lambda side: per_call(kind, side, calls), ("bare", "ours"))
    print(f"{kind}: bare {bare:,} Ir/call, pycontainer {ours:,} Ir/call, ratio {bare / ours:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
