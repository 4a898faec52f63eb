"""The state store kept off the manager's event loop.

SQLite's calls block: on a full, frozen or locked disk a call made on the
event loop stalls every stream and every read the manager serves. So:

- container records (every state change) are written behind, by one writer
  thread: the in-memory registry is what the manager reads, the store only
  what a restarted manager starts from. The writer keeps the latest record
  per id (a delete is the latest word too), writes what is pending in
  transactions of at most WRITE_BATCH records, and on a failure keeps it
  all and retries with backoff, so that a Pause or a registration never
  waits for the disk and nothing is lost while the manager lives; when the
  disk heals, everything pending is written. On close, what is pending is flushed, within a bound.
- writes the operator's answer depends on (a checkpoint, an applied spec)
  and the store's reads run in a thread of their own and are awaited, within
  a bound: a fault answers with a status that says what, where and what to
  do (RESOURCE_EXHAUSTED for a full disk, UNAVAILABLE for a read-only, locked
  or failing one, or one that does not answer), never a timeout or UNKNOWN.

The store's health (:class:`StoreHealth`) is one line when it starts
failing and one when it recovers, in the log and as an event, and a service
of the manager's grpc.health.v1 (STATE_STORE_SERVICE) NOT_SERVING meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import errno
import itertools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from .._errors import RequestError
from ..units import format_duration
from ._etcd._store import FENCED
from ._store import BUSY_TIMEOUT_SECONDS, ContainerRecord, StateStore, StoreError

_log = logging.getLogger("pycontainer.manager")

T = TypeVar("T")

# How long an awaited store call may take before the operator is answered
# UNAVAILABLE (the call itself goes on: a frozen disk may still take it).
STORE_CALL_TIMEOUT = datetime.timedelta(seconds=10)
# Most container records written in one transaction.
WRITE_BATCH = 2000
# How long close() waits for the pending records to be written.
FLUSH_TIMEOUT = datetime.timedelta(seconds=5)
# The writer's retries after a failure: the first soon, then doubling up to
# the last, so that a healed disk is written to within a couple of seconds.
RETRY_FIRST = datetime.timedelta(milliseconds=100)
RETRY_MAX = datetime.timedelta(seconds=2)


# What an errno met when writing a file in the state directory says.
_ERRNO_KINDS = {
    errno.ENOSPC: StoreError.FULL,
    errno.EDQUOT: StoreError.FULL,
    errno.EROFS: StoreError.READ_ONLY,
    errno.EACCES: StoreError.READ_ONLY,
    errno.EPERM: StoreError.READ_ONLY,
    errno.EIO: StoreError.IO,
}


def fault_kind(exc: StoreError, state_dir: str) -> str:
    """What a store fault is (a StoreError kind). SQLite reports a write to a
    file system that turned itself read-only (ext4's errors=remount-ro,
    which statvfs does not show) as an I/O error, and some full disks so
    too: writing a file of our own there says which. Touches the disk: call
    it off the loop."""
    if exc.kind not in (StoreError.IO, StoreError.OTHER):
        return exc.kind
    try:
        fs = os.statvfs(state_dir)
        if fs.f_flag & os.ST_RDONLY:
            return StoreError.READ_ONLY
        if fs.f_bavail == 0:
            return StoreError.FULL
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=state_dir)
        try:
            os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        return _ERRNO_KINDS.get(err.errno or 0, exc.kind)
    return exc.kind


def classify(exc: StoreError, state_dir: str) -> StoreError:
    """``exc`` with the kind fault_kind finds (in the thread that met it)."""
    exc.kind = fault_kind(exc, state_dir)
    return exc


def advice(exc: StoreError, state_dir: str) -> str:
    """What the operator can do about a store fault, in a few words."""
    if exc.advice:
        return exc.advice
    where = f"the state directory {state_dir!r}"
    kind = exc.kind
    if kind == StoreError.FULL:
        return f"{where} is out of space: free space there"
    if kind == StoreError.READ_ONLY:
        return f"{where} cannot be written: make it writable (mount, permissions)"
    if kind == StoreError.BUSY:
        return f"the state store in {where} is locked by another process: end that process"
    if kind == StoreError.IO:
        return f"the disk of {where} fails: check it (dmesg)"
    return f"check the state store in {where}"


def operator_error(exc: StoreError, state_dir: str, what: str) -> RequestError:
    """The status a request answers with when the store failed it:
    RESOURCE_EXHAUSTED for a full disk, UNAVAILABLE (worth a retry once the
    disk is fixed) for the others, naming the state directory and what to do."""
    code = (
        grpc.StatusCode.RESOURCE_EXHAUSTED
        if exc.kind == StoreError.FULL
        else grpc.StatusCode.UNAVAILABLE
    )
    return RequestError(code, f"{what}: {advice(exc, state_dir)} ({exc})")


@dataclass(frozen=True)
class StoreHealth:
    """Whether the store takes writes, and if not why."""

    ok: bool = True
    # The failure and what to do about it (empty while ok).
    message: str = ""
    # Container records waiting to be written.
    pending: int = 0


class StoreWriter:
    """Container records written behind by one thread; awaited store calls
    in another. Call :meth:`start` on the manager's loop, :meth:`close` at the end.

    ``on_health`` is called on that loop whenever the store starts failing
    or recovers."""

    def __init__(
        self,
        store: StateStore,
        state_dir: str,
        *,
        call_timeout: datetime.timedelta = STORE_CALL_TIMEOUT,
    ) -> None:
        self.store = store
        self.state_dir = state_dir
        self.on_health: Callable[[StoreHealth], None] = lambda health: None
        #: Called on the loop once a write is refused by the store's fence
        #: (StoreError "fenced": this manager is no longer the leader). Such a
        #: write is never retried: what is pending is dropped, and the writer
        #: writes nothing more; the manager steps down.
        self.on_fenced: Callable[[], None] = lambda: None
        self.fenced = False
        self._call_timeout = call_timeout
        self._cond = threading.Condition()
        # The latest word on each id: a record to put, or None to delete.
        self._pending: dict[str, ContainerRecord | None] = {}
        # Taken from _pending and not yet written, since when (time.monotonic()).
        self._writing = 0
        self._write_started: float | None = None
        self._closing = False
        # When close() stops waiting for the pending records.
        self._close_deadline: float | None = None
        self._failure: StoreError | None = None
        #: Batches of container records the store refused, since start (/metrics).
        self.write_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # One thread for the awaited calls: SQLite serves one at a time anyway,
        # and calls stuck on a frozen disk must not take the loop's default
        # executor (certificates are issued there) with them.
        self._calls = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="state-store")

    # -- health ----------------------------------------------------------------------
    @property
    def health(self) -> StoreHealth:
        with self._cond:
            failure, pending = self._failure, len(self._pending) + self._writing
        if failure is None:
            return StoreHealth(pending=pending)
        return StoreHealth(False, self._describe(failure), pending)

    def _describe(self, failure: StoreError) -> str:
        return f"state store failing: {advice(failure, self.state_dir)} ({failure})"

    def _failed(self, exc: StoreError) -> None:
        with self._cond:
            first = self._failure is None
            self._failure = exc
            pending = len(self._pending) + self._writing
            if first:
                # Told under the lock: the loop hears failures and recoveries
                # in the order they happened.
                self._tell(StoreHealth(False, self._describe(exc), pending))
        if first:
            _log.error(
                "%s; %d container records kept in memory until it is fixed",
                self._describe(exc),
                pending,
            )

    def _succeeded(self) -> None:
        with self._cond:
            failure, self._failure = self._failure, None
            if failure is not None:
                self._tell(StoreHealth(pending=len(self._pending) + self._writing))
        if failure is not None:
            _log.warning("state store in %r writes again", self.state_dir)

    def _tell(self, health: StoreHealth) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self.on_health, health)

    # -- written behind ----------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (on the loop that on_health is called on)."""
        self._loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
            self._thread.start()

    def put(self, record: ContainerRecord) -> None:
        """Have ``record`` written (replacing what is pending for its id)."""
        self._queue(record.id, record)

    def delete(self, container_id: str) -> None:
        """Have the record of ``container_id`` deleted (after what is pending)."""
        self._queue(container_id, None)

    def _queue(self, container_id: str, record: ContainerRecord | None) -> None:
        with self._cond:
            # Moved to the end: the newest word on an id is the one written.
            self._pending.pop(container_id, None)
            self._pending[container_id] = record
            self._cond.notify_all()

    def _run(self) -> None:
        delay = RETRY_FIRST.total_seconds()
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = self._take_batch()
                self._writing = len(batch)
                self._write_started = time.monotonic()
            try:
                self.store.write_containers(batch)
            except StoreError as exc:
                if exc.kind == FENCED:
                    self._fence(exc)
                    return
                classify(exc, self.state_dir)
                with self._cond:
                    self.write_failures += 1
                    # Kept, under what was queued meanwhile (that is newer).
                    self._pending = {**batch, **self._pending}
                    self._writing = 0
                    self._write_started = None
                self._failed(exc)
                if not self._wait_retry(delay):
                    _log.error(
                        "%d container records not written to the state store: %s (%s); "
                        "the next manager starts from what it holds",
                        len(self._pending),
                        advice(exc, self.state_dir),
                        exc,
                    )
                    return
                delay = min(delay * 2, RETRY_MAX.total_seconds())
                continue
            with self._cond:
                self._writing = 0
                self._write_started = None
                self._cond.notify_all()
            delay = RETRY_FIRST.total_seconds()
            self._succeeded()

    def _fence(self, exc: StoreError) -> None:
        """A write refused by the fence: drop what is pending, tell the loop."""
        with self._cond:
            dropped = len(self._pending) + self._writing
            self._pending.clear()
            self._writing = 0
            self._write_started = None
            self.fenced = True
            self._cond.notify_all()
        _log.error("%s; %d container records not written (the leader writes them)", exc, dropped)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.on_fenced)

    def _take_batch(self) -> dict[str, ContainerRecord | None]:
        """The oldest pending records, at most WRITE_BATCH (call under the
        lock): the store's other writers (an operation's start, which a call
        waits for) get the store between two transactions, not after all of
        20,000 registrations' records."""
        if len(self._pending) <= WRITE_BATCH:
            batch, self._pending = self._pending, {}
            return batch
        ids = list(itertools.islice(self._pending, WRITE_BATCH))
        return {container_id: self._pending.pop(container_id) for container_id in ids}

    def _wait_retry(self, delay: float) -> bool:
        """Wait ``delay`` before the next try (a close does not cut it short,
        its deadline does); False once the close's deadline has passed."""
        with self._cond:
            retry = time.monotonic() + delay
            while True:
                deadline = self._close_deadline
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                until = retry if deadline is None else min(retry, deadline)
                left = until - time.monotonic()
                if left <= 0:
                    return True
                self._cond.wait(left)

    async def watchdog(self, every: datetime.timedelta = datetime.timedelta(seconds=1)) -> None:
        """Say the store is failing when a write has not returned within the
        call bound (a frozen disk: nothing fails, everything waits)."""
        bound = self._call_timeout.total_seconds()
        while True:
            await asyncio.sleep(every.total_seconds())
            with self._cond:
                started, failing = self._write_started, self._failure is not None
            if started is not None and not failing and time.monotonic() - started > bound:
                self._failed(self._not_answering())

    def _not_answering(self) -> StoreError:
        return StoreError(
            f"state store {self.state_dir!r} did not answer within "
            f"{format_duration(self._call_timeout)}",
            StoreError.IO,
        )

    def flushed(self, timeout: float) -> bool:
        """Wait until nothing is pending (tests; close); whether that happened."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # -- awaited -------------------------------------------------------------------------
    async def call(self, what: str, fn: Callable[..., T], *args: object, write: bool = True) -> T:
        """``fn(*args)`` in the store's thread, awaited within the call bound.
        A store fault becomes the operator's status (operator_error); a call
        that takes too long, UNAVAILABLE saying it may still complete. A
        ``write`` that succeeds tells a failing store's recovery."""
        loop = asyncio.get_running_loop()

        def run() -> T:
            try:
                return fn(*args)
            except StoreError as exc:
                raise classify(exc, self.state_dir) from exc.__cause__

        try:
            future = loop.run_in_executor(self._calls, run)
        except RuntimeError:  # closed: the manager is stopping
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, f"{what}: the manager is shutting down"
            ) from None
        bound = self._call_timeout.total_seconds()
        try:
            result = await asyncio.wait_for(asyncio.shield(future), bound)
        except TimeoutError:
            self._failed(self._not_answering())
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                f"{what}: the state store in {self.state_dir!r} did not answer within "
                f"{format_duration(self._call_timeout)} (it may still complete): "
                "check the disk of the state directory",
            ) from None
        except StoreError as exc:
            if exc.kind == FENCED:
                self.on_fenced()
                raise RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{what}: this manager is no longer the leader (its write was fenced): "
                    "send it to the leader",
                ) from None
            if exc.kind != StoreError.OTHER:
                self._failed(exc)
            raise operator_error(exc, self.state_dir, what) from None
        if write:
            self._succeeded()
        return result

    def close(
        self, timeout: datetime.timedelta = FLUSH_TIMEOUT, *, write_pending: bool = True
    ) -> None:
        """Have what is pending written (retrying within ``timeout``; dropped
        without ``write_pending``), then close the store. What cannot be
        written in time is named in one line, and a store stuck in a call (a
        frozen disk) is left, not waited for. Closing again does nothing more."""
        deadline = time.monotonic() + timeout.total_seconds()
        with self._cond:
            if not write_pending:
                self._pending.clear()
            self._closing = True
            self._close_deadline = deadline
            self._cond.notify_all()
            if self._thread is None:  # never started: it writes now
                self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
                self._thread.start()
        self._calls.shutdown(wait=False, cancel_futures=True)
        # A try under way when the deadline comes may take a busy timeout more.
        grace = BUSY_TIMEOUT_SECONDS + 0.5
        self._thread.join(max(0.0, deadline - time.monotonic()) + grace)
        closer = threading.Thread(target=self.store.close, name="state-close", daemon=True)
        if not self._thread.is_alive():
            closer.start()
            closer.join(max(0.0, deadline - time.monotonic()) + grace)
        if self._thread.is_alive() or closer.is_alive():
            _log.error(
                "the state store in %r did not finish within %s (a frozen disk?); "
                "leaving it: the next manager starts from what it holds",
                self.state_dir,
                format_duration(timeout),
            )


__all__ = [
    "STORE_CALL_TIMEOUT",
    "StoreHealth",
    "StoreWriter",
    "advice",
    "classify",
    "fault_kind",
    "operator_error",
]
