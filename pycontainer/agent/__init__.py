"""The container side: what runs inside (or beside) one container."""

from ._config import Config
from ._container import Container, ContainerSettings, Hooks
from ._health import CheckKind
from ._join import JoinError
from ._profile import TrackedLock, TrackedRLock
from ._serve import (
    EXCLUSIVE_PORT,
    BackgroundServer,
    ListenError,
    listen_on,
    run,
    serve,
    serve_in_background,
)
from ._state import TRANSITIONS, Command, State
from ._tls import tls_dir

__all__ = [
    "EXCLUSIVE_PORT",
    "TRANSITIONS",
    "BackgroundServer",
    "CheckKind",
    "Command",
    "Config",
    "Container",
    "ContainerSettings",
    "Hooks",
    "JoinError",
    "ListenError",
    "State",
    "TrackedLock",
    "TrackedRLock",
    "listen_on",
    "run",
    "serve",
    "serve_in_background",
    "tls_dir",
]
