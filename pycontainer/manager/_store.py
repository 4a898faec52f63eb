"""The manager's durable state: container records, checkpoints and the specs
``apply`` set.

:class:`StateStore` is the interface the manager uses; it speaks records, not
SQL, so that a distributed store (etcd) can replace :class:`SQLiteStore`
without the manager noticing. Everything written survives a manager restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import grpc

from .._errors import RequestError, echo, not_found, resource_exhausted
from ..limits import MAX_CHECKPOINT_BYTES
from ..units import format_memory

if TYPE_CHECKING:
    from ..security._tokens import TokenRecords

__all__ = [
    "CHECKPOINTS_KEPT",
    "AppliedSpec",
    "CheckpointInfo",
    "ContainerRecord",
    "JournalStore",
    "MeshRouteStore",
    "OperationRecord",
    "SQLiteStore",
    "StateStore",
    "StoreError",
    "TokenRecordStore",
]

# Newest checkpoints kept per container name; older ones are deleted.
CHECKPOINTS_KEPT = 5


@dataclass(frozen=True)
class ContainerRecord:
    """What the manager remembers about one container."""

    id: str
    name: str
    # The serialized ContainerSpec, opaque here; empty for a container that
    # dialled in on its own.
    spec: bytes
    labels: dict[str, str]
    priority: int
    cpu_millis: int
    memory_bytes: int
    # A LifecycleState number.
    state: int
    create_time: float
    start_time: float | None = None
    restarts: int = 0
    error: str = ""
    exit_code: int | None = None
    last_checkpoint_id: str = ""
    # False once the operator stopped or removed it: do not restart it.
    desired: bool = True
    # The endpoints it registered last (a serialized ContainerIdentity with
    # those alone, opaque here): a manager taking over keeps them in the mesh
    # until the container reconnects (manager/_xds). Empty: none known.
    endpoints: bytes = b""


@dataclass(frozen=True)
class CheckpointInfo:
    """A stored checkpoint, without its data."""

    id: str
    container_id: str
    # Checkpoints belong to a name, so that a replacement restores from them.
    container_name: str
    size_bytes: int
    # SHA-256 of the data, hex.
    sha256: str
    create_time: float


@dataclass(frozen=True)
class AppliedSpec:
    """A spec as ``apply`` last set it: the desired state of its name, which a
    restarted manager reconciles to."""

    name: str
    # Who applied it (the owner label's value); prune removes only its own.
    owner: str
    # The serialized ContainerSpec, replicas and the manager's labels included.
    spec: bytes
    # The spec's hash without replicas (as the spec-hash label carries it).
    spec_hash: str
    applied_time: float


@dataclass(frozen=True)
class OperationRecord:
    """One mutating Manager call and its outcome (Operation in the API)."""

    request_id: str
    method: str
    # The container id or name the call named.
    target: str
    actor: str
    # SHA-256 of the method and the request without its request_id: a retry
    # with the same id must be the same call.
    fingerprint: str
    # An OperationState number.
    state: int
    start_time: float
    end_time: float | None = None
    # The google.rpc.Code and message it ended with.
    code: int = 0
    message: str = ""
    # The serialized google.protobuf.Any of its response, when it succeeded.
    response: bytes = b""


@runtime_checkable
class JournalStore(Protocol):
    """Where operations and events outlive the manager (SQLiteStore is one); a
    store without these keeps them in memory only."""

    def open_journal(self) -> None:
        """Create the journal's tables if missing."""
        ...

    def write_journal(
        self,
        operations: Sequence[OperationRecord],
        events: Sequence[tuple[int, bytes]],
        *,
        operations_kept: int,
        events_kept: int,
        event_sequence: int | None = None,
    ) -> None:
        """Insert or replace operations (by request_id) and add events (sequence,
        serialized Event) in one transaction, then drop the oldest past the
        bounds; with ``event_sequence``, set last_event_sequence to it."""
        ...

    def get_operation(self, request_id: str) -> OperationRecord | None:
        """One operation with its response, or None."""
        ...

    def list_operations(self, limit: int) -> list[OperationRecord]:
        """The newest ``limit`` operations, oldest first, without their responses."""
        ...

    def recent_events(self, limit: int) -> list[tuple[int, bytes]]:
        """The newest ``limit`` events (sequence, serialized Event), oldest first."""
        ...

    def last_event_sequence(self) -> int:
        """Where the next manager's event numbers start after: the highest
        written, or higher as set (a running manager's reservation); 0 for none."""
        ...


