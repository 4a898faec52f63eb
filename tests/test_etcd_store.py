"""What is particular to the state store on etcd (the protocol's own tests run
on it in test_store.py): chunked checkpoints, corruption, the journal, keys
of another version, a member's death, and etcd's limits."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from etcd_support import EtcdCluster, etcd_cluster, free_ports, shared_etcd, unique_prefix
from test_store import record

from pycontainer._errors import RequestError
from pycontainer.manager._etcd import EtcdClient, EtcdStore
from pycontainer.manager._etcd._store import CHUNK_BYTES, TXN_OPS
from pycontainer.manager._store import OperationRecord, SQLiteStore, StoreError
from pycontainer.v1 import manager_pb2 as E

__all__ = ["shared_etcd"]


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def store(shared_etcd: EtcdCluster, prefix: str) -> Iterator[EtcdStore]:
    s = EtcdStore(shared_etcd.url, prefix=prefix)
    yield s
    s.close()


def _keys(cluster: EtcdCluster, prefix: str) -> list[bytes]:
    async def keys() -> list[bytes]:
        client = EtcdClient(cluster.addresses)
        try:
            found, _ = await client.range_prefix(prefix.encode(), keys_only=True)
            return [kv.key for kv in found]
        finally:
            await client.close()

    return asyncio.run(keys())


def _put(cluster: EtcdCluster, key: bytes, value: bytes) -> None:
    async def put() -> None:
        client = EtcdClient(cluster.addresses)
        try:
            await client.put(key, value)
        finally:
            await client.close()

    asyncio.run(put())


def test_a_large_checkpoint_is_chunked_under_the_request_limit(
    store: EtcdStore, shared_etcd: EtcdCluster, prefix: str
) -> None:
    data = os.urandom(5 * CHUNK_BYTES + 123)  # past etcd's 1.5 MiB request limit
    info = store.put_checkpoint("web-1", "web", data)
    assert store.get_checkpoint(info.id) == (info, data)
    assert store.latest_checkpoint("web") == info
    chunks = [k for k in _keys(shared_etcd, prefix) if b"/checkpoints/data/" in k]
    assert len(chunks) == 6
    # No pending marker left, and retention drops a big one's chunks too.
    assert not [k for k in _keys(shared_etcd, prefix) if b"/pending/" in k]
    for i in range(5):
        store.put_checkpoint("web-1", "web", b"small %d" % i)
    with pytest.raises(RequestError) as caught:
        store.get_checkpoint(info.id)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    chunks = [k for k in _keys(shared_etcd, prefix) if b"/checkpoints/data/" in k]
    assert len(chunks) == 5


def test_a_corrupt_chunk_is_data_loss(
    store: EtcdStore, shared_etcd: EtcdCluster, prefix: str
) -> None:
    data = os.urandom(2 * CHUNK_BYTES)
    info = store.put_checkpoint("web-1", "web", data)
    first = next(k for k in _keys(shared_etcd, prefix) if k.endswith(b"/000000"))
    _put(shared_etcd, first, b"\0" * CHUNK_BYTES)
    with pytest.raises(RequestError) as caught:
        store.get_checkpoint(info.id)
    assert caught.value.code == grpc.StatusCode.DATA_LOSS
    assert info.id in caught.value.message
    assert info.sha256 in caught.value.message


def test_over_the_maximum_is_resource_exhausted_and_writes_nothing(
    shared_etcd: EtcdCluster, prefix: str
) -> None:
    store = EtcdStore(shared_etcd.url, prefix=prefix, max_checkpoint_bytes=CHUNK_BYTES * 3)
    try:
        before = _keys(shared_etcd, prefix)
        with pytest.raises(RequestError) as caught:
            store.put_checkpoint("web-1", "web", bytes(CHUNK_BYTES * 3 + 1))
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(CHUNK_BYTES * 3 + 1) in caught.value.message
        assert "1536Ki" in caught.value.message or "1.5Mi" in caught.value.message
        assert _keys(shared_etcd, prefix) == before
    finally:
        store.close()


def test_chunks_a_dead_writer_left_are_swept_at_open(
    store: EtcdStore, shared_etcd: EtcdCluster, prefix: str
) -> None:
    kept = store.put_checkpoint("web-1", "web", os.urandom(2 * CHUNK_BYTES))
    # A writer that died after its chunks, before its manifest.
    orphan = f"{prefix}checkpoints/data/ckpt-dead/000000".encode()
    _put(shared_etcd, orphan, b"half a checkpoint")
    EtcdStore(shared_etcd.url, prefix=prefix).close()
    keys = _keys(shared_etcd, prefix)
    assert orphan not in keys
    assert store.get_checkpoint(kept.id)[0] == kept


def test_many_records_in_one_write_span_transactions(store: EtcdStore) -> None:
    records = {f"c-{i:04d}": record(f"c-{i:04d}", name=f"n{i:04d}") for i in range(TXN_OPS * 3)}
    store.write_containers(records)
    assert [r.id for r in store.list_containers()] == sorted(records)
    store.write_containers(dict.fromkeys(records))
    assert store.list_containers() == []


def test_keys_of_another_version_are_refused(shared_etcd: EtcdCluster, prefix: str) -> None:
    EtcdStore(shared_etcd.url, prefix=prefix).close()
    _put(shared_etcd, f"{prefix}schema".encode(), b"99")
    with pytest.raises(StoreError, match="schema version '99'"):
        EtcdStore(shared_etcd.url, prefix=prefix)


def test_no_member_answering_is_a_store_error_naming_them() -> None:
    import datetime

    url = "etcd://" + ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    with pytest.raises(StoreError) as caught:
        EtcdStore(url, call_timeout=datetime.timedelta(milliseconds=300))
    for member in url.removeprefix("etcd://").split(","):
        assert member in str(caught.value)
    # What the manager tells the operator names the cluster, not the state directory.
    from pycontainer.manager._storewriter import advice

    said = advice(caught.value, "state")
    assert url in said
    assert "etcdctl endpoint health" in said


def test_the_journal_keeps_the_newest_operations_and_events(store: EtcdStore) -> None:
    store.open_journal()
    for n in range(30):
        event = E.Event(sequence=n + 1, message=f"e{n}")
        store.write_journal(
            [_operation(n)],
            [(event.sequence, event.SerializeToString())],
            operations_kept=10,
            events_kept=5,
        )
    kept = store.list_operations(100)
    # The bound may be passed by a tenth (counted by a read): 10 or 11 kept.
    assert [o.request_id for o in kept][-10:] == [f"op-{n}" for n in range(20, 30)]
    assert len(kept) <= 11
    assert [o.response for o in kept] == [b""] * len(kept)
    assert [s for s, _ in store.recent_events(100)] == [26, 27, 28, 29, 30]
    assert E.Event.FromString(store.recent_events(1)[0][1]).message == "e29"
    assert store.last_event_sequence() == 30
    store.write_journal([], [], operations_kept=10, events_kept=5, event_sequence=1000)
    assert store.last_event_sequence() == 1000
    store.write_journal(
        [],
        [(1001, E.Event(sequence=1001).SerializeToString())],
        operations_kept=10,
        events_kept=5,
        event_sequence=40,
    )
    assert store.last_event_sequence() == 1001
    store.write_journal(
        [_operation(25, E.OPERATION_STATE_FAILED)], [], operations_kept=10, events_kept=5
    )
    got = store.get_operation("op-25")
    assert got is not None
    assert got.state == E.OPERATION_STATE_FAILED
    assert got.response == b"response 25"
    assert store.get_operation("op-0") is None


def _operation(n: int, state: int = E.OPERATION_STATE_SUCCEEDED) -> OperationRecord:
    return OperationRecord(
        request_id=f"op-{n}",
        method="PauseContainer",
        target="c",
        actor="a",
        fingerprint="f",
        state=state,
        start_time=float(n),
        response=b"response %d" % n,
    )


def test_the_store_carries_on_when_a_member_dies(tmp_path: Path) -> None:
    with etcd_cluster(tmp_path / "etcd") as cluster:
        store = EtcdStore(cluster.url)
        try:
            store.put_container(record("a"))
            info = store.put_checkpoint("a", "web", b"before")
            cluster.kill(cluster.members[0])
            store.put_container(record("b"))
            assert [r.id for r in store.list_containers()] == ["a", "b"]
            assert store.get_checkpoint(info.id)[1] == b"before"
            assert store.put_checkpoint("b", "web", os.urandom(CHUNK_BYTES * 2)).size_bytes
        finally:
            store.close()


def test_checkpoint_writes_per_second_against_sqlite(
    shared_etcd: EtcdCluster, prefix: str, tmp_path: Path
) -> None:
    """The figure the README gives: 64 KiB checkpoints written, one at a time,
    on etcd (3 members, fsync on) and on SQLite (synchronous=FULL) in the same run."""
    data = os.urandom(64 * 1024)
    rates = {}
    for name, store in (
        ("etcd", EtcdStore(shared_etcd.url, prefix=prefix)),
        ("sqlite", SQLiteStore(tmp_path / "bench.db")),
    ):
        try:
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < 2.0:
                store.put_checkpoint(f"c-{count}", f"n{count % 10}", data)
                count += 1
            rates[name] = count / (time.perf_counter() - start)
        finally:
            store.close()
    print(
        f"\ncheckpoint writes/s (64 KiB): etcd {rates['etcd']:.0f}, sqlite {rates['sqlite']:.0f}, "
        f"etcd/sqlite {rates['etcd'] / rates['sqlite']:.2f}"
    )
    assert rates["etcd"] > 0


def test_concurrent_checkpoints_of_one_name_keep_the_bound(
    store: EtcdStore, shared_etcd: EtcdCluster, prefix: str
) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(6):
                store.put_checkpoint(f"c-{t}", "shared", b"%d/%d" % (t, i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    latest = store.latest_checkpoint("shared")
    assert latest is not None
    info, data = store.get_checkpoint(latest.id)
    assert hashlib.sha256(data).hexdigest() == info.sha256
    names = [k for k in _keys(shared_etcd, prefix) if b"/checkpoints/names/shared/" in k]
    assert len(names) == 5


def test_a_full_etcd_is_a_full_store_saying_what_to_do(tmp_path: Path) -> None:
    with etcd_cluster(tmp_path / "etcd", size=1, quota_bytes=4 << 20) as cluster:
        store = EtcdStore(cluster.url)
        try:
            first = store.put_checkpoint("a", "web", b"first")
            full: StoreError | None = None
            # Old revisions are kept (no compaction yet): it fills.
            for _ in range(100):
                try:
                    store.put_checkpoint("a", "other", os.urandom(CHUNK_BYTES))
                except StoreError as exc:
                    full = exc
                    break
            assert full is not None, "4 MiB of quota took 50 MiB"
            assert full.kind == StoreError.FULL
            assert "alarm disarm" in str(full)
            assert "alarm disarm" in full.advice
            # Reads go on.
            assert store.get_checkpoint(first.id)[1] == b"first"
        finally:
            store.close()


def test_a_fenced_store_writes_only_while_its_leader_key_lives(
    store: EtcdStore, shared_etcd: EtcdCluster, prefix: str
) -> None:
    """The leader's epoch as the store's fence: once deposed (its lease gone),
    none of its writes lands."""
    import datetime

    from pycontainer.manager._etcd import create_revision_is
    from pycontainer.manager._etcd._store import FENCED

    async def campaign() -> tuple[int, bytes, int]:
        client = EtcdClient(shared_etcd.addresses)
        try:
            lease, _ = await client.grant(datetime.timedelta(seconds=30))
            leader = await client.campaign(
                f"{prefix}election".encode(), lease, b"me", datetime.timedelta(seconds=5)
            )
            return lease, leader.key, leader.rev
        finally:
            await client.close()

    async def revoke(lease: int) -> None:
        client = EtcdClient(shared_etcd.addresses)
        try:
            await client.revoke(lease)
        finally:
            await client.close()

    lease, key, epoch = asyncio.run(campaign())
    store.fence = (create_revision_is(key, epoch),)
    store.put_container(record("a", restarts=1))
    kept = store.put_checkpoint("a", "web", b"while leading")
    asyncio.run(revoke(lease))  # deposed

    refused = [
        lambda: store.put_container(record("a", restarts=2)),
        lambda: store.write_containers({"b": record("b")}),
        lambda: store.delete_container("a"),
        lambda: store.put_checkpoint("a", "web", b"after"),
        lambda: store.put_checkpoint("a", "web", os.urandom(CHUNK_BYTES * 2)),
    ]
    for write in refused:
        with pytest.raises(StoreError) as caught:
            write()
        assert caught.value.kind == FENCED
        assert "no longer the leader" in str(caught.value)
    assert [(r.id, r.restarts) for r in store.list_containers()] == [("a", 1)]
    assert store.latest_checkpoint("web") == kept
    assert not [k for k in _keys(shared_etcd, prefix) if b"/checkpoints/data/" in k][1:]
    store.fence = ()
    store.put_container(record("a", restarts=3))
    assert store.get_container("a") == record("a", restarts=3)


async def test_candidates_take_turns_and_a_deposed_leaders_writes_land_nowhere(
    shared_etcd: EtcdCluster, prefix: str
) -> None:
    """The pieces leader election will use, together: two candidates, the
    first leads and writes fenced by its term; it stops renewing (a kill -9):
    the second leads with a higher epoch, the first knows it lost, and its
    writes are refused while the new leader's land."""
    import datetime

    from pycontainer.manager._etcd import Candidate
    from pycontainer.manager._etcd._store import FENCED

    ttl = datetime.timedelta(seconds=2)
    name = f"{prefix}leader".encode()
    clients = [EtcdClient(shared_etcd.addresses) for _ in range(2)]
    stores = [EtcdStore(shared_etcd.url, prefix=prefix) for _ in range(2)]
    try:
        a, b = (Candidate(c, name, v, ttl) for c, v in zip(clients, (b"a", b"b"), strict=True))
        term_a = await a.campaign(datetime.timedelta(seconds=5))
        assert a.leading
        stores[0].fence = term_a.fence()
        await asyncio.to_thread(stores[0].put_container, record("x", restarts=1))
        b_wins = asyncio.ensure_future(b.campaign(datetime.timedelta(seconds=30)))
        await asyncio.sleep(0.5)
        assert not b_wins.done()

        assert a._keeper is not None
        await a._keeper.stop()  # killed: no more keepalives, no revoke
        term_b = await asyncio.wait_for(b_wins, 10)
        assert term_b.epoch > term_a.epoch
        assert a.lost.is_set()
        assert not a.leading
        stores[1].fence = term_b.fence()
        with pytest.raises(StoreError) as caught:
            await asyncio.to_thread(stores[0].put_container, record("x", restarts=2))
        assert caught.value.kind == FENCED
        await asyncio.to_thread(stores[1].put_container, record("x", restarts=3))
        got = await asyncio.to_thread(stores[1].get_container, "x")
        assert got is not None
        assert got.restarts == 3
        await b.resign()
        assert not b.leading
        assert await clients[0].leader(name) is None
    finally:
        for store in stores:
            store.close()
        for client in clients:
            await client.close()


