"""`pycontainer apply -f SPEC`: launch what spec files describe."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from ..v1 import container_pb2, manager_pb2, spec_pb2
from ._client import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    CliError,
    ManagerClient,
    add_manager_option,
    add_output_option,
    connect,
    message_dict,
    print_data,
    spinner,
)
from ._duration import DURATION_HELP, duration_arg, format_duration
from ._render import state_name

S = container_pb2
_TERMINAL = (S.LIFECYCLE_STATE_STOPPED, S.LIFECYCLE_STATE_FAILED)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="launch the containers of spec files",
        description="Launch the containers spec files describe (YAML, or TOML by the .toml "
        "extension; '-' reads YAML from stdin), through the manager's RunContainer. Every "
        "file is checked first and every mistake reported, each with its place in the "
        "file; nothing is launched then. A name that already has live containers is "
        "skipped (stop them to relaunch, or scale them).",
    )
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="SPEC",
        help="spec file (repeat for several)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check the files and show what would run"
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait until every launched container is RUNNING"
    )
    parser.add_argument(
        "--timeout",
        type=duration_arg,
        default=60_000_000_000,
        metavar="DURATION",
        help=f"how long --wait waits, {DURATION_HELP} (default: 60s)",
    )
    add_output_option(parser, formats=("table", "json", "yaml"))
    add_manager_option(parser)
    parser.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    try:
        specs = load(args.files)
    except CliError as exc:
        for line in exc.message.splitlines():
            print(line, file=sys.stderr)
        return EXIT_FAILED
    if args.dry_run:
        if args.output in ("json", "yaml"):
            from ..spec import spec_to_dict

            print_data({"containers": [spec_to_dict(s) for s in specs]}, args.output)
        else:
            for spec in specs:
                print(f"{spec.name}: valid ({_summary(spec)}); not launched (--dry-run)")
        return 0

    code = 0
    launched: list[manager_pb2.Container] = []
    with connect(args) as client:
        live = Counter(
            c.identity.name
            for c in client.call(
                client.stub.ListContainers, manager_pb2.ListContainersRequest()
            ).containers
            if c.state not in _TERMINAL
        )
        for number, spec in enumerate(specs, start=1):
            if live[spec.name]:
                count = live[spec.name]
                print(
                    f"{spec.name}: skipped, {count} live container"
                    f"{' has' if count == 1 else 's have'} this name (stop to relaunch, or scale)",
                    file=sys.stderr,
                )
                continue
            try:
                with spinner(f"launching {spec.name} ({number}/{len(specs)})"):
                    response = client.call(
                        client.stub.RunContainer,
                        manager_pb2.RunContainerRequest(spec=spec),
                        timeout=None,
                        what=spec.name,
                    )
            except CliError as exc:
                if exc.code == EXIT_UNREACHABLE:
                    raise
                print(f"error: {exc.message}", file=sys.stderr)
                code = EXIT_FAILED
                continue
            launched.extend(response.containers)
            if args.output == "table":
                for c in response.containers:
                    pid = f" (pid {c.pid})" if c.pid else ""
                    print(f"{c.identity.id}: launched{pid}", flush=True)
        if args.wait and launched:
            launched, failed = _wait(client, launched, args.timeout)
            code = code or failed
    if args.output in ("json", "yaml"):
        print_data({"containers": [message_dict(c) for c in launched]}, args.output)
    return code


def _wait(
    client: ManagerClient, launched: list[manager_pb2.Container], timeout_ns: int
) -> tuple[list[manager_pb2.Container], int]:
    """Poll until every container is RUNNING, one ended, or the time is up."""
    deadline = time.monotonic() + timeout_ns / 1e9
    latest = {c.identity.id: c for c in launched}
    pending = set(latest)
    with spinner(f"waiting for {len(pending)} container(s) to run"):
        while pending and time.monotonic() < deadline:
            for container_id in sorted(pending):
                got = client.call(
                    client.stub.GetContainer,
                    manager_pb2.GetContainerRequest(container=container_id),
                ).container
                latest[container_id] = got
                if got.state == S.LIFECYCLE_STATE_RUNNING or got.state in _TERMINAL:
                    pending.discard(container_id)
            if pending:
                time.sleep(0.2)
    failed = 0
    for container_id, c in latest.items():
        if c.state == S.LIFECYCLE_STATE_RUNNING:
            print(f"{container_id}: RUNNING", flush=True)
            continue
        failed = EXIT_FAILED
        if c.state in _TERMINAL:
            why = f": {c.error}" if c.error else ""
            print(f"error: {container_id}: {state_name(c.state)}{why}", file=sys.stderr)
        else:
            print(
                f"error: {container_id}: still {state_name(c.state)} after "
                f"{format_duration(timeout_ns)}",
                file=sys.stderr,
            )
    return list(latest.values()), failed
