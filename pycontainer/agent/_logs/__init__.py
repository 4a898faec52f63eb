"""The container's logs: a bounded ring buffer (:mod:`._buffer`), the capture
of Python ``logging`` into it (:mod:`._capture`), and StreamLogs readers of it
(:mod:`._reader`)."""

from ._buffer import BufferedEntry, LogBuffer
from ._capture import LogBufferHandler, install, severity_from_level, uninstall
from ._reader import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE, LogQuery, LogReader, entry_to_proto

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
