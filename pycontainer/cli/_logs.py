"""`pycontainer logs`: containers' logs through the manager's StreamLogs proxy,
several interleaved with a coloured name prefix (a stable colour per name)."""

from __future__ import annotations

import argparse
import datetime
import json
import zlib
from collections import Counter
from collections.abc import Collection, Iterable

from rich.console import Console
from rich.text import Text

from ..client import ManagerClient
from ..units import timestamp_to_proto
from ..v1 import logs_pb2, manager_pb2
from ._args import SELECTOR_TAIL
from ._context import Context
from ._errors import CliError, Interrupted
from ._output import console, message_dict
from ._render import local_time

# Prefix colours, as stern and kubetail cycle through them; red is left for errors.
PALETTE = (
    "cyan",
    "green",
    "magenta",
    "yellow",
    "blue",
    "bright_cyan",
    "bright_green",
    "bright_magenta",
    "bright_yellow",
    "bright_blue",
)


def colour_for(name: str, taken: Collection[str] = ()) -> str:
    """The prefix colour of ``name``: the same in every run and on every
    machine, moved on to the next free one where another container of the
    same output already has it (while the palette lasts)."""
    start = zlib.crc32(name.encode()) % len(PALETTE)
    for step in range(len(PALETTE)):
        colour = PALETTE[(start + step) % len(PALETTE)]
        if colour not in taken:
            return colour
    return PALETTE[start]


def _severity_style(severity: int) -> str:
    if severity >= logs_pb2.SEVERITY_ERROR:
        return "bold red"
    if severity >= logs_pb2.SEVERITY_WARN:
        return "yellow"
    if 0 < severity < logs_pb2.SEVERITY_INFO:
        return "dim"
    return ""


class LogPrinter:
    """Formats entries: ``name | 12:00:01.123 WARN    app.worker: message``."""

    def __init__(
        self,
        console: Console,
        labels: dict[str, str],
        prefix: bool,
        output: str = "text",
        timestamps: bool = False,
    ) -> None:
        self.console = console
        self.labels = labels
        self.prefix = prefix
        self.output = output
        self.timestamps = timestamps
        self.width = 0
        self.colours: dict[str, str] = {}

    def expect(self, labels: Iterable[str]) -> None:
        """Give these containers their colours (in name order, so that the same
        set gets the same colours every time) and room in the prefix."""
        for label in sorted(set(labels)):
            self.colour(label)
            self.width = max(self.width, len(label))

    def colour(self, label: str) -> str:
        if label not in self.colours:
            self.colours[label] = colour_for(label, set(self.colours.values()))
        return self.colours[label]

    def label(self, container_id: str) -> str:
        return self.labels.get(container_id, container_id)

    def print(self, entry: logs_pb2.LogEntry) -> None:
        label = self.label(entry.container_id)
        if self.output == "json":
            data = message_dict(entry)
            data["containerName"] = label
            self.console.file.write(json.dumps(data, ensure_ascii=False) + "\n")
            return
        head = Text()
        if self.prefix:
            self.width = max(self.width, len(label))
            head.append(label.ljust(self.width), style=self.colour(label))
            head.append(" | ")
        line = head.copy()
        if self.timestamps:
            line.append(entry.time.ToJsonString())  # RFC 3339, as kubectl --timestamps
        else:
            line.append(local_time(entry.time))
        line.append(" ")
        # One spelling for every source: the proto's names (WARN, not
        # logging's WARNING); the source's own text only when it has no level.
        level = (
            logs_pb2.Severity.Name(entry.severity).removeprefix("SEVERITY_")
            if entry.severity
            else entry.severity_text or "UNSPECIFIED"
        )
        line.append(level.ljust(7), style=_severity_style(entry.severity))
        line.append(" ")
        if entry.logger:
            line.append(f"{entry.logger}: ", style="dim")
        line.append(entry.message)
        self.console.print(line, soft_wrap=True, crop=False)
        stack = entry.attributes.get("exception.stacktrace", "")
        for text in stack.rstrip("\n").splitlines():
            more = head.copy()
            more.append(text, style="red")
            self.console.print(more, soft_wrap=True, crop=False)

    def ended(self, end: manager_pb2.LogStreamEnd) -> None:
        """A container's part ended: ``[name] container stopped (exit status 0)``."""
        label = self.labels.get(end.container_id, end.container_name or end.container_id)
        if self.output == "json":
            data = {"containerId": end.container_id, "containerName": label, "ended": end.message}
            self.console.file.write(json.dumps(data, ensure_ascii=False) + "\n")
            return
        line = Text()
        line.append(f"[{label}]", style=self.colour(label))
        line.append(f" {end.message or 'its stream ended'}", style="dim")
        self.console.print(line, soft_wrap=True, crop=False)


def display_labels(
    client: ManagerClient, wanted: Collection[str], selector: str
) -> tuple[dict[str, str], list[str]]:
    """Container id -> the name to show (its name, or its id where several
    containers share that name), and the labels of the containers asked for."""
    containers = client.list_containers().containers
    names = Counter(c.identity.name for c in containers)
    labels = {
        c.identity.id: c.identity.name if names[c.identity.name] == 1 else c.identity.id
        for c in containers
    }
    if selector:
        chosen = client.list_containers(
            manager_pb2.ListContainersRequest(label_selector=selector)
        ).containers
        expected = [labels[c.identity.id] for c in chosen]
    else:
        expected = [
            labels[c.identity.id]
            for c in containers
            if {c.identity.id, c.identity.name} & set(wanted)
        ]
    return labels, expected


def run(args: argparse.Namespace, ctx: Context) -> int:
    if not args.containers and not args.selector:
        raise CliError("give container ids or names, or -l SELECTOR")
    log_filter = manager_pb2.StreamLogsFilter(
        follow=args.follow,
        contains=args.contains,
        pattern=args.grep,
        logger=args.logger,
        previous=args.previous,
    )
    if args.level is not None:
        log_filter.min_severity = args.level
    if args.tail is not None:
        log_filter.tail = args.tail
    elif args.selector and not args.containers:
        log_filter.tail = SELECTOR_TAIL
    if args.since is not None:
        now = datetime.datetime.now(datetime.UTC)
        log_filter.since.CopyFrom(timestamp_to_proto(now - args.since))
    request = manager_pb2.ManagerStreamLogsRequest(
        containers=args.containers, label_selector=args.selector, filter=log_filter
    )
    out = console(ctx, no_color=args.no_color)
    with ctx.manager(args) as client:
        labels, expected = display_labels(client, args.containers, args.selector)
        prefix = args.prefix or bool(args.selector) or len(args.containers) > 1
        printer = LogPrinter(out, labels, prefix, args.output, args.timestamps)
        printer.expect(expected)
        try:
            for response in client.stream_logs(request):
                for entry in response.entries:
                    printer.print(entry)
                out.file.flush()
                if response.missed:
                    ctx.err(f"note: {response.missed} entries missed (reading too slowly)")
                for end in response.ended:
                    # One container's part of a followed stream ended; the others go on.
                    printer.ended(end)
                out.file.flush()
        except KeyboardInterrupt:
            if not args.follow:
                raise
            # Ctrl-C is how -f ends: 130, as every verb interrupted, silently.
            raise Interrupted() from None
    return 0
