"""A small standalone container that a manager starts and stops: the program
the manager integration tests run as a separate process.

    python tests/apps/connected_app.py --name worker --manager 127.0.0.1:50050

Without --manager it dials $PYCONTAINER_MANAGER (which the manager's process
runtime sets, with $PYCONTAINER_CONTAINER_ID). It registers, waits for the
manager to start it, and exits when the manager stops it. Hooks:

- on_start: counts, starts a ticker that bumps a counter every 10 ms;
- on_pause/on_resume: count (on_pause sleeps --pause-seconds);
- on_stop: sleeps --stop-seconds (asyncio), prints "on_stop done";
- on_checkpoint: the counter, as ASCII digits; on_restore sets it and
  prints "restored N".

With --state-file, every hook rewrites that JSON file (hook call counts, the
counter, the last stop reason) so that a test can see what ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import sys
from pathlib import Path

import pycontainer
from pycontainer.agent import JoinError

log = logging.getLogger("connected_app")


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counter = 0
        self.calls: dict[str, int] = {}
        self.stop_reason = ""
        self.ticker: asyncio.Task[None] | None = None

    def record(self, hook: str) -> None:
        self.calls[hook] = self.calls.get(hook, 0) + 1
        self.save()

    def save(self) -> None:
        if not self.args.state_file:
            return
        path = Path(self.args.state_file)
        data = {
            "pid": os.getpid(),
            "calls": self.calls,
            "counter": self.counter,
            "stop_reason": self.stop_reason,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)  # readers never see half a file

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.counter += 1

    async def on_start(self) -> None:
        self.counter += 1
        self.ticker = asyncio.ensure_future(self._tick())
        log.info("started (counter %d)", self.counter)
        self.record("start")

    async def on_pause(self) -> None:
        await asyncio.sleep(self.args.pause_seconds)
        self.record("pause")

    async def on_resume(self) -> None:
        self.record("resume")

    async def on_stop(self, reason: str, deadline: float) -> None:
        self.stop_reason = reason
        self.record("stop")
        if self.ticker is not None:
            self.ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.ticker
        await asyncio.sleep(self.args.stop_seconds)
        print("on_stop done", flush=True)
        self.record("stop_done")

    async def on_checkpoint(self) -> bytes:
        self.record("checkpoint")
        return str(self.counter).encode()

    async def on_restore(self, state: bytes) -> None:
        self.counter = int(state.decode() or 0)
        print(f"restored {self.counter}", flush=True)
        self.record("restore")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=os.environ.get("PYCONTAINER_NAME", "connected-app"))
    parser.add_argument("--manager", default="", help="HOST:PORT (default $PYCONTAINER_MANAGER)")
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--cpu-millis", type=int, default=0)
    parser.add_argument("--memory-bytes", type=int, default=0)
    parser.add_argument("--grace", type=float, default=30.0, help="default grace period (s)")
    parser.add_argument("--stop-seconds", type=float, default=0.0, help="on_stop sleeps this")
    parser.add_argument("--pause-seconds", type=float, default=0.0, help="on_pause sleeps this")
    parser.add_argument("--state-file", default="", help="JSON file of hook calls")
    args = parser.parse_args(argv)
    manager = args.manager or os.environ.get("PYCONTAINER_MANAGER", "")
    if not manager:
        parser.error("give --manager or set $PYCONTAINER_MANAGER")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    app = App(args)
    settings = pycontainer.ContainerSettings(
        name=args.name,
        labels={"app": args.name},
        priority=args.priority,
        cpu_millis=args.cpu_millis,
        memory_bytes=args.memory_bytes,
        grace_period=datetime.timedelta(seconds=args.grace),
    )
    hooks = pycontainer.Hooks(
        on_start=app.on_start,
        on_pause=app.on_pause,
        on_resume=app.on_resume,
        on_stop=app.on_stop,
        on_checkpoint=app.on_checkpoint,
        on_restore=app.on_restore,
    )
    container = pycontainer.Container(settings, hooks=hooks)
    app.save()

    def ready(port: int) -> None:
        print(f"management 127.0.0.1:{port}", flush=True)

    try:
        asyncio.run(pycontainer.serve(container, "127.0.0.1:0", manager=manager, on_ready=ready))
    except JoinError as exc:  # a bootstrap token that cannot buy a certificate: one line
        sys.exit(f"error: {exc}")
    print("exiting", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
