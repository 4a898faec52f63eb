"""Verbs about containers: ps, describe, stop, pause, resume, checkpoint,
restore, evict, scale."""

from __future__ import annotations

import argparse
import datetime
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .._errors import echo
from .._meshrules import DEFAULT_SERVICE_ENDPOINT
from ..client import CallError, ManagerClient
from ..units import DEFAULT_GRACE_PERIOD, duration_field, duration_to_proto, format_duration
from ..v1 import container_pb2, manager_pb2, mesh_pb2
from ._args import LIVE_STATES
from ._context import Context
from ._errors import EXIT_FAILED, EXIT_UNREACHABLE, CliError, Interrupted, from_call
from ._operation import once
from ._output import console, message_dict, print_data, print_table, show, spinner
from ._render import (
    age,
    container_table,
    human_bytes,
    local_time,
    resources_text,
    short_enum,
    state_cell,
    state_name,
)
from ._table import Cell, Styled, TableRows, indented, plain_grid, plain_stream, plain_text

if TYPE_CHECKING:
    from google.protobuf import duration_pb2, timestamp_pb2
    from rich.console import Console

# Time a command other than a stop may take on the manager (30s), and some.
_COMMAND_TIMEOUT = datetime.timedelta(seconds=60)
# The manager grants a stop its grace period, up to 60s of extensions, and 10s.
_STOP_SLACK = datetime.timedelta(seconds=60 + 30)


# -- ps, describe --------------------------------------------------------------------------
def run_ps(args: argparse.Namespace, ctx: Context) -> int:
    states = [state for group in args.state for state in group]
    if not states and not args.all:
        states = list(LIVE_STATES)
    with ctx.manager(args) as client:
        response = client.list_containers(
            manager_pb2.ListContainersRequest(label_selector=args.selector, states=states)
        )
        missing: list[str] = []
        if args.containers:  # ps NAME (kubectl get pods NAME): those, by id or by name
            wanted = set(args.containers)
            kept = [c for c in response.containers if wanted & {c.identity.id, c.identity.name}]
            del response.containers[:]
            response.containers.extend(kept)
            found = {key for c in kept for key in (c.identity.id, c.identity.name)}
            missing = [name for name in dict.fromkeys(args.containers) if name not in found]
            if missing:
                missing = _not_found(client, missing, args.selector, states)
    containers = list(response.containers)
    if args.output == "json":
        print_data(ctx, message_dict(response), args.output)
    elif args.output == "yaml":
        _print_specs(ctx, containers)
    elif args.output in ("id", "name"):
        for c in containers:
            ctx.out(c.identity.id if args.output == "id" else c.identity.name)
        ctx.stdout.flush()
    elif not containers:
        if not missing:
            hint = "" if args.all or states != list(LIVE_STATES) else " (-a shows stopped ones too)"
            ctx.err(f"no containers{hint}")
    else:
        table = container_table(
            containers, show_labels=args.show_labels, wide=args.output == "wide"
        )
        print_table(ctx, table)
    for line in missing:
        ctx.err(f"error: NOT_FOUND: {line}")
    return EXIT_FAILED if missing else 0


def _not_found(
    client: ManagerClient, names: list[str], selector: str, states: Sequence[int]
) -> list[str]:
    """Why each of ``names`` (ids or names ps was given) matched nothing: no
    such container at all, or one that -l or the states left out."""
    every = client.list_containers(manager_pb2.ListContainersRequest()).containers
    out = []
    for name in names:
        there = [c for c in every if name in (c.identity.id, c.identity.name)]
        if not there:
            out.append(f"no container with id or name {echo(name)}")
            continue
        seen = ", ".join(sorted({state_name(c.state) for c in there}))
        if states and not any(c.state in states for c in there):
            if list(states) == list(LIVE_STATES):
                out.append(f"no live container with id or name {echo(name)} ({seen}: -a shows it)")
            else:
                out.append(f"no container with id or name {echo(name)} in that --state ({seen})")
        else:
            out.append(f"no container with id or name {echo(name)} matches -l {selector}")
    return out


