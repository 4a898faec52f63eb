"""A deposed leader's StoreWriter on a real etcd cluster: a write refused by
the fence is never retried, what is pending is dropped, the manager is told
(on_fenced) and an awaited call is FAILED_PRECONDITION saying so; a leader
(HighAvailability, in process) whose term ends under it steps down then."""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from etcd_support import EtcdCluster, shared_etcd, unique_prefix
from support import connected_container, wait_until
from test_store import record

from pycontainer._errors import RequestError
from pycontainer.manager._etcd import Candidate, EtcdClient, EtcdStore
from pycontainer.manager._leadership import HighAvailability
from pycontainer.manager._settings import ManagerSettings
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


def test_a_leader_whose_term_ends_under_it_steps_down_on_its_next_write(
    shared_etcd: EtcdCluster, tmp_path: Path
) -> None:
    """Its election key deleted while its lease lives (keepalives succeed):
    only the fence can tell. A container's registration is its next write:
    fenced, it steps down, and campaigns again into a later term."""
    settings = ManagerSettings(
        listen="127.0.0.1:0",
        state_dir=str(tmp_path / "state"),
        state=shared_etcd.url,
        insecure=True,
        leader_ttl=datetime.timedelta(seconds=3),
    )
    ha = HighAvailability(settings)
    epochs: list[int] = []
    endings: list[str] = []
    ha.on_leading = epochs.append
    ha.on_stepped_down = lambda epoch, why: endings.append(why)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    runner = threading.Thread(target=loop.run_until_complete, args=(ha.run(stop),), daemon=True)
    runner.start()
    container = host = None
    try:
        wait_until(lambda: len(epochs) == 1, 30, "the first term")
        term = ha.term
        assert term is not None

        async def end_term() -> None:
            client = EtcdClient(shared_etcd.addresses)
            try:
                await client.delete(term.key)
            finally:
                await client.close()

        asyncio.run(end_term())
        container, host = connected_container(ha, "late")  # type: ignore[arg-type]
        wait_until(lambda: len(epochs) == 2, 30, f"a second term: {endings}")
        assert endings[0] == "store write fenced"
        assert epochs[1] > epochs[0]
    finally:
        if container is not None and host is not None:
            container.close()
            host.stop()
        loop.call_soon_threadsafe(stop.set)
        runner.join(30)
        loop.close()
    assert not runner.is_alive()
