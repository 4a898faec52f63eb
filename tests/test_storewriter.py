"""The writer behind the registry (pycontainer.manager._storewriter), on a
real SQLite file: the latest word on each id is what lands, deletes and puts
in the order given, and close() writes what is pending. The faults it rides
out (full, read-only, frozen, locked disks) are in test_store_faults.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from test_store import record

from pycontainer._errors import RequestError
from pycontainer.manager._store import SQLiteStore, StoreError
from pycontainer.manager._storewriter import StoreWriter, operator_error


def _ids(path: Path) -> dict[str, int]:
    store = SQLiteStore(path)
    try:
        return {r.id: r.restarts for r in store.list_containers()}
    finally:
        store.close()


def test_latest_word_per_id_lands_in_order(tmp_path: Path) -> None:
    path = tmp_path / "manager.db"
    seed = SQLiteStore(path)
    seed.put_container(record("old-1"))
    seed.close()
    writer = StoreWriter(SQLiteStore(path), str(tmp_path))

    async def main() -> None:
        writer.start()
        writer.put(record("a-1", restarts=1))
        writer.delete("a-1")  # deleted after its put: gone
        writer.put(record("b-1", restarts=1))
        writer.delete("b-1")
        writer.put(record("b-1", restarts=2))  # put again after its delete: there
        for n in range(100):
            writer.put(record("c-1", restarts=n))  # only the last matters
        writer.delete("old-1")
        assert await asyncio.to_thread(writer.flushed, 5)

    asyncio.run(main())
    writer.close()
    assert _ids(path) == {"b-1": 2, "c-1": 99}


def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    # Never started (a manager that failed to start): close() still writes.
    path = tmp_path / "manager.db"
    writer = StoreWriter(SQLiteStore(path), str(tmp_path))
    writer.put(record("a-1"))
    writer.put(record("b-1"))
    writer.delete("b-1")
    assert writer.health.pending == 2
    writer.close()
    assert set(_ids(path)) == {"a-1"}


def test_faults_answer_what_and_what_to_do(tmp_path: Path) -> None:
    where = str(tmp_path)
    full = operator_error(StoreError("disk is full", StoreError.FULL), where, "checkpoint lost")
    assert full.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert full.message.startswith("checkpoint lost: ")
    assert where in full.message
    assert "free space" in full.message
    read_only = operator_error(StoreError("ro", StoreError.READ_ONLY), where, "x")
    assert read_only.code == grpc.StatusCode.UNAVAILABLE
    assert "make it writable" in read_only.message
    busy = operator_error(StoreError("locked", StoreError.BUSY), where, "x")
    assert "locked by another process" in busy.message


def test_a_closed_store_call_is_a_status_not_a_traceback(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "manager.db")
    writer = StoreWriter(store, str(tmp_path))
    store.close()

    async def main() -> None:
        with pytest.raises(RequestError) as caught:
            await writer.call("checkpoint lost", store.latest_checkpoint, "web", write=False)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert "closed" in caught.value.message

    asyncio.run(main())
