"""A failed call, as the client reports it: one exception type for sync and
asyncio, telling a server that answered with an error from one never reached."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from ._leader import leader_named

__all__ = ["CallError"]

# pycontainer's servers attach rich status details (google.rpc.Status) to every
# error they raise; grpc-core's own "no connection" errors carry none.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _short_reason(details: str) -> str:
    """The useful tail of a connection failure: "Connection refused" rather than
    gRPC's "failed to connect to all addresses; last error: UNKNOWN: ipv4:...: ..."."""
    if "andshake failed" in details:  # grpc-core: "Ssl handshake failed", "Tls handshake failed"
        return "the TLS handshake failed"
    if "last error:" in details:
        tail = details.rsplit(": ", 1)[-1].strip()
        if tail:
            return tail
    return details or "no details"


class CallError(Exception):
    """A call that failed: its status ``code`` and ``details``, the ``target``
    called, and whether the server was ``reached`` at all."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        target: str,
        *,
        reached: bool,
        method: str = "",
        hint: str = "",
    ) -> None:
        self.code = code
        self.details = details
        self.target = target
        self.reached = reached
        self.method = method
        # What to try when the server was not reached (the transport's advice).
        self.hint = hint
        # The request_id of a mutating call (GetOperation tells its outcome).
        self.request_id = ""
        # The leader's address a standby manager's refusal names ("" none).
        self.leader = ""
        super().__init__(self.describe())

    @classmethod
    def from_rpc_error(
        cls,
        exc: grpc.RpcError,
        target: str,
        method: str = "",
        *,
        hint: Callable[[str], str] | None = None,
    ) -> CallError:
        """The CallError of a sync or asyncio RpcError."""
        code: grpc.StatusCode = getattr(exc, "code", lambda: grpc.StatusCode.UNKNOWN)()
        details: str = getattr(exc, "details", lambda: "")() or ""
        trailing: Any = getattr(exc, "trailing_metadata", lambda: None)()
        answered = any(str(item[0]) == _STATUS_DETAILS_KEY for item in trailing or ())
        reached = answered or code not in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        advice = hint(details) if hint is not None and not reached else ""
        error = cls(code, details, target, reached=reached, method=method, hint=advice)
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            error.leader = leader_named(trailing) or ""
        return error

    def describe(self, server: str = "the server") -> str:
        """One line: ``CODE: details``, or ``cannot reach SERVER at TARGET: why``."""
        if not self.reached:
            why = (
                "timed out"
                if self.code == grpc.StatusCode.DEADLINE_EXCEEDED
                else _short_reason(self.details)
            )
            advice = f" ({self.hint})" if self.hint else ""
            return f"cannot reach {server} at {self.target}: {why}{advice}"
        return f"{self.code.name}: {self.details}"
