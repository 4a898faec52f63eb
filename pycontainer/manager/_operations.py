"""Operations: every mutating Manager call gets an outcome the operator can
query by its request_id (AIP-155), and a retry with the same id never acts
twice.

A call runs in a task of its own, not in its RPC's handler: a caller whose
deadline passes (or whose connection drops) leaves it running, and its
outcome is recorded all the same. The newest OPERATIONS_KEPT are indexed in
memory (their responses for the newest OPERATION_RESPONSES_CACHED) and kept
in the state store through the journal; those RUNNING when an earlier manager
died are INTERRUPTED from the start.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

from .._errors import RequestError, code_number, echo, invalid_argument, not_found, status_code
from ..client._request_ids import new_request_id
from ..limits import (
    MAX_OPERATION_TARGET_CHARS,
    MAX_OPERATIONS_PAGE,
    MAX_REQUEST_ID_LENGTH,
    OPERATION_RESPONSES_CACHED,
    OPERATIONS_KEPT,
    REQUEST_ID_PATTERN,
)
from ..units import timestamp_to_proto
from ..v1 import manager_pb2
from ._journal import Journal
from ._store import OperationRecord

__all__ = [
    "REQUEST_ID_METADATA",
    "Operations",
    "bounded_target",
    "check_request_id",
    "new_request_id",
]

#: The trailing metadata key a mutating call's request_id comes back in.
REQUEST_ID_METADATA = "pycontainer-request-id"

R = TypeVar("R", bound=Message)

_RUNNING = manager_pb2.OPERATION_STATE_RUNNING
_SUCCEEDED = manager_pb2.OPERATION_STATE_SUCCEEDED
_FAILED = manager_pb2.OPERATION_STATE_FAILED
_INTERRUPTED = manager_pb2.OPERATION_STATE_INTERRUPTED


def check_request_id(request_id: str) -> None:
    """INVALID_ARGUMENT for an id that is too long or has odd characters."""
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise invalid_argument(
            "request_id",
            f"is {len(request_id)} characters, at most {MAX_REQUEST_ID_LENGTH} "
            "(pycontainer.limits.MAX_REQUEST_ID_LENGTH): use a UUID",
        )
    if not REQUEST_ID_PATTERN.fullmatch(request_id):
        raise invalid_argument(
            "request_id",
            f"{echo(request_id)} may hold only letters, digits, '.', '_' and '-': use a UUID",
        )


def bounded_target(target: str) -> str:
    """A call's target as an operation and its audit event keep it: at most
    MAX_OPERATION_TARGET_CHARS, with how long it was past that."""
    if len(target) <= MAX_OPERATION_TARGET_CHARS:
        return target
    return f"{target[:MAX_OPERATION_TARGET_CHARS]}… ({len(target)} characters)"


def fingerprint(method: str, request: Message) -> str:
    """What makes two calls the same call: the method and the request without its id."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    digest = hashlib.sha256(method.encode() + b"\0")
    digest.update(copy.SerializeToString(deterministic=True))
    return digest.hexdigest()


def interrupted_message(target: str) -> str:
    what = f"pycontainer describe {target}" if target else "pycontainer ps -a"
    return (
        "the manager stopped while this ran: whether it took effect is unknown; "
        f"check the container's state ({what})"
    )


@dataclasses.dataclass
class _Outcome:
    record: OperationRecord
    # The response, when it succeeded; the original error (rich details and
    # all) when it failed in this manager's lifetime.
    response: Message | None = None
    error: RequestError | None = None


