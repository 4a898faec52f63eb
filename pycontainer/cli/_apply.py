"""`pycontainer apply -f SPEC` and `pycontainer diff -f SPEC`: make the running
set match spec files (kubectl apply), or show what that would change
(kubectl diff), through the manager's ApplySpecs.

Every spec applied carries the owner label ``pycontainer.dev/owner``: the value
of ``--owner``, else one derived from the files (the first file's name and a
short hash of the files' absolute paths, such as ``demo-3f2a1b9c``; ``stdin``
for ``-``), so that applying the same file again, from any directory, is the
same owner, and ``--prune`` removes only what that file launched.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from collections.abc import Iterable
from datetime import timedelta

from ..units import DURATION_HELP, duration_arg, format_duration
from ..v1 import container_pb2, manager_pb2, spec_pb2
from ._client import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    CliError,
    ManagerClient,
    add_manager_option,
    add_output_option,
    connect,
    print_data,
    spinner,
)

S = container_pb2
E = manager_pb2
_TERMINAL = (S.LIFECYCLE_STATE_STOPPED, S.LIFECYCLE_STATE_FAILED)
# The label the manager puts on every container it applies (its
# pycontainer.manager._apply.OWNER_LABEL; the CLI does not import the manager).
OWNER_LABEL = "pycontainer.dev/owner"
_WORDS = {
    E.APPLY_ACTION_UNCHANGED: "unchanged",
    E.APPLY_ACTION_CREATED: "created",
    E.APPLY_ACTION_SCALED: "scaled",
    E.APPLY_ACTION_REPLACED: "replaced",
    E.APPLY_ACTION_PRUNED: "pruned",
}
_WOULD = {
    E.APPLY_ACTION_UNCHANGED: "unchanged",
    E.APPLY_ACTION_CREATED: "would be created",
    E.APPLY_ACTION_SCALED: "would be scaled",
    E.APPLY_ACTION_REPLACED: "would be replaced",
    E.APPLY_ACTION_PRUNED: "would be pruned",
}
_OWNER_HELP = (
    "owner label value (pycontainer.dev/owner) of what this apply launches; prune removes "
    "only this owner's containers (default: the first file's name and a short hash of the "
    "files' absolute paths, such as demo-3f2a1b9c; 'stdin' for -)"
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="SPEC",
        help="spec file (repeat for several; '-' reads YAML from stdin)",
    )
    parser.add_argument("--owner", metavar="NAME", help=_OWNER_HELP)
    parser.add_argument(
        "--prune",
        action="store_true",
        help="also stop the owner's containers whose name the files no longer list",
    )


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="make the running containers match spec files",
        description="Make the running containers match spec files (YAML, or TOML by the "
        ".toml extension; '-' reads YAML from stdin), as kubectl apply does: a container "
        "that is missing is created, replicas are scaled up or down, and a container whose "
        "spec changed is replaced one replica at a time (the new one started and ready "
        "before an old one stops with its grace period; restored from the old one's "
        "checkpoint when checkpointPolicy is OnStop). Applying the same files again "
        "changes nothing. Every file is checked first and every mistake reported, each "
        "with its place in the file; nothing changes then. The manager keeps what was "
        "applied, and a restarted manager brings the replicas back to it.",
    )
    _add_common(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only check the files, without the manager (see `pycontainer diff` for what "
        "would change)",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="then wait until every replica of the files is RUNNING",
    )
    parser.add_argument(
        "--timeout",
        type=duration_arg,
        default=timedelta(seconds=60),
        metavar="DURATION",
        help=f"how long --wait waits, {DURATION_HELP} (default: 60s)",
    )
    add_output_option(parser, formats=("table", "json", "yaml"))
    add_manager_option(parser)
    parser.set_defaults(func=run)


def add_diff_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "diff",
        help="show what apply would change",
        description="Show what `pycontainer apply` would do with spec files, per spec: "
        "unchanged, or the action and the fields that differ. Changes nothing. Exit "
        "status, as kubectl diff's: 0 no change, 1 changes, 2 or more when it could not "
        "tell (a mistake in a file, a refusal, an unreachable manager).",
    )
    _add_common(parser)
    add_output_option(parser, formats=("table", "json", "yaml"))
    add_manager_option(parser)
    parser.set_defaults(func=run_diff)


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


def derive_owner(files: Iterable[str]) -> str:
    """The default owner of what files launch: the first file's name and a
    hash of every file's absolute path ("stdin" for standard input)."""
    names = list(files)
    if names == ["-"]:
        return "stdin"
    paths = sorted("-" if n == "-" else os.path.abspath(n) for n in names)
    stem = os.path.splitext(os.path.basename(names[0]))[0] if names[0] != "-" else "stdin"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-_.")[:40] or "specs"
    digest = hashlib.sha256("\0".join(paths).encode()).hexdigest()[:8]
    return f"{stem}-{digest}"


