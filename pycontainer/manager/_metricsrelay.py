"""Manager.WatchMetrics: every chosen container's Management.WatchMetrics
stream, merged as they arrive, relayed as bytes.

The manager only forwards snapshots, so it never decodes one: a
WatchMetricsResponse and a ManagerWatchMetricsResponse have the same shape
(field 1, the MetricsSnapshot, and nothing else; a test holds them to it), so
a container's response bytes are the answer's bytes. The container id is
set by appending a second ``snapshot`` holding only ``container_id``:
protobuf merges the occurrences of a singular message field, the last
scalar winning, so what a container says of its own id is overridden, as
setting the field would. Decoding and re-encoding each snapshot (with a copy
into the answer) was a fifth of the relay's time.

A pump's task is never cancelled while it reads (grpc.aio then drops the
read's native batch: grpc/grpc#43360, _upstream): the relay ends by
cancelling the *calls*, which completes their pending reads, and waits for
the pumps to see that. So a read costs no task of its own either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc

from .._errors import RequestError
from ..v1 import management_pb2, manager_pb2, metrics_pb2
from ._registry import Entry
from ._upstream import fan_in

WATCH_METRICS = "/pycontainer.v1.Management/WatchMetrics"
# Snapshots queued for the watcher: a slow one holds the containers' streams
# back (flow control) rather than growing the manager's memory.
_QUEUE = 64


def container_tag(container_id: str) -> bytes:
    """Bytes that, appended to a WatchMetricsResponse, make it a
    ManagerWatchMetricsResponse whose snapshot says ``container_id``."""
    snapshot = metrics_pb2.MetricsSnapshot(container_id=container_id)
    return manager_pb2.ManagerWatchMetricsResponse(snapshot=snapshot).SerializeToString()


def check_endpoints(entries: list[Entry]) -> None:
    """Fail at once, before any stream opens, for a container with no
    Management endpoint (rather than hang)."""
    for entry in entries:
        if not entry.management_address():
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"container {entry.id} advertises no Management endpoint: add one to the "
                "app (container.add_endpoint(..., kind='management'))",
            )


async def relay(
    dial: Callable[[Entry], grpc.aio.Channel],
    entries: list[Entry],
    request: management_pb2.WatchMetricsRequest,
) -> AsyncIterator[bytes]:
    """Serialized ManagerWatchMetricsResponses of ``entries``, interleaved as
    they arrive, until every stream ended; a stream's error ends the relay
    with it (as a RequestError naming the container)."""
    check_endpoints(entries)
    if not entries:
        return
    # Items, a pump's error, or None when a pump is done.
    queue: asyncio.Queue[bytes | RequestError | None] = asyncio.Queue(maxsize=_QUEUE)
    channels: list[grpc.aio.Channel] = []
    calls: list[grpc.aio.UnaryStreamCall[management_pb2.WatchMetricsRequest, bytes]] = []
    closing = False

    async def pump(
        entry: Entry, call: grpc.aio.UnaryStreamCall[management_pb2.WatchMetricsRequest, bytes]
    ) -> None:
        tag = container_tag(entry.id)
        outcome: RequestError | None = None
        try:
            async for raw in call:
                if closing:
                    return
                await queue.put(raw + tag)
        except grpc.aio.AioRpcError as exc:
            outcome = RequestError(exc.code(), f"{entry.id}: {exc.details()}")
        except asyncio.CancelledError:
            if not call.cancelled():  # this task itself is being cancelled
                raise
            return  # the relay cancelled the call: it is ending
        if not closing:
            await queue.put(outcome)

    tasks = []
    for entry in entries:
        channel = dial(entry)
        channels.append(channel)
        call = channel.unary_stream(
            WATCH_METRICS,
            request_serializer=management_pb2.WatchMetricsRequest.SerializeToString,
            response_deserializer=None,  # the bytes, as sent
        )(request)
        calls.append(call)
        tasks.append(asyncio.ensure_future(pump(entry, call)))
    try:
        async for item in fan_in(queue, len(tasks)):
            yield item
    finally:
        closing = True
        for call in calls:
            call.cancel()  # completes a pending read (end of stream)
        pending = set(tasks)
        while pending:
            while not queue.empty():  # unblocks a pump waiting to put
                queue.get_nowait()
            _, pending = await asyncio.wait(pending, timeout=0.05)
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close(None)


__all__ = ["WATCH_METRICS", "check_endpoints", "container_tag", "relay"]
