"""`pycontainer apply -f SPEC` and `pycontainer diff -f SPEC`: make the running
set match spec files (kubectl apply), or show what that would change
(kubectl diff), through the manager's ApplySpecs.

Every spec applied carries the owner label ``pycontainer.dev/owner``: the value
of ``--owner`` for every spec; else, spec by spec, the one the spec carries
already (a file ``ps -o yaml`` printed), and for a spec without one an owner
derived from the files (the first file's name and a short hash of the files'
absolute paths, such as ``demo-3f2a1b9c``; ``stdin`` for ``-``), so that
applying the same file again, from any directory, is the same owner, and
``--prune`` removes only what that file launched.

Specs of several owners (``ps -o yaml`` of two people's containers) are one
ApplySpecs per owner, in the order the owners first appear: each owner's
containers stay that owner's, nothing is adopted. Every group is first asked
as a dry run, so a refusal of any of them changes nothing. ``--prune`` takes
one owner's specs only: an input of several owners is a listing (often a
filtered one, ``ps -o yaml -l app=web``), not an owner's whole desired
state, and pruning by it would stop other owners' containers it merely left
out; the CLI refuses it and says how to prune one owner.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..units import format_duration
from ..v1 import container_pb2, manager_pb2, spec_pb2
from ._context import Context
from ._errors import EXIT_FAILED, EXIT_UNREACHABLE, CliError, Interrupted, from_call
from ._output import print_data, spinner

if TYPE_CHECKING:
    from ..client import ManagerClient

__all__ = [
    "ACTION_WORDS",
    "OWNER_LABEL",
    "derive_owner",
    "load",
    "owner_groups",
    "run",
    "run_diff",
]

S = container_pb2
E = manager_pb2
# The label the manager puts on every container it applies (its
# pycontainer.manager._apply.OWNER_LABEL; the CLI does not import the manager).
OWNER_LABEL = "pycontainer.dev/owner"
ACTION_WORDS = {
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
    hash of every file's real path ("stdin" for standard input)."""
    names = list(files)
    if names == ["-"]:
        return "stdin"
    # Real paths: the same file through a symlinked directory is the same owner.
    paths = sorted("-" if n == "-" else os.path.realpath(n) for n in names)
    stem = os.path.splitext(os.path.basename(names[0]))[0] if names[0] != "-" else "stdin"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-_.")[:40] or "specs"
    digest = hashlib.sha256("\0".join(paths).encode()).hexdigest()[:8]
    return f"{stem}-{digest}"


def owner_groups(
    specs: list[spec_pb2.ContainerSpec], files: list[str], given: str = ""
) -> dict[str, list[spec_pb2.ContainerSpec]]:
    """The specs by the owner each is applied under, in the order the owners
    first appear: all under ``given`` (--owner); else each under the owner it
    carries, and those without one under derive_owner(files)."""
    if given:
        return {given: list(specs)}
    groups: dict[str, list[spec_pb2.ContainerSpec]] = {}
    for spec in specs:
        owner = spec.labels.get(OWNER_LABEL, "") or derive_owner(files)
        groups.setdefault(owner, []).append(spec)
    return groups


def _requests(args: argparse.Namespace, *, dry_run: bool) -> list[manager_pb2.ApplySpecsRequest]:
    """One ApplySpecs per owner of the files' specs (CliError for a mistake
    in a file, or --prune over several owners)."""
    specs = load(args.files)
    groups = owner_groups(specs, args.files, args.owner)
    if args.prune and len(groups) > 1:
        listed = "; ".join(
            f"{owner}: {', '.join(s.name for s in group)}" for owner, group in groups.items()
        )
        raise CliError(
            f"--prune with specs of {len(groups)} owners ({listed}): prune stops what one "
            "owner no longer lists, and a listing of several owners' specs would stop what "
            "it merely leaves out; prune one owner at a time (pycontainer ps -o yaml -l "
            f"{OWNER_LABEL}=OWNER | pycontainer apply --prune -f -), or apply without --prune"
        )
    requests = []
    for owner, group in groups.items():
        for spec in group:
            spec.labels[OWNER_LABEL] = owner
        requests.append(
            manager_pb2.ApplySpecsRequest(
                specs=group, owner=owner, prune=args.prune, dry_run=dry_run
            )
        )
    return requests


