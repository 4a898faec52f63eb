"""Runtime profile of the process: thread and task stacks, lock contention,
gRPC socket statistics and a sampled CPU profile (pprof or collapsed stacks).

Everything here reads the live process; :func:`build_profile` assembles the
``GetProfileResponse`` of ``Management.GetProfile``.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib
import ipaddress
import os
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Final

from google.protobuf import duration_pb2, json_format, timestamp_pb2

from pycontainer._errors import invalid_argument
from pycontainer.v1 import management_pb2, profile_pb2

__all__ = [
    "DEFAULT_LOCK_REGISTRY",
    "DEFAULT_LOOP_REGISTRY",
    "CpuSamples",
    "LockRegistry",
    "LoopRegistry",
    "ProfileRequest",
    "TrackedLock",
    "TrackedRLock",
    "build_profile",
    "channelz_sockets",
    "lock_contention",
    "sample_cpu",
    "task_stacks",
    "thread_stacks",
    "to_collapsed",
    "to_pprof",
]

# One frame: (function, file, line). A stack is root (outermost) first. The
# function is the code object's name in thread and task stacks (as the proto
# says) and its qualified name, such as "Class.method", in CPU profiles.
Frame = tuple[str, str, int]
Stack = tuple[Frame, ...]

_NS: Final = 1_000_000_000


def _frame(frame: FrameType, qualified: bool = False) -> Frame:
    code = frame.f_code
    name = code.co_qualname if qualified else code.co_name
    return (name, code.co_filename, frame.f_lineno or 0)


def _walk(frame: FrameType | None, qualified: bool = False) -> Stack:
    """The stack ending in frame, outermost first."""
    out: list[Frame] = []
    while frame is not None:
        out.append(_frame(frame, qualified))
        frame = frame.f_back
    out.reverse()
    return tuple(out)


def _frame_pbs(stack: Iterable[Frame]) -> list[profile_pb2.StackFrame]:
    return [profile_pb2.StackFrame(function=f, file=p, line=n) for f, p, n in stack]


def _thread_names() -> dict[int, str]:
    return {t.ident: t.name for t in threading.enumerate() if t.ident is not None}


# --- Locks -------------------------------------------------------------------


class TrackedLock:
    """A ``threading.Lock`` that records its contention.

    Counts acquisitions, contentions (blocking acquires that found the lock held
    and so wait: counted as the wait begins, whether it ends in the lock or a
    timeout), total and longest wait (added as each wait ends),
    the holder's thread and the threads waiting now. An uncontended acquire
    costs one extra non-blocking try and two attribute writes.
    """

    __slots__ = (
        "__weakref__",
        "_holder",
        "_lock",
        "_stats",
        "_waiters",
        "acquisitions",
        "contentions",
        "max_wait_ns",
        "name",
        "total_wait_ns",
    )

    def __init__(self, name: str = "", *, registry: LockRegistry | None = None) -> None:
        self.name = name or _creation_site()
        self._lock = threading.Lock()
        # Guards the wait figures: a timed-out waiter updates them without the lock.
        self._stats = threading.Lock()
        # Thread ident of the holder, 0 when free; written only by the holder.
        self._holder = 0
        # Waiting thread ident -> time.monotonic_ns() when it started waiting.
        self._waiters: dict[int, int] = {}
        self.acquisitions = 0
        self.contentions = 0
        self.total_wait_ns = 0
        self.max_wait_ns = 0
        (registry if registry is not None else DEFAULT_LOCK_REGISTRY).register(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire like ``threading.Lock.acquire``; True when acquired."""
        if not blocking:
            # The plain lock raises the same ValueError for a timeout here.
            if self._lock.acquire(False, timeout):
                self._took(threading.get_ident())
                return True
            return False
        if self._lock.acquire(False):
            self._took(threading.get_ident())
            return True
        return self._wait(timeout)

    def _took(self, me: int) -> None:
        # Runs while holding the lock, so these writes never race each other.
        self._holder = me
        self.acquisitions += 1

    def _wait(self, timeout: float) -> bool:
        me = threading.get_ident()
        with self._stats:
            self.contentions += 1
        start = time.monotonic_ns()
        self._waiters[me] = start
        try:
            got = self._lock.acquire(True, timeout)
        finally:
            self._waiters.pop(me, None)
        waited = time.monotonic_ns() - start
        with self._stats:
            self.total_wait_ns += waited
            self.max_wait_ns = max(self.max_wait_ns, waited)
        if got:
            self._took(me)
        return got

    def release(self) -> None:
        """Release the lock (any thread may, as with ``threading.Lock``)."""
        # Clear first: once released, the next holder writes its own ident.
        self._holder = 0
        self._lock.release()

    def locked(self) -> bool:
        """True when some thread holds the lock."""
        return self._lock.locked()

    def holder(self) -> int:
        """Ident of the thread holding the lock, 0 when free."""
        return self._holder

    def waiting(self) -> dict[int, int]:
        """Threads waiting now: ident -> ``time.monotonic_ns()`` when they began."""
        return dict(self._waiters)

    # threading.Condition probes ownership by acquire(False) unless the lock
    # says; answering here keeps that probe out of the acquisition count.
    def _is_owned(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return f"<{type(self).__name__} {self.name!r} {state}>"


class TrackedRLock(TrackedLock):
    """A ``threading.RLock`` that records its contention like :class:`TrackedLock`.

    Only outermost acquisitions count; re-entering never waits.
    """

    __slots__ = ("_depth",)

    def __init__(self, name: str = "", *, registry: LockRegistry | None = None) -> None:
        super().__init__(name, registry=registry)
        self._depth = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire like ``threading.RLock.acquire``; True when acquired."""
        if self._holder == threading.get_ident():
            self._depth += 1
            return True
        if super().acquire(blocking, timeout):
            self._depth = 1
            return True
        return False

    def release(self) -> None:
        """Release one level; the lock is free when the outermost level is released."""
        if self._holder != threading.get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self._depth -= 1
        if self._depth == 0:
            super().release()

    # threading.Condition needs these to wait on a lock held recursively.
    def _is_owned(self) -> bool:
        return self._holder == threading.get_ident()

    def _release_save(self) -> int:
        depth, self._depth = self._depth, 0
        super().release()
        return depth

    def _acquire_restore(self, depth: int) -> None:
        super().acquire()
        self._depth = depth


def _creation_site() -> str:
    """file:line of the code that made the lock (skipping lock constructors)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class LockRegistry:
    """The tracked locks to report; holds them weakly so dead locks drop out."""

    def __init__(self) -> None:
        self._locks: weakref.WeakSet[TrackedLock] = weakref.WeakSet()
        self._mutex = threading.Lock()

    def register(self, lock: TrackedLock) -> None:
        """Report lock from now on (tracked locks register themselves)."""
        with self._mutex:
            self._locks.add(lock)

    def locks(self) -> list[TrackedLock]:
        """The live registered locks, sorted by name."""
        with self._mutex:
            locks = list(self._locks)
        return sorted(locks, key=lambda lock: lock.name)


DEFAULT_LOCK_REGISTRY: Final = LockRegistry()


def _duration(ns: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(ns)
    return d


def lock_contention(
    registry: LockRegistry = DEFAULT_LOCK_REGISTRY,
) -> list[profile_pb2.LockContention]:
    """Contention figures of every live lock in registry."""
    names = _thread_names()
    out = []
    for lock in registry.locks():
        holder = lock.holder()
        out.append(
            profile_pb2.LockContention(
                name=lock.name,
                acquisitions=lock.acquisitions,
                contentions=lock.contentions,
                total_wait=_duration(lock.total_wait_ns),
                max_wait=_duration(lock.max_wait_ns),
                holder=names.get(holder, f"thread {holder}") if holder else "",
                waiters=len(lock.waiting()),
            )
        )
    return out


# --- Thread stacks -----------------------------------------------------------


def thread_stacks(registry: LockRegistry = DEFAULT_LOCK_REGISTRY) -> list[profile_pb2.ThreadStack]:
    """Every thread with Python frames and its stack, marking tracked-lock waits."""
    frames = sys._current_frames()
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
            frames=_frame_pbs(_walk(frames[ident])),
        )
        if ident in waiting:
            name, since = waiting[ident]
            stack.waiting_for_lock = name
            stack.waiting_for.FromNanoseconds(max(0, now - since))
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
    stack = [_frame(f) for f in task.get_stack()]
    # get_stack() ends at the task's own coroutine; follow what it awaits.
    awaited = getattr(task.get_coro(), "cr_await", None)
    for _ in range(1000):  # bounded in case of a cycle
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        stack.append(_frame(frame))
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return tuple(stack)


def task_stacks(
    loops: LoopRegistry | Iterable[asyncio.AbstractEventLoop],
) -> list[profile_pb2.TaskStack]:
    """Every pending task of the loops (which may run in other threads)."""
    pairs = loops.loops() if isinstance(loops, LoopRegistry) else [(loop, None) for loop in loops]
    names = _thread_names()
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
                    frames=_frame_pbs(_task_stack(task)),
                    thread_name=thread_name,
                )
            )
    return out