def _print_specs(ctx: Context, containers: Sequence[manager_pb2.Container]) -> None:
    """The specs the containers were launched from, one YAML document per name,
    in the spec file's own keys (``pycontainer apply -f`` reads it back); a
    container that dialled in on its own has no spec and gets a note."""
    import yaml

    from ..spec import spec_to_dict

    documents: dict[str, dict[str, object]] = {}
    for c in containers:
        if not (c.HasField("spec") and c.spec.name):
            ctx.err(f"note: {_label(c)} has no spec (it dialled in on its own)")
            continue
        documents.setdefault(c.spec.name, spec_to_dict(c.spec))
    ctx.stdout.write(
        yaml.safe_dump_all(documents.values(), sort_keys=False, allow_unicode=True)
        if documents
        else ""
    )
    ctx.stdout.flush()


def _get(client: ManagerClient, container: str) -> manager_pb2.Container:
    return client.get_container(manager_pb2.GetContainerRequest(container=container)).container


def _details(c: manager_pb2.Container) -> list[tuple[str, Cell]]:
    """describe's labelled lines: (label, value; several lines for the labels)."""
    identity = c.identity
    cpu, memory = resources_text(identity.resources)
    grace_period = duration_field(identity, "grace_period")
    grace = (
        format_duration(grace_period)
        if grace_period is not None
        else f"{format_duration(DEFAULT_GRACE_PERIOD)} (default)"
    )
    return [
        ("Name:", identity.name),
        ("ID:", identity.id),
        ("Version:", identity.version or "-"),
        ("State:", state_cell(c.state)),
        ("Connected:", "yes" if c.connected else "no"),
        ("Ready:", _ready(c)),
        ("PID:", str(c.pid) if c.pid else "-"),
        ("Priority:", str(identity.priority)),
        ("Resources:", f"cpu {cpu}, memory {memory}"),
        ("Grace period:", grace),
        ("Created:", _when(c.create_time)),
        ("Started:", _when(c.start_time)),
        ("Finished:", _when(c.finish_time)),
        ("Reason:", c.reason or "-"),
        ("Launched:", "yes (by the manager)" if c.launched else "no (it dialled in)"),
        ("Restarts:", str(c.restarts)),
        ("Exit code:", str(c.exit_code) if c.HasField("exit_code") else "-"),
        ("Error:", Styled(c.error, "red") if c.error else "-"),
        ("Last checkpoint:", c.last_checkpoint_id or "-"),
        *_mesh_details(c),
        (
            "Labels:",
            "\n".join(f"{k}={v}" for k, v in sorted(identity.labels.items())) or "-",
        ),
    ]


def _ready(c: manager_pb2.Container) -> Cell:
    """The readiness it last reported, and since when."""
    if not c.HasField("readiness"):
        return "- (never reported: taken as ready while RUNNING)"
    since = f" since {_when(c.readiness.time)}" if c.readiness.HasField("time") else ""
    if c.readiness.ready:
        return f"yes{since}"
    return Styled(f"no{since}", "yellow")


def _mesh_details(c: manager_pb2.Container) -> list[tuple[str, Cell]]:
    """The mesh service its spec serves, with the defaults spelt out (none
    when it serves none: most containers)."""
    spec = c.spec
    if not spec.HasField("service"):
        return []
    service = spec.service
    endpoint = service.endpoint or DEFAULT_SERVICE_ENDPOINT
    text = f"{service.name} (endpoint {endpoint}, subset {service.subset or spec.name})"
    if spec.proxy == mesh_pb2.MESH_PROXY_ENVOY:
        text += ", through Envoy"
    return [("Mesh service:", text)]


def _endpoints(c: manager_pb2.Container) -> TableRows | None:
    if not c.identity.endpoints:
        return None
    table = TableRows(("NAME", "KIND", "ADDRESS"))
    for endpoint in c.identity.endpoints:
        kind = short_enum(container_pb2.EndpointKind.Name(endpoint.kind))
        table.add_row(endpoint.name, kind, endpoint.address)
    return table


def _spec_yaml(c: manager_pb2.Container) -> str | None:
    if not (c.HasField("spec") and c.spec.name):
        return None
    import yaml

    from ..spec import spec_to_dict

    text: str = yaml.safe_dump(spec_to_dict(c.spec), sort_keys=False, allow_unicode=True)
    return text.rstrip("\n")


