"""`pycontainer up`: a manager with embedded defaults, a spec applied, and a
live view until Ctrl-C, which stops every container through its lifecycle.
This is what `make run` runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from opentelemetry import trace
from rich.console import Group
from rich.live import Live
from rich.text import Text

from ..manager import Manager, ManagerSettings, StartRefused
from ..spec import SpecError, load_specs
from ..telemetry import configure_tracing
from ..v1 import spec_pb2
from ._client import CliError
from ._render import container_table, local_time

_EVENTS_SHOWN = 8


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run a manager, apply a spec and watch it live (make run)",
        description="Start a manager with embedded defaults, launch what the spec files "
        "describe, and show a live view of containers and events. Ctrl-C (or SIGTERM) "
        "stops every container gracefully, then the manager. Traces go to "
        "STATE_DIR/traces.jsonl, or as the OTEL_* variables say (OTLP when "
        "OTEL_EXPORTER_OTLP_ENDPOINT is set).",
    )
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        metavar="SPEC",
        help="spec file to apply (repeatable; default examples/demo.yaml)",
    )
    parser.add_argument("--listen", default="127.0.0.1:50050", help="manager address")
    parser.add_argument("--state-dir", default="state", help="manager state directory")
    parser.add_argument(
        "--headless",
        action="store_true",
        help="no live view: print events as lines (for scripts and CI)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop everything after this many seconds (0 = until Ctrl-C)",
    )
    parser.add_argument("--grace", type=float, default=10.0, help="grace period on Ctrl-C (s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = args.filename or ["examples/demo.yaml"]
    specs = []
    try:
        for name in files:
            specs.extend(load_specs(name))
    except SpecError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    Path(args.state_dir).mkdir(parents=True, exist_ok=True)
    # The containers launched below inherit it: one trace file for everything.
    os.environ.setdefault(
        "PYCONTAINER_TRACES_FILE", str((Path(args.state_dir) / "traces.jsonl").resolve())
    )
    provider = configure_tracing("pycontainer-up")
    try:
        return asyncio.run(_up(args, specs))
    except StartRefused as exc:  # another manager has the address or the state
        raise CliError(str(exc)) from None
    finally:
        if provider is not None:
            provider.shutdown()


async def _up(args: argparse.Namespace, specs: list[spec_pb2.ContainerSpec]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    manager = Manager(ManagerSettings(listen=args.listen, state_dir=args.state_dir))
    await manager.start()
    print(
        f"manager on {manager.address}  (PYCONTAINER_MANAGER={manager.address} "
        f".venv/bin/pycontainer ps)",
        flush=True,
    )
    failures = 0
    for spec in specs:
        if spec.runtime == spec_pb2.RUNTIME_KIND_RUNC and shutil.which("runc") is None:
            print(f"note: skipping {spec.name}: runc is not installed", file=sys.stderr)
            continue
        try:
            await manager.run(spec)
        except Exception as exc:  # one bad spec must not hide the others
            failures += 1
            print(f"error: {spec.name}: {exc}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + args.duration if args.duration else None
    printed = 0
    if args.headless:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            printed = _print_events(manager, printed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    else:
        with Live(_view(manager), refresh_per_second=4, screen=False) as live:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                live.update(_view(manager))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
    print(f"stopping every container (grace {args.grace:.0f}s)...", flush=True)
    # One trace: this span -> each stop command -> each container's on_stop.
    with trace.get_tracer("pycontainer.cli").start_as_current_span("pycontainer up: stop all"):
        await manager.shutdown_containers(args.grace)
    _print_events(manager, printed if args.headless else len(manager.events.history()))
    await asyncio.sleep(0.5)  # let the processes exit and report
    await manager.close_runtimes()
    await manager.stop()
    print("stopped", flush=True)
    return 1 if failures else 0


def _print_events(manager: Manager, printed: int) -> int:
    history = manager.events.history()
    for event in history[printed:]:
        print(f"{local_time(event.time)}  {event.container_name:<22} {event.message}", flush=True)
    return len(history)


def _view(manager: Manager) -> Group:
    containers = [e.to_proto() for e in sorted(manager.entries.values(), key=lambda e: e.name)]
    lines = [Text("recent events", style="bold")]
    for event in manager.events.history()[-_EVENTS_SHOWN:]:
        lines.append(Text(f"{local_time(event.time)}  {event.container_name:<22} {event.message}"))
    title = Text(
        f"pycontainer manager on {manager.address} — Ctrl-C stops everything gracefully",
        style="bold cyan",
    )
    return Group(title, container_table(containers), Text(""), *lines)
