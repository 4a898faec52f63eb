"""`pycontainer logs`: containers' logs through the manager's StreamLogs proxy,
several interleaved with a coloured name prefix (a stable colour per name)."""

from __future__ import annotations

import argparse
import datetime
import json
import zlib
from collections import Counter
from collections.abc import Collection, Iterable

from google.protobuf.timestamp_pb2 import Timestamp
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


# What rich strips from printed text (bell, backspace, vertical tab, form feed,
# carriage return): the lines print as they did through rich.
_STRIP_CONTROLS = dict.fromkeys((7, 8, 11, 12, 13))
# Distinct loggers' (and levels') painted names kept; past it one is painted each time.
_PAINTED_LOGGERS = 4096


class LogPrinter:
    """Formats entries: ``name | 12:00:01.123 WARN    app.worker: message``.

    A response's lines are formatted as plain strings and written at once: at
    100,000 lines a second there is no time for a renderer per line. Colours
    (only where the console has them: a terminal, no --no-color or $NO_COLOR)
    are the console's own escape codes, made once per label, level and logger.
    """

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
        self._painted = console.color_system is not None and not console.no_color
        self._heads: dict[str, str] = {}  # container id -> "name | " (painted)
        self._levels: dict[int | str, str] = {}
        self._loggers: dict[str, str] = {}
        self._second = -1  # the second _clock was made for
        self._clock = ""

    def expect(self, labels: Iterable[str]) -> None:
        """Give these containers their colours (in name order, so that the same
        set gets the same colours every time) and room in the prefix."""
        for label in sorted(set(labels)):
            self.colour(label)
            self._widen(len(label))

    def colour(self, label: str) -> str:
        if label not in self.colours:
            self.colours[label] = colour_for(label, set(self.colours.values()))
        return self.colours[label]

    def label(self, container_id: str) -> str:
        return self.labels.get(container_id, container_id)

    def paint(self, text: str, style: str) -> str:
        """``text`` in ``style``, as the console writes it (plain without colour)."""
        if not style or not self._painted:
            return text
        with self.console.capture() as captured:
            self.console.print(Text(text, style=style), end="", soft_wrap=True, crop=False)
        return captured.get()

    def _widen(self, width: int) -> None:
        if width > self.width:
            self.width = width
            self._heads.clear()  # padded to the old width

    def _head(self, container_id: str) -> str:
        head = self._heads.get(container_id)
        if head is None:
            label = self.label(container_id)
            if self.prefix:
                self._widen(len(label))
                head = self.paint(label.ljust(self.width), self.colour(label)) + " | "
            else:
                head = ""
            self._heads[container_id] = head
        return head

    def _level(self, severity: int, text: str) -> str:
        # Keyed by the severity, or by the source's text when it has none.
        key: int | str = severity if severity else text
        level = self._levels.get(key)
        if level is None:
            # One spelling for every source: the proto's names (WARN, not
            # logging's WARNING); the source's own text only when it has no level.
            name = (
                logs_pb2.Severity.Name(severity).removeprefix("SEVERITY_")  # type: ignore[arg-type]
                if severity
                else text or "UNSPECIFIED"
            )
            level = self.paint(name.ljust(7), _severity_style(severity)) + " "
            if len(self._levels) < _PAINTED_LOGGERS:
                self._levels[key] = level
        return level

    def _logger(self, name: str) -> str:
        painted = self._loggers.get(name)
        if painted is None:
            painted = self.paint(f"{name}: ", "dim") if name else ""
            if len(self._loggers) < _PAINTED_LOGGERS:
                self._loggers[name] = painted
        return painted

    def _time(self, ts: Timestamp) -> str:
        if self.timestamps:
            return ts.ToJsonString()  # RFC 3339, as kubectl --timestamps
        seconds = ts.seconds
        if seconds != self._second:
            if seconds == 0:
                return local_time(ts)  # "-" when unset
            # local_time to the second, once a second; the milliseconds are the entry's.
            self._second, self._clock = seconds, local_time(Timestamp(seconds=seconds))[:-4]
        return f"{self._clock}.{ts.nanos // 1_000_000:03d}"

    def format(self, entries: Iterable[logs_pb2.LogEntry], container_id: str = "") -> str:
        """The lines of ``entries`` (from ``container_id`` where an entry does
        not say), each ending in a newline."""
        if self.output == "json":
            out = []
            for entry in entries:
                data = message_dict(entry)
                if not entry.container_id and container_id:
                    data["containerId"] = container_id
                data["containerName"] = self.label(entry.container_id or container_id)
                out.append(json.dumps(data, ensure_ascii=False) + "\n")
            return "".join(out)
        lines: list[str] = []
        append = lines.append
        # The caches read inline: a call per field per line shows at 100k lines/s.
        heads, levels, loggers = self._heads, self._levels, self._loggers
        second, clock = self._second, self._clock
        for entry in entries:
            cid = entry.container_id or container_id
            head = heads.get(cid)
            if head is None:
                head = self._head(cid)
            ts = entry.time
            if ts.seconds == second:
                stamp = f"{clock}.{ts.nanos // 1_000_000:03d}"
            else:
                stamp = self._time(ts)
                second, clock = self._second, self._clock
            severity = entry.severity
            level = levels.get(severity) if severity else None
            if level is None:
                level = self._level(severity, entry.severity_text)
            name = entry.logger
            logger = loggers.get(name)
            if logger is None:
                logger = self._logger(name)
            append(f"{head}{stamp} {level}{logger}{entry.message}\n")
            attributes = entry.attributes
            if "exception.stacktrace" in attributes:
                stack = attributes["exception.stacktrace"]
                for text in stack.rstrip("\n").splitlines():
                    append(f"{head}{self.paint(text, 'red')}\n")
        return "".join(lines).translate(_STRIP_CONTROLS)

    def print(self, entry: logs_pb2.LogEntry) -> None:
        self.console.file.write(self.format((entry,)))

    def ended(self, end: manager_pb2.LogStreamEnd) -> None:
        """A container's part ended: ``[name] container stopped (exit status 0)``."""
        label = self.labels.get(end.container_id, end.container_name or end.container_id)
        if self.output == "json":
            data = {"containerId": end.container_id, "containerName": label, "ended": end.message}
            self.console.file.write(json.dumps(data, ensure_ascii=False) + "\n")
            return
        line = self.paint(f"[{label}]", self.colour(label))
        line += self.paint(f" {end.message or 'its stream ended'}", "dim")
        self.console.file.write(line.translate(_STRIP_CONTROLS) + "\n")


