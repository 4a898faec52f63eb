"""How a verb fails: one line (``error: ...``) and an exit status."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..client import CallError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_UNREACHABLE",
    "CliError",
    "Interrupted",
    "from_call",
]

EXIT_FAILED = 1
EXIT_UNREACHABLE = 2
#: Ctrl-C, any verb (a following one too), as a shell reports SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to report as one line (``error: ...``) and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Interrupted(Exception):
    """Ctrl-C, handled by the verb: exit 130 with its note (such as what goes on
    in the manager without us), or silently (a following verb's usual end)."""

    def __init__(self, note: str = "") -> None:
        super().__init__(note)
        self.note = note


def from_call(exc: CallError, what: str = "", server: str = "the manager") -> CliError:
    """Exit 2 and "cannot reach the manager at ADDR: ..." when the call never
    got an answer; exit 1 and "[WHAT: ]CODE: details" when the server refused."""
    if not exc.reached:
        return CliError(exc.describe(server), EXIT_UNREACHABLE)
    prefix = f"{what}: " if what else ""
    return CliError(f"{prefix}{exc.describe(server)}", EXIT_FAILED)
