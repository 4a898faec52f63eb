"""Lock contention: locks that record how long threads wait for them, and
the registry of those to report."""

from __future__ import annotations

import datetime
import sys
import threading
import time
import weakref
from typing import Final

from pycontainer import units
from pycontainer.v1 import profile_pb2

from ._frames import thread_names

__all__ = [
    "DEFAULT_LOCK_REGISTRY",
    "LockRegistry",
    "TrackedLock",
    "TrackedRLock",
    "lock_contention",
]


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


def lock_contention(
    registry: LockRegistry = DEFAULT_LOCK_REGISTRY,
) -> list[profile_pb2.LockContention]:
    """Contention figures of every live lock in registry."""
    names = thread_names()
    out = []
    for lock in registry.locks():
        holder = lock.holder()
        out.append(
            profile_pb2.LockContention(
                name=lock.name,
                acquisitions=lock.acquisitions,
                contentions=lock.contentions,
                total_wait=units.duration_to_proto(_ns(lock.total_wait_ns)),
                max_wait=units.duration_to_proto(_ns(lock.max_wait_ns)),
                holder=names.get(holder, f"thread {holder}") if holder else "",
                waiters=len(lock.waiting()),
            )
        )
    return out


def _ns(ns: int) -> datetime.timedelta:
    return datetime.timedelta(microseconds=ns / 1_000)
