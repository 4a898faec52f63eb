# ruff: noqa: ASYNC109  # timeout= is a call's gRPC deadline, sent to the member
"""A small grpc.aio client of etcd's v3 API, on the private stubs of
pycontainer._etcdpb.

Every call has a deadline, and a member that does not answer (UNAVAILABLE,
DEADLINE_EXCEEDED) passes the call to the next one: the client goes round the
cluster's members once before it gives up. A lease is kept alive by short
calls (one request and one answer on a LeaseKeepAlive stream opened for it,
under a deadline), never by one long-lived stream: such a stream's write was
seen to hang forever after its etcd member died, losing the lease silently.

The stubs' proto packages are private (pycontainer.etcd.*), so their service
names are not etcd's: the method paths etcd serves are spelled here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from ..._etcdpb import kv_pb2, rpc_pb2, v3election_pb2

_log = logging.getLogger("pycontainer.manager.etcd")

M = TypeVar("M", bound=Message)

#: How long one call to one member may take unless told otherwise.
DEFAULT_CALL_TIMEOUT = datetime.timedelta(seconds=5)
# Largest answer taken (a range of many records); etcd's own requests are
# at most --max-request-bytes (1.5 MiB by default).
MAX_RECEIVE_BYTES = 64 << 20
# Keys asked for per Range call when listing a prefix.
RANGE_PAGE = 1000

# The codes a member that cannot serve answers with (no leader, stopping,
# unreachable, too slow): the next member may.
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# How soon a failed keepalive is tried again (a refused one comes back at
# once while raft elects a leader; a timed-out one has used its interval).
_KEEPALIVE_RETRY = datetime.timedelta(milliseconds=100)

# etcd's method paths: their packages are etcd's, not the stubs' private ones.
_KV = "/etcdserverpb.KV/"
_LEASE = "/etcdserverpb.Lease/"
_MAINTENANCE = "/etcdserverpb.Maintenance/"
_ELECTION = "/v3electionpb.Election/"

Compare = rpc_pb2.Compare
RequestOp = rpc_pb2.RequestOp
KeyValue = kv_pb2.KeyValue


class EtcdError(Exception):
    """An etcd call failed: ``code`` is its gRPC status (the last member's,
    when every member was tried)."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


# -- compares and operations of a transaction ------------------------------------------
def create_revision_is(key: bytes, revision: int) -> Compare:
    """The key's create revision equals ``revision`` (0: the key does not exist)."""
    return Compare(
        key=key,
        target=Compare.CompareTarget.CREATE,
        result=Compare.CompareResult.EQUAL,
        create_revision=revision,
    )


def mod_revision_is(key: bytes, revision: int) -> Compare:
    """The key was last written at ``revision`` (0: the key does not exist)."""
    return Compare(
        key=key,
        target=Compare.CompareTarget.MOD,
        result=Compare.CompareResult.EQUAL,
        mod_revision=revision,
    )


def value_is(key: bytes, value: bytes) -> Compare:
    """The key holds ``value``."""
    return Compare(
        key=key,
        target=Compare.CompareTarget.VALUE,
        result=Compare.CompareResult.EQUAL,
        value=value,
    )


def put_op(key: bytes, value: bytes, lease: int = 0) -> RequestOp:
    return RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))


def delete_op(key: bytes, *, prefix: bool = False) -> RequestOp:
    """Delete ``key``, or every key starting with it."""
    end = prefix_end(key) if prefix else b""
    return RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key, range_end=end))


def delete_range_op(key: bytes, range_end: bytes) -> RequestOp:
    """Delete every key from ``key`` up to (not including) ``range_end``."""
    return RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end))


def get_op(key: bytes) -> RequestOp:
    return RequestOp(request_range=rpc_pb2.RangeRequest(key=key))


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    # The store's revision after the transaction.
    revision: int
    responses: Sequence[rpc_pb2.ResponseOp]


