"""Tests of pycontainer.manager._store: durable records and checkpoints in real SQLite files."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from etcd_support import shared_etcd

from pycontainer._errors import RequestError
from pycontainer.manager._store import (
    CHECKPOINTS_KEPT,
    ContainerRecord,
    MeshRouteStore,
    SQLiteStore,
    StateStore,
    StoreError,
)

__all__ = ["shared_etcd"]  # the etcd cluster fixture, used through opener


def record(id: str = "web-1", **changes: object) -> ContainerRecord:
    """A container record with every field set to something non-default."""
    base = ContainerRecord(
        id=id,
        name="web",
        spec=b"\x0a\x03web\x00\xff",
        labels={"app": "web", "tier": "front", "note": "ünïcode"},
        priority=7,
        cpu_millis=1500,
        memory_bytes=512 * 1024 * 1024,
        state=3,
        create_time=1700000000.25,
        start_time=1700000001.5,
        restarts=2,
        error="exit status 1",
        exit_code=-9,
        last_checkpoint_id="ckpt-x",
        desired=False,
        endpoints=b"\x3a\x05\x0a\x03app\x00",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


# Opens a store on the test's own place (the same one each time: a reopen is a
# manager restart), with the store's keyword options.
Opener = Callable[..., StateStore]


@pytest.fixture(params=["sqlite", "etcd"])
def opener(request: pytest.FixtureRequest, path: Path) -> Iterator[Opener]:
    """The protocol's tests run on each store: an SQLite file, and a prefix of
    its own on a real 3-member etcd cluster (etcd_support)."""
    opened: list[StateStore] = []
    if request.param == "sqlite":

        def open_store(**options: Any) -> StateStore:
            opened.append(SQLiteStore(path, **options))
            return opened[-1]

    else:
        from etcd_support import unique_prefix

        from pycontainer.manager._etcd import EtcdStore

        cluster = request.getfixturevalue("shared_etcd")
        prefix = unique_prefix()

        def open_store(**options: Any) -> StateStore:
            opened.append(EtcdStore(cluster.url, prefix=prefix, **options))
            return opened[-1]

    yield open_store
    for s in opened:
        s.close()


@pytest.fixture
def store(opener: Opener) -> StateStore:
    return opener()


@pytest.fixture
def sqlite_store(path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(path)
    yield s
    s.close()


def test_is_a_state_store(store: StateStore) -> None:
    # Type-checked: the manager holds a StateStore, not an SQLiteStore.
    s: StateStore = store
    assert s.list_containers() == []


def test_container_round_trip(store: StateStore) -> None:
    r = record()
    store.put_container(r)
    assert store.get_container("web-1") == r
    assert store.get_container("nope") is None

    # Upsert, and the None/default fields survive too.
    r2 = dataclasses.replace(
        r, state=6, start_time=None, exit_code=None, labels={}, desired=True, spec=b""
    )
    store.put_container(r2)
    assert store.get_container("web-1") == r2
    assert store.list_containers() == [r2]

    store.delete_container("web-1")
    store.delete_container("web-1")  # absent: no-op
    assert store.get_container("web-1") is None


def test_list_is_sorted_by_name_then_id(store: StateStore) -> None:
    for id, name in [("b-2", "b"), ("a-1", "a"), ("b-1", "b"), ("c-1", "c")]:
        store.put_container(record(id, name=name))
    assert [(r.name, r.id) for r in store.list_containers()] == [
        ("a", "a-1"),
        ("b", "b-1"),
        ("b", "b-2"),
        ("c", "c-1"),
    ]


def test_checkpoint_round_trip(store: StateStore) -> None:
    assert store.latest_checkpoint("web") is None
    data = bytes(range(256)) * 10
    info = store.put_checkpoint("web-1", "web", data)
    assert info.size_bytes == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert (info.container_id, info.container_name) == ("web-1", "web")
    assert store.get_checkpoint(info.id) == (info, data)
    assert store.latest_checkpoint("web") == info
    assert store.latest_checkpoint("db") is None

    empty = store.put_checkpoint("web-1", "web", b"")
    assert store.get_checkpoint(empty.id) == (empty, b"")
    assert store.latest_checkpoint("web") == empty


def test_unknown_checkpoint_is_not_found(store: StateStore) -> None:
    with pytest.raises(RequestError) as caught:
        store.get_checkpoint("ckpt-nope")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.field == "checkpoint_id"
    assert "ckpt-nope" in caught.value.message


def test_reopen_sees_everything(opener: Opener) -> None:
    """A manager restart: a new store on the same file sees what the old one wrote."""
    first = opener()
    records = [record(f"web-{i}", restarts=i) for i in range(3)]
    for r in records:
        first.put_container(r)
    first.delete_container("web-2")
    infos = [first.put_checkpoint("web-0", "web", f"state {i}".encode()) for i in range(3)]
    first.close()
    first.close()  # idempotent

    second = opener()
    try:
        assert second.list_containers() == records[:2]
        assert second.latest_checkpoint("web") == infos[-1]
        for i, info in enumerate(infos):
            assert second.get_checkpoint(info.id) == (info, f"state {i}".encode())
        # Retention counts across restarts: the file's checkpoints, not the session's.
        for i in range(CHECKPOINTS_KEPT):
            second.put_checkpoint("web-0", "web", b"more %d" % i)
        with pytest.raises(RequestError):
            second.get_checkpoint(infos[-1].id)
    finally:
        second.close()


def test_file_is_wal(path: Path, sqlite_store: SQLiteStore) -> None:
    sqlite_store.put_container(record())
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]


def test_corrupt_checkpoint_is_data_loss(path: Path, sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    info = store.put_checkpoint("web-1", "web", b"the real state")
    good = store.put_checkpoint("web-1", "web", b"another state")
    # Flip the blob behind the store's back, same length.
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE checkpoints SET data = ? WHERE id = ?", (b"the fake state", info.id))

    with pytest.raises(RequestError) as caught:
        store.get_checkpoint(info.id)
    assert caught.value.code == grpc.StatusCode.DATA_LOSS
    assert info.id in caught.value.message
    assert info.sha256 in caught.value.message
    assert store.get_checkpoint(good.id)[1] == b"another state"

    # And after a restart, too.
    store.close()
    reopened = SQLiteStore(path)
    try:
        with pytest.raises(RequestError) as caught:
            reopened.get_checkpoint(info.id)
        assert caught.value.code == grpc.StatusCode.DATA_LOSS
    finally:
        reopened.close()


def test_size_limit_is_resource_exhausted(opener: Opener) -> None:
    store = opener(max_checkpoint_bytes=1024)
    try:
        store.put_checkpoint("web-1", "web", b"x" * 1024)  # exactly the limit: fine
        with pytest.raises(RequestError) as caught:
            store.put_checkpoint("web-1", "web", b"x" * 1025)
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1025" in caught.value.message
        assert "1024" in caught.value.message
        assert store.latest_checkpoint("web") is not None
        assert store.latest_checkpoint("web").size_bytes == 1024  # type: ignore[union-attr]
    finally:
        store.close()


def test_default_size_limit_names_mebibytes(store: StateStore) -> None:
    with pytest.raises(RequestError) as caught:
        store.put_checkpoint("web-1", "web", bytes(64 * 1024 * 1024 + 1))
    assert "64Mi" in caught.value.message
    assert str(64 * 1024 * 1024 + 1) in caught.value.message


def test_keeps_newest_five_per_name(store: StateStore) -> None:
    web = [store.put_checkpoint("web-1", "web", b"web %d" % i) for i in range(7)]
    db = [store.put_checkpoint("db-1", "db", b"db %d" % i) for i in range(2)]
    # Replicas share a name, so they share the retention window.
    web.append(store.put_checkpoint("web-2", "web", b"web 7"))

    for old in web[:3]:
        with pytest.raises(RequestError) as caught:
            store.get_checkpoint(old.id)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
    for i, kept in enumerate(web[3:], start=3):
        assert store.get_checkpoint(kept.id)[1] == b"web %d" % i
    for i, kept in enumerate(db):
        assert store.get_checkpoint(kept.id)[1] == b"db %d" % i
    assert store.latest_checkpoint("web") == web[-1]
    assert store.latest_checkpoint("db") == db[-1]


def test_concurrent_writers(opener: Opener, store: StateStore) -> None:
    threads, each = 8, 40
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(each):
                store.put_container(record(f"c-{t}-{i}", name=f"n{t}", restarts=i))
                if i % 8 == 0:
                    store.put_checkpoint(f"c-{t}-{i}", f"n{t}", b"%d/%d" % (t, i))
                store.get_container(f"c-{t}-{i}")
                store.list_containers()
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert len(store.list_containers()) == threads * each
    for t in range(threads):
        latest = store.latest_checkpoint(f"n{t}")
        assert latest is not None
        assert store.get_checkpoint(latest.id)[1] == b"%d/%d" % (t, 32)

    store.close()
    reopened = opener()
    try:
        assert len(reopened.list_containers()) == threads * each
    finally:
        reopened.close()


def test_garbage_file_names_the_path(path: Path) -> None:
    path.write_bytes(b"this is not an sqlite database, just some bytes" * 100)
    with pytest.raises(StoreError, match=re.escape(str(path))):
        SQLiteStore(path)


def test_unopenable_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "state.db"
    with pytest.raises(StoreError, match=re.escape(str(missing))):
        SQLiteStore(missing)


def test_foreign_database_is_refused(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE something_else (x)")
    with pytest.raises(StoreError, match="not a state store"):
        SQLiteStore(path)


def test_newer_schema_is_refused(path: Path) -> None:
    SQLiteStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteStore(path)


def test_a_store_from_before_the_endpoints_column_gets_it(path: Path) -> None:
    """ContainerRecord.endpoints came after schema version 1 (no bump): a
    store without the column gets it when opened, its records reading none."""
    with contextlib.closing(SQLiteStore(path)) as s:
        s.put_container(record(endpoints=b""))
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("ALTER TABLE containers DROP COLUMN endpoints")
    with contextlib.closing(SQLiteStore(path)) as s:
        assert s.get_container("web-1") == record(endpoints=b"")
        s.put_container(record())
        assert s.get_container("web-1") == record()


def test_closed_store_raises(store: StateStore) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_containers()


def test_mesh_routes_outlive_the_store_and_an_empty_split_forgets(opener: Opener) -> None:
    first = opener()
    assert isinstance(first, MeshRouteStore)
    first.put_mesh_route("orders", {"v2": 10, "v1": 90})
    first.put_mesh_route("a/b c", {"x": 1})  # a name that needs quoting as a key
    first.put_mesh_route("gone", {"v1": 1})
    first.put_mesh_route("gone", {})
    again = opener()  # another manager, or the same one restarted
    assert isinstance(again, MeshRouteStore)
    assert again.list_mesh_routes() == {"a/b c": {"x": 1}, "orders": {"v1": 90, "v2": 10}}
