"""`pycontainer apply -f SPEC`: launch what spec files describe."""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections import Counter

from ..client import CallError, ManagerClient
from ..units import format_duration
from ..v1 import container_pb2, manager_pb2, spec_pb2
from ._context import Context
from ._errors import EXIT_FAILED, EXIT_UNREACHABLE, CliError, from_call
from ._output import message_dict, print_data, spinner
from ._render import state_name

S = container_pb2
_TERMINAL = (S.LIFECYCLE_STATE_STOPPED, S.LIFECYCLE_STATE_FAILED)


def load(files: list[str]) -> list[spec_pb2.ContainerSpec]:
    """Every spec of every file; CliError with one line per mistake."""
    from ..spec import SpecError, load_specs, parse_specs

    errors: list[str] = []
    specs: list[spec_pb2.ContainerSpec] = []
    where: dict[str, str] = {}
    for name in files:
        try:
            if name == "-":
                loaded = parse_specs(sys.stdin.read(), source="<stdin>")
            else:
                loaded = load_specs(name)
        except SpecError as exc:
            errors.extend(exc.errors)
            continue
        for spec in loaded:
            if spec.name in where:
                errors.append(f"{name}: name {spec.name!r} is also in {where[spec.name]}")
            where.setdefault(spec.name, name)
        specs.extend(loaded)
    if errors:
        raise CliError("\n".join(errors))
    return specs


def _summary(spec: spec_pb2.ContainerSpec) -> str:
    runtime = spec_pb2.RuntimeKind.Name(spec.runtime).removeprefix("RUNTIME_KIND_").lower()
    parts = [
        "process" if runtime == "unspecified" else runtime.replace("_", "-"),
        f"{spec.replicas or 1} replica{'s' if (spec.replicas or 1) != 1 else ''}",
        f"priority {spec.priority}",
    ]
    if spec.sidecar:
        parts.append("sidecar")
    return ", ".join(parts)


def run(args: argparse.Namespace, ctx: Context) -> int:
    try:
        specs = load(args.files)
    except CliError as exc:
        for line in exc.message.splitlines():
            ctx.err(line)
        return EXIT_FAILED
    if args.dry_run:
        if args.output in ("json", "yaml"):
            from ..spec import spec_to_dict

            print_data(ctx, {"containers": [spec_to_dict(s) for s in specs]}, args.output)
        else:
            for spec in specs:
                ctx.out(f"{spec.name}: valid ({_summary(spec)}); not launched (--dry-run)")
        return 0

    code = 0
    launched: list[manager_pb2.Container] = []
    with ctx.manager(args) as client:
        live = Counter(
            c.identity.name for c in client.list_containers().containers if c.state not in _TERMINAL
        )
        for number, spec in enumerate(specs, start=1):
            if live[spec.name]:
                count = live[spec.name]
                ctx.err(
                    f"{spec.name}: skipped, {count} live container"
                    f"{' has' if count == 1 else 's have'} this name (stop to relaunch, or scale)"
                )
                continue
            try:
                with spinner(ctx, f"launching {spec.name} ({number}/{len(specs)})"):
                    response = client.run_container(
                        manager_pb2.RunContainerRequest(spec=spec), timeout=None
                    )
            except CallError as exc:
                error = from_call(exc, spec.name)
                if error.code == EXIT_UNREACHABLE:
                    raise error from None
                ctx.err(f"error: {error.message}")
                code = EXIT_FAILED
                continue
            launched.extend(response.containers)
            if args.output == "table":
                for c in response.containers:
                    pid = f" (pid {c.pid})" if c.pid else ""
                    ctx.out(f"{c.identity.id}: launched{pid}")
                ctx.stdout.flush()
        if args.wait and launched:
            launched, failed = _wait(ctx, client, launched, args.timeout)
            code = code or failed
    if args.output in ("json", "yaml"):
        print_data(ctx, {"containers": [message_dict(c) for c in launched]}, args.output)
    return code


def _wait(
    ctx: Context,
    client: ManagerClient,
    launched: list[manager_pb2.Container],
    timeout: datetime.timedelta,
) -> tuple[list[manager_pb2.Container], int]:
    """Poll until every container is RUNNING, one ended, or the time is up."""
    deadline = time.monotonic() + timeout.total_seconds()
    latest = {c.identity.id: c for c in launched}
    pending = set(latest)
    with spinner(ctx, f"waiting for {len(pending)} container(s) to run"):
        while pending and time.monotonic() < deadline:
            for container_id in sorted(pending):
                got = client.get_container(
                    manager_pb2.GetContainerRequest(container=container_id)
                ).container
                latest[container_id] = got
                if got.state == S.LIFECYCLE_STATE_RUNNING or got.state in _TERMINAL:
                    pending.discard(container_id)
            if pending:
                time.sleep(0.2)
    failed = 0
    for container_id, c in latest.items():
        if c.state == S.LIFECYCLE_STATE_RUNNING:
            ctx.out(f"{container_id}: RUNNING")
            continue
        failed = EXIT_FAILED
        if c.state in _TERMINAL:
            why = f": {c.error}" if c.error else ""
            ctx.err(f"error: {container_id}: {state_name(c.state)}{why}")
        else:
            ctx.err(
                f"error: {container_id}: still {state_name(c.state)} after "
                f"{format_duration(timeout)}"
            )
    ctx.stdout.flush()
    return list(latest.values()), failed