class EtcdClient:
    """etcd's KV, lease, election and maintenance calls over grpc.aio, on the
    members given (``host:port``), failing over from one to the next.

    Use it on one event loop; ``close()`` when done."""

    def __init__(
        self,
        members: Sequence[str],
        *,
        call_timeout: datetime.timedelta = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        if not members:
            raise ValueError("an etcd client needs at least one member")
        self.members = list(members)
        self.call_timeout = call_timeout
        self._channels: dict[str, grpc.aio.Channel] = {}
        # The member calls go to first; moves on when it fails.
        self._current = 0

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(None)

    def _channel(self, member: str) -> grpc.aio.Channel:
        channel = self._channels.get(member)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                member,
                options=[
                    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                    # Reconnect soon after a member comes back.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
            self._channels[member] = channel
        return channel

    def _order(self) -> list[str]:
        """The members, starting with the current one."""
        n = len(self.members)
        return [self.members[(self._current + i) % n] for i in range(n)]

    def _failed(self, member: str) -> None:
        """Calls go to the member after ``member`` from now on."""
        if self.members[self._current] == member:
            self._current = (self._current + 1) % len(self.members)

    async def _unary(
        self,
        path: str,
        request: Message,
        response_type: type[M],
        timeout: datetime.timedelta | None = None,
    ) -> M:
        """One unary call, to each member in turn until one answers."""
        seconds = (timeout or self.call_timeout).total_seconds()
        last: grpc.aio.AioRpcError | None = None
        tried: list[str] = []
        for member in self._order():
            call = self._channel(member).unary_unary(
                path,
                request_serializer=_serialize,
                response_deserializer=response_type.FromString,
            )
            try:
                response: M = await call(request, timeout=seconds)
                return response
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in FAILOVER_CODES:
                    raise _error(path, member, exc) from None
                _log.debug("etcd %s at %s: %s; trying the next member", path, member, exc.code())
                last = exc
                tried.append(member)
                self._failed(member)
        assert last is not None
        raise EtcdError(
            f"etcd {_method(path)}: no member answered (tried {', '.join(tried)}, "
            f"{seconds:g} s each): {last.code().name}: {last.details()}",
            last.code(),
        )

    # -- KV -------------------------------------------------------------------------
    async def get(self, key: bytes, *, revision: int = 0) -> KeyValue | None:
        """The key's value and revisions, or None."""
        response = await self._unary(
            _KV + "Range", rpc_pb2.RangeRequest(key=key, revision=revision), rpc_pb2.RangeResponse
        )
        return response.kvs[0] if response.kvs else None

    async def range_prefix(
        self, prefix: bytes, *, keys_only: bool = False, revision: int = 0
    ) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix``, sorted by key, and the revision
        read at: paged, all pages read at the first page's revision."""
        end = prefix_end(prefix)
        found: list[KeyValue] = []
        start = prefix
        while True:
            response = await self._unary(
                _KV + "Range",
                rpc_pb2.RangeRequest(
                    key=start,
                    range_end=end,
                    limit=RANGE_PAGE,
                    revision=revision,
                    keys_only=keys_only,
                ),
                rpc_pb2.RangeResponse,
            )
            revision = revision or response.header.revision
            found.extend(response.kvs)
            if not response.more or not response.kvs:
                return found, revision
            start = response.kvs[-1].key + b"\0"

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write the key; the store's revision after it."""
        response = await self._unary(
            _KV + "Put", rpc_pb2.PutRequest(key=key, value=value, lease=lease), rpc_pb2.PutResponse
        )
        return response.header.revision

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        """Delete the key (or every key starting with it); how many were deleted."""
        end = prefix_end(key) if prefix else b""
        response = await self._unary(
            _KV + "DeleteRange",
            rpc_pb2.DeleteRangeRequest(key=key, range_end=end),
            rpc_pb2.DeleteRangeResponse,
        )
        return response.deleted

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[RequestOp],
        failure: Sequence[RequestOp] = (),
        *,
        timeout: datetime.timedelta | None = None,
    ) -> TxnResult:
        """If every compare holds, the success operations, else the failure
        ones: atomically. A call passed on to another member after a deadline
        may have been applied by the first: write transactions that are safe
        to repeat."""
        response = await self._unary(
            _KV + "Txn",
            rpc_pb2.TxnRequest(compare=compares, success=success, failure=failure),
            rpc_pb2.TxnResponse,
            timeout,
        )
        return TxnResult(response.succeeded, response.header.revision, list(response.responses))

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Forget the history before ``revision`` (physical: wait until the
        space is freed)."""
        await self._unary(
            _KV + "Compact",
            rpc_pb2.CompactionRequest(revision=revision, physical=physical),
            rpc_pb2.CompactionResponse,
        )

    # -- leases -----------------------------------------------------------------------
    async def grant(self, ttl: datetime.timedelta) -> tuple[int, int]:
        """A new lease: its id and the TTL etcd granted, in whole seconds."""
        seconds = max(1, round(ttl.total_seconds()))
        response = await self._unary(
            _LEASE + "LeaseGrant",
            rpc_pb2.LeaseGrantRequest(TTL=seconds),
            rpc_pb2.LeaseGrantResponse,
        )
        if response.error:
            raise EtcdError(f"etcd LeaseGrant: {response.error}", grpc.StatusCode.UNKNOWN)
        return response.ID, response.TTL

    async def keepalive_once(self, lease: int, timeout: datetime.timedelta | None = None) -> int:
        """Renew the lease once: the TTL left after it, in seconds (0: the
        lease is gone, expired or revoked). One request and one answer on a
        stream opened for them, under the deadline, then closed."""
        loop = asyncio.get_running_loop()
        end = loop.time() + (timeout or self.call_timeout).total_seconds()
        last: grpc.aio.AioRpcError | None = None
        members = self._order()
        for i, member in enumerate(members):
            # The deadline is the whole renewal's: each member tried gets its
            # share of what is left.
            seconds = (end - loop.time()) / (len(members) - i)
            if seconds <= 0:
                break
            stream = self._channel(member).stream_stream(
                _LEASE + "LeaseKeepAlive",
                request_serializer=_serialize,
                response_deserializer=rpc_pb2.LeaseKeepAliveResponse.FromString,
            )
            call = stream(iter([rpc_pb2.LeaseKeepAliveRequest(ID=lease)]), timeout=seconds)
            try:
                # The whole exchange under one local deadline too: the call's
                # own deadline is the server's and grpc-core's to enforce.
                async with asyncio.timeout(seconds):
                    async for response in call:
                        return int(response.TTL)
                return 0
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in FAILOVER_CODES:
                    raise _error("LeaseKeepAlive", member, exc) from None
                last = exc
                self._failed(member)
            except TimeoutError:
                last = None
                self._failed(member)
            finally:
                call.cancel()
        detail = f"{last.code().name}: {last.details()}" if last else "no answer in time"
        raise EtcdError(
            f"etcd LeaseKeepAlive of lease {lease:x}: no member answered ({detail})",
            grpc.StatusCode.UNAVAILABLE,
        )

    async def time_to_live(self, lease: int) -> int:
        """The lease's TTL left, in seconds (-1: no such lease)."""
        response = await self._unary(
            _LEASE + "LeaseTimeToLive",
            rpc_pb2.LeaseTimeToLiveRequest(ID=lease),
            rpc_pb2.LeaseTimeToLiveResponse,
        )
        return int(response.TTL)

    async def revoke(self, lease: int) -> None:
        """End the lease now: its keys go with it. An unknown lease is not an error."""
        try:
            await self._unary(
                _LEASE + "LeaseRevoke",
                rpc_pb2.LeaseRevokeRequest(ID=lease),
                rpc_pb2.LeaseRevokeResponse,
            )
        except EtcdError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise

    # -- election ---------------------------------------------------------------------
    async def campaign(
        self, name: bytes, lease: int, value: bytes, timeout: datetime.timedelta
    ) -> v3election_pb2.LeaderKey:
        """Wait, at most ``timeout``, to lead the election ``name`` on the
        lease; the leader key (its create revision orders the leaders: an epoch)."""
        response = await self._unary(
            _ELECTION + "Campaign",
            v3election_pb2.CampaignRequest(name=name, lease=lease, value=value),
            v3election_pb2.CampaignResponse,
            timeout,
        )
        return response.leader

    async def proclaim(self, leader: v3election_pb2.LeaderKey, value: bytes) -> None:
        """Post a new value as the leader (FAILED_PRECONDITION if no longer it)."""
        await self._unary(
            _ELECTION + "Proclaim",
            v3election_pb2.ProclaimRequest(leader=leader, value=value),
            v3election_pb2.ProclaimResponse,
        )

    async def leader(self, name: bytes) -> KeyValue | None:
        """The election's current leader's key and value, or None."""
        try:
            response = await self._unary(
                _ELECTION + "Leader",
                v3election_pb2.LeaderRequest(name=name),
                v3election_pb2.LeaderResponse,
            )
        except EtcdError as exc:
            # etcd answers "election: no leader" with UNKNOWN.
            if "no leader" in str(exc):
                return None
            raise
        return response.kv if response.HasField("kv") else None

    async def resign(self, leader: v3election_pb2.LeaderKey) -> None:
        """Give up leading (the next candidate becomes the leader)."""
        await self._unary(
            _ELECTION + "Resign",
            v3election_pb2.ResignRequest(leader=leader),
            v3election_pb2.ResignResponse,
        )

    async def observe(self, name: bytes, timeout: datetime.timedelta) -> AsyncIterator[KeyValue]:
        """The election's leaders as they change, for at most ``timeout``
        (then DEADLINE_EXCEEDED ends it), from the current member."""
        member = self._order()[0]
        stream = self._channel(member).unary_stream(
            _ELECTION + "Observe",
            request_serializer=_serialize,
            response_deserializer=v3election_pb2.LeaderResponse.FromString,
        )
        call = stream(v3election_pb2.LeaderRequest(name=name), timeout=timeout.total_seconds())
        try:
            async for response in call:
                yield response.kv
        except grpc.aio.AioRpcError as exc:
            raise _error("Observe", member, exc) from None
        finally:
            call.cancel()

    # -- maintenance ------------------------------------------------------------------
    async def status(
        self, member: str, timeout: datetime.timedelta | None = None
    ) -> rpc_pb2.StatusResponse:
        """One member's status (no failover: it is that member's)."""
        call = self._channel(member).unary_unary(
            _MAINTENANCE + "Status",
            request_serializer=_serialize,
            response_deserializer=rpc_pb2.StatusResponse.FromString,
        )
        seconds = (timeout or self.call_timeout).total_seconds()
        try:
            response: rpc_pb2.StatusResponse = await call(rpc_pb2.StatusRequest(), timeout=seconds)
        except grpc.aio.AioRpcError as exc:
            raise _error("Status", member, exc) from None
        return response


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _method(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _error(path: str, member: str, exc: grpc.aio.AioRpcError) -> EtcdError:
    return EtcdError(
        f"etcd {_method(path)} at {member}: {exc.code().name}: {exc.details()}", exc.code()
    )


class LeaseKeeper:
    """Keeps a lease alive by a short keepalive call every third of its TTL,
    and knows when it may have lost it: ``deadline`` is the monotonic time of
    the last acknowledged keepalive (sent at) plus the TTL it granted. Past
    it the lease may be gone even if etcd has not said so: a holder acting on
    it stops then, by itself (``lost`` is set)."""

    def __init__(
        self,
        client: EtcdClient,
        lease: int,
        ttl_seconds: int,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.lease = lease
        self.ttl_seconds = ttl_seconds
        self._clock = clock or asyncio.get_running_loop().time
        self.deadline = self._clock() + ttl_seconds
        self.lost = asyncio.Event()
        # Keepalives acknowledged (a test's and an operator's figure).
        self.renewals = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and self._clock() < self.deadline

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, *, revoke: bool = False) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if revoke:
            await self.client.revoke(self.lease)
        self.lost.set()

    async def _run(self) -> None:
        interval = self.ttl_seconds / 3
        while True:
            sent = self._clock()
            # Never wait past the local deadline for an answer.
            left = self.deadline - sent
            if left <= 0:
                break
            try:
                ttl = await self.client.keepalive_once(
                    self.lease, timeout=datetime.timedelta(seconds=min(left, interval))
                )
            except EtcdError as exc:
                _log.warning("lease %x: keepalive failed: %s", self.lease, exc)
                ttl = -1
            if ttl == 0:
                _log.warning("lease %x is gone (expired or revoked)", self.lease)
                break
            if ttl > 0:
                self.deadline = sent + ttl
                self.renewals += 1
                await asyncio.sleep(max(0.0, sent + interval - self._clock()))
            else:
                # A refusal comes at once while raft elects ("no leader"):
                # try again soon, not a whole interval later, so the renewal
                # lands as soon as the new raft leader takes it.
                await asyncio.sleep(min(interval, _KEEPALIVE_RETRY.total_seconds()))
        self.lost.set()
