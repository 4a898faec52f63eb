"""Mutating calls with a request id, retried safely, and `pycontainer
operation`: what became of one.

Every mutating verb sends a request_id (AIP-155). When its answer is lost (a
deadline passed, the connection dropped, the manager restarted) the verb asks
once more with the same id if the manager answers: the manager does not act
twice, it returns the first call's outcome (waiting for it if it still runs).
Otherwise the verb prints the id and the command that tells the outcome
later, so that "unknown" is never the last word.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from .._errors import status_code
from ..client import CallError, ManagerClient
from ..client._request_ids import with_request_id
from ..units import format_duration, timestamp_from_proto
from ..v1 import manager_pb2
from ._context import Context
from ._errors import EXIT_FAILED, EXIT_UNREACHABLE, CliError, from_call
from ._output import console, message_dict, print_data, show
from ._render import age, clipped, local_time, plain_table, short_enum

if TYPE_CHECKING:
    from rich.text import Text

__all__ = ["once", "run"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Codes after which the call may or may not have happened.
_LOST_ANSWER = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
# How long the manager has to answer before a retry.
_PROBE = datetime.timedelta(seconds=5)

_STATE_STYLES: dict[manager_pb2.OperationState.ValueType, str] = {
    manager_pb2.OPERATION_STATE_SUCCEEDED: "green",
    manager_pb2.OPERATION_STATE_FAILED: "red",
    manager_pb2.OPERATION_STATE_INTERRUPTED: "yellow",
}


def once(client: ManagerClient, call: Callable[[Req], Resp], request: Req) -> Resp:
    """``call(request)`` with a request_id; after a lost answer, once more with
    the same id when the manager answers; else CliError naming the id and
    ``pycontainer operation ID``. Any other failure is the CallError."""
    request = with_request_id(request)
    request_id: str = getattr(request, "request_id", "")
    try:
        return call(request)
    except CallError as exc:
        if exc.code not in _LOST_ANSWER:
            raise
        lost = exc
    if _answers(client):
        try:
            return call(request)
        except CallError as exc:
            if exc.code not in _LOST_ANSWER:
                raise
            lost = exc
    if _never_sent(lost):
        raise from_call(lost)
    raise unknown_outcome(lost, request_id)


def _never_sent(exc: CallError) -> bool:
    """grpc-core could not connect at all: the call did not leave this process."""
    return exc.code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in exc.details


def _answers(client: ManagerClient) -> bool:
    try:
        client.get_version(timeout=_PROBE)
    except CallError:
        return False
    return True


def unknown_outcome(exc: CallError, request_id: str) -> CliError:
    """The error of a call whose outcome is unknown: what happened, its id and
    how to learn the outcome."""
    if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        what = f"no answer from the manager at {exc.target} in time"
    else:
        what = exc.describe("the manager")
    return CliError(
        f"{what}; whether request {request_id} took effect is unknown: "
        f"`pycontainer operation {request_id}` tells it once the manager answers",
        EXIT_UNREACHABLE,
    )


# -- pycontainer operation ----------------------------------------------------------------
def _state_text(state: manager_pb2.OperationState.ValueType) -> Text:
    from rich.text import Text

    name = short_enum(manager_pb2.OperationState.Name(state))
    return Text(name, style=_STATE_STYLES.get(state, ""))


def _status_text(operation: manager_pb2.Operation) -> str:
    if operation.state == manager_pb2.OPERATION_STATE_RUNNING:
        return "-"
    code = status_code(operation.status.code)
    return code.name + (f": {operation.status.message}" if operation.status.message else "")


def _took(operation: manager_pb2.Operation) -> str:
    if not operation.HasField("end_time"):
        return ""
    took = timestamp_from_proto(operation.end_time) - timestamp_from_proto(operation.start_time)
    return f" (took {format_duration(took)})"


def describe(ctx: Context, operation: manager_pb2.Operation) -> None:
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("Request:", operation.request_id),
        ("Method:", operation.method),
        ("Target:", operation.target or "-"),
        ("Actor:", operation.actor or "-"),
        ("State:", _state_text(operation.state)),
        ("Status:", _status_text(operation)),
        ("Started:", local_time(operation.start_time, date=True)),
        (
            "Ended:",
            local_time(operation.end_time, date=True) + _took(operation)
            if operation.HasField("end_time")
            else "-",
        ),
    ]
    for key, value in rows:
        grid.add_row(key, value)
    show(console(ctx), grid)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """One operation by id (exit 1 when it FAILED or was INTERRUPTED), or the newest."""
    with ctx.manager(args) as client:
        if args.request_id:
            operation = client.get_operation(
                manager_pb2.GetOperationRequest(request_id=args.request_id)
            ).operation
        else:
            listed = client.list_operations(
                manager_pb2.ListOperationsRequest(container=args.container, page_size=args.limit)
            ).operations
    if not args.request_id:
        return _print_list(ctx, list(listed), args.output)
    if args.output in ("json", "yaml"):
        print_data(ctx, message_dict(operation), args.output)
    else:
        describe(ctx, operation)
    failed = (manager_pb2.OPERATION_STATE_FAILED, manager_pb2.OPERATION_STATE_INTERRUPTED)
    return EXIT_FAILED if operation.state in failed else 0


def _print_list(ctx: Context, operations: list[manager_pb2.Operation], output: str) -> int:
    if output in ("json", "yaml"):
        data: dict[str, Any] = {"operations": [message_dict(o) for o in operations]}
        print_data(ctx, data, output)
        return 0
    if not operations:
        ctx.err("no operations")
        return 0
    table = plain_table("REQUEST ID", "METHOD", "TARGET", "STATE", "AGE", "ACTOR")
    for o in operations:
        table.add_row(
            o.request_id,
            o.method,
            clipped(o.target),
            _state_text(o.state),
            age(o.start_time),
            o.actor,
        )
    show(console(ctx), table)
    return 0
