"""Capture of Python ``logging`` into a bounded ring buffer, served by StreamLogs.

:class:`LogBuffer` keeps the newest ``capacity`` entries; :func:`install` hooks
it to the root logger without changing what the application prints; a
:class:`LogReader` (made from a validated :class:`LogQuery`) serves the
retained history and then new entries, in batches, to a sync gRPC server
(:meth:`LogReader.iter_responses`) or to grpc.aio (:meth:`LogReader.aiter_responses`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, cast

from opentelemetry import trace

from pycontainer._errors import invalid_argument
from pycontainer.v1 import logs_pb2, management_pb2

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "BufferedEntry",
    "LogBuffer",
    "LogBufferHandler",
    "LogQuery",
    "LogReader",
    "entry_to_proto",
    "install",
    "severity_from_level",
    "uninstall",
]

DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000
# How long a follow reader lets new entries gather before sending a batch.
_LINGER_S = 0.005
# How often a blocked sync reader wakes to ask whether its client is gone.
_ACTIVE_POLL_S = 0.25
# Entries read from the ring per lock hold while scanning with filters.
_SCAN_CHUNK = 1024
_NEVER = sys.maxsize
_NS = 1_000_000_000
_KNOWN_SEVERITIES = frozenset(logs_pb2.Severity.values())
_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})


class BufferedEntry(NamedTuple):
    """One retained log entry (converted to ``logs_pb2.LogEntry`` only when sent)."""

    sequence: int
    time_ns: int
    severity: int
    severity_text: str
    logger: str
    message: str
    attributes: Mapping[str, str]
    trace_id: str = ""
    span_id: str = ""


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


# -- severity -----------------------------------------------------------------------


def _severity_table() -> tuple[int, ...]:
    # As OpenTelemetry's own logging handler: each Python band of ten maps to
    # an OTel band of four (DEBUG=5, INFO=9, WARN=13, ERROR=17, FATAL=21), and
    # levels in between to the band's finer numbers (21 -> INFO2, 25 -> INFO4).
    # Below DEBUG (custom TRACE levels) is TRACE.
    table = [int(logs_pb2.SEVERITY_TRACE)] * 10
    for level in range(10, 60):
        band, step = divmod(level, 10)
        table.append(1 + 4 * band + min(step, 3))
    return tuple(table)


_SEVERITY_BY_LEVEL = _severity_table()


def severity_from_level(levelno: int) -> int:
    """OpenTelemetry severity number of a Python logging level."""
    if levelno < 0:
        return int(logs_pb2.SEVERITY_TRACE)
    if levelno >= len(_SEVERITY_BY_LEVEL):
        return int(logs_pb2.SEVERITY_FATAL4)
    return _SEVERITY_BY_LEVEL[levelno]


# -- the ring ----------------------------------------------------------------------


class _Waiter:
    """A reader waiting until the buffer's newest sequence reaches ``target``."""

    __slots__ = ("cond", "event", "loop", "target")

    def __init__(
        self,
        target: int,
        cond: threading.Condition | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        event: asyncio.Event | None = None,
    ) -> None:
        self.target = target
        self.cond = cond
        self.loop = loop
        self.event = event


