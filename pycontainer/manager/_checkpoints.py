"""Checkpoints: a container's state taken through its session and kept in the
state store, and handed back to it (or to its replacements) on restore."""

from __future__ import annotations

import grpc

from .._errors import RequestError, echo, failed_precondition
from ..units import timestamp_to_proto
from ..v1 import lifecycle_pb2, manager_pb2
from ._registry import Entry, Registry
from ._sessions import Sessions
from ._store import CheckpointInfo
from ._storewriter import StoreWriter

E = manager_pb2


class Checkpoints:
    """Store and restore container state (the store's calls awaited off the
    loop, _storewriter: a full disk answers RESOURCE_EXHAUSTED, not a hang)."""

    def __init__(self, registry: Registry, sessions: Sessions, writer: StoreWriter) -> None:
        self._registry = registry
        self._sessions = sessions
        self._writer = writer
        self._store = writer.store

    async def take(self, entry: Entry) -> manager_pb2.CheckpointContainerResponse:
        result = await self._sessions.command(
            entry, "checkpoint", lifecycle_pb2.CheckpointCommand()
        )
        return await self.keep(entry, result.checkpoint)

    async def keep(self, entry: Entry, data: bytes) -> manager_pb2.CheckpointContainerResponse:
        """Store a checkpoint the container gave (asked for, or with a stop)."""
        info = await self._writer.call(
            f"checkpoint of {entry.id} not stored",
            self._store.put_checkpoint,
            entry.id,
            entry.name,
            data,
        )
        entry.last_checkpoint_id = info.id
        self._registry.persist(entry)
        self._registry.event(
            E.EVENT_TYPE_CHECKPOINTED, entry, f"checkpoint {info.id} ({info.size_bytes} bytes)"
        )
        return manager_pb2.CheckpointContainerResponse(
            checkpoint_id=info.id,
            size_bytes=info.size_bytes,
            sha256=info.sha256,
            create_time=timestamp_to_proto(info.create_time),
        )

    async def latest(self, name: str) -> bytes | None:
        """The newest state stored for containers called ``name``."""

        def read() -> bytes | None:
            info = self._store.latest_checkpoint(name)
            return None if info is None else self._store.get_checkpoint(info.id)[1]

        return await self._writer.call(f"checkpoint of {name} not read", read, write=False)

    async def restore(self, entry: Entry, checkpoint_id: str) -> Entry:
        """Hand a stored checkpoint (the newest of its name when no id) to a container."""
        if not checkpoint_id:
            latest = await self._writer.call(
                f"checkpoint of {entry.name} not read",
                self._store.latest_checkpoint,
                entry.name,
                write=False,
            )
            if latest is None:
                raise failed_precondition(f"no checkpoint stored for {entry.name!r}")
            checkpoint_id = latest.id
        info, data = await self._writer.call(
            f"checkpoint {echo(checkpoint_id)} not read",
            self._store.get_checkpoint,
            checkpoint_id,
            write=False,
        )
        _check_owner(entry, info)
        await self._sessions.command(
            entry, "restore", lifecycle_pb2.RestoreCommand(state=data, checkpoint_id=checkpoint_id)
        )
        return entry


def _check_owner(entry: Entry, info: CheckpointInfo) -> None:
    """A container restores only its own state or its name's: checkpoint ids are
    public (GetContainer shows them), so without this rule any container could be
    handed another's bytes. Its name's covers the replicas it replaces (restarts,
    apply's rolling replacement), which take over their predecessors' state."""
    if info.container_id == entry.id or info.container_name == entry.name:
        return
    raise RequestError(
        grpc.StatusCode.PERMISSION_DENIED,
        f"checkpoint_id: checkpoint {echo(info.id)} belongs to {echo(info.container_name)}, "
        f"not to {echo(entry.name)}: a container restores only from checkpoints taken "
        "by itself or by a container of the same name",
        "checkpoint_id",
    )
