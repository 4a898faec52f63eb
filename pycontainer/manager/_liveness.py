"""How the manager notices a container that is gone: gRPC keepalive on its
server, at the bound ManagerSettings sets.

A dead, frozen or cut-off container's connection stops answering HTTP/2
pings; grpc-core drops it after the ping timeout, which ends every
Lifecycle stream on it (the session is LOST at once, as when the process
exits and its socket closes). The pings are sent and answered by grpc-core
on both sides: no message, no Python, so liveness costs next to nothing per
session. Lifecycle Heartbeat messages are only the backstop for a container
whose connection answers pings while its session's loop no longer works:
they come every ManagerSettings.idle_heartbeat_interval (Sessions.watchdog).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._settings import ManagerSettings

# The server options this module owns; any of them in a base set is replaced.
_KEEPALIVE_KEYS = frozenset(
    {
        "grpc.keepalive_time_ms",
        "grpc.keepalive_timeout_ms",
        "grpc.keepalive_permit_without_calls",
        "grpc.http2.max_pings_without_data",
        "grpc.http2.ping_timeout_ms",
    }
)


def keepalive_options(settings: ManagerSettings) -> list[tuple[str, int]]:
    """Keepalive server options for the liveness bound of ``settings``: a ping
    every heartbeat_interval, the connection dropped when one goes unanswered
    for the rest of lost_after_heartbeats intervals (a connection that went
    silent right after a ping is dropped at most interval * lost_after later)."""
    interval_ms = max(1, int(settings.heartbeat_interval.total_seconds() * 1000))
    timeout_ms = interval_ms * max(1, settings.lost_after_heartbeats - 1)
    return [
        ("grpc.keepalive_time_ms", interval_ms),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        # grpc-core (1.85) times a keepalive ping's ack out by this one (a
        # minute by default), not by keepalive_timeout_ms alone.
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        # Idle streams send no data: ping them all the same, and without limit.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def with_keepalive(
    base: Sequence[tuple[str, object]], settings: ManagerSettings
) -> list[tuple[str, object]]:
    """``base`` server options with the keepalive of ``settings`` in place of its own."""
    kept = [option for option in base if option[0] not in _KEEPALIVE_KEYS]
    return [*kept, *keepalive_options(settings)]


__all__ = ["keepalive_options", "with_keepalive"]