@runtime_checkable
class MeshRouteStore(Protocol):
    """Where the mesh's routes (SetMeshRoute's splits) outlive the manager
    (SQLiteStore is one); a store without these keeps them in memory only."""

    def put_mesh_route(self, service: str, weights: Mapping[str, int]) -> None:
        """Keep the split of ``service`` (subset -> weight); empty forgets it."""
        ...

    def list_mesh_routes(self) -> dict[str, dict[str, int]]:
        """Every kept split, by service."""
        ...


@runtime_checkable
class TokenRecordStore(Protocol):
    """A store that keeps the bootstrap tokens itself (EtcdStore: every
    replica redeems what any made); without it, the tokens live in a file
    in the manager's state directory."""

    def token_records(self) -> TokenRecords:
        """The records a TokenStore keeps its tokens in."""
        ...


class StateStore(Protocol):
    """Durable records of containers and checkpoints; every write is atomic."""

    def put_container(self, record: ContainerRecord) -> None:
        """Insert or replace the record with ``record.id``."""
        ...

    def write_containers(self, changes: Mapping[str, ContainerRecord | None]) -> None:
        """Put each record and delete each id mapped to None, all or nothing."""
        ...

    def get_container(self, container_id: str) -> ContainerRecord | None:
        """The record with this id, or None."""
        ...

    def list_containers(self) -> list[ContainerRecord]:
        """Every record, sorted by name then id."""
        ...

    def delete_container(self, container_id: str) -> None:
        """Forget a record (its checkpoints stay with its name); no-op if absent."""
        ...

    def put_checkpoint(self, container_id: str, container_name: str, data: bytes) -> CheckpointInfo:
        """Store a checkpoint, keeping only the newest few per name.

        Raises RequestError RESOURCE_EXHAUSTED when ``data`` is over the size limit.
        """
        ...

    def get_checkpoint(self, checkpoint_id: str) -> tuple[CheckpointInfo, bytes]:
        """A checkpoint and its data, checksum verified.

        Raises RequestError NOT_FOUND for an unknown id, DATA_LOSS for corrupt data.
        """
        ...

    def latest_checkpoint(self, container_name: str) -> CheckpointInfo | None:
        """The newest checkpoint of any container of this name, or None."""
        ...

    def put_applied_spec(self, applied: AppliedSpec) -> None:
        """Insert or replace the applied spec of ``applied.name``."""
        ...

    def list_applied_specs(self) -> list[AppliedSpec]:
        """Every applied spec, sorted by name."""
        ...

    def delete_applied_spec(self, name: str) -> None:
        """Forget the applied spec of ``name``; no-op if absent."""
        ...

    def delete_checkpoints(self, container_id: str) -> int:
        """Delete the checkpoints this container took (a purge); how many."""
        ...

    def close(self) -> None:
        """Release the store; idempotent."""
        ...


