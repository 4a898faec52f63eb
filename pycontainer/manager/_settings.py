"""How the manager runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ._scheduler import Resources


@dataclass
class ManagerSettings:
    """How the manager runs."""

    listen: str = "127.0.0.1:50050"
    # SQLite state (registry, specs, checkpoints) lives here.
    state_dir: str = "state"
    # Capacity admitted containers share; None means this machine's.
    capacity: Resources | None = None
    # Containers send a heartbeat this often when idle...
    heartbeat_interval: float = 5.0
    # ...and are declared lost after this many silent intervals.
    lost_after_heartbeats: int = 3
    # Total extension of a stop's grace period the manager grants on request.
    max_grace_extension: float = 60.0
    # How long a command other than a stop may take.
    command_timeout: float = 30.0
    # Largest checkpoint stored.
    max_checkpoint_bytes: int = 64 << 20
    # Start containers that register in CREATED (after admission).
    auto_start: bool = True
    # After a start, how long containers of the previous manager have to dial
    # back in (their reconnect backoff is at most 10 s) before apply's
    # reconciliation takes an applied spec's silent replicas for gone.
    reconnect_window: timedelta = timedelta(seconds=15)
    extra: dict[str, Any] = field(default_factory=dict)
