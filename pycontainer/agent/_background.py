"""A grpc.aio server on a thread and event loop of its own, so that the app's
own threads and loop are untouched (sync apps, and health ports)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

__all__ = ["BackgroundServer", "run_on_own_loop", "start_in_background"]

T = TypeVar("T")


@dataclass
class BackgroundServer:
    """A server on its own thread and event loop."""

    port: int
    _loop: asyncio.AbstractEventLoop
    _server: grpc.aio.Server
    _thread: threading.Thread

    def stop(self, grace: float = 2.0) -> None:
        """Shut the server down and join its thread."""
        if self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop)
        future.result(timeout=grace + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def start_in_background(
    start: Callable[[], Awaitable[tuple[grpc.aio.Server, int]]], *, name: str
) -> BackgroundServer:
    """Run ``start`` (which builds, binds and starts a server, returning it and
    its port) on a new daemon thread's event loop; returns once it has started.
    What ``start`` raises (a ListenError, say) is raised here."""
    loop, thread, (server, port) = run_on_own_loop(start, name=name)
    return BackgroundServer(port, loop, server, thread)


def run_on_own_loop(
    start: Callable[[], Awaitable[T]], *, name: str
) -> tuple[asyncio.AbstractEventLoop, threading.Thread, T]:
    """Run ``start`` on a new event loop in a daemon thread named ``name``,
    the loop running on after it (until stopped): the loop, the thread and
    what ``start`` returned, once it has. What it raises is raised here (the
    loop closed, the thread ended)."""
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["result"] = loop.run_until_complete(start())
        except BaseException as exc:  # reported to the caller below
            started["error"] = exc
            loop.close()
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    ready.wait()
    if "error" in started:
        raise started["error"]
    return loop, thread, started["result"]
