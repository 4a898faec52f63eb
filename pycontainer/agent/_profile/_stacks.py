"""Stacks of the live process: every thread's, marking waits for tracked
locks, and every pending asyncio task's of the registered loops."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any, Final

from pycontainer import units
from pycontainer.v1 import profile_pb2

from ._frames import Stack, frame_of, frame_pbs, thread_names
from ._locks import DEFAULT_LOCK_REGISTRY, LockRegistry
from ._threads import StackReader

__all__ = ["DEFAULT_LOOP_REGISTRY", "LoopRegistry", "task_stacks", "thread_stacks"]


def thread_stacks(registry: LockRegistry = DEFAULT_LOCK_REGISTRY) -> list[profile_pb2.ThreadStack]:
    """Every thread with Python frames and its stack, marking tracked-lock waits."""
    with StackReader() as reader:
        frames = reader.read()
    now = time.monotonic_ns()
    waiting: dict[int, tuple[str, int]] = {}
    for lock in registry.locks():
        for ident, since in lock.waiting().items():
            waiting[ident] = (lock.name, since)
    threads = {t.ident: t for t in threading.enumerate() if t.ident is not None}
    # Threads without frames are just starting or ending; foreign threads that
    # run Python code have frames but no threading.Thread.
    idents = [i for i in threads if i in frames] + [i for i in frames if i not in threads]
    out = []
    for ident in idents:
        thread = threads.get(ident)
        stack = profile_pb2.ThreadStack(
            ident=ident,
            native_id=(thread.native_id or 0) if thread else 0,
            name=thread.name if thread else f"thread {ident}",
            daemon=thread.daemon if thread else False,
            frames=frame_pbs(frames[ident]),
        )
        if ident in waiting:
            name, since = waiting[ident]
            stack.waiting_for_lock = name
            stack.waiting_for.CopyFrom(
                units.duration_to_proto(
                    datetime.timedelta(microseconds=max(0, now - since) / 1_000)
                )
            )
        out.append(stack)
    return out


# --- asyncio tasks -----------------------------------------------------------


class LoopRegistry:
    """The event loops whose tasks to report, held weakly."""

    def __init__(self) -> None:
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, weakref.ref[threading.Thread] | None
        ] = weakref.WeakKeyDictionary()
        self._mutex = threading.Lock()

    def register(
        self, loop: asyncio.AbstractEventLoop, thread: threading.Thread | None = None
    ) -> None:
        """Report loop's tasks; thread runs it (default: this thread if it runs loop)."""
        if thread is None:
            try:
                if asyncio.get_running_loop() is loop:
                    thread = threading.current_thread()
            except RuntimeError:  # no loop runs in this thread
                pass
        with self._mutex:
            self._loops[loop] = weakref.ref(thread) if thread is not None else None

    def unregister(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop reporting loop."""
        with self._mutex:
            self._loops.pop(loop, None)

    def loops(self) -> list[tuple[asyncio.AbstractEventLoop, threading.Thread | None]]:
        """Live registered loops with the thread each runs in, when known."""
        with self._mutex:
            items = list(self._loops.items())
        return [(loop, ref() if ref is not None else None) for loop, ref in items]


DEFAULT_LOOP_REGISTRY: Final = LoopRegistry()


def _all_tasks(loop: asyncio.AbstractEventLoop) -> set[asyncio.Task[Any]]:
    # all_tasks() copies a WeakSet the loop's thread may change meanwhile.
    for _ in range(100):
        try:
            return asyncio.all_tasks(loop)
        except RuntimeError:
            time.sleep(0)
    return set()


def _task_stack(task: asyncio.Task[Any]) -> Stack:
    stack = [frame_of(f) for f in task.get_stack()]
    # get_stack() ends at the task's own coroutine; follow what it awaits.
    awaited = getattr(task.get_coro(), "cr_await", None)
    for _ in range(1000):  # bounded in case of a cycle
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        stack.append(frame_of(frame))
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return tuple(stack)


def task_stacks(
    loops: LoopRegistry | Iterable[asyncio.AbstractEventLoop],
) -> list[profile_pb2.TaskStack]:
    """Every pending task of the loops (which may run in other threads)."""
    pairs = loops.loops() if isinstance(loops, LoopRegistry) else [(loop, None) for loop in loops]
    names = thread_names()
    out = []
    for loop, thread in pairs:
        if loop.is_closed():
            continue
        if thread is not None:
            thread_name = thread.name
        else:
            # asyncio's base loop notes the thread it runs in; others may not.
            ident = getattr(loop, "_thread_id", None)
            thread_name = names.get(ident, "") if isinstance(ident, int) else ""
        tasks = sorted(_all_tasks(loop), key=lambda t: t.get_name())
        for task in tasks:
            coro = task.get_coro()
            out.append(
                profile_pb2.TaskStack(
                    name=task.get_name(),
                    coroutine=getattr(coro, "__qualname__", type(coro).__qualname__),
                    done=task.done(),
                    frames=frame_pbs(_task_stack(task)),
                    thread_name=thread_name,
                )
            )
    return out
