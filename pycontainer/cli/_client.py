"""What every client verb shares: finding the manager, calling it, turning
gRPC failures into one line and an exit code, and printing listings."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console, RenderableType

from ..v1 import manager_pb2_grpc

__all__ = [
    "DEFAULT_MANAGER",
    "EXIT_FAILED",
    "EXIT_UNREACHABLE",
    "MANAGER_ENV",
    "CliError",
    "ManagerClient",
    "add_manager_option",
    "add_output_option",
    "connect",
    "error_console",
    "message_dict",
    "print_data",
    "show",
    "stdout_console",
]

DEFAULT_MANAGER = "127.0.0.1:50050"
MANAGER_ENV = "PYCONTAINER_MANAGER"
EXIT_FAILED = 1
EXIT_UNREACHABLE = 2

_STATUS_DETAILS_KEY = "grpc-status-details-bin"

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class CliError(Exception):
    """A failure to report as one line (``error: ...``) and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def add_manager_option(parser: argparse.ArgumentParser) -> None:
    """``--manager ADDR`` on a client verb."""
    parser.add_argument(
        "--manager",
        metavar="ADDR",
        default=None,
        help=f"HOST:PORT of the manager (default: ${MANAGER_ENV}, else {DEFAULT_MANAGER})",
    )


def add_output_option(parser: argparse.ArgumentParser, *, formats: tuple[str, ...]) -> None:
    """``-o/--output`` for a verb that prints a listing."""
    parser.add_argument(
        "-o",
        "--output",
        choices=formats,
        default=formats[0],
        help=f"output format: {', '.join(formats)} (default: {formats[0]})",
    )


def manager_address(args: argparse.Namespace) -> str:
    """--manager, else $PYCONTAINER_MANAGER, else the default address."""
    given: str | None = getattr(args, "manager", None) or getattr(args, "global_manager", None)
    return given or os.environ.get(MANAGER_ENV) or DEFAULT_MANAGER


def _short_reason(details: str) -> str:
    """The useful tail of a connection failure: "Connection refused" rather than
    gRPC's "failed to connect to all addresses; last error: UNKNOWN: ipv4:...: ..."."""
    if "last error:" in details:
        tail = details.rsplit(": ", 1)[-1].strip()
        if tail:
            return tail
    return details or "no details"


class ManagerClient:
    """A channel to the manager; calls that raise CliError instead of RpcError."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(address)
        self.stub = manager_pb2_grpc.ManagerStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def error(self, exc: grpc.RpcError, what: str = "") -> CliError:
        """The CliError for a failed call: exit 2 when the manager was never
        reached, exit 1 with its status when it answered with an error."""
        return rpc_error(exc, self.address, what)

    def call(
        self,
        method: Callable[..., Resp],
        request: Any,
        timeout: float | None = 30.0,
        what: str = "",
    ) -> Resp:
        """``method(request)``; a CliError when it fails."""
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise self.error(exc, what) from None

    def stream(
        self, method: Callable[..., Any], request: Any, timeout: float | None = None
    ) -> Iterator[Any]:
        """The responses of a server stream; cancelled when the caller stops
        iterating (or is interrupted); a CliError when it fails."""
        call = method(request, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise self.error(exc) from None
        finally:
            call.cancel()


def _key(metadatum: Any) -> str:
    """A trailing metadata item's key (a (key, value) named tuple)."""
    return str(metadatum[0])


def rpc_error(
    exc: grpc.RpcError, address: str, what: str = "", server: str = "the manager"
) -> CliError:
    """Exit 2 and "cannot reach the manager at ADDR: ..." when the call never
    got an answer from the server (pycontainer's own errors always carry rich
    status details); exit 1 and "CODE: details" otherwise."""
    code: grpc.StatusCode = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details: str = (exc.details() if hasattr(exc, "details") else "") or ""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    answered = any(_key(item) == _STATUS_DETAILS_KEY for item in trailing or ())
    if not answered and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        reason = "timed out" if code == grpc.StatusCode.DEADLINE_EXCEEDED else ""
        return CliError(
            f"cannot reach {server} at {address}: {reason or _short_reason(details)}",
            EXIT_UNREACHABLE,
        )
    prefix = f"{what}: " if what else ""
    return CliError(f"{prefix}{code.name}: {details}", EXIT_FAILED)


def connect(args: argparse.Namespace) -> ManagerClient:
    """A client of the manager the verb's arguments name."""
    return ManagerClient(manager_address(args))


# -- output --------------------------------------------------------------------------------
def stdout_console(no_color: bool = False) -> Console:
    """A console on stdout: colour only on a terminal (and never with
    --no-color or $NO_COLOR); no wrapping when piped."""
    terminal = sys.stdout.isatty()
    return Console(
        file=sys.stdout,
        no_color=no_color or None,
        color_system=None if no_color else "auto",
        highlight=False,
        soft_wrap=not terminal,
        width=None if terminal else 10_000,
    )


def show(console: Console, *renderables: RenderableType) -> None:
    """Print tables and grids; off a terminal, without the spaces that pad
    their lines to the column widths (as kubectl's output has none)."""
    if console.is_terminal and sys.stdout.isatty():
        console.print(*renderables)
        return
    with console.capture() as captured:
        console.print(*renderables)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    console.file.write(text + "\n")
    console.file.flush()


def error_console() -> Console:
    """A console on stderr, for spinners and notes that must not mix with output."""
    return Console(file=sys.stderr, highlight=False)


def message_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, with its zero-valued fields too."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def print_data(data: Any, output: str) -> None:
    """``data`` as JSON or YAML on stdout."""
    if output == "json":
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    sys.stdout.flush()


@contextlib.contextmanager
def spinner(text: str) -> Iterator[None]:
    """A rich.status spinner on stderr while something takes a moment (nothing
    when stderr is not a terminal)."""
    console = error_console()
    if not console.is_terminal:
        yield
        return
    with console.status(text):
        yield