def _request(args: argparse.Namespace, *, dry_run: bool) -> manager_pb2.ApplySpecsRequest:
    specs = load(args.files)
    owner = args.owner or derive_owner(args.files)
    for spec in specs:
        spec.labels[OWNER_LABEL] = owner
    return manager_pb2.ApplySpecsRequest(
        specs=specs, owner=owner, prune=args.prune, dry_run=dry_run
    )


def _change_dict(change: manager_pb2.ApplyChange) -> dict[str, object]:
    return {
        "name": change.name,
        "action": _WORDS.get(change.action, "unspecified"),
        "detail": change.detail.splitlines(),
    }


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


def _check_only(args: argparse.Namespace) -> int:
    """apply --dry-run: the files checked, nothing asked of the manager."""
    specs = load(args.files)
    if args.output in ("json", "yaml"):
        from ..spec import spec_to_dict

        print_data({"containers": [spec_to_dict(s) for s in specs]}, args.output)
    else:
        for spec in specs:
            print(f"{spec.name}: valid ({_summary(spec)}); not launched (--dry-run)")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.dry_run:
            return _check_only(args)
        request = _request(args, dry_run=False)
    except CliError as exc:
        for line in exc.message.splitlines():
            print(line, file=sys.stderr)
        return EXIT_FAILED
    with connect(args) as client:
        with spinner(f"applying {len(request.specs)} spec(s)"):
            response = client.call(client.stub.ApplySpecs, request, timeout=None)
        if args.output == "table":
            for change in response.changes:
                detail = "; ".join(change.detail.splitlines())
                print(
                    f"{change.name}: {_WORDS.get(change.action, '?')}"
                    + (f" ({detail})" if detail else ""),
                    flush=True,
                )
        code = 0
        if args.wait:
            code = _wait(client, request, args.timeout, quiet=args.output != "table")
    if args.output in ("json", "yaml"):
        print_data({"changes": [_change_dict(c) for c in response.changes]}, args.output)
    return code


def run_diff(args: argparse.Namespace) -> int:
    try:
        request = _request(args, dry_run=True)
    except CliError as exc:
        for line in exc.message.splitlines():
            print(line, file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        with connect(args) as client:
            response = client.call(client.stub.ApplySpecs, request)
    except CliError as exc:
        for line in exc.message.splitlines():
            print(f"error: {line}", file=sys.stderr)
        # 1 means "there are changes" here: a failure is 2 or more.
        return max(exc.code, EXIT_UNREACHABLE)
    changed = any(c.action != E.APPLY_ACTION_UNCHANGED for c in response.changes)
    if args.output in ("json", "yaml"):
        print_data({"changes": [_change_dict(c) for c in response.changes]}, args.output)
    else:
        for change in response.changes:
            if change.action == E.APPLY_ACTION_UNCHANGED:
                print(f"{change.name}: unchanged ({change.detail})")
                continue
            lines = change.detail.splitlines()
            if change.action == E.APPLY_ACTION_REPLACED:
                print(f"{change.name}: {_WOULD[change.action]}")
                for line in lines:
                    print(f"  {line}")
            else:
                print(f"{change.name}: {_WOULD.get(change.action, '?')} ({'; '.join(lines)})")
    return 1 if changed else 0


def _wait(
    client: ManagerClient,
    request: manager_pb2.ApplySpecsRequest,
    timeout: timedelta,
    *,
    quiet: bool,
) -> int:
    """Poll until every spec has its replicas RUNNING, or the time is up."""
    wanted = {spec.name: spec.replicas or 1 for spec in request.specs}
    deadline = time.monotonic() + timeout.total_seconds()
    selector = manager_pb2.ListContainersRequest(label_selector=f"{OWNER_LABEL}={request.owner}")

    def running() -> dict[str, list[manager_pb2.Container]]:
        listed = client.call(client.stub.ListContainers, selector).containers
        out: dict[str, list[manager_pb2.Container]] = {name: [] for name in wanted}
        for c in listed:
            if c.identity.name in out and c.state == S.LIFECYCLE_STATE_RUNNING:
                out[c.identity.name].append(c)
        return out

    with spinner(f"waiting for {sum(wanted.values())} replica(s) to run"):
        now = running()
        while any(len(now[n]) < k for n, k in wanted.items()) and time.monotonic() < deadline:
            time.sleep(0.2)
            now = running()
    code = 0
    for name, count in wanted.items():
        if len(now[name]) >= count:
            if not quiet:
                for c in now[name]:
                    print(f"{c.identity.id}: RUNNING", flush=True)
            continue
        code = EXIT_FAILED
        print(
            f"error: {name}: {len(now[name])} of {count} replica(s) RUNNING after "
            f"{format_duration(timeout)}",
            file=sys.stderr,
        )
    return code


__all__ = ["OWNER_LABEL", "add_diff_parser", "add_parser", "derive_owner", "load"]
