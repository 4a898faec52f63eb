"""A deposed leader's StoreWriter on a real etcd cluster: a write refused by
the fence is never retried, what is pending is dropped, the manager is told
(on_fenced) and an awaited call is FAILED_PRECONDITION saying so."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from etcd_support import EtcdCluster, shared_etcd, unique_prefix
from test_store import record

from pycontainer._errors import RequestError
from pycontainer.manager._etcd import Candidate, EtcdClient, EtcdStore
from pycontainer.manager._storewriter import StoreWriter

__all__ = ["shared_etcd"]


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def store(shared_etcd: EtcdCluster, prefix: str) -> Iterator[EtcdStore]:
    opened = EtcdStore(shared_etcd.url, prefix=prefix)
    try:
        yield opened
    finally:
        opened.close()


def test_a_fenced_write_steps_down_and_is_never_retried(
    store: EtcdStore, shared_etcd: EtcdCluster, prefix: str, tmp_path: Path
) -> None:
    async def main() -> None:
        client = EtcdClient(shared_etcd.addresses)
        candidate = Candidate(
            client, f"{prefix}election".encode(), b"me", datetime.timedelta(seconds=5)
        )
        term = await candidate.campaign(datetime.timedelta(seconds=10))
        store.fence = term.fence()
        writer = StoreWriter(store, str(tmp_path))
        fenced = asyncio.Event()
        writer.on_fenced = fenced.set
        writer.start()
        writer.put(record("a", restarts=1))
        assert await asyncio.to_thread(writer.flushed, 10)
        await candidate.resign()  # deposed: its leader key is gone
        writer.put(record("a", restarts=2))
        await asyncio.wait_for(fenced.wait(), 10)
        assert writer.fenced
        assert writer.health.pending == 0  # dropped, not kept for a retry
        with pytest.raises(RequestError) as refused:
            await writer.call("record not written", store.put_container, record("b"))
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "no longer the leader" in refused.value.message
        await client.close()
        writer.close(write_pending=False)

    asyncio.run(main())
    reader = EtcdStore(shared_etcd.url, prefix=prefix)
    try:
        # Only what it wrote while leading landed.
        assert [(r.id, r.restarts) for r in reader.list_containers()] == [("a", 1)]
    finally:
        reader.close()
