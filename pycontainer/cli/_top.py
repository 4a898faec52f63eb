"""`pycontainer top`: a live table of every container's figures, from the
manager's WatchMetrics proxy (one stream per container, so that one that
went away leaves the others on screen)."""

from __future__ import annotations

import argparse
import datetime
import threading
import time
from dataclasses import dataclass

import grpc
from rich.console import Group
from rich.live import Live
from rich.text import Text

from ..client import CallError, ManagerClient
from ..units import duration_from_proto, duration_to_proto, format_duration
from ..v1 import container_pb2, manager_pb2, manager_pb2_grpc, metrics_pb2
from ._args import LIVE_STATES
from ._context import Context
from ._errors import Interrupted, from_call
from ._output import console, error_console, message_dict, print_data, show
from ._render import human_bytes, plain_table, state_text

S = container_pb2


@dataclass
class _Target:
    container: manager_pb2.Container
    snapshot: metrics_pb2.MetricsSnapshot | None = None
    error: str = ""
    call: grpc.CallIterator[manager_pb2.ManagerWatchMetricsResponse] | None = None


class Feed:
    """One WatchMetrics stream per container, each on a thread; the latest
    snapshot (or error) of each."""

    def __init__(self, client: ManagerClient, interval: datetime.timedelta) -> None:
        self._client = client
        # The raw stub: each stream is cancelled from the main thread (a
        # generator cannot be closed from another thread while it runs).
        self._stub = manager_pb2_grpc.ManagerStub(client.channel)
        self._interval = duration_to_proto(interval)
        self._lock = threading.Lock()
        self.targets: dict[str, _Target] = {}
        self._threads: list[threading.Thread] = []

    def update(self, containers: list[manager_pb2.Container]) -> None:
        """Follow these containers: new ones get a stream, gone ones lose theirs."""
        wanted = {c.identity.id: c for c in containers}
        with self._lock:
            for container_id in list(self.targets):
                if container_id not in wanted:
                    gone = self.targets.pop(container_id)
                    if gone.call is not None:
                        gone.call.cancel()  # type: ignore[no-untyped-call]
            for container_id, container in wanted.items():
                target = self.targets.get(container_id)
                if target is not None:
                    target.container = container
                    continue
                target = _Target(container)
                self.targets[container_id] = target
                thread = threading.Thread(
                    target=self._follow, args=(target,), name=f"top-{container_id}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _follow(self, target: _Target) -> None:
        request = manager_pb2.ManagerWatchMetricsRequest(
            containers=[target.container.identity.id], interval=self._interval
        )
        call = self._stub.WatchMetrics(request)
        with self._lock:
            target.call = call
        try:
            for response in call:
                with self._lock:
                    target.snapshot = response.snapshot
                    target.error = ""
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                with self._lock:
                    error = CallError.from_rpc_error(exc, self._client.target, "WatchMetrics")
                    target.error = from_call(error).message

    def ready(self) -> bool:
        """Every container has a snapshot or an error."""
        with self._lock:
            return all(t.snapshot is not None or t.error for t in self.targets.values())

    def rows(self) -> list[_Target]:
        with self._lock:
            return [_Target(t.container, t.snapshot, t.error, None) for t in self.targets.values()]

    def close(self) -> None:
        with self._lock:
            calls = [t.call for t in self.targets.values() if t.call is not None]
        for call in calls:
            call.cancel()  # type: ignore[no-untyped-call]
        for thread in self._threads:
            thread.join(2)


def _rpc_rate(snapshot: metrics_pb2.MetricsSnapshot) -> float:
    return sum(m.calls_per_second for m in snapshot.rpc_methods)


def _figure(snapshot: metrics_pb2.MetricsSnapshot, key: str) -> float:
    if key == "cpu":
        return snapshot.process.cpu_percent
    if key == "memory":
        return float(snapshot.process.rss_bytes)
    return _rpc_rate(snapshot)


def _sort(rows: list[_Target], key: str) -> list[_Target]:
    """By name, or biggest figure first (containers still without one last)."""
    if key == "name":
        return sorted(rows, key=lambda t: (t.container.identity.name, t.container.identity.id))
    return sorted(
        rows,
        key=lambda t: (
            t.snapshot is None,
            -_figure(t.snapshot, key) if t.snapshot is not None else 0.0,
            t.container.identity.name,
            t.container.identity.id,
        ),
    )


def render(rows: list[_Target], sort: str) -> Group:
    """The table, and a line per container whose figures could not be had."""
    table = plain_table(
        "NAME", "ID", "STATE", "CPU%", "MEMORY", "THREADS", "FILES", "RPC/S", "UPTIME"
    )
    for column in table.columns[3:]:
        column.justify = "right"
    errors: list[Text] = []
    for t in _sort(rows, sort):
        identity = t.container.identity
        s = t.snapshot
        if s is None:
            figures = ["-"] * 6
            if t.error:
                errors.append(Text(f"{identity.id}: {t.error}", style="red"))
        else:
            p = s.process
            figures = [
                f"{p.cpu_percent:.1f}",
                human_bytes(p.rss_bytes) if p.rss_bytes else "-",
                str(p.threads),
                str(p.open_fds),
                f"{_rpc_rate(s):.1f}",
                format_duration(datetime.timedelta(seconds=duration_from_proto(p.uptime).seconds))
                if p.HasField("uptime")
                else "-",
            ]
        table.add_row(identity.name, identity.id, state_text(t.container.state), *figures)
    return Group(table, *errors)


def _select(client: ManagerClient, args: argparse.Namespace) -> list[manager_pb2.Container]:
    """The live, connected containers to show."""
    response = client.list_containers(
        manager_pb2.ListContainersRequest(label_selector=args.selector, states=LIVE_STATES)
    )
    chosen = [c for c in response.containers if c.connected]
    if args.containers:
        wanted = set(args.containers)
        chosen = [c for c in chosen if wanted & {c.identity.id, c.identity.name}]
    return chosen


def run(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.manager(args) as client:
        if args.containers:  # an unknown name is an error, not an empty table
            for name in args.containers:
                client.get_container(manager_pb2.GetContainerRequest(container=name))
        feed = Feed(client, args.interval)
        try:
            if args.once:
                return _once(ctx, client, feed, args)
            if not console(ctx).is_terminal:  # piped or redirected: no live view
                return _batch(ctx, client, feed, args)
            return _live(ctx, client, feed, args)
        finally:
            feed.close()


def _once(ctx: Context, client: ManagerClient, feed: Feed, args: argparse.Namespace) -> int:
    feed.update(_select(client, args))
    _first_figures(feed, args)
    _print_rows(ctx, feed.rows(), args)
    return 0


def _first_figures(feed: Feed, args: argparse.Namespace) -> None:
    """Wait (bounded) until every container shown has its first figures."""
    deadline = time.monotonic() + 10 + args.interval.total_seconds()
    while not feed.ready() and time.monotonic() < deadline:
        time.sleep(0.02)


def _batch(ctx: Context, client: ManagerClient, feed: Feed, args: argparse.Namespace) -> int:
    """Off a terminal (| head, > file): a plain snapshot every interval, each
    after a line with its time, until Ctrl-C (as top -b)."""
    interval = args.interval.total_seconds()
    refresh_every = max(interval, 2.0)  # new and departed containers
    next_refresh = 0.0
    try:
        while True:
            now = time.monotonic()
            if now >= next_refresh:
                feed.update(_select(client, args))
                _first_figures(feed, args)
                next_refresh = now + refresh_every
            if args.output == "table":
                stamp = datetime.datetime.now().astimezone().strftime("%H:%M:%S")
                ctx.out(f"pycontainer top: {client.target}, {stamp}")
            _print_rows(ctx, feed.rows(), args)
            if args.output == "table":
                ctx.out()
            ctx.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        # Ctrl-C is how top ends: 130, as every verb interrupted, silently.
        raise Interrupted() from None


def _print_rows(ctx: Context, rows: list[_Target], args: argparse.Namespace) -> None:
    if args.output in ("json", "yaml"):
        data = [
            {
                "container": message_dict(t.container.identity),
                "state": S.LifecycleState.Name(t.container.state),
                "snapshot": message_dict(t.snapshot) if t.snapshot is not None else None,
                "error": t.error,
            }
            for t in _sort(rows, args.sort)
        ]
        print_data(ctx, {"containers": data}, args.output)
        return
    if not rows:
        error_console(ctx).print("no live containers")
        return
    show(console(ctx), render(rows, args.sort))


def _live(ctx: Context, client: ManagerClient, feed: Feed, args: argparse.Namespace) -> int:
    out = console(ctx)
    interval = args.interval.total_seconds()
    refresh_every = max(interval, 2.0)  # new and departed containers
    next_refresh = 0.0
    try:
        with Live(console=out, refresh_per_second=4, transient=False) as live:
            while True:
                now = time.monotonic()
                if now >= next_refresh:
                    feed.update(_select(client, args))
                    next_refresh = now + refresh_every
                header = Text(
                    f"pycontainer top: {client.target}, every {format_duration(args.interval)}"
                    f" (Ctrl-C to quit)",
                    style="dim",
                )
                live.update(Group(header, render(feed.rows(), args.sort)))
                time.sleep(min(0.25, interval))
    except KeyboardInterrupt:
        # Ctrl-C is how the live view ends: 130, as every verb interrupted, silently.
        raise Interrupted() from None
    return 0
