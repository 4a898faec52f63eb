"""Server-Sent Events: what the pages' EventSources read.

A feed is an async iterator of (event name, JSON-able data). One response
may carry several (a page's connections to one host are few: a browser opens
six at most over HTTP/1.1, for every tab). Each runs in a task of its own
feeding a queue, so that the response can send a comment every few seconds
while the feeds are quiet: that is how a page that went away is noticed (the
write fails) and its feeds ended, since aiohttp does not cancel a handler
whose client left. Nor one still open when the HTTP face stops (it waits for
it, twice its shutdown timeout, a minute each): every stream ends when the
manager stops (:meth:`Streams.close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..._errors import RequestError

Feed = AsyncIterator[tuple[str, Any]]

_log = logging.getLogger("pycontainer.manager")

#: How often a quiet stream says it is still there.
KEEPALIVE_SECONDS = 10.0
# How long a feed is given to end once cancelled.
_CANCEL_SECONDS = 2.0
# Items queued for a slow page before the feed waits for it.
_QUEUE = 256


class Streams:
    """The web view's event streams, which all end on :meth:`close`."""

    def __init__(self) -> None:
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def close(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    async def serve(self, request: web.Request, *feeds: Feed) -> web.StreamResponse:
        if self._closed.done():
            raise web.HTTPServiceUnavailable(text="the manager is stopping")
        return await _serve(request, feeds, self._closed)


async def _next(
    queue: asyncio.Queue[tuple[str, Any] | None], closed: asyncio.Future[None]
) -> tuple[str, Any] | None:
    """The next item; TimeoutError after KEEPALIVE_SECONDS of none; None
    (the end) once ``closed``."""
    getter = asyncio.ensure_future(queue.get())
    done, _ = await asyncio.wait(
        (getter, closed), timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
    )
    if getter in done:
        return getter.result()
    getter.cancel()
    if closed.done():
        raise _Closed
    raise TimeoutError


class _Closed(Exception):
    """The manager is stopping."""


async def _serve(
    request: web.Request, feeds: tuple[Feed, ...], closed: asyncio.Future[None]
) -> web.StreamResponse:
    """Send ``feeds`` as one event stream until they end, the page goes or
    ``closed``; a feed's error is sent as an ``error`` event (a
    RequestError's message) and ends that feed, the others go on."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(_QUEUE)

    async def pump(feed: Feed) -> None:
        try:
            async for item in feed:
                await queue.put(item)
        except RequestError as exc:
            await queue.put(("error", {"message": exc.message}))
        except Exception as exc:  # a bug: said, logged, and the feed ended
            _log.exception("web view: a feed of %s failed", request.path)
            await queue.put(("error", {"message": f"the manager failed: {exc}"}))
        await queue.put(None)

    tasks = [asyncio.ensure_future(pump(feed)) for feed in feeds]
    running = len(tasks)
    try:
        while running:
            try:
                item = await _next(queue, closed)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if item is None:
                running -= 1
                continue
            name, data = item
            text = json.dumps(data, separators=(",", ":"))
            await response.write(f"event: {name}\ndata: {text}\n\n".encode())
        # The end, said so (an EventSource would dial again otherwise).
        await response.write(b"event: end\ndata: {}\n\n")
    except (ConnectionResetError, _Closed):
        pass  # the page went away, or the manager is stopping
    finally:
        for task in tasks:
            task.cancel()
        # Waited for within a bound: a feed that ignored its cancel must not
        # hold the response open (the HTTP face waits for every response).
        done, pending = await asyncio.wait(tasks, timeout=_CANCEL_SECONDS)
        if pending:
            _log.warning("web view: a feed of %s did not end when cancelled", request.path)
        for task in done:
            with contextlib.suppress(BaseException):
                task.result()
    return response