class Operations:
    """The index of operations and the runner of new ones."""

    def __init__(
        self,
        journal: Journal,
        *,
        kept: int = OPERATIONS_KEPT,
        responses_cached: int = OPERATION_RESPONSES_CACHED,
    ) -> None:
        self.journal = journal
        self._kept = kept
        self._responses_cached = responses_cached
        # Every kept operation, oldest first, without its response.
        self._index: collections.OrderedDict[str, OperationRecord] = collections.OrderedDict()
        # The newest responses (serialized Any), by request_id.
        self._responses: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._running: dict[str, asyncio.Future[_Outcome]] = {}
        self._tasks: set[asyncio.Task[_Outcome]] = set()

    def open(self) -> None:
        """Index what an earlier manager left, its RUNNING operations
        INTERRUPTED; then start the journal (call once this manager holds the
        state directory)."""
        store = self.journal.store
        if store is None:
            return
        self._index.clear()
        now = time.time()
        for record in store.list_operations(self._kept):
            if record.state == _RUNNING:
                record = dataclasses.replace(
                    record,
                    state=_INTERRUPTED,
                    end_time=now,
                    code=code_number(grpc.StatusCode.UNKNOWN),
                    message=interrupted_message(record.target),
                )
                self.journal.operation(record)
            self._index[record.request_id] = record
        self.journal.start()

    # -- running ----------------------------------------------------------------------
    async def run(
        self,
        *,
        request_id: str,
        method: str,
        request: Message,
        target: str,
        actor: str,
        action: Callable[[], Awaitable[R]],
        response_type: type[R],
    ) -> R:
        """``action``'s response, run once per request_id: a retry waits for or
        returns the first outcome (its error raised again)."""
        print_ = fingerprint(method, request)
        known = self._index.get(request_id)
        if known is not None:
            if known.method != method or known.fingerprint != print_:
                raise invalid_argument(
                    "request_id",
                    f"{echo(request_id)} was used for another call ({known.method} of "
                    f"{echo(known.target)}): a new request needs a new id",
                )
            return await self._outcome_of(known, response_type)
        record = OperationRecord(
            request_id=request_id,
            method=method,
            target=target,
            actor=actor,
            fingerprint=print_,
            state=_RUNNING,
            start_time=time.time(),
        )
        done: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._running[request_id] = done
        self._remember(record)
        # In a task of its own, the recording included: once the RUNNING record
        # is being written the call happens, whether its caller waits or not.
        task = asyncio.ensure_future(self._carry_out(record, action, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return self._result(await asyncio.shield(done), response_type)

    async def _carry_out(
        self,
        record: OperationRecord,
        action: Callable[[], Awaitable[Message]],
        done: asyncio.Future[_Outcome],
    ) -> _Outcome:
        try:
            # On disk before it acts: a manager killed while it runs leaves it
            # RUNNING, which its successor reports INTERRUPTED. A store that
            # cannot take it now (full, read-only, stalled) does not stop the
            # command: the record stays queued, and this manager answers for it.
            # (The journal logs once when the store starts refusing.)
            await self.journal.durable(record)
        except asyncio.CancelledError:
            # The manager is stopping: not run, and forgotten so that a retry runs it.
            self._running.pop(record.request_id, None)
            self._index.pop(record.request_id, None)
            error = RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "the manager stopped before the operation ran; retry it",
            )
            # Its RUNNING row may be written.
            self.journal.operation(
                dataclasses.replace(
                    record,
                    state=_FAILED,
                    end_time=time.time(),
                    code=code_number(error.code),
                    message=error.message,
                )
            )
            outcome = _Outcome(record, error=error)
            done.set_result(outcome)
            return outcome
        try:
            response = await action()
        except RequestError as exc:
            outcome = _Outcome(self._ended(record, _FAILED, exc.code, exc.message), error=exc)
        except asyncio.CancelledError:
            outcome = _Outcome(
                self._ended(
                    record,
                    _INTERRUPTED,
                    grpc.StatusCode.UNKNOWN,
                    interrupted_message(record.target),
                )
            )
        except Exception as exc:  # a bug: recorded, and INTERNAL as the interceptor says
            message = f"{type(exc).__name__}: {exc}"
            outcome = _Outcome(self._ended(record, _FAILED, grpc.StatusCode.INTERNAL, message))
        else:
            packed = any_pb2.Any()
            packed.Pack(response)
            data = packed.SerializeToString()
            self._responses[record.request_id] = data
            while len(self._responses) > self._responses_cached:
                self._responses.popitem(last=False)
            outcome = _Outcome(
                self._ended(record, _SUCCEEDED, grpc.StatusCode.OK, "", data), response=response
            )
        self._running.pop(record.request_id, None)
        if not done.done():
            done.set_result(outcome)
        return outcome

    def _ended(
        self,
        record: OperationRecord,
        state: int,
        code: grpc.StatusCode,
        message: str,
        response: bytes = b"",
    ) -> OperationRecord:
        ended = dataclasses.replace(
            record,
            state=state,
            end_time=time.time(),
            code=code_number(code),
            message=message,
            response=response,
        )
        self.journal.operation(ended)
        if record.request_id in self._index:
            self._index[record.request_id] = dataclasses.replace(ended, response=b"")
        return ended

    def _remember(self, record: OperationRecord) -> None:
        self._index[record.request_id] = record
        while len(self._index) > self._kept:
            self._index.popitem(last=False)

    async def _outcome_of(self, record: OperationRecord, response_type: type[R]) -> R:
        running = self._running.get(record.request_id)
        if running is not None:
            return self._result(await asyncio.shield(running), response_type)
        return self._result(_Outcome(await self._with_response(record)), response_type)

    def _result(self, outcome: _Outcome, response_type: type[R]) -> R:
        record = outcome.record
        if outcome.error is not None:
            raise outcome.error
        if record.state == _SUCCEEDED:
            if isinstance(outcome.response, response_type):
                return outcome.response
            response = response_type()
            packed = any_pb2.Any.FromString(record.response)
            packed.Unpack(response)
            return response
        raise RequestError(
            status_code(record.code),
            f"request {record.request_id} ({record.method} of {record.target}): {record.message}",
        )

    async def _with_response(self, record: OperationRecord) -> OperationRecord:
        """The record with its response (from memory, else the store)."""
        if record.state != _SUCCEEDED:
            return record
        cached = self._responses.get(record.request_id)
        if cached is not None:
            return dataclasses.replace(record, response=cached)
        store = self.journal.store
        if store is not None:
            stored = await asyncio.to_thread(store.get_operation, record.request_id)
            if stored is not None:
                return stored
        return record

    async def close(self) -> None:
        """Interrupt what still runs (the manager stops), then write everything."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.journal.close)

    # -- reading ----------------------------------------------------------------------
    async def get(self, request_id: str) -> manager_pb2.Operation:
        """GetOperation."""
        record = self._index.get(request_id)
        if record is None:
            raise not_found(
                "request_id",
                f"no operation {echo(request_id)}: it never reached this manager, or it is "
                f"older than the newest {self._kept} (pycontainer.limits.OPERATIONS_KEPT)",
            )
        return to_proto(await self._with_response(record))

    def list(self, container: str, page_size: int) -> list[manager_pb2.Operation]:
        """ListOperations: the newest first, without responses."""
        if page_size < 0:
            raise invalid_argument("page_size", f"must be 0 or more, got {page_size}")
        size = min(page_size or 100, MAX_OPERATIONS_PAGE)
        chosen: list[manager_pb2.Operation] = []
        for record in reversed(self._index.values()):
            if container and container not in record.target.split(", "):
                continue
            chosen.append(to_proto(record))
            if len(chosen) >= size:
                break
        return chosen


def to_proto(record: OperationRecord) -> manager_pb2.Operation:
    """The Operation of a record."""
    operation = manager_pb2.Operation(
        request_id=record.request_id,
        method=record.method,
        target=record.target,
        actor=record.actor,
        state=record.state,  # type: ignore[arg-type]
        start_time=timestamp_to_proto(record.start_time),
    )
    if record.state != _RUNNING:
        operation.status.code = record.code
        operation.status.message = record.message
        if record.end_time is not None:
            operation.end_time.CopyFrom(timestamp_to_proto(record.end_time))
    if record.response:
        operation.response.ParseFromString(record.response)
    return operation
