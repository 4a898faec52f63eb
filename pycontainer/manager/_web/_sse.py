"""Server-Sent Events: what the pages' EventSources read.

A feed is an async iterator of (event name, JSON-able data). It runs in a
task of its own feeding a queue, so that the response can send a comment
every few seconds while the feed is quiet: that is how a page that went away
is noticed (the write fails) and its feed ended, since aiohttp does not
cancel a handler whose client left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..._errors import RequestError

Feed = AsyncIterator[tuple[str, Any]]

#: How often a quiet stream says it is still there.
KEEPALIVE_SECONDS = 10.0
# Items queued for a slow page before the feed waits for it.
_QUEUE = 256


async def serve(request: web.Request, feed: Feed) -> web.StreamResponse:
    """Send ``feed`` as an event stream until it ends or the page goes; a
    RequestError of the feed is sent as an ``error`` event (its message) and
    ends the stream."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(_QUEUE)

    async def pump() -> None:
        try:
            async for item in feed:
                await queue.put(item)
        except RequestError as exc:
            await queue.put(("error", {"message": exc.message}))
        await queue.put(None)

    task = asyncio.ensure_future(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if item is None:
                # The end, said so (an EventSource would dial again otherwise).
                await response.write(b"event: end\ndata: {}\n\n")
                break
            name, data = item
            text = json.dumps(data, separators=(",", ":"))
            await response.write(f"event: {name}\ndata: {text}\n\n".encode())
    except ConnectionResetError:
        pass  # the page went away
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    return response