def run_describe(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client:
        container = _get(client, args.container)
    if args.output in ("json", "yaml"):
        print_data(ctx, message_dict(container), args.output)
        return 0
    details, endpoints, spec = _details(container), _endpoints(container), _spec_yaml(container)
    text = _plain_description(details, endpoints, spec) if plain_stream(ctx.stdout) else None
    if text is None:
        describe(console(ctx), details, endpoints, spec)
    else:
        ctx.stdout.write(text)
        ctx.stdout.flush()
    return 0


def _plain_description(
    details: list[tuple[str, Cell]], endpoints: TableRows | None, spec: str | None
) -> str | None:
    """describe as rich prints it off a terminal (None when a value needs rich)."""
    grid = plain_grid(details)
    table = endpoints.plain() if endpoints is not None else "-"
    if grid is None or table is None or (spec is not None and not plain_text(spec)):
        return None
    lines = [grid]
    lines += ["Endpoints:", indented(table)] if endpoints is not None else ["Endpoints: -"]
    lines += (
        ["Spec:", indented(spec)] if spec is not None else ["Spec: - (it dialled in on its own)"]
    )
    return "\n".join(lines) + "\n"


def _when(ts: timestamp_pb2.Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return f"{local_time(ts, date=True)} ({age(ts)} ago)"


def describe(
    out: Console,
    details: list[tuple[str, Cell]],
    endpoints: TableRows | None,
    spec: str | None,
) -> None:
    """Everything GetContainer returns, as labelled lines and sections."""
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for key, value in details:
        grid.add_row(
            key, Text(value.text, style=value.style) if isinstance(value, Styled) else value
        )
    show(out, grid)
    if endpoints is not None:
        show(out, Text("Endpoints:", style="bold"))
        show(out, Padding(endpoints.rich(), (0, 0, 0, 2), expand=False))
    else:
        show(out, Text("Endpoints:", style="bold"), "-")
    if spec is not None:
        show(out, Text("Spec:", style="bold"))
        show(out, Padding(Text(spec), (0, 0, 0, 2), expand=False))
    else:
        show(out, Text("Spec:", style="bold"), "- (it dialled in on its own)")


# -- commands on several containers ----------------------------------------------------------
def _label(c: manager_pb2.Container) -> str:
    identity = c.identity
    return identity.id if identity.name == identity.id else f"{identity.name} ({identity.id})"


_ENDED_STATES = (container_pb2.LIFECYCLE_STATE_STOPPED, container_pb2.LIFECYCLE_STATE_FAILED)


def _targets(
    client: ManagerClient,
    args: argparse.Namespace,
    states: Sequence[container_pb2.LifecycleState.ValueType] = LIVE_STATES,
) -> list[str]:
    """The containers a verb acts on: those named, or those in ``states`` that
    -l or --all select."""
    chosen = bool(args.selector) or args.all_containers
    if args.containers and chosen:
        raise CliError("give container ids or names, or -l SELECTOR / --all, not both")
    if args.containers:
        return list(args.containers)
    if not chosen:
        raise CliError(f"{args.command}: give container ids or names, -l SELECTOR or --all")
    response = client.list_containers(
        manager_pb2.ListContainersRequest(label_selector=args.selector, states=states)
    )
    return [c.identity.id for c in sorted(response.containers, key=lambda c: c.identity.name)]


def _each(
    ctx: Context,
    names: Sequence[str],
    action: Callable[[str], str],
    doing: str,
    going_on: str,
) -> int:
    """``action`` on every container at once (a stop's grace periods overlap);
    its lines in the order given; 1 if any failed, 2 if the manager is gone.
    Ctrl-C ends the wait at once: the manager carries on (it owns a stop), and
    one line says which containers are ``going_on`` (such as "still stopping")."""
    if not names:
        ctx.err("no live containers match")
        return 0

    def attempt(name: str) -> str | CliError:
        try:
            return action(name)
        except CallError as exc:
            return from_call(exc)
        except CliError as exc:
            return exc

    results: list[str | CliError | None] = [None] * len(names)
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(names)):
        work.put(index)

    def worker() -> None:
        while True:
            try:
                index = work.get_nowait()
            except queue.Empty:
                return
            results[index] = attempt(names[index])

    # Daemon threads: after Ctrl-C the process exits without waiting for a
    # call still out (closing the channel cancels it; the manager goes on).
    workers = [
        threading.Thread(target=worker, name=f"{doing}-{n}", daemon=True)
        for n in range(min(len(names), 32))
    ]
    with spinner(ctx, f"{doing} {', '.join(names)}"):
        for thread in workers:
            thread.start()
        try:
            for thread in workers:
                thread.join()
        except KeyboardInterrupt:
            pending = [n for n, r in zip(names, results, strict=True) if r is None] or list(names)
            them = "it" if len(pending) == 1 else "them"
            raise Interrupted(
                f"{', '.join(pending)} {'is' if len(pending) == 1 else 'are'} {going_on} "
                f"(the manager finishes {them}; pycontainer ps shows {them})"
            ) from None
    unreachable = [r for r in results if isinstance(r, CliError) and r.code == EXIT_UNREACHABLE]
    if unreachable:
        for error in unreachable[1:]:  # each names its own request id
            ctx.err(f"error: {error.message}")
        raise unreachable[0]
    code = 0
    for name, result in zip(names, results, strict=True):
        if isinstance(result, CliError):
            ctx.err(f"error: {name}: {result.message}")
            code = EXIT_FAILED
        elif result is not None:
            ctx.out(result)
    ctx.stdout.flush()
    return code


def _grace_timeout(grace: datetime.timedelta | None) -> datetime.timedelta | None:
    return None if grace is None else grace + _STOP_SLACK


def _grace_proto(grace: datetime.timedelta | None) -> duration_pb2.Duration | None:
    """The request's grace_period: set (even to zero: "no grace") when given."""
    return None if grace is None else duration_to_proto(grace)


def run_stop(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client:

        def stop(name: str) -> str:
            request = manager_pb2.StopContainerRequest(
                container=name, message=args.reason, grace_period=_grace_proto(args.grace)
            )
            timeout = _grace_timeout(args.grace)
            response = once(client, lambda r: client.stop_container(r, timeout=timeout), request)
            killed = " (killed at the end of its grace period)" if response.killed else ""
            return f"{_label(response.container)}: {state_name(response.container.state)}{killed}"

        grace = f" (grace {format_duration(args.grace)})" if args.grace is not None else ""
        if args.containers or not (args.selector or args.all_containers):
            return _each(ctx, _targets(client, args), stop, f"stopping{grace}", "still stopping")
        return _stop_selected(ctx, client, args, grace)


def _stop_selected(
    ctx: Context, client: ManagerClient, args: argparse.Namespace, grace: str
) -> int:
    """stop -l SELECTOR / --all: one StopContainers request, the manager
    stopping them all at once (thousands in one call, not one call each)."""
    request = manager_pb2.StopContainersRequest(
        label_selector=args.selector,
        all=not args.selector,
        message=args.reason,
        grace_period=_grace_proto(args.grace),
    )
    which = f"matching -l {args.selector}" if args.selector else "live"
    timeout = _grace_timeout(args.grace)
    try:
        with spinner(ctx, f"stopping every container {which}{grace}"):
            response = once(client, lambda r: client.stop_containers(r, timeout=timeout), request)
    except CallError as exc:
        raise from_call(exc) from None
    except KeyboardInterrupt:
        raise Interrupted(
            f"the containers {which} are still stopping "
            "(the manager finishes them; pycontainer ps shows them)"
        ) from None
    if not response.results:
        ctx.err("no live containers match")
        return 0
    code = 0
    for result in response.results:
        c = result.container
        if result.status.code:
            ctx.err(f"error: {_label(c)}: {result.status.message}")
            code = EXIT_FAILED
        else:
            killed = " (killed at the end of its grace period)" if result.killed else ""
            ctx.out(f"{_label(c)}: {state_name(c.state)}{killed}")
    ctx.stdout.flush()
    return code


def run_pause(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client:

        def pause(name: str) -> str:
            response = once(
                client,
                lambda r: client.pause_container(r, timeout=_COMMAND_TIMEOUT),
                manager_pb2.PauseContainerRequest(container=name),
            )
            return f"{_label(response.container)}: {state_name(response.container.state)}"

        return _each(ctx, _targets(client, args), pause, "pausing", "still pausing")


def run_resume(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client:

        def resume(name: str) -> str:
            response = once(
                client,
                lambda r: client.resume_container(r, timeout=_COMMAND_TIMEOUT),
                manager_pb2.ResumeContainerRequest(container=name),
            )
            return f"{_label(response.container)}: {state_name(response.container.state)}"

        return _each(ctx, _targets(client, args), resume, "resuming", "still resuming")


def run_restart(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client:

        def restart(name: str) -> str:
            request = manager_pb2.RestartContainerRequest(
                container=name, grace_period=_grace_proto(args.grace)
            )
            timeout = _grace_timeout(args.grace or DEFAULT_GRACE_PERIOD)
            c = once(
                client, lambda r: client.restart_container(r, timeout=timeout), request
            ).container
            return f"{_label(c)}: {state_name(c.state)} (restarted)"

        return _each(ctx, _targets(client, args), restart, "restarting", "still restarting")


def run_kill(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client:

        def kill(name: str) -> str:
            request = manager_pb2.KillContainerRequest(container=name, signal=args.signal)
            c = once(
                client, lambda r: client.kill_container(r, timeout=_COMMAND_TIMEOUT), request
            ).container
            return f"{_label(c)}: {state_name(c.state)} (sent {args.signal.upper()})"

        return _each(
            ctx, _targets(client, args), kill, f"sending {args.signal} to", "still being signalled"
        )


def run_rm(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client:

        def rm(name: str) -> str:
            request = manager_pb2.DeleteContainerRequest(container=name, purge=args.purge)
            c = once(
                client, lambda r: client.delete_container(r, timeout=_COMMAND_TIMEOUT), request
            ).container
            purged = " with its logs and checkpoints" if args.purge else ""
            return f"{_label(c)}: removed{purged}"

        return _each(
            ctx, _targets(client, args, _ENDED_STATES), rm, "removing", "still being removed"
        )


def run_evict(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client:

        def evict(name: str) -> str:
            request = manager_pb2.EvictContainerRequest(
                container=name, message=args.reason, grace_period=_grace_proto(args.grace)
            )
            timeout = _grace_timeout(args.grace)
            c = once(
                client, lambda r: client.evict_container(r, timeout=timeout), request
            ).container
            return f"{_label(c)}: {state_name(c.state)} ({c.reason or 'evicted'})"

        return _each(ctx, args.containers, evict, "evicting", "still being evicted")


# -- checkpoint, restore, scale ----------------------------------------------------------------
def run_checkpoint(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client, spinner(ctx, f"checkpointing {args.container}"):
        response = once(
            client,
            lambda r: client.checkpoint_container(r, timeout=_COMMAND_TIMEOUT),
            manager_pb2.CheckpointContainerRequest(container=args.container),
        )
    if args.output in ("json", "yaml"):
        print_data(ctx, message_dict(response), args.output)
        return 0
    from rich.table import Table

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
    show(console(ctx), grid)
    return 0


def run_restore(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client, spinner(ctx, f"restoring {args.container}"):
        response = once(
            client,
            lambda r: client.restore_container(r, timeout=_COMMAND_TIMEOUT),
            manager_pb2.RestoreContainerRequest(
                container=args.container, checkpoint_id=args.checkpoint
            ),
        )
    source = f"checkpoint {args.checkpoint}" if args.checkpoint else "its newest checkpoint"
    c = response.container
    ctx.out(f"{_label(c)}: restored from {source} ({state_name(c.state)})")
    return 0


def run_scale(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client, spinner(ctx, f"scaling {args.container} to {args.replicas}"):
        response = once(
            client,
            lambda r: client.scale_container(r, timeout=None),
            manager_pb2.ScaleContainerRequest(container=args.container, replicas=args.replicas),
        )
    if args.output in ("json", "yaml"):
        print_data(ctx, message_dict(response), args.output)
    elif not response.containers:
        ctx.out(f"{args.container}: scaled to 0 replicas")
    else:
        print_table(ctx, container_table(response.containers))
    return 0
