"""Operations and events written to the state store off the event loop.

One thread drains a queue and writes what it holds in one transaction (a
batch: under load, hundreds of records share one fsync). Events and finished
operations are write-behind: the loop never waits for them (a crash loses at
most the last batch). An operation's start is written through instead
(:meth:`Journal.durable`): the call acts only once its RUNNING record is on
disk, so a manager killed while it runs reports it INTERRUPTED afterwards,
never unknown. Concurrent starts still share a transaction (group commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..limits import EVENTS_KEPT, OPERATIONS_KEPT
from ..v1 import manager_pb2
from ._store import JournalStore, OperationRecord, StoreError

__all__ = ["Journal"]

_log = logging.getLogger("pycontainer.manager")

# Most records written in one transaction.
_BATCH = 1000


@dataclass
class _Item:
    operation: OperationRecord | None = None
    event: tuple[int, bytes] | None = None
    # Where the next manager's event numbers must start after.
    event_sequence: int | None = None
    # Called (on the writer thread) with None once written, or the error.
    written: Callable[[BaseException | None], None] | None = None


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
        self._thread: threading.Thread | None = None
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

    async def durable(self, record: OperationRecord) -> None:
        """Write an operation's state through: return once it is on disk.
        Raises StoreError when it cannot be written (or the journal is not started)."""
        if self.store is None:
            return
        if self._thread is None:
            raise StoreError("the journal is not started")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def written(error: BaseException | None) -> None:
            def settle() -> None:
                if done.done():
                    return
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

            # A closed loop: nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle)

        self._queue.put(_Item(operation=record, written=written))
        await done

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
        while not stopping:
            first = self._queue.get()
            batch: list[_Item] = []
            if first is None:
                stopping = True
            else:
                batch.append(first)
            while len(batch) < _BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            if batch:
                self._write(batch)

    def _write(self, batch: list[_Item]) -> None:
        assert self.store is not None
        # The last state of each operation wins; one row each.
        operations: dict[str, OperationRecord] = {}
        for item in batch:
            if item.operation is not None:
                operations[item.operation.request_id] = item.operation
        events = [item.event for item in batch if item.event is not None]
        sequences = [item.event_sequence for item in batch if item.event_sequence is not None]
        error: BaseException | None = None
        try:
            self.store.write_journal(
                list(operations.values()),
                events,
                operations_kept=self.operations_kept,
                events_kept=self.events_kept,
                event_sequence=sequences[-1] if sequences else None,
            )
        except StoreError as exc:
            _log.error("cannot write %d journal records: %s", len(batch), exc)
            error = exc
        for item in batch:
            if item.written is not None:
                item.written(error)
