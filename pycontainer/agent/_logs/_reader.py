"""Serving a :class:`LogBuffer` to StreamLogs: a validated :class:`LogQuery`
and a :class:`LogReader` that sends the retained history and then (when
following) new entries, in batches, to a sync gRPC server
(:meth:`LogReader.iter_responses`) or to grpc.aio (:meth:`LogReader.aiter_responses`).

A follower ends, after sending what was logged until then, when its client
goes or when ``ended()`` turns true (its container stopped); the buffer's
:meth:`LogBuffer.wake_all` wakes it to see so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import cast

from pycontainer._errors import invalid_argument
from pycontainer.v1 import logs_pb2, management_pb2

from .._pattern import Pattern, PatternError, compile_pattern
from ._buffer import BufferedEntry, LogBuffer

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "LogQuery",
    "LogReader",
    "entry_to_proto",
]

DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000
# How long a follow reader lets new entries gather before sending a batch.
_LINGER_S = 0.005
# How often a blocked sync reader wakes to ask whether its client is gone.
_ACTIVE_POLL_S = 0.25
# Entries read from the ring per lock hold while scanning with filters.
_SCAN_CHUNK = 1024
_NS = 1_000_000_000
_KNOWN_SEVERITIES = frozenset(logs_pb2.Severity.values())


def _never() -> bool:
    return False


def entry_to_proto(entry: BufferedEntry) -> logs_pb2.LogEntry:
    """``entry`` as a ``LogEntry`` message."""
    msg = logs_pb2.LogEntry(
        sequence=entry.sequence,
        severity=cast("logs_pb2.Severity.ValueType", entry.severity),
        severity_text=entry.severity_text,
        logger=entry.logger,
        message=entry.message,
    )
    _fill_rest(msg, entry)
    return msg


def _add_entries(response: management_pb2.StreamLogsResponse, entries: list[BufferedEntry]) -> None:
    add = response.entries.add
    for e in entries:
        # Built in place (no copy into the repeated field), scalars as keywords,
        # the rest set after: with upb about twice as fast as time= and
        # attributes= keywords.
        msg = add(
            sequence=e.sequence,
            severity=cast("logs_pb2.Severity.ValueType", e.severity),
            severity_text=e.severity_text,
            logger=e.logger,
            message=e.message,
        )
        _fill_rest(msg, e)


def _fill_rest(msg: logs_pb2.LogEntry, e: BufferedEntry) -> None:
    ts = msg.time
    ts.seconds, ts.nanos = divmod(e.time_ns, _NS)
    if e.trace_id:
        msg.trace_id = e.trace_id
        msg.span_id = e.span_id
    if e.attributes:
        attrs = msg.attributes
        for key, value in e.attributes.items():
            attrs[key] = value


# -- queries ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogQuery:
    """What a StreamLogs caller asked for, validated."""

    tail: int | None = None
    follow: bool = False
    since_ns: int | None = None
    min_severity: int = 0
    contains: str = ""
    pattern: Pattern | None = None
    logger: str = ""
    max_batch_size: int = DEFAULT_BATCH_SIZE

    @classmethod
    def from_request(cls, req: management_pb2.StreamLogsRequest) -> LogQuery:
        """Validate ``req``; raises INVALID_ARGUMENT naming the field at fault."""
        tail: int | None = None
        if req.HasField("tail"):
            if req.tail < 0:
                raise invalid_argument("tail", f"must not be negative, got {req.tail}")
            tail = req.tail
        since_ns: int | None = None
        if req.HasField("since"):
            if not 0 <= req.since.nanos < _NS:
                raise invalid_argument(
                    "since", f"nanos must be from 0 to 999999999, got {req.since.nanos}"
                )
            since_ns = req.since.seconds * _NS + req.since.nanos
        if req.min_severity not in _KNOWN_SEVERITIES:
            raise invalid_argument(
                "min_severity", f"unknown severity {req.min_severity}; use a Severity value"
            )
        pattern: Pattern | None = None
        if req.pattern:
            # Untrusted: RE2 (linear time), never the backtracking re.
            try:
                pattern = compile_pattern(req.pattern)
            except PatternError as exc:
                message = f"not a valid regular expression: {exc}"
                raise invalid_argument("pattern", message) from None
        if req.max_batch_size > MAX_BATCH_SIZE:
            raise invalid_argument(
                "max_batch_size", f"must be at most {MAX_BATCH_SIZE}, got {req.max_batch_size}"
            )
        return cls(
            tail=tail,
            follow=req.follow,
            since_ns=since_ns,
            min_severity=int(req.min_severity),
            contains=req.contains,
            pattern=pattern,
            logger=req.logger,
            max_batch_size=req.max_batch_size or DEFAULT_BATCH_SIZE,
        )

    @property
    def has_filters(self) -> bool:
        """Whether any entry can fail :meth:`matches`."""
        return bool(
            self.min_severity
            or self.since_ns is not None
            or self.contains
            or self.pattern is not None
            or self.logger
        )

    def matches(self, entry: BufferedEntry) -> bool:
        """Whether ``entry`` passes every filter (tail and batching aside)."""
        if entry.severity < self.min_severity:
            return False
        if self.since_ns is not None and entry.time_ns < self.since_ns:
            return False
        if self.logger:
            name, want = entry.logger, self.logger
            # "app" matches "app" and "app.db", not "apple".
            if not name.startswith(want) or (len(name) > len(want) and name[len(want)] != "."):
                return False
        if self.contains and self.contains not in entry.message:
            return False
        return self.pattern is None or self.pattern.search(entry.message) is not None


# -- reading ---------------------------------------------------------------------------


class LogReader:
    """One StreamLogs stream: a cursor into a :class:`LogBuffer`.

    The history it serves is what was retained when it was made; when
    following, it then serves entries as they are logged.
    """

    def __init__(self, buffer: LogBuffer, query: LogQuery) -> None:
        self.buffer = buffer
        self.query = query
        self._batch = max(1, query.max_batch_size)
        self._match = query.matches if query.has_filters else None
        self._end = buffer.last_sequence
        self._cursor = max(1, self._end - buffer.capacity + 1)  # next sequence to read
        self._missed = 0  # lost since the last response sent

    def iter_responses(
        self, is_active: Callable[[], bool], ended: Callable[[], bool] = _never
    ) -> Iterator[management_pb2.StreamLogsResponse]:
        """Batches for a sync server: the history, then (when following) new
        entries until ``is_active()`` (such as ``context.is_active``) turns
        false, checked at least every 0.25 s, or ``ended()`` turns true."""
        yield from self._history()
        if not self.query.follow:
            return
        buf = self.buffer
        while is_active():
            if ended():
                yield from self._rest()
                return
            pending = buf.last_sequence - self._cursor + 1
            if pending <= 0:
                buf.wait(self._cursor, _ACTIVE_POLL_S)
                continue
            if pending < self._batch:
                # Let a batch gather: woken early only when it is full.
                buf.wait(self._cursor + self._batch - 1, _LINGER_S)
            response = self._collect(buf.last_sequence)
            if response is not None:
                yield response

    async def aiter_responses(
        self, ended: Callable[[], bool] = _never
    ) -> AsyncIterator[management_pb2.StreamLogsResponse]:
        """Batches for grpc.aio: the history, then (when following) new entries
        until the call is cancelled or ``ended()`` turns true (then the stream
        ends normally, which lets a server shut down without cancelling it)."""
        for batch in self._history():
            yield batch
        if not self.query.follow:
            return
        buf = self.buffer
        while not ended():
            pending = buf.last_sequence - self._cursor + 1
            if pending <= 0:
                await buf.wait_async(self._cursor)
                continue
            if pending < self._batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_LINGER_S):
                        await buf.wait_async(self._cursor + self._batch - 1)
            response = self._collect(buf.last_sequence)
            if response is not None:
                yield response
        for batch in self._rest():
            yield batch

    def _rest(self) -> Iterator[management_pb2.StreamLogsResponse]:
        """What was logged up to now and not sent yet, in batches."""
        last = self.buffer.last_sequence
        while (response := self._collect(last)) is not None:
            yield response

    def _history(self) -> Iterator[management_pb2.StreamLogsResponse]:
        """The retained entries, in batches; never blocks."""
        if self.query.tail is not None:
            picked = self._tail(self.query.tail)
            for i in range(0, len(picked), self._batch):
                batch = management_pb2.StreamLogsResponse()
                _add_entries(batch, picked[i : i + self._batch])
                self._attach_missed(batch)
                yield batch
            if self._missed:
                batch = management_pb2.StreamLogsResponse()
                self._attach_missed(batch)
                yield batch
            return
        while self._cursor <= self._end:
            response = self._collect(self._end)
            if response is not None:
                yield response

    def _tail(self, n: int) -> list[BufferedEntry]:
        """The newest ``n`` history entries that pass the filters, oldest first."""
        picked: list[BufferedEntry] = []  # newest first
        low, hi = self._cursor, self._end
        match = self._match
        while hi >= low and len(picked) < n:
            need = n - len(picked)
            lo = max(low, hi - (need if match is None else max(need, _SCAN_CHUNK)) + 1)
            chunk, lost, _ = self.buffer.read(lo, hi, hi - lo + 1)
            for e in reversed(chunk):
                if match is None or match(e):
                    picked.append(e)
                    if len(picked) == n:
                        break
            if lost:
                # Overwritten while we scanned: nothing older is left. Count
                # as missed what we would still have sent, at most.
                self._missed += min(lo + lost - low, n - len(picked))
                break
            hi = lo - 1
        picked.reverse()
        self._cursor = self._end + 1
        return picked

    def _collect(self, stop: int) -> management_pb2.StreamLogsResponse | None:
        """One batch of what passes the filters from the cursor up to ``stop``;
        None when there is nothing to send (no entries, nothing missed)."""
        response: management_pb2.StreamLogsResponse | None = None
        count = 0
        match = self._match
        while self._cursor <= stop and count < self._batch:
            want = self._batch - count
            if match is not None:
                want = max(want, _SCAN_CHUNK)
            chunk, lost, self._cursor = self.buffer.read(self._cursor, stop, want)
            self._missed += lost
            if match is not None:
                chunk = [e for e in chunk if match(e)]
                if count + len(chunk) > self._batch:
                    # Read more than fits: put the cursor back after the last one sent.
                    chunk = chunk[: self._batch - count]
                    self._cursor = chunk[-1].sequence + 1
            if chunk:
                if response is None:
                    response = management_pb2.StreamLogsResponse()
                _add_entries(response, chunk)
                count += len(chunk)
        if response is None and self._missed:
            response = management_pb2.StreamLogsResponse()
        if response is not None:
            self._attach_missed(response)
        return response

    def _attach_missed(self, response: management_pb2.StreamLogsResponse) -> None:
        if self._missed:
            response.missed = self._missed
            self._missed = 0
