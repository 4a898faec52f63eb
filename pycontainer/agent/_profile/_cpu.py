"""The CPU sampler: which Python stacks use CPU, thread by thread."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from ._frames import Stack
from ._threads import StackReader

__all__ = ["CpuSamples", "sample_cpu"]

_NS: Final = 1_000_000_000


@dataclass
class CpuSamples:
    """Stacks seen on CPU during one sampling run."""

    # (thread name, stack) -> ticks at which the thread had used CPU.
    counts: Counter[tuple[str, Stack]] = field(default_factory=Counter)
    # (thread name, stack) -> CPU time used in the ticks counted there.
    cpu_ns: Counter[tuple[str, Stack]] = field(default_factory=Counter)
    period_ns: int = 0
    start_time_ns: int = 0
    duration_ns: int = 0
    ticks: int = 0
    # True when per-thread CPU clocks decided; False for wall-clock fallback.
    thread_cpu_clocks: bool = False

    @property
    def total(self) -> int:
        """Number of stack samples (one per busy thread per tick)."""
        return sum(self.counts.values())


def _tid_clock(tid: int) -> int:
    # Linux's CPU-time clock of one thread, by kernel thread id (what glibc's
    # pthread_getcpuclockid computes): (~tid << 3) | CPUCLOCK_PERTHREAD | SCHED.
    return (~tid << 3) | 6


def _check_tid_clocks() -> bool:
    """True when thread CPU clocks can be addressed by native thread id."""
    # time.pthread_getcpuclockid() of an expired thread is undefined behaviour
    # (may crash), and a sampled thread may exit at any time; a clock derived
    # from the kernel thread id just fails with EINVAL. Use that when it agrees
    # with pthread_getcpuclockid() for this (live) thread.
    if sys.platform != "linux" or not hasattr(time, "pthread_getcpuclockid"):
        return False
    try:
        clock = time.pthread_getcpuclockid(threading.get_ident())
        time.clock_gettime_ns(clock)
    except OSError:
        return False
    return clock == _tid_clock(threading.get_native_id())


_TID_CLOCKS: Final = _check_tid_clocks()

# Innermost Python frames of threads blocked in C (wall-clock fallback only),
# by qualified name and by plain name (stacks read by faulthandler have those).
_IDLE_FRAMES: Final = frozenset(
    {
        ("threading.py", "Condition.wait"),
        ("threading.py", "wait"),
        ("threading.py", "Thread._wait_for_tstate_lock"),
        ("threading.py", "_wait_for_tstate_lock"),
        ("selectors.py", "EpollSelector.select"),
        ("selectors.py", "PollSelector.select"),
        ("selectors.py", "SelectSelector.select"),
        ("selectors.py", "KqueueSelector.select"),
        ("selectors.py", "select"),
        ("socket.py", "socket.accept"),
        ("socket.py", "accept"),
        ("thread.py", "_worker"),
    }
)


def _looks_idle(stack: Stack) -> bool:
    name, file, _line = stack[-1]
    return (os.path.basename(file), name) in _IDLE_FRAMES


def _thread_cpu_ns(tid: int) -> int | None:
    try:
        return time.clock_gettime_ns(_tid_clock(tid))
    except OSError:  # the thread has ended
        return None


def sample_cpu(duration_s: float, hz: int, stop: threading.Event | None = None) -> CpuSamples:
    """Sample the stacks of threads using CPU, hz times a second for duration_s.

    Blocks for duration_s (or until stop is set). At each tick a thread counts
    when its CPU clock advanced since the previous tick; without per-thread CPU
    clocks every thread not visibly blocked counts. The calling thread is left
    out. Stacks are read by :class:`StackReader` (safe on every CPython; see
    there for what it reports before 3.12). Behind CPU-bound Python threads a
    tick can wait for the GIL up to ``sys.getswitchinterval()``; ticks missed
    that way are skipped, so high rates may be reached only in part
    (CpuSamples.ticks says how many ran).
    """
    if hz <= 0:
        raise ValueError("hz must be positive")
    period_ns = _NS // hz
    me = threading.get_ident()
    samples = CpuSamples(
        period_ns=period_ns, start_time_ns=time.time_ns(), thread_cpu_clocks=_TID_CLOCKS
    )
    last_cpu: dict[int, int] = {}
    if _TID_CLOCKS:
        for thread in threading.enumerate():
            if thread.native_id is not None and thread.ident != me:
                cpu = _thread_cpu_ns(thread.native_id)
                if cpu is not None:
                    last_cpu[thread.native_id] = cpu
    start = time.monotonic_ns()
    deadline = start + int(duration_s * _NS)
    next_tick = start + period_ns
    now = start
    with StackReader(qualified=True) as reader:
        while next_tick <= deadline:
            delay = (next_tick - now) / _NS
            if stop is not None:
                if stop.wait(delay):
                    break
            elif delay > 0:
                time.sleep(delay)
            _tick(samples, me, last_cpu, reader)
            now = time.monotonic_ns()
            # Skip ticks missed while descheduled rather than sampling in a burst.
            next_tick += period_ns * max(1, (now - next_tick) // period_ns + 1)
    samples.duration_ns = time.monotonic_ns() - start
    return samples


def _tick(samples: CpuSamples, me: int, last_cpu: dict[int, int], reader: StackReader) -> None:
    stacks = reader.read()
    threads = {t.ident: t for t in threading.enumerate()}
    samples.ticks += 1
    for ident, stack in stacks.items():
        if ident == me:
            continue
        thread = threads.get(ident)
        tid = thread.native_id if thread is not None else None
        used: int | None = None
        if _TID_CLOCKS and tid is not None:
            cpu = _thread_cpu_ns(tid)
            if cpu is None:
                continue
            # A thread first seen now started since the last tick; a smaller
            # value means the kernel id was reused by a new thread.
            prev = last_cpu.get(tid, 0)
            last_cpu[tid] = cpu
            used = cpu - prev if cpu >= prev else cpu
            if used <= 0:
                continue
        elif _looks_idle(stack):
            continue
        key = (thread.name if thread is not None else f"thread {ident}", stack)
        samples.counts[key] += 1
        samples.cpu_ns[key] += used if used is not None else samples.period_ns
