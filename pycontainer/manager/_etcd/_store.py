"""The manager's state store on etcd (``--state etcd://host:2379,...``).

A :class:`StateStore` and :class:`JournalStore` on etcd keys under a prefix
(``/pycontainer/`` by default), so that several managers (a leader and its
standbys) share one durable state that survives the loss of any machine.

The protocol is synchronous (the manager's StoreWriter and Journal call it
from threads of their own) while the client is grpc.aio: the store runs its
own client on an event loop in a thread of its own (LoopThread), and each
call waits for its coroutine there, under a bound. Chosen over a second,
synchronous client so that failover, deadlines and the keepalive discipline
live in one client (the leader election to come uses the same), and over the
manager's own loop because a sync call made on that loop (Manager.__init__
reads the journal) would wait on itself forever. The hop between threads
costs tens of microseconds against milliseconds for etcd's commit.

Keys (ids and names percent-encoded, so that a ``/`` in them cannot
reach another's keys)::

    PREFIX schema                          b"1"
    PREFIX containers/ID                   JSON ContainerRecord
    PREFIX applied/NAME                    JSON AppliedSpec
    PREFIX checkpoints/manifest/ID         JSON CheckpointInfo and its chunk count
    PREFIX checkpoints/names/NAME/ID       b"" (create revision orders a name's)
    PREFIX checkpoints/data/ID/NNNNNN      the data, in chunks of CHUNK_BYTES
    PREFIX checkpoints/pending/ID          b"" on a lease while chunks are written
    PREFIX journal/operations/REQUEST_ID   JSON OperationRecord (create revision orders)
    PREFIX journal/events/SEQUENCE         serialized Event (zero-padded: key order)
    PREFIX journal/event-sequence          decimal
    PREFIX mesh/routes/SERVICE             JSON {subset: weight} (SetMeshRoute)
    PREFIX tokens                          the bootstrap token document (JSON)

etcd takes at most --max-request-bytes (1.5 MiB by default) per request and
--max-txn-ops (128) operations per transaction, so a checkpoint is written
in chunks well under the first, and a batch of many records in transactions
of at most TXN_OPS: each record's write is its latest state, so a batch
applied in part and retried whole (the StoreWriter retries) converges.
etcd keeps old revisions until compaction, and a database past its quota
turns read-only: run etcd with --auto-compaction-retention (README).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import hashlib
import json
import random
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import grpc

from ..._errors import echo, not_found
from ...limits import MAX_CHECKPOINT_BYTES
from ...security import SecurityError
from ...security._tokens import decode_records, encode_records
from .._store import (
    CHECKPOINTS_KEPT,
    AppliedSpec,
    CheckpointInfo,
    ContainerRecord,
    OperationRecord,
    StoreError,
    check_checkpoint_size,
    verify_checkpoint,
)
from ._client import (
    DEFAULT_CALL_TIMEOUT,
    Compare,
    EtcdClient,
    EtcdError,
    KeyValue,
    RequestOp,
    create_revision_is,
    delete_op,
    delete_range_op,
    mod_revision_is,
    prefix_end,
    put_op,
)
from ._endpoints import parse_etcd_url
from ._loopthread import LoopStopped, LoopThread

T = TypeVar("T")

#: Where the store's keys live unless told otherwise.
DEFAULT_PREFIX = "/pycontainer/"
SCHEMA_VERSION = b"1"
#: A checkpoint's data is written in chunks of this size, well under etcd's
#: default request limit of 1.5 MiB (--max-request-bytes).
CHUNK_BYTES = 512 * 1024
#: Most operations in one transaction (etcd's --max-txn-ops is 128 by default).
TXN_OPS = 100
#: Most bytes of values in one transaction, under the request limit.
TXN_BYTES = 1024 * 1024
#: How long the chunks of a checkpoint being written are protected from the
#: sweep of orphans (a writer that died leaves its chunks behind): their
#: pending marker lives on a lease this long.
PENDING_TTL = datetime.timedelta(seconds=120)
#: The StoreError kind of a write refused by the store's fence.
FENCED = "fenced"
# Tries of a checkpoint's final transaction when another writer changed its
# name's checkpoints in between.
_CHECKPOINT_TRIES = 10


class EtcdStore:
    """The state store on an etcd cluster; safe to call from any thread."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_checkpoint_bytes: int = MAX_CHECKPOINT_BYTES,
        checkpoints_kept: int = CHECKPOINTS_KEPT,
        call_timeout: datetime.timedelta = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        """Connect to the cluster of ``url`` (``etcd://host:port,...``;
        ValueError BadEtcdUrl if malformed) and check what is under ``prefix``;
        StoreError when no member answers or the keys are another version's."""
        self.url = url
        self.members = parse_etcd_url(url)
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError(f"etcd key prefix {prefix!r} must start and end with '/'")
        self._p = prefix.encode()
        self._max_checkpoint_bytes = max_checkpoint_bytes
        self._checkpoints_kept = checkpoints_kept
        self._call_timeout = call_timeout
        # A call waits for every member to be tried, and then some.
        self._wait = call_timeout.total_seconds() * (len(self.members) + 1) + 1.0
        self._lock = threading.Lock()
        # One token transaction at a time in this process (read, change, write).
        self._tokens_lock = threading.Lock()
        self._closed = False
        #: Compares every write must pass, in the same transaction: a leader
        #: sets the create revision of its election key here (its epoch,
        #: ``create_revision_is(key, revision)``), so that once deposed none
        #: of its writes lands; a write they fail raises StoreError FENCED
        #: and writes nothing. Empty: every write goes.
        self.fence: tuple[Compare, ...] = ()
        # Operations in the journal, as far as this store knows (None: not counted yet).
        self._operations: int | None = None
        self._loop = LoopThread(f"etcd-store {url}")
        try:
            self._client = self._run(self._connect(call_timeout))
            self._open()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"EtcdStore({self.url!r}, prefix={self._p.decode()!r})"

    async def _connect(self, call_timeout: datetime.timedelta) -> EtcdClient:
        # Made on the store's loop: a grpc.aio channel (and an asyncio.Lock)
        # belongs to the loop it is made on.
        self._checkpoint_turns = asyncio.Lock()
        return EtcdClient(self.members, call_timeout=call_timeout)

    def _run(self, coroutine: Coroutine[Any, Any, T], calls: int = 1) -> T:
        """Run on the store's loop, allowing for ``calls`` calls each of which
        may try every member; etcd's failures become StoreError."""
        if self._closed:
            coroutine.close()
            raise StoreError(f"state store {self.url} is closed")
        wait = self._wait * calls
        try:
            return self._loop.run(coroutine, wait)
        except EtcdError as exc:
            raise _fault(self.url, exc) from exc
        except LoopStopped:
            raise StoreError(f"state store {self.url} is closed") from None
        except TimeoutError:
            raise StoreError(
                f"state store {self.url}: no answer within {wait:g} s",
                StoreError.OTHER,
                advice=f"the etcd cluster {self.url} does not answer: check its members "
                "(etcdctl endpoint health)",
            ) from None

    async def _write(self, ops: Sequence[RequestOp]) -> None:
        """Apply ``ops`` in one transaction, if the fence holds."""
        if not (await self._client.txn(self.fence, ops)).succeeded:
            raise self._fenced()

    async def _check_fence(self) -> None:
        if self.fence and not (await self._client.txn(self.fence, [])).succeeded:
            raise self._fenced()

    def _fenced(self) -> StoreError:
        return StoreError(
            f"state store {self.url}: write refused: the fence no longer holds "
            "(this manager is no longer the leader whose epoch it carries)",
            FENCED,
            advice="this manager is no longer the leader: send writes to the leader",
        )

    def _key(self, *parts: str) -> bytes:
        return self._p + "/".join(quote(part, safe="") for part in parts).encode()

    def _open(self) -> None:
        """Mark the prefix as a store of this version, or check that it is one;
        sweep the chunks a writer that died left behind."""
        key = self._p + b"schema"
        created = self._run(
            self._client.txn([create_revision_is(key, 0)], [put_op(key, SCHEMA_VERSION)])
        )
        if not created.succeeded:
            kv = self._run(self._client.get(key))
            found = kv.value if kv is not None else b""
            if found != SCHEMA_VERSION:
                raise StoreError(
                    f"state store {self.url} (prefix {self._p.decode()!r}) has schema version "
                    f"{found.decode(errors='replace')!r}; this pycontainer reads version "
                    f"{SCHEMA_VERSION.decode()}"
                )
        self._run(self._sweep())

    async def _sweep(self) -> None:
        data = self._key("checkpoints", "data") + b"/"
        chunks, _ = await self._client.range_prefix(data, keys_only=True)
        ids = {kv.key[len(data) :].split(b"/", 1)[0] for kv in chunks}
        for raw in ids:
            checkpoint_id = raw.decode()
            manifest = await self._client.get(self._key("checkpoints", "manifest", checkpoint_id))
            pending = await self._client.get(self._key("checkpoints", "pending", checkpoint_id))
            if manifest is None and pending is None:
                await self._write([delete_op(data + raw + b"/", prefix=True)])

    # -- container records ------------------------------------------------------------
    def put_container(self, record: ContainerRecord) -> None:
        """Insert or replace the record with ``record.id``."""
        self._run(self._write([put_op(self._key("containers", record.id), _encode(record))]))

    def write_containers(self, changes: Mapping[str, ContainerRecord | None]) -> None:
        """Put each record and delete each id mapped to None, in transactions of
        at most TXN_OPS (see the module's note on etcd's limits)."""
        ops = [
            delete_op(self._key("containers", container_id))
            if record is None
            else put_op(self._key("containers", container_id), _encode(record))
            for container_id, record in changes.items()
        ]
        for batch in _batches(ops):
            self._run(self._write(batch))

    def get_container(self, container_id: str) -> ContainerRecord | None:
        kv = self._run(self._client.get(self._key("containers", container_id)))
        return None if kv is None else _decode(ContainerRecord, kv.value)

    def list_containers(self) -> list[ContainerRecord]:
        """Every record, sorted by name then id."""
        kvs, _ = self._run(self._client.range_prefix(self._key("containers") + b"/"))
        records = [_decode(ContainerRecord, kv.value) for kv in kvs]
        return sorted(records, key=lambda r: (r.name, r.id))

    def delete_container(self, container_id: str) -> None:
        self._run(self._write([delete_op(self._key("containers", container_id))]))

    # -- applied specs ----------------------------------------------------------------
    def put_applied_spec(self, applied: AppliedSpec) -> None:
        self._run(self._write([put_op(self._key("applied", applied.name), _encode(applied))]))

    def list_applied_specs(self) -> list[AppliedSpec]:
        kvs, _ = self._run(self._client.range_prefix(self._key("applied") + b"/"))
        return sorted((_decode(AppliedSpec, kv.value) for kv in kvs), key=lambda a: a.name)

    def delete_applied_spec(self, name: str) -> None:
        self._run(self._write([delete_op(self._key("applied", name))]))

    # -- checkpoints ------------------------------------------------------------------
    def put_checkpoint(self, container_id: str, container_name: str, data: bytes) -> CheckpointInfo:
        """Store a checkpoint in chunks, keeping only the newest few per name.

        The chunks but the last are written first, under a pending marker on a
        lease (the sweep of a later open leaves them alone while it lives);
        the last chunk, the manifest and the name's index entry then go in one
        transaction that also drops the name's oldest checkpoints, and that
        fails if the name's checkpoints changed since they were read (another
        writer: read and try again). A checkpoint is there whole or not at all.

        Raises RequestError RESOURCE_EXHAUSTED when ``data`` is over the size limit.
        """
        check_checkpoint_size(container_name, len(data), self._max_checkpoint_bytes)
        info = CheckpointInfo(
            id=f"ckpt-{uuid.uuid4().hex}",
            container_id=container_id,
            container_name=container_name,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            create_time=time.time(),
        )
        # A call per chunk, and a few around them.
        calls = len(data) // CHUNK_BYTES + 4
        try:
            self._run(self._put_checkpoint(info, data), calls)
        except BaseException:
            # What was written of it goes (best effort: else the next open's sweep).
            with contextlib.suppress(StoreError):
                self._run(self._drop_chunks(info.id))
            raise
        return info

    async def _put_checkpoint(self, info: CheckpointInfo, data: bytes) -> None:
        chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
        pending = self._key("checkpoints", "pending", info.id)
        lease = 0
        if len(chunks) > 1:
            lease, _ = await self._client.grant(PENDING_TTL)
            await self._write([put_op(pending, b"", lease)])
            for i, chunk in enumerate(chunks[:-1]):
                await self._write([put_op(self._chunk_key(info.id, i), chunk)])
        last = [put_op(self._chunk_key(info.id, len(chunks) - 1), chunks[-1])] if chunks else []
        manifest = json.dumps({**dataclasses.asdict(info), "chunks": len(chunks)}).encode()
        names = self._key("checkpoints", "names", info.container_name) + b"/"
        # This store's writers take turns (on its loop); other processes'
        # are caught by the compare, and tried again after a pause.
        async with self._checkpoint_turns:
            await self._commit_checkpoint(info, names, pending, lease, last, manifest)

    async def _commit_checkpoint(
        self,
        info: CheckpointInfo,
        names: bytes,
        pending: bytes,
        lease: int,
        last: list[RequestOp],
        manifest: bytes,
    ) -> None:
        for attempt in range(_CHECKPOINT_TRIES):
            if attempt:
                await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
            index, revision = await self._client.range_prefix(names, keys_only=True)
            index.sort(key=lambda kv: kv.create_revision)
            dropped = [kv.key[len(names) :].decode() for kv in index]
            dropped = dropped[: max(0, len(dropped) - (self._checkpoints_kept - 1))]
            compares = [
                # No checkpoint of the name was added since it was read.
                Compare(
                    key=names,
                    range_end=prefix_end(names),
                    target=Compare.CompareTarget.MOD,
                    result=Compare.CompareResult.LESS,
                    mod_revision=revision + 1,
                )
            ]
            if lease:
                # The chunks written before are still protected, so still there.
                compares.append(
                    Compare(
                        key=pending,
                        target=Compare.CompareTarget.CREATE,
                        result=Compare.CompareResult.NOT_EQUAL,
                        create_revision=0,
                    )
                )
            ops = [
                *last,
                put_op(self._key("checkpoints", "manifest", info.id), manifest),
                put_op(names + quote(info.id, safe="").encode(), b""),
                delete_op(pending),
            ]
            for old in dropped:
                ops.extend(self._checkpoint_deletes(info.container_name, old))
            result = await self._client.txn([*self.fence, *compares], ops[:TXN_OPS])
            if result.succeeded:
                # The rare rest of a long backlog of old ones (checkpoints_kept
                # lowered): each delete is safe on its own.
                for batch in _batches(ops[TXN_OPS:]):
                    await self._write(batch)
                if lease:
                    await self._client.revoke(lease)
                return
            await self._check_fence()
            if lease and await self._client.get(pending) is None:
                raise StoreError(
                    f"state store {self.url}: checkpoint {info.id} of {info.container_name} took "
                    f"longer than {PENDING_TTL} to write; try again",
                    StoreError.OTHER,
                )
        raise StoreError(
            f"state store {self.url}: checkpoints of {info.container_name} kept changing "
            f"while {info.id} was written ({_CHECKPOINT_TRIES} tries); try again",
            StoreError.BUSY,
        )

    def _chunk_key(self, checkpoint_id: str, index: int) -> bytes:
        return self._key("checkpoints", "data", checkpoint_id) + b"/%06d" % index

    def _checkpoint_deletes(self, container_name: str, checkpoint_id: str) -> list[RequestOp]:
        return [
            delete_op(self._key("checkpoints", "manifest", checkpoint_id)),
            delete_op(self._key("checkpoints", "names", container_name, checkpoint_id)),
            delete_op(self._key("checkpoints", "data", checkpoint_id) + b"/", prefix=True),
        ]

    async def _drop_chunks(self, checkpoint_id: str) -> None:
        if await self._client.get(self._key("checkpoints", "manifest", checkpoint_id)) is None:
            await self._write(
                [
                    delete_op(self._key("checkpoints", "data", checkpoint_id) + b"/", prefix=True),
                    delete_op(self._key("checkpoints", "pending", checkpoint_id)),
                ]
            )

    def get_checkpoint(self, checkpoint_id: str) -> tuple[CheckpointInfo, bytes]:
        """A checkpoint and its data, checksum verified.

        Raises RequestError NOT_FOUND for an unknown id, DATA_LOSS for corrupt data.
        """
        found = self._run(
            self._get_checkpoint(checkpoint_id), self._max_checkpoint_bytes // CHUNK_BYTES + 3
        )
        if found is None:
            raise not_found("checkpoint_id", f"no checkpoint {echo(checkpoint_id)}")
        info, data = found
        verify_checkpoint(info, data)
        return info, data

    async def _get_checkpoint(self, checkpoint_id: str) -> tuple[CheckpointInfo, bytes] | None:
        kv = await self._client.get(self._key("checkpoints", "manifest", checkpoint_id))
        if kv is None:
            return None
        info, count = _manifest(kv)
        parts: list[bytes] = []
        # Chunk by chunk: each answer stays small (a chunk), whatever the size.
        for i in range(count):
            chunk = await self._client.get(self._chunk_key(checkpoint_id, i))
            if chunk is None:
                if await self._client.get(kv.key) is None:
                    return None  # dropped for retention while it was read
                break  # verify_checkpoint reports the loss
            parts.append(chunk.value)
        return info, b"".join(parts)

    def latest_checkpoint(self, container_name: str) -> CheckpointInfo | None:
        return self._run(self._latest_checkpoint(container_name))

    async def _latest_checkpoint(self, container_name: str) -> CheckpointInfo | None:
        names = self._key("checkpoints", "names", container_name) + b"/"
        for _ in range(_CHECKPOINT_TRIES):
            index, _revision = await self._client.range_prefix(names, keys_only=True)
            if not index:
                return None
            newest = max(index, key=lambda kv: kv.create_revision)
            checkpoint_id = newest.key[len(names) :].decode()
            kv = await self._client.get(self._key("checkpoints", "manifest", checkpoint_id))
            if kv is not None:
                return _manifest(kv)[0]
        return None

    def delete_checkpoints(self, container_id: str) -> int:
        """Delete the checkpoints this container took (a purge); how many."""
        return self._run(self._delete_checkpoints(container_id))

    async def _delete_checkpoints(self, container_id: str) -> int:
        manifests, _ = await self._client.range_prefix(self._key("checkpoints", "manifest") + b"/")
        infos = [_manifest(kv)[0] for kv in manifests]
        mine = [info for info in infos if info.container_id == container_id]
        ops = [op for i in mine for op in self._checkpoint_deletes(i.container_name, i.id)]
        for batch in _batches(ops):
            await self._write(batch)
        return len(mine)

    # -- the journal (JournalStore) ---------------------------------------------------
    def open_journal(self) -> None:
        """Nothing to create: keys need no schema."""

    def write_journal(
        self,
        operations: Sequence[OperationRecord],
        events: Sequence[tuple[int, bytes]],
        *,
        operations_kept: int,
        events_kept: int,
        event_sequence: int | None = None,
    ) -> None:
        """Insert or replace operations (by request_id) and add events, then
        drop the oldest past the bounds; with ``event_sequence``, set
        last_event_sequence to it. In transactions of at most TXN_OPS (each
        write its item's latest state); the events' bound counts sequence
        numbers (a reservation's gap keeps fewer), the operations' may be
        passed by a tenth before the oldest go (they are counted by a read)."""
        self._run(
            self._write_journal(operations, events, operations_kept, events_kept, event_sequence)
        )

    async def _write_journal(
        self,
        operations: Sequence[OperationRecord],
        events: Sequence[tuple[int, bytes]],
        operations_kept: int,
        events_kept: int,
        event_sequence: int | None,
    ) -> None:
        ops_prefix = self._key("journal", "operations") + b"/"
        events_prefix = self._key("journal", "events") + b"/"
        sequence_key = self._key("journal", "event-sequence")
        ops: list[RequestOp] = []
        for record in operations:
            ops.append(
                put_op(ops_prefix + quote(record.request_id, safe="").encode(), _encode(record))
            )
        ops.extend(put_op(events_prefix + b"%020d" % s, data) for s, data in events)
        top = max((s for s, _ in events), default=None)
        if event_sequence is not None or top is not None:
            current = event_sequence
            if current is None:
                kv = await self._client.get(sequence_key)
                current = int(kv.value) if kv is not None else 0
            if top is not None:
                current = max(current, top)
            ops.append(put_op(sequence_key, str(current).encode()))
        for batch in _batches(ops):
            await self._write(batch)
        # Events past the bound: every sequence number up to top - events_kept.
        if top is not None and top > events_kept:
            end = events_prefix + b"%020d" % (top - events_kept + 1)
            await self._write([delete_range_op(events_prefix, end)])
        if operations:
            await self._trim_operations(ops_prefix, operations_kept, len(operations))

    async def _trim_operations(self, ops_prefix: bytes, kept: int, written: int) -> None:
        if self._operations is not None:
            self._operations += written  # at most: some replaced their own
            if self._operations <= kept + kept // 10:
                return
        keys, _ = await self._client.range_prefix(ops_prefix, keys_only=True)
        keys.sort(key=lambda kv: kv.create_revision)
        excess = keys[: max(0, len(keys) - kept)]
        for batch in _batches([delete_op(kv.key) for kv in excess]):
            await self._write(batch)
        self._operations = len(keys) - len(excess)

    def get_operation(self, request_id: str) -> OperationRecord | None:
        key = self._key("journal", "operations", request_id)
        kv = self._run(self._client.get(key))
        return None if kv is None else _decode(OperationRecord, kv.value)

    def list_operations(self, limit: int) -> list[OperationRecord]:
        """The newest ``limit`` operations, oldest first, without their responses."""
        kvs, _ = self._run(self._client.range_prefix(self._key("journal", "operations") + b"/"))
        kvs.sort(key=lambda kv: kv.create_revision)
        newest = kvs[max(0, len(kvs) - limit) :] if limit > 0 else []
        return [
            dataclasses.replace(_decode(OperationRecord, kv.value), response=b"") for kv in newest
        ]

    def recent_events(self, limit: int) -> list[tuple[int, bytes]]:
        """The newest ``limit`` events, oldest first."""
        prefix = self._key("journal", "events") + b"/"
        kvs, _ = self._run(self._client.range_prefix(prefix))
        newest = kvs[max(0, len(kvs) - limit) :] if limit > 0 else []
        return [(int(kv.key[len(prefix) :]), kv.value) for kv in newest]

    def last_event_sequence(self) -> int:
        kv = self._run(self._client.get(self._key("journal", "event-sequence")))
        return int(kv.value) if kv is not None else 0

    # -- mesh routes (MeshRouteStore) ---------------------------------------------------
    def put_mesh_route(self, service: str, weights: Mapping[str, int]) -> None:
        """Keep the split of ``service``; empty ``weights`` forgets it."""
        key = self._key("mesh", "routes", service)
        if not weights:
            self._run(self._write([delete_op(key)]))
            return
        value = json.dumps(dict(sorted(weights.items()))).encode()
        self._run(self._write([put_op(key, value)]))

    def list_mesh_routes(self) -> dict[str, dict[str, int]]:
        """Every kept split, by service."""
        prefix = self._key("mesh", "routes") + b"/"
        kvs, _ = self._run(self._client.range_prefix(prefix))
        return {
            unquote(kv.key[len(prefix) :].decode()): {
                subset: int(weight) for subset, weight in json.loads(kv.value).items()
            }
            for kv in sorted(kvs, key=lambda kv: kv.key)
        }

    # -- bootstrap tokens (TokenRecordStore) --------------------------------------------
    def token_records(self) -> EtcdTokenRecords:
        """The bootstrap tokens' records in this store, for a TokenStore."""
        return EtcdTokenRecords(self)

    @contextlib.contextmanager
    def _token_transaction(self) -> Iterator[dict[str, dict[str, Any]]]:
        key = self._p + b"tokens"
        where = f"{self.url} key {key.decode()}"
        with self._tokens_lock:
            try:
                kv = self._run(self._client.get(key))
            except StoreError as exc:
                raise SecurityError(f"cannot read the token store: {exc}") from None
            records = decode_records(kv.value, where) if kv is not None else {}
            before = json.dumps(records, sort_keys=True)
            yield records
            if json.dumps(records, sort_keys=True) == before:
                return
            # Written only if nobody wrote it since it was read (another
            # manager, deposed or not, would have), and under the fence.
            unchanged = mod_revision_is(key, kv.mod_revision if kv is not None else 0)
            try:
                self._run(self._write_if(unchanged, [put_op(key, encode_records(records))]))
            except StoreError as exc:
                raise SecurityError(f"cannot write the token store: {exc}") from None

    async def _write_if(self, compare: Compare, ops: Sequence[RequestOp]) -> None:
        if not (await self._client.txn((*self.fence, compare), ops)).succeeded:
            await self._check_fence()  # the fence, if that is what failed
            raise StoreError(
                f"state store {self.url}: another writer changed the key meanwhile",
                StoreError.OTHER,
                advice="try again",
            )

    def close(self) -> None:
        """Close the client and its loop; idempotent. Later calls raise StoreError."""
        with self._lock:
            if self._closed:
                return
            client = getattr(self, "_client", None)
            if client is not None:
                with contextlib.suppress(TimeoutError, EtcdError):
                    self._loop.run(client.close(), self._wait)
            self._closed = True
            self._loop.stop()


