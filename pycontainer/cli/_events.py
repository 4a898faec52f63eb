"""`pycontainer events`: what happened to containers (WatchEvents)."""

from __future__ import annotations

import argparse
import datetime
from typing import TYPE_CHECKING

from ..client import ManagerClient
from ..v1 import manager_pb2
from ._context import Context
from ._errors import Interrupted
from ._output import console, message_dict, print_data, print_table
from ._render import (
    clipped,
    event_message,
    event_subject,
    local_time,
    short_enum,
)
from ._table import Styled, TableRows

if TYPE_CHECKING:
    from rich.text import Text

# The longest a history read may take.
_LIMIT = datetime.timedelta(seconds=10)

_TYPE_STYLES: dict[int, str] = {
    manager_pb2.EVENT_TYPE_LOST: "red",
    manager_pb2.EVENT_TYPE_REFUSED: "red",
    manager_pb2.EVENT_TYPE_EVICTED: "yellow",
    manager_pb2.EVENT_TYPE_EXITED: "yellow",
}


def _type_cell(event: manager_pb2.Event) -> Styled:
    name = short_enum(manager_pb2.EventType.Name(event.type))
    return Styled(name, _TYPE_STYLES.get(event.type, ""))


def _type_text(event: manager_pb2.Event) -> Text:
    from rich.text import Text

    cell = _type_cell(event)
    return Text(cell.text, style=cell.style)


def subject(event: manager_pb2.Event) -> str:
    """The container of an event as the events table names it: NAME/SHORT-ID."""
    return clipped(event_subject(event.container_name, event.container_id))


def history(client: ManagerClient, container: str = "") -> list[manager_pb2.Event]:
    """The events the manager retains (those of ``container`` when given)."""
    request = manager_pb2.WatchEventsRequest(history_only=True, container=container)
    return [r.event for r in client.watch_events(request, timeout=_LIMIT)]


def run(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client:
        # A unary call first: a clear error for an unknown container or an
        # unreachable manager, and a connection ready for the stream.
        if args.container:
            client.get_container(manager_pb2.GetContainerRequest(container=args.container))
        else:
            client.list_containers(
                manager_pb2.ListContainersRequest(label_selector="pycontainer.dev/none")
            )
        if not args.watch:
            events = history(client, args.container)
            if args.output in ("json", "yaml"):
                print_data(ctx, {"events": [message_dict(e) for e in events]}, args.output)
            elif not events:
                ctx.err("no events")
            else:
                table = TableRows(("TIME", "TYPE", "CONTAINER", "MESSAGE"), wrap_last=True)
                for e in events:
                    table.add_row(
                        local_time(e.time), _type_cell(e), subject(e), event_message(e.message)
                    )
                print_table(ctx, table)
            return 0
        return _watch(client, args, ctx)


def _watch(client: ManagerClient, args: argparse.Namespace, ctx: Context) -> int:
    import json

    import yaml
    from rich.text import Text

    out = console(ctx)
    request = manager_pb2.WatchEventsRequest(include_history=True, container=args.container)
    try:
        if args.output == "table":
            header = f"{'TIME':<12}  {'TYPE':<16}  {'CONTAINER':<24}  MESSAGE"
            out.print(Text(header, style="bold"))
        for number, response in enumerate(client.watch_events(request)):
            e = response.event
            if args.output == "json":
                out.file.write(json.dumps(message_dict(e), ensure_ascii=False) + "\n")
            elif args.output == "yaml":
                if number:
                    out.file.write("---\n")
                out.file.write(yaml.safe_dump(message_dict(e), sort_keys=False))
            else:
                line = Text(f"{local_time(e.time):<12}  ")
                line.append_text(_type_text(e))
                line.append(" " * max(2, 18 - len(_type_text(e))))
                line.append(f"{subject(e):<24}  {event_message(e.message)}")
                out.print(line, soft_wrap=True, crop=False)
            out.file.flush()
    except KeyboardInterrupt:
        # Ctrl-C is how a watch ends: 130, as every verb interrupted, silently.
        raise Interrupted() from None
    return 0
