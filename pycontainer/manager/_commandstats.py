"""How long the commands the manager sends down Lifecycle sessions take to
come back, by command kind and outcome: counted on the manager's loop by
Sessions.command, read at scrape time by /metrics (_prometheus).

Plain lists, no library and no lock: a command costs a bisect and a few
increments (a stop storm sends 10,000), and only the loop records or reads.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = ["COMMAND_LATENCY_BOUNDS", "CommandLatency", "CommandStats"]

# Upper bounds (seconds) of the latency buckets: a pause answers in
# milliseconds, a stop waits out its hooks (a grace period of 30 s or more).
COMMAND_LATENCY_BOUNDS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


@dataclass
class CommandLatency:
    """The latencies of one (kind, outcome): per-bucket counts (bucket i
    holds bounds[i-1] < x <= bounds[i], the last one everything above), as
    Prometheus' ``le`` buckets once summed up."""

    bucket_counts: list[int] = field(
        default_factory=lambda: [0] * (len(COMMAND_LATENCY_BOUNDS) + 1)
    )
    count: int = 0
    sum: float = 0.0


class CommandStats:
    """Command latencies by (kind, outcome): the kind is the command's oneof
    field ("stop", "pause", ...), the outcome its status code's name ("OK",
    "DEADLINE_EXCEEDED", ...): both bounded sets."""

    def __init__(self) -> None:
        self.latencies: dict[tuple[str, str], CommandLatency] = {}

    def observe(self, kind: str, outcome: str, seconds: float) -> None:
        latency = self.latencies.get((kind, outcome))
        if latency is None:
            latency = self.latencies[(kind, outcome)] = CommandLatency()
        latency.bucket_counts[bisect_left(COMMAND_LATENCY_BOUNDS, seconds)] += 1
        latency.count += 1
        latency.sum += seconds