def _fault(url: str, exc: EtcdError) -> StoreError:
    """A StoreError of the kind etcd's failure is: FULL for a database past
    its quota (etcd then takes no writes until compacted, defragmented and
    its alarm disarmed), OTHER for the rest (unreachable, no leader)."""
    if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        advice = (
            f"the etcd cluster {url} is out of space: compact and defragment it, then "
            "`etcdctl alarm disarm` (and run it with --auto-compaction-retention)"
        )
        return StoreError(f"state store {url}: {exc}; {advice}", StoreError.FULL, advice=advice)
    return StoreError(
        f"state store {url}: {exc}",
        StoreError.OTHER,
        advice=f"the etcd cluster {url} fails: check its members (etcdctl endpoint health)",
    )


def _batches(ops: Sequence[RequestOp]) -> list[list[RequestOp]]:
    """``ops`` in transactions of at most TXN_OPS operations and about TXN_BYTES."""
    batches: list[list[RequestOp]] = []
    current: list[RequestOp] = []
    size = 0
    for op in ops:
        op_size = op.ByteSize()
        if current and (len(current) >= TXN_OPS or size + op_size > TXN_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(op)
        size += op_size
    if current:
        batches.append(current)
    return batches


# -- records as JSON -----------------------------------------------------------------
def _encode(record: Any) -> bytes:
    """A record dataclass as JSON, its bytes fields in base64."""
    fields = dataclasses.asdict(record)
    for name, value in fields.items():
        if isinstance(value, bytes):
            fields[name] = base64.b64encode(value).decode()
    return json.dumps(fields, sort_keys=True).encode()


R = TypeVar("R")


def _decode(cls: type[R], data: bytes) -> R:
    fields = json.loads(data)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.type == "bytes" and f.name in fields:
            fields[f.name] = base64.b64decode(fields[f.name])
    return cls(**fields)


def _manifest(kv: KeyValue) -> tuple[CheckpointInfo, int]:
    fields = json.loads(kv.value)
    count = int(fields.pop("chunks"))
    return CheckpointInfo(**fields), count


class EtcdTokenRecords:
    """A TokenRecords in an EtcdStore: the whole document in one key, its
    writes compared on the revision read (TokenRecords)."""

    def __init__(self, store: EtcdStore) -> None:
        self._store = store

    def transaction(self) -> contextlib.AbstractContextManager[dict[str, dict[str, Any]]]:
        return self._store._token_transaction()


__all__ = ["CHUNK_BYTES", "DEFAULT_PREFIX", "FENCED", "EtcdStore", "EtcdTokenRecords"]
