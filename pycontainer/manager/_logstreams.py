"""Manager.StreamLogs: the logs of one or several containers, from wherever
they are.

Each container's part comes from one source: its Management API while it is
connected and advertises one (what the app logged, as it logged it), else
what the manager retained of its stdout and stderr (_logstore: also after
its process has exited, and ``previous`` for the run before its last
restart). Which source, and whether there is one, is settled for every
container before anything is sent, so a container without one fails the
call at once (FAILED_PRECONDITION) instead of leaving it hanging.

The history (``tail`` per container) of every container is merged by time
and sent first; when following, new entries are sent as they come, and a
container that stops ends its part with a LogStreamEnd in the response
("container stopped (exit status 0)") while the others go on.

What a followed container's Management server sends is passed through as it
came, bytes and all: Management.StreamLogsResponse and ManagerStreamLogsResponse
share their first two fields (entries, missed), so the manager appends its
container_id field (once per response, not per entry) and decodes nothing
once the entries are past its history. One container followed is one
upstream call, history and all.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from .._errors import RequestError, failed_precondition
from ..agent._logs import BufferedEntry, LogQuery, entry_to_proto
from ..v1 import container_pb2, logs_pb2, management_pb2, management_pb2_grpc, manager_pb2
from ._logstore import LogStore, Tail
from ._registry import Entry
from ._upstream import cancelling, fan_in, responses

if TYPE_CHECKING:
    from ._manager import Manager

# How often a followed retained log is read for what was appended.
POLL_SECONDS = 0.2
# How long a stream that ended is given to be explained by its container's
# state (the Management server goes before the manager hears of the stop).
_SETTLE_SECONDS = 3.0
# A followed stream's wait for its container's end has no deadline.
_FOREVER = 10 * 365 * 86400.0
# How long a container's Management server is given to send its log
# history (a ring of entries over loopback: well under a second). A merged
# stream sends nothing before every part's history is in, so one server that
# accepts the call and does not answer would silence the whole stream until
# the caller's own deadline; past this it fails UNAVAILABLE naming it.
_HISTORY_SECONDS = 10.0
# Entries per response.
_BATCH = 500
_STREAM_LOGS = "/pycontainer.v1.Management/StreamLogs"
#: How an end says that the container's stream was cut short: a follower that
#: was behind when its server went has not had the entries it held then.
CUT = "its log stream was cut before it ended (entries after the last shown may be missing)"

#: What Manager.StreamLogs sends: a response, or one already serialized.
Response = manager_pb2.ManagerStreamLogsResponse | bytes
_Queue = asyncio.Queue[Response | RequestError | None]

_NS = 1_000_000_000


def upstream_request(f: manager_pb2.StreamLogsFilter) -> management_pb2.StreamLogsRequest:
    """The filter as Management.StreamLogs takes it."""
    request = management_pb2.StreamLogsRequest(
        follow=f.follow,
        min_severity=f.min_severity,
        contains=f.contains,
        pattern=f.pattern,
        logger=f.logger,
    )
    if f.HasField("since"):
        request.since.CopyFrom(f.since)
    if f.HasField("tail"):
        request.tail = f.tail
    return request


def end_message(entry: Entry) -> str:
    """Why a container's part ended, such as "container stopped (exit status 0)"."""
    if entry.state == container_pb2.LIFECYCLE_STATE_STOPPED:
        text = "container stopped"
    elif entry.exit_code is not None:
        text = "container exited"
    elif entry.state == container_pb2.LIFECYCLE_STATE_FAILED:
        text = "container failed" + (f": {entry.error}" if entry.error else "")
    else:
        text = "container ended"
    if entry.exit_code is not None:
        text += f" (exit status {entry.exit_code})"
    return text


def _gone(entry: Entry) -> bool:
    """Whether a container has ended (so its followed part ends too)."""
    return entry.terminal or entry.exit_code is not None


def _sequence_ok(after: int) -> Callable[[logs_pb2.LogEntry], bool]:
    return lambda e: e.sequence > after


@dataclass
class _Part:
    """One container's part of the stream."""

    entry: Entry
    retained: bool
    history: list[logs_pb2.LogEntry] = field(default_factory=list)
    tail: Tail | None = None

    def end(self, *, cut: bool = False) -> manager_pb2.ManagerStreamLogsResponse:
        """The end of this part; ``cut`` when its stream did not end by itself
        (its server went, or would not finish): its last entries may be missing."""
        message = end_message(self.entry)
        if cut:
            message += f"; {CUT}"
        return manager_pb2.ManagerStreamLogsResponse(
            ended=[
                manager_pb2.LogStreamEnd(
                    container_id=self.entry.id, container_name=self.entry.name, message=message
                )
            ]
        )


