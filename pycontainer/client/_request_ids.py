"""Request ids (AIP-155): every mutating Manager call carries one, so that a
retry after a lost answer (a deadline, a dropped connection, a restarted
manager) is the same call, not a second one, and its outcome can be asked for
(GetOperation) whatever happened to the answer."""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["MUTATING_METHODS", "new_request_id", "with_request_id"]

M = TypeVar("M")

#: The Manager methods whose requests carry a request_id.
MUTATING_METHODS = frozenset(
    {
        "RunContainer",
        "StopContainer",
        "StopContainers",
        "PauseContainer",
        "ResumeContainer",
        "CheckpointContainer",
        "RestoreContainer",
        "EvictContainer",
        "ScaleContainer",
        "RestartContainer",
        "KillContainer",
        "DeleteContainer",
        "ApplySpecs",
    }
)


def new_request_id() -> str:
    """A fresh request id (a random UUID)."""
    import uuid  # (uuid imports platform: a ps, which mutates nothing, needs neither)

    return str(uuid.uuid4())


def with_request_id(request: M) -> M:
    """``request`` itself when it has a request_id, else a copy with a new one
    (the caller's message is left alone: sending it again is a new call)."""
    message: Any = request
    if message.request_id:
        return request
    copy = type(message)()
    copy.CopyFrom(message)
    copy.request_id = new_request_id()
    return copy  # type: ignore[no-any-return]
