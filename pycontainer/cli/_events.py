"""`pycontainer events`: what happened to containers (WatchEvents)."""

from __future__ import annotations

import argparse
import json
import sys

import grpc
import yaml
from rich.text import Text

from ..v1 import manager_pb2
from ._client import (
    ManagerClient,
    add_manager_option,
    add_output_option,
    connect,
    message_dict,
    print_data,
    show,
    stdout_console,
)
from ._render import local_time, plain_table, short_enum

# The longest a history read may take.
_LIMIT = 10.0

_TYPE_STYLES: dict[int, str] = {
    manager_pb2.EVENT_TYPE_LOST: "red",
    manager_pb2.EVENT_TYPE_REFUSED: "red",
    manager_pb2.EVENT_TYPE_EVICTED: "yellow",
    manager_pb2.EVENT_TYPE_EXITED: "yellow",
}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "events",
        help="show what happened to containers",
        description="Show the manager's recent events (registrations, state changes, "
        "commands, evictions, exits, checkpoints, refusals); -w keeps watching.",
    )
    parser.add_argument(
        "container", nargs="?", default="", metavar="ID", help="only this container (id or name)"
    )
    parser.add_argument(
        "-w", "--watch", action="store_true", help="after the history, print events as they come"
    )
    add_output_option(parser, formats=("table", "json", "yaml"))
    add_manager_option(parser)
    parser.set_defaults(func=run)


def _type_text(event: manager_pb2.Event) -> Text:
    name = short_enum(manager_pb2.EventType.Name(event.type))
    return Text(name, style=_TYPE_STYLES.get(event.type, ""))


def history(client: ManagerClient, container: str = "") -> list[manager_pb2.Event]:
    """The events the manager retains (those of ``container`` when given)."""
    request = manager_pb2.WatchEventsRequest(history_only=True, container=container)
    try:
        return [r.event for r in client.stub.WatchEvents(request, timeout=_LIMIT)]
    except grpc.RpcError as exc:
        raise client.error(exc) from None


def run(args: argparse.Namespace) -> int:
    with connect(args) as client:
        # A unary call first: a clear error for an unknown container or an
        # unreachable manager, and a connection ready for the stream.
        if args.container:
            client.call(
                client.stub.GetContainer,
                manager_pb2.GetContainerRequest(container=args.container),
            )
        else:
            client.call(
                client.stub.ListContainers,
                manager_pb2.ListContainersRequest(label_selector="pycontainer.dev/none"),
            )
        if not args.watch:
            events = history(client, args.container)
            if args.output in ("json", "yaml"):
                print_data({"events": [message_dict(e) for e in events]}, args.output)
            elif not events:
                print("no events", file=sys.stderr)
            else:
                table = plain_table("TIME", "TYPE", "CONTAINER", "MESSAGE")
                table.columns[-1].no_wrap = False
                for e in events:
                    table.add_row(local_time(e.time), _type_text(e), e.container_name, e.message)
                show(stdout_console(), table)
            return 0
        return _watch(client, args)


def _watch(client: ManagerClient, args: argparse.Namespace) -> int:
    console = stdout_console()
    request = manager_pb2.WatchEventsRequest(include_history=True, container=args.container)
    if args.output == "table":
        console.print(Text(f"{'TIME':<12}  {'TYPE':<16}  {'CONTAINER':<20}  MESSAGE", style="bold"))
    try:
        for number, response in enumerate(client.stream(client.stub.WatchEvents, request)):
            e = response.event
            if args.output == "json":
                console.file.write(json.dumps(message_dict(e), ensure_ascii=False) + "\n")
            elif args.output == "yaml":
                if number:
                    console.file.write("---\n")
                console.file.write(yaml.safe_dump(message_dict(e), sort_keys=False))
            else:
                line = Text(f"{local_time(e.time):<12}  ")
                line.append_text(_type_text(e))
                line.append(" " * max(2, 18 - len(_type_text(e))))
                line.append(f"{e.container_name:<20}  {e.message}")
                console.print(line, soft_wrap=True, crop=False)
            console.file.flush()
    except KeyboardInterrupt:
        pass
    return 0