class LogBuffer:
    """The newest ``capacity`` log entries, numbered from 1.

    Appending is O(1) and never waits for readers; a reader holds only a
    cursor, so a slow one loses the oldest entries instead of holding memory.
    """

    def __init__(self, capacity: int = 10_000, max_message_chars: int = 16_384) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if max_message_chars < 1:
            raise ValueError(f"max_message_chars must be at least 1, got {max_message_chars}")
        self._capacity = capacity
        self._max_chars = max_message_chars
        self._ring: list[BufferedEntry | None] = [None] * capacity
        self._last = 0  # sequence of the newest entry; 0 when empty
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        # min(w.target for w in _waiters): append compares one int when no
        # reader waits, or none waits for this entry yet.
        self._wake_at = _NEVER

    @property
    def capacity(self) -> int:
        """Most entries retained."""
        return self._capacity

    @property
    def max_message_chars(self) -> int:
        """Longer messages (and attribute values) are truncated to this."""
        return self._max_chars

    @property
    def last_sequence(self) -> int:
        """Sequence number of the newest entry; 0 when nothing was logged."""
        return self._last

    def __len__(self) -> int:
        return min(self._last, self._capacity)

    def snapshot(self) -> list[BufferedEntry]:
        """The retained entries, oldest first."""
        with self._lock:
            last = self._last
        return self._read(max(1, last - self._capacity + 1), last, self._capacity)[0]

    def append(
        self,
        severity: int,
        severity_text: str,
        logger: str,
        message: str,
        attributes: Mapping[str, str] | None = None,
        *,
        time_ns: int | None = None,
        trace_id: str = "",
        span_id: str = "",
    ) -> int:
        """Add one entry (the oldest is dropped when full); returns its sequence.

        ``attributes`` is kept as given, not copied: do not change it afterwards.
        """
        if time_ns is None:
            time_ns = time.time_ns()
        if len(message) > self._max_chars:
            message = self._truncate(message)
        attrs = _NO_ATTRIBUTES if attributes is None else attributes
        ready: list[_Waiter] | None = None
        with self._lock:
            seq = self._last + 1
            self._ring[seq % self._capacity] = BufferedEntry(
                seq, time_ns, severity, severity_text, logger, message, attrs, trace_id, span_id
            )
            self._last = seq
            if seq >= self._wake_at:
                ready = self._fire(seq)
        if ready:
            # Outside the lock: waking a loop writes to its self-pipe.
            for w in ready:
                loop, event = cast(asyncio.AbstractEventLoop, w.loop), cast(asyncio.Event, w.event)
                # RuntimeError: the reader's loop is closed, nobody to wake.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(event.set)
        return seq

    def handler(self, level: int = logging.NOTSET) -> LogBufferHandler:
        """A logging handler that appends every record it handles to this buffer."""
        return LogBufferHandler(self, level)

    def reader(self, query: LogQuery | None = None) -> LogReader:
        """A reader of the entries retained now (and later ones when following)."""
        return LogReader(self, query if query is not None else LogQuery())

    def _truncate(self, text: str) -> str:
        cut = len(text) - self._max_chars
        return f"{text[: self._max_chars]}... [truncated {cut} chars]"

    def _fire(self, seq: int) -> list[_Waiter]:
        """Under the lock: notify sync waiters reached by ``seq``; return async ones."""
        ready: list[_Waiter] = []
        keep: list[_Waiter] = []
        for w in self._waiters:
            if w.target > seq:
                keep.append(w)
            elif w.cond is not None:
                w.cond.notify()
            else:
                ready.append(w)
        self._waiters = keep
        self._wake_at = min((w.target for w in keep), default=_NEVER)
        return ready

    def _add_waiter(self, waiter: _Waiter) -> None:
        self._waiters.append(waiter)
        self._wake_at = min(self._wake_at, waiter.target)

    def _remove_waiter(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            self._wake_at = min((w.target for w in self._waiters), default=_NEVER)

    def _read(self, start: int, stop: int, limit: int) -> tuple[list[BufferedEntry], int, int]:
        """Entries from ``start`` up to ``stop`` (inclusive), at most ``limit``.

        Returns the entries, how many in the range were already overwritten
        (skipped), and the sequence to read next.
        """
        cap = self._capacity
        with self._lock:
            oldest = max(1, self._last - cap + 1)
            lost = 0
            if start < oldest:
                skip_to = min(oldest, stop + 1)
                lost = skip_to - start
                start = skip_to
            end = min(stop, self._last, start + limit - 1)
            if end < start:
                return [], lost, start
            i, j = start % cap, end % cap + 1
            chunk = self._ring[i:j] if i < j else self._ring[i:] + self._ring[:j]
        return cast(list[BufferedEntry], chunk), lost, end + 1

    def _wait(self, cond: threading.Condition, target: int, timeout: float) -> None:
        """Block until the newest sequence reaches ``target`` or ``timeout`` passes."""
        with self._lock:
            if self._last >= target:
                return
            waiter = _Waiter(target, cond=cond)
            self._add_waiter(waiter)
            try:
                cond.wait(timeout)
            finally:
                self._remove_waiter(waiter)

    async def _wait_async(self, target: int) -> None:
        """Await the newest sequence reaching ``target``."""
        event = asyncio.Event()
        waiter = _Waiter(target, loop=asyncio.get_running_loop(), event=event)
        with self._lock:
            if self._last >= target:
                return
            self._add_waiter(waiter)
        try:
            await event.wait()
        finally:
            # Also on cancellation: a waiter left behind would be woken forever.
            with self._lock:
                self._remove_waiter(waiter)


# -- logging handler ------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from `extra`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)))
_STANDARD_ATTRS = _RECORD_ATTRS | {
    "message",
    "asctime",
    "taskName",
    # Set by opentelemetry-instrumentation-logging; the entry has its own ids.
    "otelSpanID",
    "otelTraceID",
    "otelTraceSampled",
    "otelServiceName",
}


def _text(value: object) -> str:
    try:
        return value if isinstance(value, str) else str(value)
    except Exception as exc:  # a broken __str__ must not lose the entry
        return f"<unprintable {type(value).__name__}: {exc!r}>"


def _type_name(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    name = exc_type.__qualname__
    return name if module in ("builtins", "__main__") else f"{module}.{name}"


class LogBufferHandler(logging.Handler):
    """Appends each record to a :class:`LogBuffer` as an OTel-shaped entry."""

    def __init__(self, buffer: LogBuffer, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._append(record)
        except Exception:
            self.handleError(record)

    def _append(self, record: logging.LogRecord) -> None:
        buf = self.buffer
        try:
            message = record.getMessage()
        except Exception as exc:
            # As logging itself would: keep the entry, say what went wrong.
            args = _text(record.args)
            message = f"{_text(record.msg)} (formatting failed: {exc!r}; args: {args})"
        attrs: dict[str, str] = {
            "thread.name": record.threadName or "",
            "code.filepath": record.pathname,
            "code.lineno": str(record.lineno),
            "code.function": record.funcName or "",
        }
        limit = buf.max_message_chars
        rec = record.__dict__
        # Most records have no extras: skip the set difference for them.
        extras = rec.keys() - _STANDARD_ATTRS if len(rec) > len(_RECORD_ATTRS) else ()
        for key in extras:
            value = _text(rec[key])
            attrs[_text(key)] = value if len(value) <= limit else buf._truncate(value)
        exc_info = record.exc_info
        if exc_info and exc_info[0] is not None:
            exc_type, exc_value, tb = exc_info
            attrs["exception.type"] = _type_name(exc_type)
            attrs["exception.message"] = _text(exc_value)
            # A formatter that ran first may have cached the text.
            stack = record.exc_text or "".join(traceback.format_exception(exc_type, exc_value, tb))
            attrs["exception.stacktrace"] = stack if len(stack) <= limit else buf._truncate(stack)
        if record.stack_info:
            attrs["code.stacktrace"] = record.stack_info
        trace_id = span_id = ""
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            trace_id = format(ctx.trace_id, "032x")
            span_id = format(ctx.span_id, "016x")
        buf.append(
            severity_from_level(record.levelno),
            record.levelname,
            record.name,
            message,
            attrs,
            time_ns=int(record.created * _NS),
            trace_id=trace_id,
            span_id=span_id,
        )


# -- root logger installation ------------------------------------------------------------


def _level_before(name: str, root_level: int) -> int:
    """The effective level logger ``name`` had when the root's level was ``root_level``."""
    node = logging.root.manager.loggerDict.get(name)
    logger = node if isinstance(node, logging.Logger) else None
    while logger is not None and logger is not logging.root:
        if logger.level:
            return logger.level
        logger = logger.parent
    return root_level


class _AsBefore(logging.Filter):
    """On the root's own handlers: pass only records that would have been made
    before the root level was lowered, so the app's output does not change."""

    def __init__(self, root_level: int) -> None:
        super().__init__()
        self.root_level = root_level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= _level_before(record.name, self.root_level)


class _LastResortStandIn(logging.Handler):
    """Does what ``logging.lastResort`` did before our handler stopped it firing:
    print records that no handler of the application handles."""

    def __init__(self, as_before: _AsBefore) -> None:
        last = logging.lastResort
        super().__init__(last.level if last is not None else logging.WARNING)
        self._as_before = as_before
        # Root handlers of ours; any other means the app now handles records.
        self.ours: list[logging.Handler] = [self]

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if last is None or record.levelno < last.level:
            return
        if not self._as_before.filter(record):
            return  # the record would not have been made
        if any(h not in self.ours for h in logging.root.handlers):
            return  # the app has added root handlers since
        node = logging.root.manager.loggerDict.get(record.name)
        logger = node if isinstance(node, logging.Logger) else None
        while logger is not None and logger is not logging.root:
            if logger.handlers:
                return  # handled on the way up: lastResort would not fire
            logger = logger.parent
        last.handle(record)


@dataclass
class _Saved:
    """What :func:`install` changed on the root logger, to put back."""

    root_level: int
    set_level: int
    as_before: _AsBefore
    filtered: list[logging.Handler]
    stand_in: _LastResortStandIn | None


_install_lock = threading.Lock()
_handlers: dict[LogBuffer, LogBufferHandler] = {}
_saved: _Saved | None = None


def install(buffer: LogBuffer, level: int = logging.INFO) -> LogBufferHandler:
    """Capture records at ``level`` and above, from every logger, into ``buffer``.

    Attaches a handler to the root logger. The root's level is lowered to
    ``level`` if needed (its default, WARNING, would drop INFO records before
    any handler sees them); the root's existing handlers get a filter so they
    print just what they printed before, and if the root had no handlers a
    stand-in keeps ``logging.lastResort``'s output to stderr. Installing a
    buffer again only updates its level; several buffers may be installed.
    """
    global _saved
    root = logging.root
    with _install_lock:
        saved = _saved
        if saved is None:
            saved = _saved = _take_over_root()
        handler = _handlers.get(buffer)
        if handler is None:
            handler = _handlers[buffer] = buffer.handler(level)
            if saved.stand_in is not None:
                saved.stand_in.ours.append(handler)
            root.addHandler(handler)
        handler.setLevel(level)
        _set_root_level(saved)
    return handler


def _take_over_root() -> _Saved:
    """Filter the root's handlers and stand in for lastResort (see install)."""
    root = logging.root
    as_before = _AsBefore(root.level)
    filtered = [h for h in root.handlers if not isinstance(h, LogBufferHandler)]
    for h in filtered:
        h.addFilter(as_before)
    stand_in = None
    if not root.handlers and logging.lastResort is not None:
        stand_in = _LastResortStandIn(as_before)
        root.addHandler(stand_in)
    return _Saved(root.level, root.level, as_before, filtered, stand_in)


def uninstall(buffer: LogBuffer | None = None) -> None:
    """Stop capturing into ``buffer`` (every buffer when None); when none is left,
    put the root logger back as it was. Does nothing if not installed."""
    global _saved
    root = logging.root
    with _install_lock:
        buffers = list(_handlers) if buffer is None else [buffer]
        for b in buffers:
            handler = _handlers.pop(b, None)
            if handler is not None:
                root.removeHandler(handler)
                if _saved is not None and _saved.stand_in is not None:
                    _saved.stand_in.ours.remove(handler)
        saved = _saved
        if saved is None:
            return
        if _handlers:
            _set_root_level(saved)
            return
        for h in saved.filtered:
            h.removeFilter(saved.as_before)
        if saved.stand_in is not None:
            root.removeHandler(saved.stand_in)
        if root.level == saved.set_level:  # unless the app has set it since
            root.setLevel(saved.root_level)
        _saved = None


def _set_root_level(saved: _Saved) -> None:
    """Lower the root level to the lowest capture level (never raise it above
    the app's own), unless the app has set a level of its own since."""
    wanted = min([saved.root_level, *(h.level for h in _handlers.values())])
    if logging.root.level == saved.set_level and wanted != saved.set_level:
        logging.root.setLevel(wanted)
        saved.set_level = wanted


# -- queries ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogQuery:
    """What a StreamLogs caller asked for, validated."""

    tail: int | None = None
    follow: bool = False
    since_ns: int | None = None
    min_severity: int = 0
    contains: str = ""
    pattern: re.Pattern[str] | None = None
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
        pattern: re.Pattern[str] | None = None
        if req.pattern:
            try:
                pattern = re.compile(req.pattern)
            except (re.error, RecursionError, OverflowError, ValueError) as exc:
                raise invalid_argument(
                    "pattern", f"not a valid regular expression: {exc}"
                ) from None
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
        self._end = buffer._last
        self._cursor = max(1, self._end - buffer.capacity + 1)  # next sequence to read
        self._missed = 0  # lost since the last response sent

    def iter_responses(
        self, is_active: Callable[[], bool]
    ) -> Iterator[management_pb2.StreamLogsResponse]:
        """Batches for a sync server: the history, then (when following) new
        entries until ``is_active()`` (such as ``context.is_active``) turns
        false, checked at least every 0.25 s."""
        yield from self._history()
        if not self.query.follow:
            return
        buf = self.buffer
        cond = threading.Condition(buf._lock)
        while is_active():
            pending = buf._last - self._cursor + 1
            if pending <= 0:
                buf._wait(cond, self._cursor, _ACTIVE_POLL_S)
                continue
            if pending < self._batch:
                # Let a batch gather: woken early only when it is full.
                buf._wait(cond, self._cursor + self._batch - 1, _LINGER_S)
            response = self._collect(buf._last)
            if response is not None:
                yield response

    async def aiter_responses(self) -> AsyncIterator[management_pb2.StreamLogsResponse]:
        """Batches for grpc.aio: the history, then (when following) new entries
        until the call is cancelled."""
        for batch in self._history():
            yield batch
        if not self.query.follow:
            return
        buf = self.buffer
        while True:
            pending = buf._last - self._cursor + 1
            if pending <= 0:
                await buf._wait_async(self._cursor)
                continue
            if pending < self._batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_LINGER_S):
                        await buf._wait_async(self._cursor + self._batch - 1)
            response = self._collect(buf._last)
            if response is not None:
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
            chunk, lost, _ = self.buffer._read(lo, hi, hi - lo + 1)
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
            chunk, lost, self._cursor = self.buffer._read(self._cursor, stop, want)
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
