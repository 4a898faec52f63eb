"""How a verb fails: one line (``error: ...``) and an exit status."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..client import CallError

__all__ = ["EXIT_FAILED", "EXIT_UNREACHABLE", "CliError", "from_call"]

EXIT_FAILED = 1
EXIT_UNREACHABLE = 2


class CliError(Exception):
    """A failure to report as one line (``error: ...``) and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def from_call(exc: CallError, what: str = "", server: str = "the manager") -> CliError:
    """Exit 2 and "cannot reach the manager at ADDR: ..." when the call never
    got an answer; exit 1 and "[WHAT: ]CODE: details" when the server refused."""
    if not exc.reached:
        return CliError(exc.describe(server), EXIT_UNREACHABLE)
    prefix = f"{what}: " if what else ""
    return CliError(f"{prefix}{exc.describe(server)}", EXIT_FAILED)
