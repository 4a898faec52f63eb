"""Capture of Python ``logging`` into a :class:`LogBuffer`.

:class:`LogBufferHandler` turns each record into an OpenTelemetry-shaped entry;
:func:`install` hooks a buffer to the root logger without changing what the
application prints, and :func:`uninstall` puts the root logger back.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

from pycontainer.v1 import logs_pb2

from ._buffer import LogBuffer
from ._wire import (
    MORE_BYTE,
    attribute_fields,
    message_field,
    source_fields,
    string_field,
    time_field,
    time_window,
    utf8,
    varint,
)

__all__ = ["LogBufferHandler", "install", "severity_from_level", "uninstall"]

_NS = 1_000_000_000
# LogEntry's field numbers (the rest are encoded by _wire's functions).
_TRACE_ID = 8
_SPAN_ID = 9
_MESSAGE_TAG = b"\x32"  # LogEntry.message = 6
# The message field's tag and length, by lengths under 128 (none for none).
_MESSAGE_HEAD = (b"", *(_MESSAGE_TAG + bytes((i,)) for i in range(1, 128)))
_MORE_BYTE = MORE_BYTE
# A window no instant is in (see _wire.time_window).
_NO_WINDOW: tuple[int, int, bytes, bytes] = (0, 0, b"", b"")
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _context_reader() -> Callable[[], otel_context.Context]:
    """``opentelemetry.context.get_current``, or the ContextVar read behind it
    where OpenTelemetry keeps its context in its default runtime context."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(var, ContextVar):
        return var.get
    return otel_context.get_current


_current_context = _context_reader()

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


# -- logging handler ------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from `extra`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)))
_RECORD_ATTR_COUNT = len(_RECORD_ATTRS)
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


# Most call sites (logger, level, thread, file, line, function) are kept;
# past this many, the cache starts afresh.
_MAX_SITES = 4096


class LogBufferHandler(logging.Handler):
    """Appends each record to a :class:`LogBuffer` as an OTel-shaped entry,
    encoded for the wire as it is taken.

    The fields a call site always gives the same (severity, logger, thread
    and code attributes) are encoded once per site and kept.
    """

    def __init__(self, buffer: LogBuffer, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._buffer = buffer
        self._limit = buffer.max_message_chars
        self._append_encoded = buffer.append_encoded
        self._sites: dict[tuple[object, ...], tuple[bytes, int]] = {}
        # Handlers given every record this one takes (the OTel log export).
        self._forward: tuple[logging.Handler, ...] = ()
        # The time fields of the last record's 2 ms (see _wire.time_window).
        self._window = _NO_WINDOW

    @property
    def buffer(self) -> LogBuffer:
        """The buffer records go to."""
        return self._buffer

    def forward(self, handler: logging.Handler) -> None:
        """Give ``handler`` every record this handler takes, after it (until
        this handler is uninstalled)."""
        if handler not in self._forward:
            self._forward = (*self._forward, handler)

    def handle(self, record: logging.LogRecord) -> bool | logging.LogRecord:  # type: ignore[override]
        """As Handler.handle, without the handler's lock: the buffer has its
        own, and nothing else here changes (the site cache is a dict)."""
        rv: bool | logging.LogRecord = True
        if self.filters:
            rv = self.filter(record)
            if not rv:
                return rv
            if isinstance(rv, logging.LogRecord):
                record = rv
        self.emit(record)
        for handler in self._forward:
            if record.levelno >= handler.level:
                try:
                    handler.handle(record)
                except Exception:  # never into the app's logging call
                    handler.handleError(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        # One function, every step written out: this runs for every record.
        try:
            try:
                message = record.getMessage()
            except Exception as exc:
                # As logging itself would: keep the entry, say what went wrong.
                args = _text(record.args)
                message = f"{_text(record.msg)} (formatting failed: {exc!r}; args: {args})"
            limit = self._limit
            if len(message) > limit:
                message = self._buffer.truncate(message)
            key = (
                record.name,
                record.levelno,
                record.levelname,
                record.threadName,
                record.pathname,
                record.lineno,
                record.funcName,
            )
            fields, severity = self._sites.get(key) or self._site(key, record)
            time_ns = int(record.created * _NS)
            try:
                data = message.encode()
            except UnicodeEncodeError:
                data = utf8(message)
            size = len(data)
            window = self._window
            if window[0] <= time_ns < window[1]:
                d = time_ns - window[0]
                encoded = b"".join(
                    (
                        fields,
                        window[2],
                        _MORE_BYTE[d & 0x7F],
                        _MORE_BYTE[d >> 7 & 0x7F],
                        _MORE_BYTE[d >> 14],
                        window[3],
                        _MESSAGE_HEAD[size] if size < 0x80 else _MESSAGE_TAG + varint(size),
                        data,
                    )
                )
            else:
                self._window = time_window(time_ns) or _NO_WINDOW
                encoded = b"".join((fields, time_field(time_ns), message_field(message)))
            # Read before __dict__: a record's first use of it makes the dict,
            # and its attributes cost more to read after.
            name, exc_info, stack_info = record.name, record.exc_info, record.stack_info
            rec = record.__dict__
            # Most records have no extras, no exception, no stack and no span;
            # a formatter that ran first adds "message" (and "asctime").
            if (
                len(rec) > _RECORD_ATTR_COUNT
                and len(rec) - ("message" in rec) - ("asctime" in rec) > _RECORD_ATTR_COUNT
            ):
                extras = [(_text(key), _text(rec[key])) for key in rec.keys() - _STANDARD_ATTRS]
                encoded += attribute_fields(
                    (k, v if len(v) <= limit else self._buffer.truncate(v)) for k, v in extras
                )
            if exc_info and exc_info[0] is not None:
                encoded += self._exception(exc_info, record.exc_text)
            if stack_info:
                encoded += attribute_fields((("code.stacktrace", stack_info),))
            # Outside any span (and any other context value) the context is
            # empty: one ContextVar read, not OpenTelemetry's four calls.
            context = _current_context()
            if context:
                span = trace.get_current_span(context).get_span_context()
                if span.is_valid:
                    encoded += string_field(_TRACE_ID, format(span.trace_id, "032x"))
                    encoded += string_field(_SPAN_ID, format(span.span_id, "016x"))
            self._append_encoded(time_ns, severity, name, message, encoded)
        except Exception:
            self.handleError(record)

    def _exception(self, exc_info: _ExcInfo, exc_text: str | None) -> bytes:
        """The exception attributes of a record with ``exc_info``."""
        exc_type, exc_value, tb = exc_info
        # A formatter that ran first may have cached the text.
        stack = exc_text or "".join(traceback.format_exception(exc_type, exc_value, tb))
        return attribute_fields(
            (
                ("exception.type", _type_name(exc_type)),
                ("exception.message", _text(exc_value)),
                ("exception.stacktrace", self._buffer.truncate(stack)),
            )
        )

    def _site(self, key: tuple[object, ...], record: logging.LogRecord) -> tuple[bytes, int]:
        """The encoded fields of ``record``'s call site, and its severity."""
        severity = severity_from_level(record.levelno)
        attrs = {
            "thread.name": record.threadName or "",
            "code.filepath": record.pathname,
            "code.lineno": str(record.lineno),
            "code.function": record.funcName or "",
        }
        fields = source_fields(severity, record.levelname, record.name) + attribute_fields(attrs)
        sites = self._sites
        if len(sites) >= _MAX_SITES:
            sites.clear()
        sites[key] = site = (fields, severity)
        return site


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
            handler = _handlers[buffer] = LogBufferHandler(buffer, level)
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
