"""`pycontainer profile ID`: threads, asyncio tasks, lock contention and an
optional CPU profile, from the container's own Management endpoint (found
through the manager)."""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

from google.protobuf import duration_pb2
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..client import PLAINTEXT, CallError, ManagementClient, Transport, TransportError
from ..units import duration_from_proto, duration_to_proto, format_duration
from ..v1 import management_pb2, manager_pb2, profile_pb2
from ..v1.container_pb2 import ENDPOINT_KIND_MANAGEMENT
from ._context import Context
from ._errors import CliError, from_call
from ._output import console, show, spinner
from ._render import local_time, management_address, plain_table

_FORMATS = {
    "pprof": profile_pb2.CPU_PROFILE_FORMAT_PPROF,
    "collapsed": profile_pb2.CPU_PROFILE_FORMAT_COLLAPSED,
}
_EXTENSIONS = {"pprof": ".cpu.pb.gz", "collapsed": ".cpu.folded"}
_DEFAULT_CPU = datetime.timedelta(seconds=10)
# Time a profile takes beyond its CPU sampling.
_PROFILE_TIMEOUT = datetime.timedelta(seconds=30)


def endpoint_of(container: manager_pb2.Container) -> str:
    """The address of the container's Management endpoint; CliError without one."""
    address = management_address(container)
    if not address:
        raise CliError(f"container {container.identity.id} advertises no Management endpoint")
    return address


def container_transport(manager: Transport, container: manager_pb2.Container) -> Transport:
    """How to dial a container's Management endpoint: mutual TLS with the
    certificate the manager is dialled with, checking the container's, when
    the endpoint serves it; else plaintext."""
    tls = any(e.tls for e in container.identity.endpoints if e.kind == ENDPOINT_KIND_MANAGEMENT)
    if not tls or manager.cert_dir is None:
        return PLAINTEXT
    from ..security import container as container_identity

    return Transport(manager.cert_dir, container_identity(container.identity.id))


def run(args: argparse.Namespace, ctx: Context) -> int:
    cpu: datetime.timedelta | None = args.cpu
    if cpu is None and args.out:
        cpu = _DEFAULT_CPU
    with ctx.manager(args) as client:
        container = client.get_container(
            manager_pb2.GetContainerRequest(container=args.container)
        ).container
        transport = client.transport
    address = endpoint_of(container)
    request = management_pb2.GetProfileRequest(cpu_sample_hz=args.hz)
    if cpu:
        request.cpu_duration.CopyFrom(duration_to_proto(cpu))
        request.cpu_format = _FORMATS[args.format]
    timeout = _PROFILE_TIMEOUT + (cpu or datetime.timedelta(0))
    doing = (
        f"sampling the CPU of {container.identity.id} for {format_duration(cpu)}"
        if cpu
        else f"profiling {container.identity.id}"
    )
    try:
        management = ManagementClient(address, transport=container_transport(transport, container))
    except TransportError as exc:
        raise CliError(f"the Management endpoint of {container.identity.id}: {exc}") from None
    with management, spinner(ctx, doing):
        try:
            profile = management.get_profile(request, timeout=timeout)
        except CallError as exc:
            raise from_call(
                exc, server=f"the Management endpoint of {container.identity.id}"
            ) from None

    if args.out == "-":
        ctx.stdout.flush()
        buffer = getattr(ctx.stdout, "buffer", None)
        if buffer is None:
            raise CliError("-o -: stdout takes no bytes here")
        buffer.write(profile.cpu_profile.data)
        buffer.flush()
        return 0
    out = console(ctx)
    summarize(out, container, address, profile, stacks=args.stacks)
    if cpu:
        path = Path(args.out or f"{container.identity.id}{_EXTENSIONS[args.format]}")
        write_file(path, profile.cpu_profile.data)
        cpu_profile = profile.cpu_profile
        line = Text("CPU profile:", style="bold")
        line.append(
            f"  {cpu_profile.samples} samples over {_ms(cpu_profile.duration)} "
            f"(every {_ms(cpu_profile.sample_period)}), {args.format}, written to {path}"
        )
        show(out, Text(""))
        show(out, line)
    return 0


def _ms(duration: duration_pb2.Duration) -> str:
    """A duration to the millisecond, for reading."""
    value = duration_from_proto(duration)
    return format_duration(datetime.timedelta(milliseconds=round(value.total_seconds() * 1000)))


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` whole or not at all (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


def _where(frames: list[profile_pb2.StackFrame]) -> str:
    if not frames:
        return "-"
    frame = frames[-1]  # innermost last
    return f"{frame.function} ({os.path.basename(frame.file)}:{frame.line})"


def summarize(
    out: Console,
    container: manager_pb2.Container,
    address: str,
    profile: management_pb2.GetProfileResponse,
    *,
    stacks: bool = False,
) -> None:
    """Threads, tasks and locks, readable."""
    identity = container.identity
    waiting = [t for t in profile.threads if t.waiting_for_lock]
    daemons = sum(t.daemon for t in profile.threads)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("Container:", f"{identity.name} ({identity.id}) at {address}")
    grid.add_row("Taken:", local_time(profile.time, date=True))
    grid.add_row(
        "Threads:",
        f"{len(profile.threads)} ({daemons} daemon, {len(waiting)} waiting for a lock)",
    )
    done = sum(t.done for t in profile.tasks)
    grid.add_row("Tasks:", f"{len(profile.tasks)} asyncio tasks ({done} done)")
    contended = sum(1 for lock in profile.locks if lock.contentions)
    grid.add_row("Locks:", f"{len(profile.locks)} tracked ({contended} contended)")
    show(out, grid)

    threads = plain_table("THREAD", "NATIVE ID", "DAEMON", "WAITING FOR", "WHERE")
    for t in sorted(profile.threads, key=lambda t: t.name):
        wait = "-"
        if t.waiting_for_lock:
            wait = f"{t.waiting_for_lock} ({_ms(t.waiting_for)})"
        # Names come from the container: Text, never rich markup ("[/...]" in a name).
        threads.add_row(
            Text(t.name),
            str(t.native_id),
            "yes" if t.daemon else "no",
            Text(wait),
            Text(_where(list(t.frames))),
        )
    show(out, Text(""), threads)
    if stacks:
        for t in profile.threads:
            show(out, Text(f"  {t.name}:", style="bold"))
            for frame in t.frames:
                show(out, Text(f"    {frame.file}:{frame.line} in {frame.function}"))

    if profile.tasks:
        tasks = plain_table("TASK", "COROUTINE", "THREAD", "DONE", "WHERE")
        for task in profile.tasks:
            tasks.add_row(
                Text(task.name),
                Text(task.coroutine),
                Text(task.thread_name),
                "yes" if task.done else "no",
                Text(_where(list(task.frames))),
            )
        show(out, Text(""), tasks)

    if profile.locks:
        locks = plain_table(
            "LOCK", "ACQUIRED", "CONTENDED", "TOTAL WAIT", "MAX WAIT", "HOLDER", "WAITERS"
        )
        for lock in sorted(profile.locks, key=lambda lock: -duration_from_proto(lock.total_wait)):
            locks.add_row(
                Text(lock.name),
                str(lock.acquisitions),
                str(lock.contentions),
                _ms(lock.total_wait),
                _ms(lock.max_wait),
                Text(lock.holder or "-"),
                str(lock.waiters),
            )
        show(out, Text(""), locks)