def test_closing_ends_a_call_in_flight_at_once(tmp_path: Path) -> None:
    """A call waiting on a hung cluster when the store closes fails then, not
    after its deadlines (the manager closes its store on the way out)."""
    with etcd_cluster(tmp_path / "etcd", size=1) as cluster:
        store = EtcdStore(cluster.url)
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                store.list_containers()
            except BaseException as exc:
                outcome.append(exc)

        cluster.freeze(cluster.members[0])
        try:
            caller = threading.Thread(target=call)
            caller.start()
            time.sleep(0.3)  # the call is under way (it waits up to 11 s on its own)
            assert caller.is_alive()
            start = time.monotonic()
            store.close()
            caller.join(5)
            assert not caller.is_alive()
            assert time.monotonic() - start < 3
            [error] = outcome
            assert isinstance(error, StoreError)
        finally:
            cluster.thaw(cluster.members[0])


def test_bootstrap_tokens_are_shared_by_every_manager_on_the_prefix(
    store: EtcdStore, shared_etcd: EtcdCluster, prefix: str
) -> None:
    """A token made through one manager's store is redeemed through
    another's (a failover's successor), and its uses are counted once for
    all; none of it is written in the clear."""
    import datetime

    from pycontainer.manager._etcd import create_revision_is
    from pycontainer.manager._store import TokenRecordStore
    from pycontainer.security import SecurityError, TokenError, TokenStore, container

    assert isinstance(store, TokenRecordStore)
    made_here = TokenStore(store.token_records())
    token = made_here.create(datetime.timedelta(minutes=5), uses=2, identity=container("c-1"))
    other = EtcdStore(shared_etcd.url, prefix=prefix)
    try:
        there = TokenStore(other.token_records())
        assert there.redeem(token).uses_left == 1
        assert made_here.redeem(token).uses_left == 0
        with pytest.raises(TokenError, match="used up"):
            there.redeem(token)
        [grant] = there.list_tokens()
        assert grant.token_id in token
        secret = token.partition(".")[2]
        assert not [k for k in _keys(shared_etcd, prefix) if secret.encode() in k]

        # A store whose leader key is gone (deposed) changes no token.
        async def lapsed_key() -> tuple[bytes, int]:
            client = EtcdClient(shared_etcd.addresses)
            try:
                lease, _ = await client.grant(datetime.timedelta(seconds=30))
                leader = await client.campaign(
                    f"{prefix}election".encode(), lease, b"me", datetime.timedelta(seconds=5)
                )
                await client.revoke(lease)
                return leader.key, leader.rev
            finally:
                await client.close()

        key, epoch = asyncio.run(lapsed_key())
        other.fence = (create_revision_is(key, epoch),)
        with pytest.raises(SecurityError, match="no longer the leader"):
            there.create(datetime.timedelta(minutes=5))
        with pytest.raises(SecurityError, match="no longer the leader"):
            there.revoke(grant.token_id)
        assert [g.token_id for g in made_here.list_tokens()] == [grant.token_id]
    finally:
        other.close()


def test_a_token_document_changed_meanwhile_is_not_overwritten(
    store: EtcdStore, shared_etcd: EtcdCluster, prefix: str
) -> None:
    """Read, then another manager's change, then this write: refused, and
    the other's change kept (a compare on the revision read)."""
    import datetime

    from pycontainer.security import SecurityError, TokenStore

    other = EtcdStore(shared_etcd.url, prefix=prefix)
    TokenStore(store.token_records()).create(datetime.timedelta(minutes=5))

    def write_over_a_change() -> None:
        with store.token_records().transaction() as held:
            TokenStore(other.token_records()).create(datetime.timedelta(minutes=5))
            held.clear()

    try:
        with pytest.raises(SecurityError, match="changed the key meanwhile"):
            write_over_a_change()
        # Neither forgotten by the stale write: the first and the other's.
        assert len(TokenStore(store.token_records()).list_tokens()) == 2
    finally:
        other.close()