# --- CPU sampling ------------------------------------------------------------


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

# Innermost Python frames of threads blocked in C (wall-clock fallback only).
_IDLE_FRAMES: Final = frozenset(
    {
        ("threading.py", "Condition.wait"),
        ("threading.py", "Thread._wait_for_tstate_lock"),
        ("selectors.py", "EpollSelector.select"),
        ("selectors.py", "PollSelector.select"),
        ("selectors.py", "SelectSelector.select"),
        ("selectors.py", "KqueueSelector.select"),
        ("socket.py", "socket.accept"),
        ("thread.py", "_worker"),
    }
)


def _looks_idle(frame: FrameType) -> bool:
    code = frame.f_code
    return (os.path.basename(code.co_filename), code.co_qualname) in _IDLE_FRAMES


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
    out. Behind CPU-bound Python threads a tick can wait for the GIL up to
    ``sys.getswitchinterval()``; ticks missed that way are skipped, so high
    rates may be reached only in part (CpuSamples.ticks says how many ran).
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
    while next_tick <= deadline:
        delay = (next_tick - now) / _NS
        if stop is not None:
            if stop.wait(delay):
                break
        elif delay > 0:
            time.sleep(delay)
        _tick(samples, me, last_cpu)
        now = time.monotonic_ns()
        # Skip ticks missed while descheduled rather than sampling in a burst.
        next_tick += period_ns * max(1, (now - next_tick) // period_ns + 1)
    samples.duration_ns = time.monotonic_ns() - start
    return samples


def _tick(samples: CpuSamples, me: int, last_cpu: dict[int, int]) -> None:
    frames = sys._current_frames()
    threads = {t.ident: t for t in threading.enumerate()}
    samples.ticks += 1
    for ident, frame in frames.items():
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
        elif _looks_idle(frame):
            continue
        key = (thread.name if thread is not None else f"thread {ident}", _walk(frame, True))
        samples.counts[key] += 1
        samples.cpu_ns[key] += used if used is not None else samples.period_ns


# --- pprof encoding ----------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 negatives are ten-byte two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int(field_no: int, value: int) -> bytes:
    """A varint field; proto3 leaves zero out."""
    return _varint(field_no << 3) + _varint(value) if value else b""


def _len(field_no: int, data: bytes) -> bytes:
    """A length-delimited field (always written: repeated elements may be empty)."""
    return _varint(field_no << 3 | 2) + _varint(len(data)) + data


def _packed(field_no: int, values: Iterable[int]) -> bytes:
    data = b"".join(_varint(v) for v in values)
    return _len(field_no, data) if data else b""


class _Strings:
    def __init__(self) -> None:
        self.table: list[str] = [""]  # pprof requires "" at index 0
        self._index: dict[str, int] = {"": 0}

    def __call__(self, s: str) -> int:
        i = self._index.get(s)
        if i is None:
            i = self._index[s] = len(self.table)
            self.table.append(s)
        return i


def to_pprof(samples: CpuSamples) -> bytes:
    """The samples as a gzipped pprof ``perftools.profiles.Profile``.

    Sample values are [samples/count, cpu/nanoseconds]; each sample carries a
    ``thread`` label.
    """
    s = _Strings()
    functions: dict[tuple[str, str], int] = {}
    locations: dict[Frame, int] = {}
    sample_msgs: list[bytes] = []
    thread_key = s("thread")
    for key, count in samples.counts.items():
        thread, stack = key
        ids = []
        for frame in reversed(stack):  # pprof lists the leaf first
            loc = locations.get(frame)
            if loc is None:
                functions.setdefault(frame[:2], len(functions) + 1)
                loc = locations[frame] = len(locations) + 1
            ids.append(loc)
        label = _int(1, thread_key) + _int(2, s(thread))
        sample_msgs.append(
            _packed(1, ids) + _packed(2, [count, samples.cpu_ns[key]]) + _len(3, label)
        )
    out = bytearray()
    for type_, unit in (("samples", "count"), ("cpu", "nanoseconds")):
        out += _len(1, _int(1, s(type_)) + _int(2, s(unit)))
    for msg in sample_msgs:
        out += _len(2, msg)
    for frame, loc in locations.items():
        fn = functions[frame[:2]]
        line_msg = _int(1, fn) + _int(2, frame[2])
        out += _len(4, _int(1, loc) + _len(4, line_msg))
    for (name, filename), fn in functions.items():
        system_name = name.rsplit(".", 1)[-1]  # the code object's own name
        out += _len(
            5, _int(1, fn) + _int(2, s(name)) + _int(3, s(system_name)) + _int(4, s(filename))
        )
    period_type = _int(1, s("cpu")) + _int(2, s("nanoseconds"))
    # The string table goes last: everything above adds to it.
    for string in s.table:
        # File names may carry surrogate escapes of undecodable bytes.
        out += _len(6, string.encode("utf-8", "replace"))
    out += _int(9, samples.start_time_ns)
    out += _int(10, samples.duration_ns)
    out += _len(11, period_type)
    out += _int(12, samples.period_ns)
    return gzip.compress(bytes(out), mtime=0)


def to_collapsed(samples: CpuSamples) -> bytes:
    """The samples as collapsed stacks, root first, as flamegraph.pl reads."""
    merged: Counter[str] = Counter()
    for (_, stack), count in samples.counts.items():
        merged[";".join(_collapsed_frame(f) for f in stack)] += count
    text = "".join(f"{line} {n}\n" for line, n in sorted(merged.items()))
    return text.encode("utf-8", "replace")


def _collapsed_frame(frame: Frame) -> str:
    function, file, line = frame
    # ';' separates frames and a line ends the stack.
    text = f"{function} ({file}:{line})"
    return text.replace(";", ":").replace("\n", " ")


# --- gRPC channelz -----------------------------------------------------------


def _address(address: Any) -> str:
    if address.HasField("tcpip_address"):
        tcp = address.tcpip_address
        try:
            ip = ipaddress.ip_address(tcp.ip_address)
        except ValueError:  # not 4 or 16 bytes
            return f"{tcp.ip_address.hex()}:{tcp.port}"
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"{host}:{tcp.port}"
    if address.HasField("uds_address"):
        return f"unix:{address.uds_address.filename}"
    return str(address.other_address.name)


def channelz_sockets() -> list[profile_pb2.SocketStats]:
    """Per-connection statistics of this process's gRPC servers, from channelz.

    Empty when grpcio-channelz is not installed.
    """
    try:
        from grpc_channelz.v1 import channelz_pb2

        cygrpc: Any = importlib.import_module("grpc._cython.cygrpc")
    except ImportError:
        return []

    def call(fn: Callable[..., bytes | str], message: Any, *args: int) -> Any:
        # The grpcio-channelz servicer parses strictly, so it fails as soon as
        # the gRPC core is newer than its protos; unknown fields are harmless.
        return json_format.Parse(fn(*args), message, ignore_unknown_fields=True)

    out: list[profile_pb2.SocketStats] = []
    # channelz lists in pages; each page says where the listing ends.
    server_start, servers_done = 0, False
    while not servers_done:
        try:
            servers = call(
                cygrpc.channelz_get_servers, channelz_pb2.GetServersResponse(), server_start
            )
        except (ValueError, json_format.ParseError):  # channelz off or unreadable
            return out
        server_ids = [s.ref.server_id for s in servers.server]
        servers_done = servers.end or not server_ids
        server_start = max(server_ids, default=0) + 1
        for server_id in server_ids:
            socket_start, sockets_done = 0, False
            while not sockets_done:
                try:
                    page = call(
                        cygrpc.channelz_get_server_sockets,
                        channelz_pb2.GetServerSocketsResponse(),
                        server_id,
                        socket_start,
                        0,
                    )
                except (ValueError, json_format.ParseError):  # server gone meanwhile
                    break
                socket_ids = [ref.socket_id for ref in page.socket_ref]
                sockets_done = page.end or not socket_ids
                socket_start = max(socket_ids, default=0) + 1
                for socket_id in socket_ids:
                    try:
                        socket = call(
                            cygrpc.channelz_get_socket, channelz_pb2.GetSocketResponse(), socket_id
                        ).socket
                    except (ValueError, json_format.ParseError):  # closed meanwhile
                        continue
                    out.append(_socket_stats(socket))
    return out


def _socket_stats(socket: Any) -> profile_pb2.SocketStats:
    data = socket.data
    stats = profile_pb2.SocketStats(
        remote=_address(socket.remote) if socket.HasField("remote") else socket.remote_name,
        local=_address(socket.local) if socket.HasField("local") else "",
        streams_started=data.streams_started,
        streams_succeeded=data.streams_succeeded,
        streams_failed=data.streams_failed,
        messages_sent=data.messages_sent,
        messages_received=data.messages_received,
        keepalives_sent=data.keep_alives_sent,
    )
    if data.HasField("last_message_sent_timestamp"):
        stats.last_message_sent_time.CopyFrom(data.last_message_sent_timestamp)
    if data.HasField("last_message_received_timestamp"):
        stats.last_message_received_time.CopyFrom(data.last_message_received_timestamp)
    return stats


# --- GetProfile --------------------------------------------------------------

MAX_CPU_DURATION_NS: Final = 5 * 60 * _NS
DEFAULT_CPU_SAMPLE_HZ: Final = 100
MAX_CPU_SAMPLE_HZ: Final = 1000


@dataclass(frozen=True)
class ProfileRequest:
    """A validated ``GetProfileRequest``."""

    cpu_duration_ns: int = 0
    cpu_sample_hz: int = DEFAULT_CPU_SAMPLE_HZ
    cpu_format: profile_pb2.CpuProfileFormat.ValueType = profile_pb2.CPU_PROFILE_FORMAT_PPROF

    @classmethod
    def from_request(cls, req: management_pb2.GetProfileRequest) -> ProfileRequest:
        """Validate req; raises RequestError INVALID_ARGUMENT naming the bad field."""
        duration = req.cpu_duration
        if abs(duration.nanos) >= _NS or (duration.seconds * duration.nanos < 0):
            raise invalid_argument("cpu_duration", "not a valid duration")
        ns = duration.ToNanoseconds()
        if ns < 0:
            raise invalid_argument("cpu_duration", "must not be negative")
        if ns > MAX_CPU_DURATION_NS:
            raise invalid_argument("cpu_duration", "must be at most 5m")
        hz = req.cpu_sample_hz or DEFAULT_CPU_SAMPLE_HZ
        if hz > MAX_CPU_SAMPLE_HZ:
            raise invalid_argument("cpu_sample_hz", f"must be at most {MAX_CPU_SAMPLE_HZ}")
        fmt = req.cpu_format
        if fmt not in profile_pb2.CpuProfileFormat.values():
            raise invalid_argument("cpu_format", f"unknown format {fmt}")
        if fmt == profile_pb2.CPU_PROFILE_FORMAT_UNSPECIFIED:
            fmt = profile_pb2.CPU_PROFILE_FORMAT_PPROF
        return cls(cpu_duration_ns=ns, cpu_sample_hz=hz, cpu_format=fmt)


def build_profile(
    request: ProfileRequest,
    *,
    locks: LockRegistry,
    loops: LoopRegistry,
    stop: threading.Event | None = None,
) -> management_pb2.GetProfileResponse:
    """The profile the request asks for; blocks while sampling the CPU.

    Threads, tasks, locks and sockets are a snapshot taken first. rpc_messages
    is left for the caller.
    """
    resp = management_pb2.GetProfileResponse(
        time=_now(),
        threads=thread_stacks(locks),
        tasks=task_stacks(loops),
        locks=lock_contention(locks),
        sockets=channelz_sockets(),
    )
    if request.cpu_duration_ns > 0:
        samples = sample_cpu(request.cpu_duration_ns / _NS, request.cpu_sample_hz, stop)
        encode = (
            to_collapsed
            if request.cpu_format == profile_pb2.CPU_PROFILE_FORMAT_COLLAPSED
            else to_pprof
        )
        resp.cpu_profile.format = request.cpu_format
        resp.cpu_profile.data = encode(samples)
        resp.cpu_profile.duration.FromNanoseconds(samples.duration_ns)
        resp.cpu_profile.sample_period.FromNanoseconds(samples.period_ns)
        resp.cpu_profile.samples = samples.total
    return resp


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts
