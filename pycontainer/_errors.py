"""Request errors that carry a gRPC status, with google.rpc rich details.

Library code raises :class:`RequestError` (usually through :func:`invalid_argument`
and friends); the servicer faces turn it into a status with ``BadRequest`` /
``PreconditionFailure`` / ``QuotaFailure`` details (grpcio-status), so every
client sees which field to fix.

This is the one mapping between request errors and gRPC statuses, for the
container side and the manager alike: :meth:`RequestError.to_status` and
:func:`abort` on the way out of a servicer, :func:`code_number` /
:func:`status_code` for the codes a Lifecycle ``CommandResult`` carries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from .limits import MAX_ECHOED_CHARS, MAX_ERROR_FIELD_BYTES, MAX_ERROR_MESSAGE_BYTES


def echo(value: object, limit: int = MAX_ECHOED_CHARS) -> str:
    """A client's value as an error message shows it: ``repr`` for a string,
    cut to ``limit`` characters with how long it was ("… (N bytes)"), so that
    an error about a huge input stays small enough for gRPC's trailers."""
    text = repr(value) if isinstance(value, str | bytes) else str(value)
    if len(text) <= limit:
        return text
    if isinstance(value, bytes):
        size = len(value)
    else:
        size = len((value if isinstance(value, str) else text).encode())
    return f"{text[:limit]}… ({size} bytes)"


def _bounded(message: str, limit: int = MAX_ERROR_MESSAGE_BYTES) -> str:
    """The one bound on every error message (whatever was echoed into it), in
    UTF-8 bytes, cut on a character boundary."""
    encoded = message.encode()
    if len(encoded) <= limit:
        return message
    kept = encoded[: limit - 32].decode(errors="ignore")
    return f"{kept}… ({len(encoded)} bytes)"


@dataclass
class RequestError(Exception):
    """A request that cannot be served as asked, and why."""

    code: grpc.StatusCode
    message: str
    # The request field at fault (for INVALID_ARGUMENT / NOT_FOUND), dotted path.
    field: str = ""
    details: list[any_pb2.Any] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.message = _bounded(self.message)
        self.field = _bounded(self.field, MAX_ERROR_FIELD_BYTES)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> grpc.Status:
        """The grpc.Status to abort with, rich details included."""
        details = list(self.details)
        if self.field and self.code == grpc.StatusCode.INVALID_ARGUMENT:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=self.field, description=self.message
                    )
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        status = status_pb2.Status(
            code=code_number(self.code), message=self.message, details=details
        )
        from grpc_status import rpc_status  # (only a server raising one needs it)

        return rpc_status.to_status(status)


_CODE_NUMBERS: dict[grpc.StatusCode, int] = {code: code.value[0] for code in grpc.StatusCode}
_CODES: dict[int, grpc.StatusCode] = {number: code for code, number in _CODE_NUMBERS.items()}
assert _CODE_NUMBERS[grpc.StatusCode.INVALID_ARGUMENT] == code_pb2.INVALID_ARGUMENT


def code_number(code: grpc.StatusCode) -> int:
    """The wire number of a status code (google.rpc.Code)."""
    return _CODE_NUMBERS[code]


def status_code(number: int) -> grpc.StatusCode:
    """The status code a wire number means; UNKNOWN for a number gRPC lacks."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


async def abort(context: Any, exc: RequestError) -> None:
    """End a grpc.aio call with the error's rich status (raises, as abort does).
    ``context`` is a grpc.aio.ServicerContext of any request/response types."""
    status = exc.to_status()
    # What the handler set already (such as a mutating call's request id)
    # stays: abort's own trailing metadata would replace it.
    already = getattr(context, "trailing_metadata", lambda: ())() or ()
    await context.abort(status.code, status.details, (*already, *status.trailing_metadata))


def invalid_argument(field: str, message: str) -> RequestError:
    """INVALID_ARGUMENT naming the field: ``field: message``."""
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field)


def not_found(field: str, message: str) -> RequestError:
    """NOT_FOUND for the thing a field names."""
    return RequestError(grpc.StatusCode.NOT_FOUND, f"{field}: {message}", field)


def failed_precondition(message: str) -> RequestError:
    """FAILED_PRECONDITION: the request is valid but not in the current state."""
    return RequestError(grpc.StatusCode.FAILED_PRECONDITION, message)


def resource_exhausted(message: str) -> RequestError:
    """RESOURCE_EXHAUSTED: a limit was reached; the message says which."""
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
