"""The central manager: Lifecycle sessions with every container, the
operator API, admission with priorities and eviction, checkpoints."""

from ..units import parse_cpu, parse_memory
from ._exclusive import StartRefused
from ._logstore import LogStore
from ._manager import Manager, ManagerSettings
from ._runtime import InProcessRuntime, Launch, ProcessRuntime, Runtime
from ._scheduler import Resources
from ._store import SQLiteStore, StateStore
from .runc import RuncRuntime

__all__ = [
    "InProcessRuntime",
    "Launch",
    "LogStore",
    "Manager",
    "ManagerSettings",
    "ProcessRuntime",
    "Resources",
    "RuncRuntime",
    "Runtime",
    "SQLiteStore",
    "StartRefused",
    "StateStore",
    "parse_cpu",
    "parse_memory",
]
