"""What keeps a manager with tens of thousands of sessions responsive: the
journal writes an operation's start ahead of a backlog, and the collector
freezes survivors (cycles among them still collected in full now and then)."""

from __future__ import annotations

import asyncio
import datetime
import gc
import weakref
from pathlib import Path

from pycontainer.manager._collector import FREEZE_FROM, collect_all, keep_frozen
from pycontainer.manager._journal import Journal
from pycontainer.manager._store import OperationRecord, SQLiteStore
from pycontainer.v1 import manager_pb2 as E

BACKLOG = 20_000


def _running(request_id: str) -> OperationRecord:
    return OperationRecord(
        request_id=request_id,
        method="StopContainers",
        target="app=web",
        actor="a",
        fingerprint="f",
        state=E.OPERATION_STATE_RUNNING,
        start_time=0.0,
    )


def test_an_operations_start_is_written_ahead_of_queued_events(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "manager.db")
    journal = Journal(store, events_kept=BACKLOG)
    try:
        # A storm's events queued (20,000 registrations), then a call starts.
        for n in range(BACKLOG):
            journal.event(E.Event(sequence=n + 1, message="registered"))

        async def start_an_operation() -> int:
            journal.start()
            assert await journal.durable(_running("op-1"), wait=60)
            return store.last_event_sequence()

        written_before = asyncio.run(start_an_operation())
        assert store.get_operation("op-1") is not None
        # It waited for the transaction under way, not for the whole backlog.
        assert written_before < BACKLOG
    finally:
        journal.close()
    # And the backlog is all written after it.
    assert store.last_event_sequence() == BACKLOG
    store.close()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_frozen_cycles_are_collected_by_the_full_collection() -> None:
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    gc.freeze()
    del cycle
    gc.collect()
    assert gone() is not None  # frozen: the collector does not walk it
    collect_all()
    assert gone() is None


def test_a_large_manager_freezes_what_survives() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    async def run() -> int:
        task = asyncio.ensure_future(
            keep_frozen(lambda: FREEZE_FROM, every=datetime.timedelta(milliseconds=10))
        )
        try:
            for _ in range(500):
                if gc.get_freeze_count() > 0:
                    break
                await asyncio.sleep(0.01)
            return gc.get_freeze_count()
        finally:
            task.cancel()

    assert asyncio.run(run()) > 0
