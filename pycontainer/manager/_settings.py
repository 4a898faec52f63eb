"""How the manager runs, and the bounds and defaults of its supervision."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field, fields
from typing import Any

from ._scheduler import Resources

#: How long a launched program may take to dial the manager before it is
#: reported as not registered (ContainerSpec.start_timeout when unset).
DEFAULT_START_TIMEOUT = datetime.timedelta(seconds=30)

# The bounds of a grace period and a start timeout are spec files' own: the
# API checks requests against the same constants (one home, pycontainer.spec).

#: Ended containers (stopped, failed) remembered, records and all; past this
#: the longest-ended are forgotten first. Each run of a demo leaves its
#: replicas behind: without a bound the registry and `ps -a` grow forever.
MAX_ENDED_CONTAINERS = 100

#: Events kept for `events` and WatchEvents(include_history) (a deque: the
#: oldest go first).
EVENT_HISTORY = 1000


@dataclass
class ManagerSettings:
    """How the manager runs. Durations are ``datetime.timedelta`` (a number is
    a TypeError: its unit would be a guess)."""

    listen: str = "127.0.0.1:50050"
    # SQLite state (registry, specs, checkpoints) lives here.
    state_dir: str = "state"
    # The registry, specs, checkpoints and journal on an etcd cluster instead
    # (etcd://host:2379,host:2379,...); None: SQLite in state_dir. The state
    # directory still holds the CA, the logs and the sealing key.
    state: str | None = None
    # With the state on etcd: the TTL of the lease a manager campaigns on to
    # lead (_leadership). A leader stops acting by itself once a TTL has
    # passed since its last acknowledged keepalive; a successor takes over
    # about a TTL after a leader dies. etcd's default 1 s election timeout can
    # let a hung raft leader cost a 2 s lease: 3-5 s is safe.
    leader_ttl: datetime.timedelta = datetime.timedelta(seconds=4)
    # Every manager's address (HOST:PORT), given to the containers it
    # launches ($PYCONTAINER_MANAGER, comma-separated) so that they follow the
    # leader; empty: its own address alone.
    manager_addresses: tuple[str, ...] = ()
    # Capacity admitted containers share; None means this machine's.
    capacity: Resources | None = None
    # Each container's connection is pinged this often (gRPC keepalive,
    # answered by grpc-core: no message, no Python; manager._liveness)...
    heartbeat_interval: datetime.timedelta = datetime.timedelta(seconds=5)
    # ...and a container is declared lost after this many unanswered
    # intervals (15 s with the defaults), or after this many
    # idle_heartbeat_intervals without a Lifecycle message.
    lost_after_heartbeats: int = 3
    # How often an idle container sends a Lifecycle Heartbeat message (what
    # RegistrationAck.heartbeat_interval tells it): only the backstop for a
    # session whose connection answers pings while its loop no longer works.
    # Each costs the manager a message decoded and one answered, about
    # 0.1 ms of its CPU: every 5 s, 10,000 idle sessions took half a core.
    idle_heartbeat_interval: datetime.timedelta = datetime.timedelta(seconds=60)
    # Total extension of a stop's grace period the manager grants on request.
    max_grace_extension: datetime.timedelta = datetime.timedelta(seconds=60)
    # How long a command other than a stop may take.
    command_timeout: datetime.timedelta = datetime.timedelta(seconds=30)
    # Largest checkpoint stored.
    max_checkpoint_bytes: int = 64 << 20
    # Start containers that register in CREATED (after admission).
    auto_start: bool = True
    # After a start, how long containers of the previous manager have to dial
    # back in (their reconnect backoff is at most 10 s) before apply's
    # reconciliation takes an applied spec's silent replicas for gone.
    reconnect_window: datetime.timedelta = datetime.timedelta(seconds=15)
    # Ended containers remembered (see MAX_ENDED_CONTAINERS).
    max_ended_containers: int = MAX_ENDED_CONTAINERS
    # Serve plaintext and let every call through (no certificates, no roles):
    # only when asked for (--insecure); off, the manager serves mutual TLS.
    insecure: bool = False
    # An external CA (PEM certificate and key files) instead of the one the
    # manager creates in its state directory; both or neither.
    ca_cert: str | None = None
    ca_key: str | None = None
    # Identities and their roles on top of pycontainer.security's defaults,
    # such as {"user/alice": "operate"}.
    role_bindings: dict[str, str | list[str]] = field(default_factory=dict)
    # Where grpc.health.v1 alone is served in plaintext too (HOST:PORT), for
    # probes that speak no TLS (kubelet's); None: nowhere but the main port.
    health_listen: str | None = None
    # Where the manager's HTTP face is served (HOST:PORT, port 0 for any
    # free one): the fleet's /metrics and the web view (manager/_http);
    # None: no HTTP at all.
    http_listen: str | None = None
    # Where Bootstrap.Join is served over server-side TLS (HOST:PORT), for
    # containers it did not launch joining with a bootstrap token; None: the
    # listen host on an ephemeral port (reported by CreateBootstrapToken);
    # "": nowhere. Never with insecure.
    join_listen: str | None = None
    # How long the certificates it issues live, and how often it renews them.
    certificate_ttl: datetime.timedelta = datetime.timedelta(hours=24)
    certificate_renewal_check: datetime.timedelta = datetime.timedelta(minutes=5)
    # How long a store call the operator's answer waits for (a checkpoint, an
    # applied spec) may take before the answer is UNAVAILABLE (a frozen disk).
    store_timeout: datetime.timedelta = datetime.timedelta(seconds=10)
    # How long a stop waits, at most, for every xDS client of a container's
    # mesh service to acknowledge that its endpoint drains before the Stop
    # is sent (never more than half its grace period; manager/_xds);
    # timedelta(0): no drain, the Stop at once (as Kubernetes does).
    mesh_drain_timeout: datetime.timedelta = datetime.timedelta(seconds=5)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(f.default, datetime.timedelta):
                continue
            value = getattr(self, f.name)
            if not isinstance(value, datetime.timedelta):
                hint = (
                    f" (write timedelta(seconds={value!r}))"
                    if isinstance(value, int | float)
                    else ""
                )
                raise TypeError(
                    f"ManagerSettings.{f.name} must be a datetime.timedelta, "
                    f"not {type(value).__name__}{hint}"
                )
            if value < datetime.timedelta(0):
                raise ValueError(f"ManagerSettings.{f.name} must not be negative")
