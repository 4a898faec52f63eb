"""What a container is and does, as the app declares it: its settings and
its lifecycle hooks."""

from __future__ import annotations

import datetime
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import units
from ..limits import DEFAULT_LOG_CAPACITY

__all__ = ["HEALTH_LISTEN_ENV", "HTTP_LISTEN_ENV", "ContainerSettings", "Hook", "Hooks"]

#: Where a container also serves grpc.health.v1 alone, in plaintext (HOST:PORT):
#: set by the manager from a spec's healthListen, read by ContainerSettings.
HEALTH_LISTEN_ENV = "PYCONTAINER_HEALTH_LISTEN"
#: Where a container also serves its HTTP face (/livez, /readyz, /healthz,
#: /metrics, /v1/...), in plaintext (HOST:PORT): set by the manager from a
#: spec's httpListen, read by ContainerSettings.
HTTP_LISTEN_ENV = "PYCONTAINER_HTTP_LISTEN"

Hook = Callable[..., Any]


@dataclass
class Hooks:
    """App-defined lifecycle hooks; each may be a plain or an async function."""

    on_create: Hook | None = None
    on_start: Hook | None = None
    on_pause: Hook | None = None
    on_resume: Hook | None = None
    # on_stop(reason: str, deadline: float) — deadline as time.monotonic().
    on_stop: Hook | None = None
    # on_checkpoint() -> bytes
    on_checkpoint: Hook | None = None
    # on_restore(state: bytes)
    on_restore: Hook | None = None
    # on_replicate(count: int) -> bytes (seed state)
    on_replicate: Hook | None = None


@dataclass
class ContainerSettings:
    """Who a container is and how it behaves."""

    name: str
    # Unique id; empty means NAME-<random>.
    id: str = ""
    version: str = "0.0.0"
    labels: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    cpu_millis: int = 0
    memory_bytes: int = 0
    # Default grace period of a stop, as in Kubernetes.
    grace_period: datetime.timedelta = units.DEFAULT_GRACE_PERIOD
    # Log entries kept for StreamLogs (a ring: older ones are overwritten).
    log_capacity: int = DEFAULT_LOG_CAPACITY
    # Capture Python logging (root logger) at this level, from when the
    # container is hosted, connected or started until close(); None disables it.
    log_level: int | None = logging.INFO
    # Long-lived Management streams (logs, metrics, profiles) open at once on a
    # sync server; they run in pycontainer's own threads, never the app's.
    stream_limit: int = 16
    # Install an OpenTelemetry SDK MeterProvider globally if none is set (when
    # the container is hosted, connected or started), so that app metrics
    # written through the OTel API are served.
    install_meter_provider: bool = True
    # Also serve grpc.health.v1 alone, in plaintext, on this HOST:PORT (port 0:
    # a free one, advertised as the "health" endpoint) once the container is
    # hosted, for probes that speak no TLS (kubelet's gRPC probe); the
    # Management endpoint stays mutual TLS. None: $PYCONTAINER_HEALTH_LISTEN,
    # else not at all.
    health_listen: str | None = None
    # Also serve the HTTP face, in plaintext, on this HOST:PORT (port 0: a
    # free one, advertised as the "http" endpoint) once the container is
    # hosted: /livez, /readyz and /healthz for httpGet probes (the same
    # verdicts as grpc.health.v1), /metrics for Prometheus, and GetInfo,
    # GetHealth and GetConfig as JSON under /v1/. Read-only. None:
    # $PYCONTAINER_HTTP_LISTEN, else not at all.
    http_listen: str | None = None
    # Joining a manager that did not launch this container (pycontainer
    # token create prints the three); empty: $PYCONTAINER_BOOTSTRAP_TOKEN,
    # $PYCONTAINER_JOIN and $PYCONTAINER_CA_PIN (see pycontainer._tls_env).
    bootstrap_token: str = field(default="", repr=False)  # a secret: never in a repr
    join_address: str = ""
    ca_pin: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ContainerSettings.name must not be empty")
        if not self.id:
            # A container the manager launched has its id in the environment.
            self.id = os.environ.get("PYCONTAINER_CONTAINER_ID") or (
                f"{self.name}-{secrets.token_hex(4)}"
            )
        if self.health_listen is None:
            self.health_listen = os.environ.get(HEALTH_LISTEN_ENV) or None
        if self.http_listen is None:
            self.http_listen = os.environ.get(HTTP_LISTEN_ENV) or None
        if not isinstance(self.grace_period, datetime.timedelta):
            raise TypeError(
                "ContainerSettings.grace_period must be a datetime.timedelta, "
                f"not {type(self.grace_period).__name__}"
            )
        if self.grace_period < datetime.timedelta(0):
            raise ValueError("ContainerSettings.grace_period must not be negative")
