"""The lifecycle state machine: one transition table from which the checks,
the errors and the docs are derived.

A command moves a container from a stable state through a transitional state
(while its hook runs) to a new stable state. A hook that raises moves the
container to FAILED. The table is data so that tests can walk it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .._errors import RequestError, failed_precondition
from ..v1 import container_pb2


class State(enum.IntEnum):
    """Lifecycle states, numbered as pycontainer.v1.LifecycleState."""

    CREATED = 1
    STARTING = 2
    RUNNING = 3
    PAUSED = 4
    STOPPING = 5
    STOPPED = 6
    FAILED = 7
    PAUSING = 8
    RESUMING = 9

    @property
    def terminal(self) -> bool:
        """True for states no command leaves."""
        return self in (State.STOPPED, State.FAILED)


class Command(enum.StrEnum):
    """Commands of the downward API."""

    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    CHECKPOINT = "checkpoint"
    RESTORE = "restore"
    REPLICATE = "replicate"


def state_proto(state: State) -> container_pb2.LifecycleState.ValueType:
    """``state`` as a pycontainer.v1.LifecycleState value (the numbers are the same)."""
    return container_pb2.LifecycleState.ValueType(int(state))


@dataclass(frozen=True)
class Transition:
    """What a command does from one state."""

    # The hook that runs, by attribute name of Hooks.
    hook: str
    # State while the hook runs; None when the command keeps the state.
    during: State | None
    # State after the hook returned.
    after: State


_STOP = Transition("on_stop", State.STOPPING, State.STOPPED)

# (state, command) -> transition. Anything absent is forbidden.
TRANSITIONS: dict[tuple[State, Command], Transition] = {
    (State.CREATED, Command.START): Transition("on_start", State.STARTING, State.RUNNING),
    (State.CREATED, Command.RESTORE): Transition("on_restore", None, State.CREATED),
    (State.CREATED, Command.STOP): _STOP,
    (State.RUNNING, Command.PAUSE): Transition("on_pause", State.PAUSING, State.PAUSED),
    (State.RUNNING, Command.STOP): _STOP,
    (State.RUNNING, Command.CHECKPOINT): Transition("on_checkpoint", None, State.RUNNING),
    (State.RUNNING, Command.RESTORE): Transition("on_restore", None, State.RUNNING),
    (State.RUNNING, Command.REPLICATE): Transition("on_replicate", None, State.RUNNING),
    (State.PAUSED, Command.RESUME): Transition("on_resume", State.RESUMING, State.RUNNING),
    (State.PAUSED, Command.STOP): _STOP,
    (State.PAUSED, Command.CHECKPOINT): Transition("on_checkpoint", None, State.PAUSED),
    (State.PAUSED, Command.RESTORE): Transition("on_restore", None, State.PAUSED),
    (State.PAUSED, Command.REPLICATE): Transition("on_replicate", None, State.PAUSED),
}


def allowed_commands(state: State) -> list[Command]:
    """Commands the table allows in a state, in declaration order."""
    return [cmd for (st, cmd) in TRANSITIONS if st == state]


def transition(state: State, command: Command) -> Transition:
    """The transition of a command, or FAILED_PRECONDITION naming what is allowed."""
    found = TRANSITIONS.get((state, command))
    if found is None:
        raise forbidden(state, command)
    return found


def forbidden(state: State, command: Command) -> RequestError:
    """The error for a command the table forbids in a state."""
    allowed = ", ".join(c.value for c in allowed_commands(state)) or "nothing (terminal state)"
    return failed_precondition(
        f"cannot {command.value} a container in state {state.name}; {state.name} allows: {allowed}"
    )


def render_table() -> str:
    """The table as Markdown, for the README."""
    lines = ["| state | command | hook | during | after |", "|---|---|---|---|---|"]
    for (state, command), t in TRANSITIONS.items():
        during = t.during.name if t.during else "(unchanged)"
        lines.append(f"| {state.name} | {command.value} | {t.hook} | {during} | {t.after.name} |")
    return "\n".join(lines)
