"""Serving a :class:`LogBuffer` to StreamLogs: a validated :class:`LogQuery`
and a :class:`LogReader` that sends the retained history and then (when
following) new entries, in batches, to a sync gRPC server
(:meth:`LogReader.iter_frames`) or to grpc.aio (:meth:`LogReader.aiter_frames`).

A batch is sent as a frame: the encoded ``StreamLogsResponse``, joined from
the entries' kept bytes (:mod:`._wire`), written to the wire as it is by
:func:`write_frame` (the servicer's response serializer). Nothing is built
per entry per reader, so K readers cost little more than one.

A follower ends, after sending what was logged until then, when its client
goes or when ``ended()`` turns true (its container stopped); the buffer's
:meth:`LogBuffer.wake_all` wakes it to see so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Protocol, cast

from pycontainer._errors import invalid_argument
from pycontainer.v1 import logs_pb2, management_pb2

from .._pattern import Pattern, PatternError, compile_pattern, searcher
from ._buffer import BufferedEntry, LogBuffer, RetainedEntry
from ._wire import missed_field

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "LogFields",
    "LogQuery",
    "LogReader",
    "entry_to_proto",
    "write_frame",
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
_element = attrgetter("element")


class LogFields(Protocol):
    """The fields of an entry that filters read (a :class:`BufferedEntry`
    and a :class:`RetainedEntry` both have them)."""

    @property
    def time_ns(self) -> int: ...
    @property
    def severity(self) -> int: ...
    @property
    def logger(self) -> str: ...
    @property
    def message(self) -> str: ...


def write_frame(frame: bytes) -> bytes:
    """The response serializer of StreamLogs: a frame is already the
    encoded ``StreamLogsResponse``."""
    return frame


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
    # pattern.search for filters, made once (see _pattern.searcher).
    _found: Callable[[str], bool] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_found", searcher(self.pattern))

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

    def matches(self, entry: LogFields) -> bool:
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
        return self._found is None or self._found(entry.message)

    def select(self, entries: list[RetainedEntry]) -> list[RetainedEntry]:
        """The entries that pass every filter, in order."""
        found = self._found
        if found is not None and not (
            self.min_severity or self.since_ns is not None or self.logger or self.contains
        ):
            return [e for e in entries if found(e.message)]
        matches = self.matches
        return [e for e in entries if matches(e)]


# -- reading ---------------------------------------------------------------------------


class LogReader:
    """One StreamLogs stream: a cursor into a :class:`LogBuffer`.

    The history it serves is what was retained when it was made; when
    following, it then serves entries as they are logged. It yields frames
    (encoded ``StreamLogsResponse`` messages, see :func:`write_frame`);
    :meth:`iter_responses` and :meth:`aiter_responses` decode them, for
    callers that want messages.
    """

    def __init__(self, buffer: LogBuffer, query: LogQuery) -> None:
        self.buffer = buffer
        self.query = query
        self._batch = max(1, query.max_batch_size)
        self._select = query.select if query.has_filters else None
        self._end = buffer.last_sequence
        self._cursor = max(1, self._end - buffer.capacity + 1)  # next sequence to read
        self._missed = 0  # lost since the last response sent

    def iter_responses(
        self, is_active: Callable[[], bool], ended: Callable[[], bool] = _never
    ) -> Iterator[management_pb2.StreamLogsResponse]:
        """:meth:`iter_frames`, decoded."""
        decode = management_pb2.StreamLogsResponse.FromString
        for frame in self.iter_frames(is_active, ended):
            yield decode(frame)

    def iter_frames(
        self, is_active: Callable[[], bool], ended: Callable[[], bool] = _never
    ) -> Iterator[bytes]:
        """Batches for a sync server: the history, then (when following) new
        entries until ``is_active()`` (such as ``context.is_active``) turns
        false, checked at least every 0.25 s, or ``ended()`` turns true."""
        with self.buffer.reading():
            yield from self._iter_frames(is_active, ended)

    def _iter_frames(
        self, is_active: Callable[[], bool], ended: Callable[[], bool]
    ) -> Iterator[bytes]:
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
            frame = self._collect(buf.last_sequence)
            if frame is not None:
                yield frame

    async def aiter_responses(
        self, ended: Callable[[], bool] = _never
    ) -> AsyncIterator[management_pb2.StreamLogsResponse]:
        """:meth:`aiter_frames`, decoded."""
        decode = management_pb2.StreamLogsResponse.FromString
        async for frame in self.aiter_frames(ended):
            yield decode(frame)

    async def aiter_frames(self, ended: Callable[[], bool] = _never) -> AsyncIterator[bytes]:
        """Batches for grpc.aio: the history, then (when following) new entries
        until the call is cancelled or ``ended()`` turns true (then the stream
        ends normally, which lets a server shut down without cancelling it)."""
        with self.buffer.reading():
            async for frame in self._aiter_frames(ended):
                yield frame

    async def _aiter_frames(self, ended: Callable[[], bool]) -> AsyncIterator[bytes]:
        for past in self._history():
            yield past
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
            frame = self._collect(buf.last_sequence)
            if frame is not None:
                yield frame
        for rest in self._rest():
            yield rest

    def _rest(self) -> Iterator[bytes]:
        """What was logged up to now and not sent yet, in batches."""
        last = self.buffer.last_sequence
        while (frame := self._collect(last)) is not None:
            yield frame

    def _history(self) -> Iterator[bytes]:
        """The retained entries, in batches; never blocks."""
        if self.query.tail is not None:
            picked = self._tail(self.query.tail)
            for i in range(0, len(picked), self._batch):
                yield self._frame(list(map(_element, picked[i : i + self._batch])))
            if self._missed:
                yield self._frame([])
            return
        while self._cursor <= self._end:
            frame = self._collect(self._end)
            if frame is not None:
                yield frame

    def _tail(self, n: int) -> list[RetainedEntry]:
        """The newest ``n`` history entries that pass the filters, oldest first."""
        picked: list[RetainedEntry] = []  # newest first
        low, hi = self._cursor, self._end
        select = self._select
        while hi >= low and len(picked) < n:
            need = n - len(picked)
            lo = max(low, hi - (need if select is None else max(need, _SCAN_CHUNK)) + 1)
            chunk, lost, _ = self.buffer.read(lo, hi, hi - lo + 1)
            if select is not None:
                chunk = select(chunk)
            picked.extend(reversed(chunk[-need:]))
            if lost:
                # Overwritten while we scanned: nothing older is left. Count
                # as missed what we would still have sent, at most.
                self._missed += min(lo + lost - low, n - len(picked))
                break
            hi = lo - 1
        picked.reverse()
        self._cursor = self._end + 1
        return picked

    def _collect(self, stop: int) -> bytes | None:
        """One frame of what passes the filters from the cursor up to ``stop``;
        None when there is nothing to send (no entries, nothing missed)."""
        elements: list[bytes] = []
        select = self._select
        count = 0
        if select is None:
            # Whole joined blocks and the elements at the edges: no work per entry.
            while self._cursor <= stop and count < self._batch:
                parts, taken, lost, self._cursor = self.buffer.read_joinable(
                    self._cursor, stop, self._batch - count
                )
                self._missed += lost
                elements += parts
                count += taken
        while select is not None and self._cursor <= stop and len(elements) < self._batch:
            room = self._batch - len(elements)
            entries, lost, self._cursor = self.buffer.read(
                self._cursor, stop, max(room, _SCAN_CHUNK)
            )
            self._missed += lost
            entries = select(entries)
            if len(entries) > room:
                # Read more than fits: put the cursor back after the last one sent.
                entries = entries[:room]
                self._cursor = entries[-1].sequence + 1
            elements.extend(map(_element, entries))
        if not elements and not self._missed:
            return None
        return self._frame(elements)

    def _frame(self, elements: list[bytes]) -> bytes:
        """A ``StreamLogsResponse`` of ``elements`` and what was missed since the last."""
        if self._missed:
            elements.append(missed_field(self._missed))
            self._missed = 0
        return b"".join(elements)
