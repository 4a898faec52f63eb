"""Verbs about containers: ps, describe, stop, pause, resume, checkpoint,
restore, evict, scale."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import yaml
from google.protobuf import timestamp_pb2
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ..v1 import container_pb2, manager_pb2
from ._client import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    CliError,
    ManagerClient,
    add_manager_option,
    add_output_option,
    connect,
    error_console,
    message_dict,
    print_data,
    show,
    spinner,
    stdout_console,
)
from ._duration import DURATION_HELP, duration_arg, format_duration, to_proto
from ._render import (
    STATE_NAMES,
    age,
    container_table,
    human_bytes,
    local_time,
    parse_state,
    resources_text,
    short_enum,
    state_name,
    state_text,
)

# Time a command other than a stop may take on the manager (30s), and some.
_COMMAND_TIMEOUT = 60.0
# The manager grants a stop its grace period, up to 60s of extensions, and 10s.
_STOP_SLACK = 60.0 + 30.0


def _states(text: str) -> list[int]:
    try:
        return [parse_state(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _replicas(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ps = subparsers.add_parser(
        "ps",
        help="list containers",
        description="List the manager's containers, sorted by name.",
    )
    ps.add_argument(
        "-l",
        "--selector",
        default="",
        metavar="SELECTOR",
        help="label selector, such as app=web,tier!=db (Kubernetes syntax)",
    )
    ps.add_argument(
        "--state",
        type=_states,
        action="append",
        default=[],
        metavar="STATE",
        help=f"only containers in this state (repeat or comma-separate: {', '.join(STATE_NAMES)})",
    )
    ps.add_argument("--show-labels", action="store_true", help="add a LABELS column")
    add_output_option(ps, formats=("table", "json", "yaml", "id"))
    add_manager_option(ps)
    ps.set_defaults(func=run_ps)

    describe = subparsers.add_parser(
        "describe",
        help="show everything about one container",
        description="Show everything the manager knows about a container: identity, state, "
        "process, endpoints and the spec it was launched from.",
    )
    describe.add_argument("container", metavar="ID", help="container id or name")
    add_output_option(describe, formats=("table", "json", "yaml"))
    add_manager_option(describe)
    describe.set_defaults(func=run_describe)

    stop = subparsers.add_parser(
        "stop",
        help="stop containers gracefully",
        description="Stop containers gracefully: health turns NOT_SERVING, on_stop runs "
        "with the grace period, and a container still stopping after it fails.",
    )
    stop.add_argument("containers", nargs="+", metavar="ID", help="container ids or names")
    stop.add_argument(
        "--grace",
        type=duration_arg,
        metavar="DURATION",
        help=f"grace period, {DURATION_HELP} (default: the container's own, 30s unless set)",
    )
    stop.add_argument("--reason", default="", help="why, for the hook and the events")
    add_manager_option(stop)
    stop.set_defaults(func=run_stop)

    for name, verb_help in (
        ("pause", "pause running containers"),
        ("resume", "resume paused containers"),
    ):
        parser = subparsers.add_parser(name, help=verb_help, description=verb_help.capitalize())
        parser.add_argument("containers", nargs="+", metavar="ID", help="container ids or names")
        add_manager_option(parser)
        parser.set_defaults(func=run_pause if name == "pause" else run_resume)

    checkpoint = subparsers.add_parser(
        "checkpoint",
        help="take and store a checkpoint of a container",
        description="Ask the container for its state (on_checkpoint) and store it in the "
        "manager; prints the checkpoint's id, size and SHA-256.",
    )
    checkpoint.add_argument("container", metavar="ID", help="container id or name")
    add_output_option(checkpoint, formats=("table", "json", "yaml"))
    add_manager_option(checkpoint)
    checkpoint.set_defaults(func=run_checkpoint)

    restore = subparsers.add_parser(
        "restore",
        help="give a stored checkpoint back to a container",
        description="Give a stored checkpoint to the container's on_restore.",
    )
    restore.add_argument("container", metavar="ID", help="container id or name")
    restore.add_argument(
        "--checkpoint",
        default="",
        metavar="CID",
        help="checkpoint id (default: the newest of containers with this name)",
    )
    add_manager_option(restore)
    restore.set_defaults(func=run_restore)

    evict = subparsers.add_parser(
        "evict",
        help="evict containers as the scheduler would",
        description="Stop containers with reason EVICTED (checkpointed first when their "
        "spec says checkpointPolicy: OnStop).",
    )
    evict.add_argument("containers", nargs="+", metavar="ID", help="container ids or names")
    evict.add_argument(
        "--grace",
        type=duration_arg,
        metavar="DURATION",
        help=f"grace period, {DURATION_HELP} (default: the container's own)",
    )
    evict.add_argument("--reason", default="", help="why (default: evicted by an operator)")
    add_manager_option(evict)
    evict.set_defaults(func=run_evict)

    scale = subparsers.add_parser(
        "scale",
        help="change the number of replicas",
        description="Scale the replicas of a container's name: up asks the container to "
        "replicate itself (on_replicate) and launches the new ones from its spec; down "
        "stops the youngest.",
    )
    scale.add_argument("container", metavar="ID", help="container id or name")
    scale.add_argument(
        "--replicas", type=_replicas, required=True, metavar="N", help="desired replicas, 0 or more"
    )
    add_output_option(scale, formats=("table", "json", "yaml"))
    add_manager_option(scale)
    scale.set_defaults(func=run_scale)


# -- ps, describe --------------------------------------------------------------------------
def run_ps(args: argparse.Namespace) -> int:
    states = [state for group in args.state for state in group]
    with connect(args) as client:
        response = client.call(
            client.stub.ListContainers,
            manager_pb2.ListContainersRequest(label_selector=args.selector, states=states),
        )
    if args.output in ("json", "yaml"):
        print_data(message_dict(response), args.output)
    elif args.output == "id":
        for c in response.containers:
            print(c.identity.id)
    elif not response.containers:
        error_console().print("no containers")
    else:
        show(stdout_console(), container_table(response.containers, show_labels=args.show_labels))
    return 0


def _get(client: ManagerClient, container: str) -> manager_pb2.Container:
    response = client.call(
        client.stub.GetContainer, manager_pb2.GetContainerRequest(container=container)
    )
    return response.container


def run_describe(args: argparse.Namespace) -> int:
    with connect(args) as client:
        container = _get(client, args.container)
    if args.output in ("json", "yaml"):
        print_data(message_dict(container), args.output)
    else:
        describe(stdout_console(), container)
    return 0


def _when(ts: timestamp_pb2.Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return f"{local_time(ts, date=True)} ({age(ts)} ago)"


def describe(console: Console, c: manager_pb2.Container) -> None:
    """Everything GetContainer returns, as labelled lines and sections."""
    identity = c.identity
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    cpu, memory = resources_text(identity.resources)
    grace = (
        format_duration(identity.grace_period.ToNanoseconds())
        if identity.HasField("grace_period")
        else "30s (default)"
    )
    rows: list[tuple[str, str | Text]] = [
        ("Name:", identity.name),
        ("ID:", identity.id),
        ("Version:", identity.version or "-"),
        ("State:", state_text(c.state)),
        ("Connected:", "yes" if c.connected else "no"),
        ("PID:", str(c.pid) if c.pid else "-"),
        ("Priority:", str(identity.priority)),
        ("Resources:", f"cpu {cpu}, memory {memory}"),
        ("Grace period:", grace),
        ("Created:", _when(c.create_time)),
        ("Started:", _when(c.start_time)),
        ("Restarts:", str(c.restarts)),
        ("Exit code:", str(c.exit_code) if c.HasField("exit_code") else "-"),
        ("Error:", Text(c.error, style="red") if c.error else "-"),
        ("Last checkpoint:", c.last_checkpoint_id or "-"),
        (
            "Labels:",
            "\n".join(f"{k}={v}" for k, v in sorted(identity.labels.items())) or "-",
        ),
    ]
    for key, value in rows:
        grid.add_row(key, value)
    show(console, grid)
    if identity.endpoints:
        show(console, Text("Endpoints:", style="bold"))
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for header in ("NAME", "KIND", "ADDRESS"):
            table.add_column(header, no_wrap=True)
        for endpoint in identity.endpoints:
            kind = short_enum(container_pb2.EndpointKind.Name(endpoint.kind))
            table.add_row(endpoint.name, kind, endpoint.address)
        show(console, Padding(table, (0, 0, 0, 2), expand=False))
    else:
        show(console, Text("Endpoints:", style="bold"), "-")
    if c.HasField("spec") and c.spec.name:
        from ..spec import spec_to_dict

        show(console, Text("Spec:", style="bold"))
        text = yaml.safe_dump(spec_to_dict(c.spec), sort_keys=False, allow_unicode=True)
        show(console, Padding(Text(text.rstrip("\n")), (0, 0, 0, 2), expand=False))
    else:
        show(console, Text("Spec:", style="bold"), "- (it dialled in on its own)")


# -- commands on several containers ----------------------------------------------------------
def _label(c: manager_pb2.Container) -> str:
    identity = c.identity
    return identity.id if identity.name == identity.id else f"{identity.name} ({identity.id})"


def _each(
    client: ManagerClient,
    names: Sequence[str],
    action: Callable[[str], str],
    doing: str,
) -> int:
    """``action`` on every container at once (a stop's grace periods overlap);
    its lines in the order given; 1 if any failed, 2 if the manager is gone."""
    results: list[str | CliError] = []

    def attempt(name: str) -> str | CliError:
        try:
            return action(name)
        except CliError as exc:
            return exc

    with spinner(f"{doing} {', '.join(names)}"), ThreadPoolExecutor(min(len(names), 32)) as pool:
        results = list(pool.map(attempt, names))
    unreachable = [r for r in results if isinstance(r, CliError) and r.code == EXIT_UNREACHABLE]
    if unreachable:
        raise unreachable[0]
    code = 0
    for name, result in zip(names, results, strict=True):
        if isinstance(result, CliError):
            print(f"error: {name}: {result.message}", file=sys.stderr)
            code = EXIT_FAILED
        else:
            print(result)
    sys.stdout.flush()
    return code


def _grace_timeout(grace_ns: int | None) -> float | None:
    return None if grace_ns is None else grace_ns / 1e9 + _STOP_SLACK


def run_stop(args: argparse.Namespace) -> int:
    with connect(args) as client:

        def stop(name: str) -> str:
            request = manager_pb2.StopContainerRequest(container=name, message=args.reason)
            if args.grace is not None:
                request.grace_period.CopyFrom(to_proto(args.grace))
            response = client.call(
                client.stub.StopContainer, request, timeout=_grace_timeout(args.grace)
            )
            killed = " (killed at the end of its grace period)" if response.killed else ""
            return f"{_label(response.container)}: {state_name(response.container.state)}{killed}"

        grace = f" (grace {format_duration(args.grace)})" if args.grace is not None else ""
        return _each(client, args.containers, stop, f"stopping{grace}")


def run_pause(args: argparse.Namespace) -> int:
    with connect(args) as client:

        def pause(name: str) -> str:
            response = client.call(
                client.stub.PauseContainer,
                manager_pb2.PauseContainerRequest(container=name),
                timeout=_COMMAND_TIMEOUT,
            )
            return f"{_label(response.container)}: {state_name(response.container.state)}"

        return _each(client, args.containers, pause, "pausing")


def run_resume(args: argparse.Namespace) -> int:
    with connect(args) as client:

        def resume(name: str) -> str:
            response = client.call(
                client.stub.ResumeContainer,
                manager_pb2.ResumeContainerRequest(container=name),
                timeout=_COMMAND_TIMEOUT,
            )
            return f"{_label(response.container)}: {state_name(response.container.state)}"

        return _each(client, args.containers, resume, "resuming")


def run_evict(args: argparse.Namespace) -> int:
    with connect(args) as client:

        def evict(name: str) -> str:
            request = manager_pb2.EvictContainerRequest(container=name, message=args.reason)
            if args.grace is not None:
                request.grace_period.CopyFrom(to_proto(args.grace))
            response = client.call(
                client.stub.EvictContainer, request, timeout=_grace_timeout(args.grace)
            )
            c = response.container
            return f"{_label(c)}: {state_name(c.state)} (evicted)"

        return _each(client, args.containers, evict, "evicting")


# -- checkpoint, restore, scale ----------------------------------------------------------------
def run_checkpoint(args: argparse.Namespace) -> int:
    with connect(args) as client, spinner(f"checkpointing {args.container}"):
        response = client.call(
            client.stub.CheckpointContainer,
            manager_pb2.CheckpointContainerRequest(container=args.container),
            timeout=_COMMAND_TIMEOUT,
        )
    if args.output in ("json", "yaml"):
        print_data(message_dict(response), args.output)
        return 0
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    size = f"{response.size_bytes} bytes"
    if response.size_bytes >= 1024:
        size += f" ({human_bytes(response.size_bytes)})"
    grid.add_row("Checkpoint:", response.checkpoint_id)
    grid.add_row("Size:", size)
    grid.add_row("SHA-256:", response.sha256)
    grid.add_row("Created:", local_time(response.create_time, date=True))
    show(stdout_console(), grid)
    return 0


def run_restore(args: argparse.Namespace) -> int:
    with connect(args) as client, spinner(f"restoring {args.container}"):
        response = client.call(
            client.stub.RestoreContainer,
            manager_pb2.RestoreContainerRequest(
                container=args.container, checkpoint_id=args.checkpoint
            ),
            timeout=_COMMAND_TIMEOUT,
        )
    source = f"checkpoint {args.checkpoint}" if args.checkpoint else "its newest checkpoint"
    c = response.container
    print(f"{_label(c)}: restored from {source} ({state_name(c.state)})")
    return 0


def run_scale(args: argparse.Namespace) -> int:
    with connect(args) as client, spinner(f"scaling {args.container} to {args.replicas}"):
        response = client.call(
            client.stub.ScaleContainer,
            manager_pb2.ScaleContainerRequest(container=args.container, replicas=args.replicas),
            timeout=None,
        )
    if args.output in ("json", "yaml"):
        print_data(message_dict(response), args.output)
    elif not response.containers:
        print(f"{args.container}: scaled to 0 replicas")
    else:
        show(stdout_console(), container_table(response.containers))
    return 0