class MissedEntries:
    """How many entries a reader did not get: from the gaps in each
    container's sequence numbers (LogEntry.sequence goes up by one per entry),
    or, where filters leave gaps of their own, from what the servers counted
    (``missed``; without filters it is the same entries as the gaps)."""

    def __init__(self, filtered: bool) -> None:
        self.filtered = filtered
        self._next: dict[str, int] = {}  # container id -> the sequence expected next

    def count(self, response: manager_pb2.ManagerStreamLogsResponse) -> int:
        """The entries missed just before those of ``response``."""
        if self.filtered:
            return response.missed
        gaps = 0
        expected = self._next
        shared = response.container_id
        for entry in response.entries:
            cid = entry.container_id or shared
            seq = entry.sequence
            want = expected.get(cid)
            if want is not None and seq > want:
                gaps += seq - want
            # (lower: a new run of the container, numbered from 1 again)
            expected[cid] = seq + 1
        return gaps


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
        missed = MissedEntries(
            filtered=bool(args.contains or args.grep or args.logger or args.level)
        )
        write, flush = out.file.write, out.file.flush
        try:
            for response in client.stream_logs(request):
                if response.entries:
                    write(printer.format(response.entries, response.container_id))
                lost = missed.count(response)
                if lost:
                    flush()  # the notice comes where the gap is
                    ctx.err(
                        f"note: {lost} entries missed (the container's log buffer wrapped "
                        "before they were read: read faster, or give it more --log-capacity)"
                    )
                for end in response.ended:
                    # One container's part of a followed stream ended; the others go on.
                    printer.ended(end)
                flush()
        except KeyboardInterrupt:
            if not args.follow:
                raise
            # Ctrl-C is how -f ends: 130, as every verb interrupted, silently.
            raise Interrupted() from None
    return 0