class StoreError(Exception):
    """The store cannot be opened or used (corrupt, unreadable, too new, closed,
    full, read-only, locked).

    ``kind`` says which of the faults an operator can fix it is (FULL,
    READ_ONLY, BUSY, IO), or OTHER: the manager answers each with its own
    status and advice (pycontainer.manager._storewriter)."""

    FULL = "full"
    READ_ONLY = "read-only"
    BUSY = "busy"
    IO = "i/o"
    OTHER = "other"

    def __init__(self, message: str, kind: str = OTHER, *, advice: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        # What the operator can do, when the store knows better than the
        # state directory's advice (a store elsewhere: etcd).
        self.advice = advice


# SQLite's primary result codes (the low byte of an extended one) by what
# they mean to an operator: a disk that is full, a file or directory that
# cannot be written, a lock another process holds, a failing disk.
_FAULT_KINDS = {
    13: StoreError.FULL,  # SQLITE_FULL
    8: StoreError.READ_ONLY,  # SQLITE_READONLY
    3: StoreError.READ_ONLY,  # SQLITE_PERM
    14: StoreError.READ_ONLY,  # SQLITE_CANTOPEN (no file, and none may be made)
    5: StoreError.BUSY,  # SQLITE_BUSY
    6: StoreError.BUSY,  # SQLITE_LOCKED
    10: StoreError.IO,  # SQLITE_IOERR
}


def _fault(message: str, error: sqlite3.Error) -> StoreError:
    """A StoreError of the kind ``error``'s SQLite code says."""
    code = getattr(error, "sqlite_errorcode", None)
    kind = StoreError.OTHER if code is None else _FAULT_KINDS.get(code & 0xFF, StoreError.OTHER)
    return StoreError(message, kind)


SCHEMA_VERSION = 1

# How long a write waits for SQLite's lock that another connection holds
# before it fails BUSY (sqlite3's own default is 5 s): the manager's writer
# retries, and a write the operator waits for answers UNAVAILABLE sooner.
BUSY_TIMEOUT_SECONDS = 1.0

# One statement each: executescript() would commit on its own, and the schema
# must appear all at once or not at all.
_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        spec BLOB NOT NULL,
        labels TEXT NOT NULL,
        priority INTEGER NOT NULL,
        cpu_millis INTEGER NOT NULL,
        memory_bytes INTEGER NOT NULL,
        state INTEGER NOT NULL,
        create_time REAL NOT NULL,
        start_time REAL,
        restarts INTEGER NOT NULL,
        error TEXT NOT NULL,
        exit_code INTEGER,
        last_checkpoint_id TEXT NOT NULL,
        desired INTEGER NOT NULL
    )""",
    # seq is AUTOINCREMENT, never reused, so it orders checkpoints even when
    # create_time ties or the clock steps back. data comes last so that reading
    # the other columns does not read the blob's pages.
    """CREATE TABLE checkpoints (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        container_id TEXT NOT NULL,
        container_name TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        create_time REAL NOT NULL,
        data BLOB NOT NULL
    )""",
    "CREATE INDEX checkpoints_by_name ON checkpoints (container_name, seq)",
)

# Added after version 1 shipped, without a version bump: a store without it
# gets it when opened (IF NOT EXISTS), and older readers ignore the table.
_APPLIED_SPECS = """CREATE TABLE IF NOT EXISTS applied_specs (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    spec BLOB NOT NULL,
    spec_hash TEXT NOT NULL,
    applied_time REAL NOT NULL
)"""
_APPLIED_COLUMNS = "name, owner, spec, spec_hash, applied_time"

# The mesh's routes (SetMeshRoute), added like applied_specs: a store without
# the table gets it when opened, older readers ignore it. weights is a JSON
# object of subset -> weight.
_MESH_ROUTES = """CREATE TABLE IF NOT EXISTS mesh_routes (
    service TEXT PRIMARY KEY,
    weights TEXT NOT NULL,
    set_time REAL NOT NULL
)"""

# The journal (operations and events), added like applied_specs: created when
# the manager opens it (open_journal), ignored by older readers. seq orders
# operations (AUTOINCREMENT: never reused); an event is its serialized proto.
_JOURNAL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS operations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL UNIQUE,
        method TEXT NOT NULL,
        target TEXT NOT NULL,
        actor TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        state INTEGER NOT NULL,
        start_time REAL NOT NULL,
        end_time REAL,
        code INTEGER NOT NULL,
        message TEXT NOT NULL,
        response BLOB NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS events (sequence INTEGER PRIMARY KEY, event BLOB NOT NULL)",
    # Where the next manager's event numbers start after: the highest written
    # (trimming never lowers it), or a running manager's reservation.
    "CREATE TABLE IF NOT EXISTS event_sequence (sequence INTEGER NOT NULL)",
)
_OPERATION_COLUMNS = (
    "request_id, method, target, actor, fingerprint, state, start_time, end_time, code, "
    "message, response"
)

_CONTAINER_COLUMNS = (
    "id, name, spec, labels, priority, cpu_millis, memory_bytes, state, create_time, "
    "start_time, restarts, error, exit_code, last_checkpoint_id, desired, endpoints"
)
_PUT_CONTAINER = (
    f"INSERT OR REPLACE INTO containers ({_CONTAINER_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The containers' last endpoints (ContainerRecord.endpoints), added like
# applied_specs: a store without the column gets it when opened; older
# readers name their columns, so they neither see nor lose it.
_CONTAINER_ENDPOINTS = "ALTER TABLE containers ADD COLUMN endpoints BLOB NOT NULL DEFAULT x''"


def _add_endpoints_column(db: sqlite3.Connection) -> None:
    columns = {r[1] for r in db.execute("PRAGMA table_info(containers)")}
    if "endpoints" not in columns:
        db.execute(_CONTAINER_ENDPOINTS)


_CHECKPOINT_COLUMNS = "id, container_id, container_name, size_bytes, sha256, create_time"


def check_checkpoint_size(container_name: str, size: int, limit: int) -> None:
    """RequestError RESOURCE_EXHAUSTED when a checkpoint of ``size`` bytes is over ``limit``."""
    if size > limit:
        raise resource_exhausted(
            f"checkpoint of {container_name} is {size} bytes ({format_memory(size)}), "
            f"over the limit of {limit} bytes ({format_memory(limit)}; "
            "ManagerSettings.max_checkpoint_bytes, at most "
            f"{format_memory(MAX_CHECKPOINT_BYTES)}, pycontainer.limits.MAX_CHECKPOINT_BYTES)"
        )


def verify_checkpoint(info: CheckpointInfo, data: bytes) -> None:
    """RequestError DATA_LOSS unless ``data`` is what ``info`` says was stored."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != info.sha256 or len(data) != info.size_bytes:
        raise RequestError(
            grpc.StatusCode.DATA_LOSS,
            f"checkpoint {info.id} of {info.container_name} is corrupt: "
            f"{len(data)} bytes with sha256 {actual}, "
            f"stored as {info.size_bytes} bytes with sha256 {info.sha256}",
        )


