"""The live feeds of the pages (each an SSE stream, _sse): the fleet, and one
container's logs, usage and events. All read the manager's own state on its
loop: the registry, the event bus, StreamLogs (_logstreams), the usage rings."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from ...v1 import logs_pb2, manager_pb2
from .._logstreams import LogStreams
from ._sse import Feed
from ._usage import Usage
from ._views import event_view, fleet_view, log_view, sample_view

if TYPE_CHECKING:
    from .._manager import Manager

#: How often the fleet is sent when no event says it changed (CPU and memory move).
FLEET_REFRESH_SECONDS = 2.0
# Events arriving together are sent as one refresh.
_SETTLE_SECONDS = 0.05
#: Log entries sent before following.
LOG_TAIL = 200


async def fleet(manager: Manager, usage: Usage) -> Feed:
    """The fleet's rows, again on every event and every few seconds."""
    changed = asyncio.Event()

    async def listen() -> None:
        async for _ in manager.events.subscribe(False):
            changed.set()

    listener = asyncio.ensure_future(listen())
    try:
        with usage.watching():
            while True:
                yield "fleet", fleet_view(list(manager.entries.values()), usage.latest())
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                # cancel that comes as the event is set (the page had gone),
                # and the feed would run on, unread, for good.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLEET_REFRESH_SECONDS):
                        await changed.wait()
                    await asyncio.sleep(_SETTLE_SECONDS)
                changed.clear()
    finally:
        listener.cancel()


#: Events the fleet page shows before following.
FLEET_EVENTS = 20


async def events(manager: Manager, container_id: str | None) -> Feed:
    """One container's events (every one's with None), those retained
    first (the last FLEET_EVENTS of every container's)."""
    skip = 0 if container_id else max(0, len(manager.events.history()) - FLEET_EVENTS)
    async for event in manager.events.subscribe(True):
        if skip:
            skip -= 1
        elif container_id is None or event.container_id == container_id:
            yield "event", event_view(event)


async def logs(manager: Manager, container_id: str, level: str, contains: str) -> Feed:
    """One container's logs, followed: the last LOG_TAIL entries at or above
    ``level`` that contain ``contains``, then each new one."""
    log_filter = manager_pb2.StreamLogsFilter(follow=True, tail=LOG_TAIL, contains=contains)
    if level:
        log_filter.min_severity = logs_pb2.Severity.Value(f"SEVERITY_{level}")
    request = manager_pb2.ManagerStreamLogsRequest(containers=[container_id], filter=log_filter)
    async for item in LogStreams(manager, manager.logs).stream(request):
        response = (
            manager_pb2.ManagerStreamLogsResponse.FromString(item)
            if isinstance(item, bytes)
            else item
        )
        if response.entries:
            yield "logs", [log_view(e) for e in response.entries]
        for end in response.ended:
            yield "ended", {"message": end.message}


async def samples(usage: Usage, container_id: str) -> Feed:
    """One container's CPU and memory samples: those kept, then each new one."""
    sent = 0.0
    with usage.watching():
        while True:
            ring = usage.samples.get(container_id, ())
            new = [s for s in ring if s.time > sent]
            if new:
                sent = new[-1].time
                yield "samples", [sample_view(s) for s in new]
            await asyncio.sleep(1.0)
