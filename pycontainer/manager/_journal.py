"""Operations and events written to the state store off the event loop.

One thread drains a queue and writes what it holds in one transaction (a
batch: under load, hundreds of records share one fsync). Events and finished
operations are write-behind: the loop never waits for them (a crash loses at
most the last batch). An operation's start is written through instead
(:meth:`Journal.durable`): the call acts only once its RUNNING record is on
disk, so a manager killed while it runs reports it INTERRUPTED afterwards,
never unknown. Concurrent starts still share a transaction (group commit).

A store that cannot be written (a full, read-only or frozen disk) costs
durability, not availability: what is queued stays in memory (bounded: the
oldest events go first past ``MAX_PENDING``) and is written when the store
takes writes again (retried with backoff); :meth:`Journal.durable` waits at
most ``DURABLE_WAIT`` and not at all while the store is failing, so a command
still runs and its outcome is still queryable from this manager's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..limits import EVENTS_KEPT, OPERATIONS_KEPT
from ..v1 import manager_pb2
from ._store import JournalStore, OperationRecord, StoreError

__all__ = ["Journal"]

_log = logging.getLogger("pycontainer.manager")

# Most records written in one transaction.
_BATCH = 1000
# Most records kept in memory while the store cannot be written.
MAX_PENDING = 100_000
# Longest an operation's start waits for its record to reach the disk.
DURABLE_WAIT = 1.0
# Retry delays while the store fails: the first, then doubling to the last.
_RETRY_FIRST, _RETRY_MAX = 0.1, 2.0


@dataclass
class _Item:
    operation: OperationRecord | None = None
    event: tuple[int, bytes] | None = None
    # Where the next manager's event numbers must start after.
    event_sequence: int | None = None
    # Called (on the writer thread) with None once written, or the error.
    written: Callable[[BaseException | None], None] | None = None

    @property
    def empty(self) -> bool:
        return self.operation is None and self.event is None and self.event_sequence is None


class Journal:
    """The writer of one store's journal; :meth:`close` flushes what is queued."""

    def __init__(
        self,
        store: JournalStore | None,
        *,
        operations_kept: int = OPERATIONS_KEPT,
        events_kept: int = EVENTS_KEPT,
    ) -> None:
        self.store = store
        self.operations_kept = operations_kept
        self.events_kept = events_kept
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        # Writes an operation waits for (durable): taken before what is queued
        # behind, so that a start waits for the transaction under way at most,
        # not for a backlog (20,000 registrations' events, say).
        self._urgent: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Set while the store refuses writes (the writer thread's view).
        self.failing = False
        # When the write in progress began (None: none): one that takes
        # longer than DURABLE_WAIT is a stalled disk, and starts stop waiting.
        self._writing_since: float | None = None
        self._pending: list[_Item] = []
        if store is not None:
            store.open_journal()  # its tables, for reading what is there

    def start(self) -> None:
        """Start writing (what was queued first): only once this manager holds
        the state directory, so that one refused never writes to another's store."""
        if self.store is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
            self._thread.start()

    def event(self, event: manager_pb2.Event) -> None:
        """Write an event, behind (an EventBus sink)."""
        if self.store is not None:
            self._queue.put(_Item(event=(event.sequence, event.SerializeToString())))

    def reserve_events(self, sequence: int) -> None:
        """Make the next manager number its events after ``sequence``, whatever
        becomes of this one (an EventBus reservation, or its last on a clean stop)."""
        if self.store is not None:
            self._queue.put(_Item(event_sequence=sequence))

    def operation(self, record: OperationRecord) -> None:
        """Write an operation's new state, behind."""
        if self.store is not None:
            self._queue.put(_Item(operation=record))

    async def durable(self, record: OperationRecord, wait: float = DURABLE_WAIT) -> bool:
        """Write an operation's state through: True once it is on disk; False
        when it is not there within ``wait`` seconds, or the store is failing
        (the record stays queued and is written when the store recovers)."""
        if self.store is None:
            return True
        since = self._writing_since
        stalled = since is not None and time.monotonic() - since > wait
        if self._thread is None or self.failing or stalled:
            self._queue.put(_Item(operation=record))
            return False
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def written(error: BaseException | None) -> None:
            def settle() -> None:
                if not done.done():
                    done.set_result(error is None)

            # A closed loop: nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle)

        self._urgent.put(_Item(operation=record, written=written))
        self._queue.put(_Item())  # wakes the writer
        try:
            return await asyncio.wait_for(asyncio.shield(done), wait)
        except TimeoutError:
            return False

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread (at most ``timeout``
        seconds); a journal never started writes nothing."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        assert self.store is not None
        stopping = False
        delay = _RETRY_FIRST
        while not stopping or self._pending:
            if not stopping:
                # While records wait for a failing store, new ones are taken
                # only until the next retry is due.
                timeout = delay if self._pending else None
                try:
                    first = self._queue.get(timeout=timeout)
                except queue.Empty:
                    first = _Item()
                self._take_urgent()
                if first is None:
                    stopping = True
                else:
                    self._pending.append(first)
                while len(self._pending) < _BATCH and not stopping:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    self._pending.append(item)
            batch, self._pending = self._pending, []
            if self._write(batch):
                delay = _RETRY_FIRST
                continue
            if stopping:
                # Closing with a store that refuses: one last try was made.
                _log.error("%d journal records not written: the store refuses writes", len(batch))
                return
            self._pending = self._bounded(batch)
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)

    def _take_urgent(self) -> None:
        """What durable() waits for, into this batch ahead of the rest."""
        while True:
            try:
                self._pending.append(self._urgent.get_nowait())
            except queue.Empty:
                return

    def _bounded(self, pending: list[_Item]) -> list[_Item]:
        """What stays queued for the next try: callbacks answered already, and
        past MAX_PENDING the oldest events dropped (operations are kept)."""
        kept = [_Item(i.operation, i.event, i.event_sequence) for i in pending if not i.empty]
        excess = len(kept) - MAX_PENDING
        if excess > 0:
            dropped = 0
            survivors = []
            for item in kept:
                if dropped < excess and item.event is not None and item.operation is None:
                    dropped += 1
                    continue
                survivors.append(item)
            _log.error("journal: %d events dropped while the store refused writes", dropped)
            kept = survivors
        return kept

    def _write(self, batch: list[_Item]) -> bool:
        assert self.store is not None
        # The last state of each operation wins; one row each.
        operations: dict[str, OperationRecord] = {}
        for item in batch:
            if item.operation is not None:
                operations[item.operation.request_id] = item.operation
        events = [item.event for item in batch if item.event is not None]
        sequences = [item.event_sequence for item in batch if item.event_sequence is not None]
        error: BaseException | None = None
        self._writing_since = time.monotonic()
        try:
            self.store.write_journal(
                list(operations.values()),
                events,
                operations_kept=self.operations_kept,
                events_kept=self.events_kept,
                event_sequence=sequences[-1] if sequences else None,
            )
        except StoreError as exc:
            if not self.failing:
                _log.error("cannot write journal records (kept, retried): %s", exc)
            self.failing = True
            error = exc
        else:
            if self.failing:
                _log.warning("journal records written again")
            self.failing = False
        finally:
            self._writing_since = None
        for item in batch:
            if item.written is not None:
                item.written(error)
        return error is None
