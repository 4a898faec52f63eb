"""`pycontainer up`: a manager with embedded defaults, a spec applied, and a
live view until Ctrl-C, which stops every container through its lifecycle.
This is what `make run` runs.

The specs are applied (ApplySpecs) as `pycontainer apply -f FILE` applies
them, with the same owner label, so that `apply -f FILE` afterwards finds
every container unchanged instead of replacing them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from opentelemetry import trace
from rich.console import Group
from rich.live import Live
from rich.text import Text

from ..client import DEFAULT_MANAGER
from ..manager import Manager, ManagerSettings, StartRefused
from ..manager._exclusive import unusable_state_dir
from ..manager._web import WEB_NAME, web_url
from ..telemetry import TelemetryConfigError, configure_log_export, configure_tracing
from ..units import format_duration
from ..v1 import manager_pb2, spec_pb2
from ._apply import ACTION_WORDS, OWNER_LABEL, load, owner_groups
from ._context import Context
from ._errors import CliError
from ._manager import tls_settings
from ._render import container_table, event_message, event_subject, local_time

_EVENTS_SHOWN = 8
# Where `up` serves its web view unless --http-listen says: loopback, any free port.
WEB_LISTEN = "127.0.0.1:0"
# The web view's buttons work under `up`: its token is printed only here, to
# whoever started it, and kept in the state directory beside the admin's key
# (`pycontainer manager` binds nothing: --role user/web=operate there; a
# --role of user/web given to `up` replaces this).
WEB_OPERATE = f"{WEB_NAME}=operate"


def run(args: argparse.Namespace, ctx: Context) -> int:
    files = args.filename or ["examples/demo.yaml"]
    try:
        specs = load(files)
    except CliError as exc:  # one line per mistake, as apply reports them
        print(exc.message, file=sys.stderr)
        return 1
    # Each spec under its owner, as apply has it (a `ps -o yaml` listing of
    # several owners keeps each one's).
    for owner, group in owner_groups(specs, files).items():
        for spec in group:
            spec.labels[OWNER_LABEL] = owner
    try:
        Path(args.state_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(str(unusable_state_dir(args.state_dir, exc))) from None
    # The containers launched below inherit it: one trace file for everything.
    os.environ.setdefault(
        "PYCONTAINER_TRACES_FILE", str((Path(args.state_dir) / "traces.jsonl").resolve())
    )
    try:
        provider = configure_tracing("pycontainer-up")
        log_provider = configure_log_export("pycontainer-up")
    except TelemetryConfigError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:  # its trace file, in a read-only state directory
        raise CliError(
            f"cannot write {exc.filename!r}: {exc.strerror or exc}: "
            "make it writable, or give another --state-dir"
        ) from None
    try:
        return asyncio.run(_up(args, specs))
    except StartRefused as exc:  # another manager has the address or the state
        raise CliError(str(exc)) from None
    finally:
        if provider is not None:
            provider.shutdown()
        if log_provider is not None:
            log_provider.shutdown()


def _hung_up(stop: asyncio.Event) -> None:
    """The terminal closed (SIGHUP): stop everything gracefully, as Ctrl-C
    does, rather than die and leave the containers running unowned."""
    _silence()
    stop.set()


# A write to a terminal that went away (EIO) or to a reader that ended, as
# `make run | tee` on Ctrl-C (EPIPE).
_GONE = frozenset({errno.EIO, errno.EPIPE})


def _silence() -> None:
    """Send what is printed from now on nowhere: the terminal is gone, and a
    write failing there would end the stop half done."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def _say(text: str, file: TextIO | None = None) -> None:
    """Print a line (to stdout, or ``file``); once the terminal is gone (its
    SIGHUP perhaps not handled yet), print nowhere rather than fail."""
    try:
        print(text, file=file, flush=True)
    except OSError as exc:
        if exc.errno not in _GONE:
            raise
        _silence()