class SQLiteStore:
    """A :class:`StateStore` in one SQLite file (WAL, synchronous=FULL).

    Safe to call from several threads: one connection, one lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_checkpoint_bytes: int = MAX_CHECKPOINT_BYTES,
        checkpoints_kept: int = CHECKPOINTS_KEPT,
        busy_timeout: float = BUSY_TIMEOUT_SECONDS,
    ) -> None:
        self._path = os.fspath(path)
        self._max_checkpoint_bytes = max_checkpoint_bytes
        self._checkpoints_kept = checkpoints_kept
        self._lock = threading.Lock()
        self._closed = False
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so that each
            # write is exactly one transaction.
            self._db = sqlite3.connect(
                self._path, check_same_thread=False, isolation_level=None, timeout=busy_timeout
            )
        except sqlite3.Error as e:
            raise _fault(f"cannot open state store {self._path}: {e}", e) from e
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        """Set the durability pragmas, then create the schema or check its version."""
        try:
            # The first statement to read the file: a file that is not a
            # database fails here.
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            # FULL: a commit is on disk before it returns, so an acknowledged
            # write survives a power cut, not only a crash.
            self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as e:
            raise _fault(f"cannot open state store {self._path}: {e}", e) from e
        if mode != "wal" and self._path != ":memory:":
            raise StoreError(f"state store {self._path}: cannot use WAL mode (got {mode!r})")
        with self._transaction() as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "schema_version" not in tables:
                if tables - {"sqlite_sequence"}:
                    raise StoreError(f"{self._path} is an SQLite database but not a state store")
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                db.execute(_APPLIED_SPECS)
                db.execute(_MESH_ROUTES)
                _add_endpoints_column(db)
                return
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            if row[0] != SCHEMA_VERSION:
                raise StoreError(
                    f"state store {self._path} has schema version {row[0]}; "
                    f"this pycontainer reads version {SCHEMA_VERSION}"
                )
            db.execute(_APPLIED_SPECS)
            db.execute(_MESH_ROUTES)
            _add_endpoints_column(db)

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One atomic transaction under the lock; SQLite errors become StoreError naming
        the file."""
        with self._lock:
            if self._closed:
                raise StoreError(f"state store {self._path} is closed")
            try:
                # IMMEDIATE takes the write lock up front, so a write never fails
                # half-way for want of it.
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield self._db
                except BaseException:
                    # SQLite itself rolls back on some errors (disk full, I/O).
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                raise _fault(f"state store {self._path}: {e}", e) from e

    def put_container(self, record: ContainerRecord) -> None:
        """Insert or replace the record with ``record.id``."""
        with self._transaction() as db:
            db.execute(_PUT_CONTAINER, _container_row(record))

    def write_containers(self, changes: Mapping[str, ContainerRecord | None]) -> None:
        """Put each record, delete each id mapped to None: one transaction
        (one sync to disk for many changes), all or nothing."""
        with self._transaction() as db:
            for container_id, record in changes.items():
                if record is None:
                    db.execute("DELETE FROM containers WHERE id = ?", (container_id,))
                else:
                    db.execute(_PUT_CONTAINER, _container_row(record))

    def get_container(self, container_id: str) -> ContainerRecord | None:
        """The record with this id, or None."""
        with self._transaction(write=False) as db:
            row = db.execute(
                f"SELECT {_CONTAINER_COLUMNS} FROM containers WHERE id = ?", (container_id,)
            ).fetchone()
        return None if row is None else _container(row)

    def list_containers(self) -> list[ContainerRecord]:
        """Every record, sorted by name then id."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                f"SELECT {_CONTAINER_COLUMNS} FROM containers ORDER BY name, id"
            ).fetchall()
        return [_container(row) for row in rows]

    def delete_container(self, container_id: str) -> None:
        """Forget a record (its checkpoints stay with its name); no-op if absent."""
        with self._transaction() as db:
            db.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def put_checkpoint(self, container_id: str, container_name: str, data: bytes) -> CheckpointInfo:
        """Store a checkpoint, keeping only the newest few per name.

        Raises RequestError RESOURCE_EXHAUSTED when ``data`` is over the size limit.
        """
        size = len(data)
        check_checkpoint_size(container_name, size, self._max_checkpoint_bytes)
        info = CheckpointInfo(
            id=f"ckpt-{uuid.uuid4().hex}",
            container_id=container_id,
            container_name=container_name,
            size_bytes=size,
            sha256=hashlib.sha256(data).hexdigest(),
            create_time=time.time(),
        )
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*_checkpoint_row(info), data),
            )
            # In the same transaction: a crash never leaves more than the kept number.
            db.execute(
                "DELETE FROM checkpoints WHERE container_name = ? AND seq NOT IN "
                "(SELECT seq FROM checkpoints WHERE container_name = ? ORDER BY seq DESC LIMIT ?)",
                (container_name, container_name, self._checkpoints_kept),
            )
        return info

    def get_checkpoint(self, checkpoint_id: str) -> tuple[CheckpointInfo, bytes]:
        """A checkpoint and its data, checksum verified.

        Raises RequestError NOT_FOUND for an unknown id, DATA_LOSS for corrupt data.
        """
        with self._transaction(write=False) as db:
            row = db.execute(
                f"SELECT {_CHECKPOINT_COLUMNS}, data FROM checkpoints WHERE id = ?",
                (checkpoint_id,),
            ).fetchone()
        if row is None:
            raise not_found("checkpoint_id", f"no checkpoint {echo(checkpoint_id)}")
        info, data = _checkpoint(row[:-1]), bytes(row[-1])
        verify_checkpoint(info, data)
        return info, data

    def latest_checkpoint(self, container_name: str) -> CheckpointInfo | None:
        """The newest checkpoint of any container of this name, or None."""
        with self._transaction(write=False) as db:
            row = db.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE container_name = ? "
                "ORDER BY seq DESC LIMIT 1",
                (container_name,),
            ).fetchone()
        return None if row is None else _checkpoint(row)

    def put_applied_spec(self, applied: AppliedSpec) -> None:
        """Insert or replace the applied spec of ``applied.name``."""
        with self._transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO applied_specs ({_APPLIED_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (
                    applied.name,
                    applied.owner,
                    applied.spec,
                    applied.spec_hash,
                    applied.applied_time,
                ),
            )

    def list_applied_specs(self) -> list[AppliedSpec]:
        """Every applied spec, sorted by name."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                f"SELECT {_APPLIED_COLUMNS} FROM applied_specs ORDER BY name"
            ).fetchall()
        return [
            AppliedSpec(name=n, owner=o, spec=bytes(s), spec_hash=h, applied_time=t)
            for n, o, s, h, t in rows
        ]

    def delete_applied_spec(self, name: str) -> None:
        """Forget the applied spec of ``name``; no-op if absent."""
        with self._transaction() as db:
            db.execute("DELETE FROM applied_specs WHERE name = ?", (name,))

    def put_mesh_route(self, service: str, weights: Mapping[str, int]) -> None:
        """Keep the split of ``service``; empty ``weights`` forgets it (MeshRouteStore)."""
        with self._transaction() as db:
            if not weights:
                db.execute("DELETE FROM mesh_routes WHERE service = ?", (service,))
                return
            db.execute(
                "INSERT OR REPLACE INTO mesh_routes (service, weights, set_time) VALUES (?, ?, ?)",
                (service, json.dumps(dict(sorted(weights.items()))), time.time()),
            )

    def list_mesh_routes(self) -> dict[str, dict[str, int]]:
        """Every kept split, by service (MeshRouteStore)."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT service, weights FROM mesh_routes ORDER BY service"
            ).fetchall()
        return {
            service: {subset: int(weight) for subset, weight in json.loads(weights).items()}
            for service, weights in rows
        }

    def delete_checkpoints(self, container_id: str) -> int:
        """Delete the checkpoints this container took (a purge); how many."""
        with self._transaction() as db:
            cursor = db.execute("DELETE FROM checkpoints WHERE container_id = ?", (container_id,))
        return cursor.rowcount

    # -- the journal: operations and events (JournalStore) ------------------------------
    def open_journal(self) -> None:
        """Create the journal's tables if missing."""
        with self._transaction() as db:
            for statement in _JOURNAL_SCHEMA:
                db.execute(statement)

    def write_journal(
        self,
        operations: Sequence[OperationRecord],
        events: Sequence[tuple[int, bytes]],
        *,
        operations_kept: int,
        events_kept: int,
        event_sequence: int | None = None,
    ) -> None:
        """Insert or replace operations (by request_id) and add events (sequence,
        serialized Event) in one transaction, then drop the oldest past the
        bounds; with ``event_sequence``, set last_event_sequence to it."""
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in ("state", "end_time", "code", "message", "response")
        )
        with self._transaction() as db:
            db.executemany(
                f"INSERT INTO operations ({_OPERATION_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT (request_id) DO UPDATE SET {updates}",
                [
                    (
                        o.request_id,
                        o.method,
                        o.target,
                        o.actor,
                        o.fingerprint,
                        o.state,
                        o.start_time,
                        o.end_time,
                        o.code,
                        o.message,
                        o.response,
                    )
                    for o in operations
                ],
            )
            db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?)", events)
            # Set first, then raised to what this batch wrote: a reservation
            # never hides a number written after it was made.
            if event_sequence is not None:
                db.execute("DELETE FROM event_sequence")
                db.execute("INSERT INTO event_sequence VALUES (?)", (event_sequence,))
            if events:
                top = max(sequence for sequence, _ in events)
                db.execute("DELETE FROM event_sequence WHERE sequence < ?", (top,))
                db.execute(
                    "INSERT INTO event_sequence SELECT ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM event_sequence)",
                    (top,),
                )
            # In the same transaction: the bounds hold after a crash too.
            db.execute(
                "DELETE FROM operations WHERE seq <= "
                "(SELECT seq FROM operations ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (operations_kept,),
            )
            db.execute(
                "DELETE FROM events WHERE sequence <= "
                "(SELECT sequence FROM events ORDER BY sequence DESC LIMIT 1 OFFSET ?)",
                (events_kept,),
            )

    def get_operation(self, request_id: str) -> OperationRecord | None:
        """One operation with its response, or None."""
        with self._transaction(write=False) as db:
            row = db.execute(
                f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        return None if row is None else _operation(row)

    def list_operations(self, limit: int) -> list[OperationRecord]:
        """The newest ``limit`` operations, oldest first, without their responses."""
        columns = _OPERATION_COLUMNS.replace("response", "x''")
        with self._transaction(write=False) as db:
            rows = db.execute(
                f"SELECT {columns} FROM (SELECT * FROM operations ORDER BY seq DESC LIMIT ?) "
                "ORDER BY seq",
                (limit,),
            ).fetchall()
        return [_operation(row) for row in rows]

    def recent_events(self, limit: int) -> list[tuple[int, bytes]]:
        """The newest ``limit`` events, oldest first."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT sequence, event FROM "
                "(SELECT * FROM events ORDER BY sequence DESC LIMIT ?) ORDER BY sequence",
                (limit,),
            ).fetchall()
        return [(sequence, bytes(event)) for sequence, event in rows]

    def last_event_sequence(self) -> int:
        """Where the next manager's event numbers start after: the highest
        written, or higher as set (a running manager's reservation); 0 for none."""
        with self._transaction(write=False) as db:
            row = db.execute("SELECT max(sequence) FROM event_sequence").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        """Close the file; idempotent. Later calls raise StoreError."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


def _container(row: tuple[Any, ...]) -> ContainerRecord:
    (id_, name, spec, labels, priority, cpu, memory, state, created, started) = row[:10]
    (restarts, error, exit_code, last_checkpoint_id, desired, endpoints) = row[10:]
    return ContainerRecord(
        id=id_,
        name=name,
        spec=bytes(spec),
        labels=json.loads(labels),
        priority=priority,
        cpu_millis=cpu,
        memory_bytes=memory,
        state=state,
        create_time=created,
        start_time=started,
        restarts=restarts,
        error=error,
        exit_code=exit_code,
        last_checkpoint_id=last_checkpoint_id,
        desired=bool(desired),
        endpoints=bytes(endpoints),
    )


def _container_row(record: ContainerRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.name,
        record.spec,
        json.dumps(record.labels, sort_keys=True),
        record.priority,
        record.cpu_millis,
        record.memory_bytes,
        record.state,
        record.create_time,
        record.start_time,
        record.restarts,
        record.error,
        record.exit_code,
        record.last_checkpoint_id,
        record.desired,
        record.endpoints,
    )


def _checkpoint_row(info: CheckpointInfo) -> tuple[Any, ...]:
    return (
        info.id,
        info.container_id,
        info.container_name,
        info.size_bytes,
        info.sha256,
        info.create_time,
    )


def _checkpoint(row: tuple[Any, ...]) -> CheckpointInfo:
    return CheckpointInfo(*row)


def _operation(row: tuple[Any, ...]) -> OperationRecord:
    (request_id, method, target, actor, fingerprint, state, start, end, code, message) = row[:10]
    return OperationRecord(
        request_id=request_id,
        method=method,
        target=target,
        actor=actor,
        fingerprint=fingerprint,
        state=state,
        start_time=start,
        end_time=end,
        code=code,
        message=message,
        response=bytes(row[10]),
    )
