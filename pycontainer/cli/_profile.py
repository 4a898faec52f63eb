"""`pycontainer profile ID`: threads, asyncio tasks, lock contention and an
optional CPU profile, from the container's own Management endpoint (found
through the manager)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..v1 import container_pb2, management_pb2, management_pb2_grpc, manager_pb2, profile_pb2
from ._client import (
    CliError,
    add_manager_option,
    connect,
    rpc_error,
    show,
    spinner,
    stdout_console,
)
from ._duration import DURATION_HELP, duration_arg, format_duration, to_proto
from ._render import local_time, plain_table

_FORMATS = {
    "pprof": profile_pb2.CPU_PROFILE_FORMAT_PPROF,
    "collapsed": profile_pb2.CPU_PROFILE_FORMAT_COLLAPSED,
}
_EXTENSIONS = {"pprof": ".cpu.pb.gz", "collapsed": ".cpu.folded"}
_DEFAULT_CPU_NS = 10_000_000_000
_MAX_CPU_NS = 300_000_000_000


def _cpu(text: str) -> int:
    ns = duration_arg(text)
    if not 0 < ns <= _MAX_CPU_NS:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 5m, got {text!r}")
    return ns


def _hz(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be from 1 to 1000, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="threads, tasks, locks and a CPU profile of a container",
        description="Ask a container's Management endpoint (found through the manager) for "
        "its threads and their stacks, asyncio tasks and tracked-lock contention, and, "
        "with --cpu or -o, sample its CPU and write the profile to a file (pprof, as "
        "'go tool pprof' and speedscope read, or collapsed stacks for flamegraph.pl).",
    )
    parser.add_argument("container", metavar="ID", help="container id or name")
    parser.add_argument(
        "--cpu",
        type=_cpu,
        metavar="DURATION",
        help=f"sample the CPU this long, {DURATION_HELP} (at most 5m; default with -o: 10s)",
    )
    parser.add_argument(
        "--hz", type=_hz, default=0, help="samples per second (default 100, at most 1000)"
    )
    parser.add_argument(
        "-o",
        "--out",
        metavar="FILE",
        help="where to write the CPU profile ('-' for stdout; default with --cpu: "
        "ID.cpu.pb.gz or ID.cpu.folded)",
    )
    parser.add_argument(
        "--format",
        choices=tuple(_FORMATS),
        default="pprof",
        help="CPU profile format (default: pprof)",
    )
    parser.add_argument("--stacks", action="store_true", help="print every thread's stack")
    add_manager_option(parser)
    parser.set_defaults(func=run)


def management_address(container: manager_pb2.Container) -> str:
    """The address of the container's Management endpoint; CliError without one."""
    for endpoint in container.identity.endpoints:
        if endpoint.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT:
            return endpoint.address
    raise CliError(f"container {container.identity.id} advertises no Management endpoint")


def run(args: argparse.Namespace) -> int:
    cpu_ns: int | None = args.cpu
    if cpu_ns is None and args.out:
        cpu_ns = _DEFAULT_CPU_NS
    with connect(args) as client:
        container = client.call(
            client.stub.GetContainer, manager_pb2.GetContainerRequest(container=args.container)
        ).container
    address = management_address(container)
    request = management_pb2.GetProfileRequest(cpu_sample_hz=args.hz)
    if cpu_ns:
        request.cpu_duration.CopyFrom(to_proto(cpu_ns))
        request.cpu_format = _FORMATS[args.format]
    timeout = 30.0 + (cpu_ns or 0) / 1e9
    doing = (
        f"sampling the CPU of {container.identity.id} for {format_duration(cpu_ns)}"
        if cpu_ns
        else f"profiling {container.identity.id}"
    )
    with grpc.insecure_channel(address) as channel, spinner(doing):
        stub = management_pb2_grpc.ManagementStub(channel)
        try:
            profile = stub.GetProfile(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise rpc_error(
                exc, address, server=f"the Management endpoint of {container.identity.id}"
            ) from None

    if args.out == "-":
        sys.stdout.buffer.write(profile.cpu_profile.data)
        sys.stdout.flush()
        return 0
    console = stdout_console()
    summarize(console, container, address, profile, stacks=args.stacks)
    if cpu_ns:
        out = Path(args.out or f"{container.identity.id}{_EXTENSIONS[args.format]}")
        write_file(out, profile.cpu_profile.data)
        cpu = profile.cpu_profile
        period = _ms(cpu.sample_period.ToNanoseconds())
        line = Text("CPU profile:", style="bold")
        line.append(
            f"  {cpu.samples} samples over {_ms(cpu.duration.ToNanoseconds())} "
            f"(every {period}), {args.format}, written to {out}"
        )
        show(console, Text(""))
        show(console, line)
    return 0


def _ms(ns: int) -> str:
    """A duration to the millisecond, for reading."""
    return format_duration(round(ns, -6))


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
    console: Console,
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
    show(console, grid)

    threads = plain_table("THREAD", "NATIVE ID", "DAEMON", "WAITING FOR", "WHERE")
    for t in sorted(profile.threads, key=lambda t: t.name):
        wait = "-"
        if t.waiting_for_lock:
            wait = f"{t.waiting_for_lock} ({_ms(t.waiting_for.ToNanoseconds())})"
        threads.add_row(
            t.name, str(t.native_id), "yes" if t.daemon else "no", wait, _where(list(t.frames))
        )
    show(console, Text(""), threads)
    if stacks:
        for t in profile.threads:
            show(console, Text(f"  {t.name}:", style="bold"))
            for frame in t.frames:
                show(console, Text(f"    {frame.file}:{frame.line} in {frame.function}"))

    if profile.tasks:
        tasks = plain_table("TASK", "COROUTINE", "THREAD", "DONE", "WHERE")
        for task in profile.tasks:
            tasks.add_row(
                task.name,
                task.coroutine,
                task.thread_name,
                "yes" if task.done else "no",
                _where(list(task.frames)),
            )
        show(console, Text(""), tasks)

    if profile.locks:
        locks = plain_table(
            "LOCK", "ACQUIRED", "CONTENDED", "TOTAL WAIT", "MAX WAIT", "HOLDER", "WAITERS"
        )
        for lock in sorted(profile.locks, key=lambda lock: -lock.total_wait.ToNanoseconds()):
            locks.add_row(
                lock.name,
                str(lock.acquisitions),
                str(lock.contentions),
                _ms(lock.total_wait.ToNanoseconds()),
                _ms(lock.max_wait.ToNanoseconds()),
                lock.holder or "-",
                str(lock.waiters),
            )
        show(console, Text(""), locks)