async def _up(args: argparse.Namespace, specs: list[spec_pb2.ContainerSpec]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, _hung_up, stop)
    if args.http_listen is None:
        args.http_listen = WEB_LISTEN
    if not any(b.partition("=")[0].strip() == WEB_NAME for b in args.role):
        args.role = [*args.role, WEB_OPERATE]  # unless --role binds it otherwise
    manager = Manager(
        ManagerSettings(listen=args.listen, state_dir=args.state_dir, **tls_settings(args))
    )
    await manager.start()
    print(f"manager on {manager.address}  ({_client_hint(args, manager)})", flush=True)
    url = web_url(manager)
    print(f"web view on {url}", flush=True)
    failures = 0
    for spec in specs:
        if spec.runtime == spec_pb2.RUNTIME_KIND_RUNC and shutil.which("runc") is None:
            _say(f"note: skipping {spec.name}: runc is not installed", sys.stderr)
            continue
        try:
            # One spec per apply, without prune: one bad spec must not hide
            # the others, and nothing else the owner has is touched.
            request = manager_pb2.ApplySpecsRequest(specs=[spec], owner=spec.labels[OWNER_LABEL])
            response = await manager.apply(request)
        except Exception as exc:
            failures += 1
            _say(f"error: {spec.name}: {exc}", sys.stderr)
            continue
        for change in response.changes:
            _say(f"{change.name}: {ACTION_WORDS.get(change.action, '?')} ({change.detail})")
    deadline = time.monotonic() + args.duration.total_seconds() if args.duration else None
    printed = 0
    if args.headless:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            printed = _print_events(manager, printed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    else:
        try:
            with Live(_view(manager, url), refresh_per_second=4, screen=False) as live:
                while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                    live.update(_view(manager, url))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            _hung_up(stop)  # the terminal went before its SIGHUP was handled
    _say(f"stopping every container (grace {format_duration(args.grace)})...")
    # One trace: this span -> each stop command -> each container's on_stop.
    with trace.get_tracer("pycontainer.cli").start_as_current_span("pycontainer up: stop all"):
        await manager.shutdown_containers(args.grace)
    _print_events(manager, printed if args.headless else len(manager.events.history()))
    await asyncio.sleep(0.5)  # let the processes exit and report
    await manager.close_runtimes()
    await manager.stop()
    _say("stopped")
    return 1 if failures else 0


def _client_hint(args: argparse.Namespace, manager: Manager) -> str:
    """The CLI line that reaches this manager from here."""
    words = [".venv/bin/pycontainer"]
    if args.listen != DEFAULT_MANAGER:
        words.append(f"--manager {manager.address}")
    if manager.trust.insecure:
        words.append("--insecure")
    elif os.path.normpath(args.state_dir) != "state":
        words.append(f"--cert-dir {manager.trust.admin_dir}")
    return " ".join([*words, "ps"])


def _print_events(manager: Manager, printed: int) -> int:
    history = manager.events.history()
    for event in history[printed:]:
        _say(_event_line(event))
    return len(history)


def _event_line(event: manager_pb2.Event) -> str:
    """An event as the events verb words it: NAME/SHORT-ID and the table's state words."""
    subject = event_subject(event.container_name, event.container_id)
    return f"{local_time(event.time)}  {subject:<24} {event_message(event.message)}"


def shown_in_view(manager: Manager) -> list[manager_pb2.Container]:
    """The live view's rows: what lives, and what ended while this manager
    ran (a finish time is noted only then); the records of earlier runs that
    the store keeps stay out (`ps -a` lists them)."""
    return [
        e.to_proto()
        for e in sorted(manager.entries.values(), key=lambda e: (e.name, e.create_time))
        if not e.terminal or e.finish_time is not None
    ]


def _view(manager: Manager, url: str | None) -> Group:
    containers = shown_in_view(manager)
    lines = [Text("recent events", style="bold")]
    for event in manager.events.history()[-_EVENTS_SHOWN:]:
        lines.append(Text(_event_line(event)))
    title = Text(
        f"pycontainer manager on {manager.address} — Ctrl-C stops everything gracefully",
        style="bold cyan",
    )
    web = [Text(f"web view: {url}", style="cyan")] if url else []
    return Group(title, *web, container_table(containers).rich(), Text(""), *lines)