class LogStreams:
    """Serves Manager.StreamLogs for a manager."""

    def __init__(self, manager: Manager, store: LogStore) -> None:
        self._m = manager
        self._store = store

    def _source(self, entry: Entry, previous: bool) -> _Part:
        """Where a container's part comes from; FAILED_PRECONDITION when nowhere."""
        retained = self._store.has_run(entry.id, previous)
        if previous:
            if not retained:
                raise failed_precondition(
                    f"container {entry.id} has no previous run retained: it has not been "
                    "restarted since it was launched (or its logs were purged)"
                )
            return _Part(entry, retained=True)
        if entry.connected and entry.management_address():
            return _Part(entry, retained=False)
        if retained:
            return _Part(entry, retained=True)
        if entry.connected:
            raise failed_precondition(
                f"container {entry.id} advertises no Management endpoint and the manager "
                "retained no output of it: add a management endpoint to the app "
                "(container.add_endpoint(..., kind='management')) to read its logs"
            )
        raise failed_precondition(
            f"container {entry.id} is not connected and the manager retained no logs of "
            "it (only what the manager launched is retained)"
        )

    async def stream(
        self, request: manager_pb2.ManagerStreamLogsRequest
    ) -> AsyncIterator[Response]:
        f = request.filter
        query = LogQuery.from_request(upstream_request(f))  # INVALID_ARGUMENT first
        if request.containers:
            parts = [self._source(self._m.resolve(n), f.previous) for n in request.containers]
        else:
            # A selector: every container the manager lists (ended ones too,
            # as kubectl's completed pods) that has logs to read.
            parts = []
            for e in self._m.select(request.label_selector, []):
                with contextlib.suppress(RequestError):
                    parts.append(self._source(e, f.previous))
        if not parts:
            return
        started_ns = _now_ns()
        if f.follow and not f.previous and len(parts) == 1 and not parts[0].retained:
            # One live container: its own stream, history and all, passed through.
            async for response in self._follow(parts, query, f, started_ns, whole=True):
                yield response
            return
        outcomes = await asyncio.gather(
            *(self._history(p, query, f) for p in parts), return_exceptions=True
        )
        for outcome in outcomes:  # every one awaited; the first failure fails the call
            if isinstance(outcome, BaseException):
                raise outcome
        merged = list(heapq.merge(*(p.history for p in parts), key=_time_key))
        for start in range(0, len(merged), _BATCH):
            yield manager_pb2.ManagerStreamLogsResponse(entries=merged[start : start + _BATCH])
        if not f.follow:
            return
        if f.previous:
            # A previous run is over: nothing follows it.
            return
        async for response in self._follow(parts, query, f, started_ns):
            yield response

    # -- history ---------------------------------------------------------------------
    async def _history(self, part: _Part, query: LogQuery, f: manager_pb2.StreamLogsFilter) -> None:
        if part.retained:
            if not f.previous and _gone(part.entry):
                # Its process has exited: give the relay its last lines.
                await self._store.wait_ended(part.entry.id, _SETTLE_SECONDS)
            entries, part.tail = await asyncio.to_thread(
                self._store.read, part.entry.id, f.previous
            )
            part.history = _select(entries, query, part.entry.id)
            return
        upstream = upstream_request(f)
        upstream.follow = False
        async with _management(self._m.trust.container_channel, part.entry) as stub:
            try:
                # Read to its end; cancelled (its caller gone), without
                # leaking the pending read (grpc/grpc#43360, _upstream).
                async for response in responses(
                    stub.StreamLogs(upstream, timeout=_HISTORY_SECONDS)
                ):
                    for log in response.entries:
                        log.container_id = part.entry.id
                    part.history.extend(response.entries)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    # Its server took the call and did not answer in time:
                    # not the caller's deadline, so not its code.
                    raise RequestError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"{part.entry.id}: its Management server did not send its log "
                        f"history within {_HISTORY_SECONDS:g} s",
                    ) from None
                error = RequestError(exc.code(), f"{part.entry.id}: {exc.details()}")
            else:
                return
        # Its server is gone: a container on its way out (the manager has not
        # heard yet) is read from what was retained, if anything was.
        if (
            error.code == grpc.StatusCode.UNAVAILABLE
            and self._store.has_run(part.entry.id)
            and await self._m.wait_for(part.entry, _gone, _SETTLE_SECONDS)
        ):
            part.retained, part.history = True, []
            await self._history(part, query, f)
            return
        raise error

    # -- following -------------------------------------------------------------------
    async def _follow(
        self,
        parts: list[_Part],
        query: LogQuery,
        f: manager_pb2.StreamLogsFilter,
        started_ns: int,
        *,
        whole: bool = False,
    ) -> AsyncIterator[Response]:
        """New entries of every part as they come; with ``whole`` (one live
        container), its history too, from the same upstream call."""
        queue: _Queue = asyncio.Queue(maxsize=64)

        async def pump(part: _Part) -> None:
            try:
                if not part.retained:
                    await self._follow_management(part, f, started_ns, queue, whole=whole)
                if part.retained:  # (also a live one whose server went before it spoke)
                    await self._follow_retained(part, query, f, queue, history=whole)
            except RequestError as exc:
                await queue.put(exc)
            finally:
                if not cancelling():  # else the consumer is gone: a full queue would block
                    await queue.put(None)

        tasks = [asyncio.ensure_future(pump(p)) for p in parts]
        try:
            async for item in fan_in(queue, len(tasks)):
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow_retained(
        self,
        part: _Part,
        query: LogQuery,
        f: manager_pb2.StreamLogsFilter,
        queue: _Queue,
        *,
        history: bool = False,
    ) -> None:
        if history:  # not read yet: sent first
            await self._history(part, query, f)
            for start in range(0, len(part.history), _BATCH):
                await queue.put(
                    manager_pb2.ManagerStreamLogsResponse(
                        entries=part.history[start : start + _BATCH]
                    )
                )
        assert part.tail is not None
        entry = part.entry
        ended = _gone(entry)
        while True:
            entries = await asyncio.to_thread(part.tail.read)
            if entries:
                chosen = _select(entries, query, entry.id, tail=False)
                for start in range(0, len(chosen), _BATCH):
                    await queue.put(
                        manager_pb2.ManagerStreamLogsResponse(
                            entries=chosen[start : start + _BATCH]
                        )
                    )
            if ended:
                # One more read after the end: the relay's last lines.
                await queue.put(part.end())
                return
            await self._m.wait_for(entry, _gone, POLL_SECONDS)
            if _gone(entry):
                ended = True
                await self._store.wait_ended(entry.id, _SETTLE_SECONDS)

    async def _follow_management(
        self,
        part: _Part,
        f: manager_pb2.StreamLogsFilter,
        started_ns: int,
        queue: _Queue,
        *,
        whole: bool = False,
    ) -> None:
        """Forward what the container's Management server sends. After a
        history read apart, from its last entry on (``whole``: the history
        too, in the same call). Ends with the container's end, or with
        ``part.retained`` set when its server went before it sent anything and
        its output was retained (the caller reads that instead)."""
        entry = part.entry
        upstream = upstream_request(f)
        after = 0  # entries up to this sequence were sent in the history
        if not whole:
            upstream.ClearField("tail")
            # From the last entry of the history on (or from when it was asked
            # for), dropping what the history already had.
            last = part.history[-1] if part.history else None
            since_ns = _time_ns(last) if last is not None else started_ns
            if f.HasField("since"):
                since_ns = max(since_ns, f.since.seconds * _NS + f.since.nanos)
            upstream.since.FromNanoseconds(since_ns)
            after = last.sequence if last is not None else 0
        relay = _Relay(entry.id, after)

        async def forward() -> None:
            async with _channel(self._m.trust.container_channel, entry) as channel:
                # Bytes in, bytes out: no entry is decoded past the history.
                stream_logs = channel.unary_stream(
                    _STREAM_LOGS,
                    request_serializer=management_pb2.StreamLogsRequest.SerializeToString,
                    response_deserializer=None,
                )
                call: grpc.aio.UnaryStreamCall[Any, bytes] = stream_logs(upstream)
                try:
                    # Cancelled (its caller gone), it ends the call without
                    # leaking the pending read (grpc/grpc#43360, _upstream).
                    async for raw in responses(call):
                        response = relay.forward(raw)
                        if response is not None:
                            relay.waiting = True  # on the reader: not a silence
                            await queue.put(response)
                            relay.waiting = False
                finally:
                    call.cancel()  # no read in flight here: ends it cleanly

        streaming = asyncio.ensure_future(forward())
        stopping = asyncio.ensure_future(self._m.wait_for(entry, _gone, _FOREVER))
        try:
            await asyncio.wait({streaming, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                # Its last words, while its server is still there.
                await _last_words(streaming, relay)
            else:
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                    streaming.result()
                error = streaming.exception() if not streaming.cancelled() else None
                gone = await self._m.wait_for(entry, _gone, _SETTLE_SECONDS)
                if (
                    whole
                    and gone
                    and not relay.forwarded
                    and isinstance(error, grpc.aio.AioRpcError)
                    and error.code() == grpc.StatusCode.UNAVAILABLE
                    and self._store.has_run(entry.id)
                ):
                    # Its server went before it spoke (a container on its way
                    # out): what was retained of it instead.
                    part.retained = True
                    return
                if not gone:
                    if isinstance(error, grpc.aio.AioRpcError):
                        raise RequestError(error.code(), f"{entry.id}: {error.details()}")
                    raise RequestError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"{entry.id}: its Management stream ended while it is "
                        f"{container_pb2.LifecycleState.Name(entry.state)}",
                    )
        finally:
            # Ended by itself (the server sent all and closed it), or cut.
            complete = (
                streaming.done() and not streaming.cancelled() and streaming.exception() is None
            )
            for task in (streaming, stopping):
                task.cancel()
            await asyncio.gather(streaming, stopping, return_exceptions=True)
        await queue.put(part.end(cut=not complete))


async def _last_words(streaming: asyncio.Future[None], relay: _Relay) -> None:
    """Wait for a gone container's stream to end by itself while it keeps
    sending (or the reader keeps it waiting): a follower that was behind gets
    what the container's ring held (its sidecar waits for its readers, for at
    most its grace period). Silent for POLL_SECONDS * 2, it is cut."""
    heard = -1
    while heard != relay.received or relay.waiting:
        heard = relay.received
        done, _ = await asyncio.wait({streaming}, timeout=POLL_SECONDS * 2)
        if done:
            return


class _Relay:
    """Turns a container's Management.StreamLogsResponse bytes into what
    Manager.StreamLogs sends: the same bytes with the container's id appended
    as the response's container_id (fields 1 and 2 are the same in both
    messages; a field appended to an encoding is a field of the message).
    Responses that may hold entries the history had (sequence up to
    ``after``) are decoded and those entries dropped, until one starts past
    it: every later one does too (sequences only grow)."""

    def __init__(self, container_id: str, after: int) -> None:
        self.container_id = container_id
        self.forwarded = False
        # Responses received, and whether one waits for the reader to take it.
        self.received = 0
        self.waiting = False
        self._after = after
        self._suffix = manager_pb2.ManagerStreamLogsResponse(
            container_id=container_id
        ).SerializeToString()

    def forward(self, raw: bytes) -> bytes | None:
        """What to send for ``raw``; None for nothing."""
        self.forwarded = True
        self.received += 1
        if self._after:
            response = management_pb2.StreamLogsResponse.FromString(raw)
            entries = response.entries
            if entries and entries[0].sequence > self._after:
                self._after = 0  # past the history: bytes through from here
            else:
                fresh = [e for e in entries if e.sequence > self._after]
                if fresh:
                    self._after = 0
                if not fresh and not response.missed:
                    return None
                return manager_pb2.ManagerStreamLogsResponse(
                    entries=fresh, missed=response.missed, container_id=self.container_id
                ).SerializeToString()
        return raw + self._suffix


@contextlib.asynccontextmanager
async def _channel(
    dial: Callable[[Entry], grpc.aio.Channel], entry: Entry
) -> AsyncIterator[grpc.aio.Channel]:
    channel = dial(entry)
    try:
        yield channel
    finally:
        with contextlib.suppress(Exception):
            await channel.close(None)


@contextlib.asynccontextmanager
async def _management(
    dial: Callable[[Entry], grpc.aio.Channel], entry: Entry
) -> AsyncIterator[management_pb2_grpc.ManagementAsyncStub]:
    async with _channel(dial, entry) as channel:
        stub: management_pb2_grpc.ManagementAsyncStub = management_pb2_grpc.ManagementStub(channel)
        yield stub


def serialize_response(response: Response) -> bytes:
    """Manager.StreamLogs' response serializer: bytes pass as they are."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def _select(
    entries: list[BufferedEntry], query: LogQuery, container_id: str, *, tail: bool = True
) -> list[logs_pb2.LogEntry]:
    """The entries that pass the query's filters (its tail too, unless not)."""
    chosen = [e for e in entries if query.matches(e)] if query.has_filters else entries
    if tail and query.tail is not None:
        chosen = chosen[len(chosen) - query.tail :] if query.tail else []
    out = []
    for e in chosen:
        proto = entry_to_proto(e)
        proto.container_id = container_id
        out.append(proto)
    return out


def _time_ns(entry: logs_pb2.LogEntry) -> int:
    return entry.time.seconds * _NS + entry.time.nanos


def _time_key(entry: logs_pb2.LogEntry) -> tuple[int, int]:
    return (_time_ns(entry), entry.sequence)


def _now_ns() -> int:
    return time.time_ns()


__all__ = [
    "CUT",
    "POLL_SECONDS",
    "LogStreams",
    "Response",
    "end_message",
    "serialize_response",
    "upstream_request",
]