def _dry_runs(
    client: ManagerClient, requests: list[manager_pb2.ApplySpecsRequest]
) -> list[manager_pb2.ApplySpecsResponse]:
    """Each request as the manager's dry run: its checks, nothing changed.
    Of several owners' requests, a refusal names the owner and its specs
    (``specs[i]`` in it counts that owner's specs)."""
    from ..client import CallError

    out = []
    for request in requests:
        dry = manager_pb2.ApplySpecsRequest()
        dry.CopyFrom(request)
        dry.dry_run = True
        try:
            out.append(client.apply_specs(dry))
        except CallError as exc:
            if len(requests) == 1 or not exc.reached:
                raise
            names = ", ".join(s.name for s in request.specs)
            raise from_call(exc, f"the specs of owner {request.owner} ({names})") from None
    return out


def _change_dict(change: manager_pb2.ApplyChange) -> dict[str, object]:
    return {
        "name": change.name,
        "action": ACTION_WORDS.get(change.action, "unspecified"),
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


def _check_only(args: argparse.Namespace, ctx: Context) -> int:
    """apply --dry-run=client: the files checked, nothing asked of the manager."""
    from .._secrets import REDACTED

    specs = load(args.files)
    if args.output in ("json", "yaml"):
        print_data(ctx, {"containers": _shown(specs)}, args.output)
        return 0
    for spec in specs:
        # What a marker stands for only the manager knows (--dry-run asks it).
        markers = sorted(n for n, v in spec.env.items() if REDACTED in v)
        note = (
            f"; {REDACTED} in env {', '.join(markers)} not checked (--dry-run=server checks it)"
            if markers
            else ""
        )
        ctx.out(f"{spec.name}: valid ({_summary(spec)}); not launched (--dry-run=client){note}")
    return 0


def _shown(specs: list[spec_pb2.ContainerSpec]) -> list[dict[str, object]]:
    from .._secrets import redact_spec
    from ..spec import spec_to_dict

    # The CLI shows no secret, even the file's own.
    return [spec_to_dict(redact_spec(s)) for s in specs]


def _check_with_manager(
    args: argparse.Namespace, ctx: Context, requests: list[manager_pb2.ApplySpecsRequest]
) -> int:
    """apply --dry-run (=server): the manager's dry run of the files (the
    checks and the <redacted> markers of a real apply); nothing changes."""
    from ..client import CallError

    with ctx.manager(args) as client:
        try:
            responses = _dry_runs(client, requests)
        except CallError as exc:
            error = from_call(exc)
            if not exc.reached:
                error.message += " (--dry-run=client checks the files without a manager)"
            raise error from None
    changes = [c for r in responses for c in r.changes]
    if args.output in ("json", "yaml"):
        specs = [s for r in requests for s in r.specs]
        shown = {"containers": _shown(specs), "changes": [_change_dict(c) for c in changes]}
        print_data(ctx, shown, args.output)
        return 0
    summaries = {s.name: _summary(s) for r in requests for s in r.specs}
    for change in changes:
        detail = "; ".join(change.detail.splitlines())
        valid = f"valid ({summaries[change.name]}); " if change.name in summaries else ""
        ctx.out(
            f"{change.name}: {valid}{_WOULD.get(change.action, '?')}"
            + (f" ({detail})" if detail else "")
            + "; nothing changed (--dry-run)"
        )
    return 0


def run(args: argparse.Namespace, ctx: Context) -> int:
    from ..client import CallError
    from ._operation import once

    try:
        if args.dry_run == "client":
            return _check_only(args, ctx)
        requests = _requests(args, dry_run=args.dry_run == "server")
    except CliError as exc:
        for line in exc.message.splitlines():
            ctx.err(line)
        return EXIT_FAILED
    if args.dry_run == "server":
        return _check_with_manager(args, ctx, requests)
    code = 0
    changes: list[manager_pb2.ApplyChange] = []
    started = 0  # the owners' applies sent
    with ctx.manager(args) as client:
        try:
            if len(requests) > 1:
                # Every owner's specs checked before any is applied.
                _dry_runs(client, requests)
            for index, request in enumerate(requests):
                started = index + 1
                with spinner(ctx, f"applying {len(request.specs)} spec(s) of {request.owner}"):
                    # A rollout takes as long as its replicas take to be ready.
                    response = once(client, lambda r: client.apply_specs(r, timeout=None), request)
                changes.extend(response.changes)
                if args.output == "table":  # each owner's as it is done
                    for change in response.changes:
                        detail = "; ".join(change.detail.splitlines())
                        ctx.out(
                            f"{change.name}: {ACTION_WORDS.get(change.action, '?')}"
                            + (f" ({detail})" if detail else "")
                        )
                    ctx.stdout.flush()
        except CallError as exc:
            raise from_call(exc) from None
        except KeyboardInterrupt:
            if not started:
                raise Interrupted("nothing applied") from None
            sent = [s.name for r in requests[:started] for s in r.specs]
            left = [s.name for r in requests[started:] for s in r.specs]
            raise Interrupted(
                f"the rollout of {', '.join(sent)} goes on (the manager finishes it; "
                "pycontainer ps and pycontainer events show it)"
                + (f"; {', '.join(left)} not applied" if left else "")
            ) from None
        if args.wait:
            code = _wait(ctx, client, requests, args.timeout, quiet=args.output != "table")
    if args.output in ("json", "yaml"):
        print_data(ctx, {"changes": [_change_dict(c) for c in changes]}, args.output)
    return code


def run_diff(args: argparse.Namespace, ctx: Context) -> int:
    from ..client import CallError

    try:
        requests = _requests(args, dry_run=True)
    except CliError as exc:
        for line in exc.message.splitlines():
            ctx.err(line)
        return EXIT_UNREACHABLE
    try:
        with ctx.manager(args) as client:
            responses = _dry_runs(client, requests)
    except (CallError, CliError) as exc:
        error = from_call(exc) if isinstance(exc, CallError) else exc
        for line in error.message.splitlines():
            ctx.err(f"error: {line}")
        # 1 means "there are changes" here: a failure is 2 or more.
        return max(error.code, EXIT_UNREACHABLE)
    changes = [c for r in responses for c in r.changes]
    changed = any(c.action != E.APPLY_ACTION_UNCHANGED for c in changes)
    if args.output in ("json", "yaml"):
        print_data(ctx, {"changes": [_change_dict(c) for c in changes]}, args.output)
        return 1 if changed else 0
    for change in changes:
        lines = change.detail.splitlines()
        if change.action == E.APPLY_ACTION_REPLACED:
            ctx.out(f"{change.name}: {_WOULD[change.action]}")
            for line in lines:
                ctx.out(f"  {line}")
        else:
            ctx.out(f"{change.name}: {_WOULD.get(change.action, '?')} ({'; '.join(lines)})")
    ctx.stdout.flush()
    return 1 if changed else 0


def _wait(
    ctx: Context,
    client: ManagerClient,
    requests: list[manager_pb2.ApplySpecsRequest],
    timeout: datetime.timedelta,
    *,
    quiet: bool,
) -> int:
    """Poll until every spec has its replicas RUNNING, or the time is up."""
    wanted = {spec.name: spec.replicas or 1 for r in requests for spec in r.specs}
    owner_of_name = {spec.name: r.owner for r in requests for spec in r.specs}
    deadline = time.monotonic() + timeout.total_seconds()

    def running() -> dict[str, list[manager_pb2.Container]]:
        out: dict[str, list[manager_pb2.Container]] = {name: [] for name in wanted}
        for owner in dict.fromkeys(owner_of_name.values()):
            selector = manager_pb2.ListContainersRequest(label_selector=f"{OWNER_LABEL}={owner}")
            for c in client.list_containers(selector).containers:
                name = c.identity.name
                if owner_of_name.get(name) == owner and c.state == S.LIFECYCLE_STATE_RUNNING:
                    out[name].append(c)
        return out

    with spinner(ctx, f"waiting for {sum(wanted.values())} replica(s) to run"):
        try:
            now = running()
            while any(len(now[n]) < k for n, k in wanted.items()) and time.monotonic() < deadline:
                time.sleep(0.2)
                now = running()
        except KeyboardInterrupt:
            raise Interrupted(
                "stopped waiting: the replicas are still starting "
                "(the manager finishes them; pycontainer ps shows them)"
            ) from None
    code = 0
    for name, count in wanted.items():
        if len(now[name]) >= count:
            if not quiet:
                for c in now[name]:
                    ctx.out(f"{c.identity.id}: RUNNING")
            continue
        code = EXIT_FAILED
        ctx.err(
            f"error: {name}: {len(now[name])} of {count} replica(s) RUNNING after "
            f"{format_duration(timeout)}"
        )
    ctx.stdout.flush()
    return code
