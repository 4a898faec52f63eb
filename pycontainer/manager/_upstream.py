"""Reading a container's Management stream (the manager's relays of StreamLogs
and WatchMetrics) so that ending it early costs no native memory.

grpc.aio frees a batch's C operations only when the task that awaits the
batch sees it complete (grpc/grpc#43360, open in grpcio 1.85). A task
cancelled while a read of a server stream is in flight drops its batch: some
400 bytes of the C heap per call, in small scattered chunks the heap cannot
give back. A relay ends that way every time its own caller goes. Cancelling
the *call* instead completes the pending read (it returns end of stream), so
the reader here never lets its task's cancellation interrupt a read: it
cancels the call, waits for the read to complete, and only then lets the
cancellation go on. Measured by bench/cancel_leak.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar, cast

import grpc

from .._errors import RequestError

T = TypeVar("T")
# How long a cancelled reader waits for its request to be sent.
_SEND_WAIT_SECONDS = 1.0
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


async def responses(call: grpc.aio.UnaryStreamCall[Any, T]) -> AsyncIterator[T]:
    """The messages of a server-streaming ``grpc.aio`` call, until it ends.

    Raises ``grpc.aio.AioRpcError`` when the call fails. Cancelling the task
    that reads ends the call (CANCELLED to its server) before the
    cancellation proceeds; the caller should still ``call.cancel()`` when it
    stops reading for any other reason (a no-op on a finished call)."""
    while True:
        read = asyncio.ensure_future(call.read())
        try:
            message = await asyncio.shield(read)
        except asyncio.CancelledError:
            await _end(call, read)
            raise
        if message is _EOF:
            return
        yield cast(T, message)


async def _end(call: grpc.aio.UnaryStreamCall[Any, Any], read: asyncio.Future[Any]) -> None:
    """Cancel a call whose read is in flight, its batches completed by their
    own awaiters."""
    # The request's batch first: cancelling the call cancels the task that
    # sends it (grpc.aio), which drops that batch just the same. It is sent
    # in a moment on a live connection; a connection still being set up is
    # not waited for long (that call then costs its batch).
    sent = asyncio.ensure_future(call.wait_for_connection())
    with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(sent), _SEND_WAIT_SECONDS)
    call.cancel()
    # Completes at once now that the call is cancelled (end of stream or
    # CANCELLED), and frees its batch.
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        await read
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        await sent


def cancelling() -> bool:
    """Whether the running task is being cancelled (then a pump puts nothing
    more on a queue whose consumer is gone, which could block it forever)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def fan_in(queue: asyncio.Queue[Any], producers: int) -> AsyncIterator[Any]:
    """What ``producers`` tasks put on ``queue``, as it comes: each puts None
    once when it ends, or a RequestError, which ends the whole (raised)."""
    remaining = producers
    while remaining:
        item = await queue.get()
        if item is None:
            remaining -= 1
        elif isinstance(item, RequestError):
            raise item
        else:
            yield item


__all__ = ["cancelling", "fan_in", "responses"]
