"""Finding the leader among managers in high availability (the one home of
that logic: ManagerClient, and through it the CLI, use it).

Of several managers on one etcd cluster one leads; a standby forwards reads
to it and refuses writes with FAILED_PRECONDITION, and every answer of a
standby (forwarded or refused) names the leader in the ``pycontainer-leader``
trailing metadata. So a client given every address asks each in turn for a
read and takes the first that answers without naming another (the leader),
or the one a standby names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

    from ._transport import Transport

__all__ = ["LEADER_METADATA", "find_leader", "find_leader_aio", "leader_named"]

#: The trailing metadata key naming the leader in a standby's answers.
LEADER_METADATA = "pycontainer-leader"
# Each probe's deadline, in seconds: a manager that does not answer within it
# is passed over (the next address is tried).
_PROBE_SECONDS = 3.0


def leader_named(metadata: Any) -> str | None:
    """The leader's address ``metadata`` (a call's trailing metadata) names:
    "" when a standby knows of none yet, None when it names nothing (the
    leader's own answer, or no pycontainer manager's)."""
    for key, value in metadata or ():
        if key == LEADER_METADATA:
            return value if isinstance(value, str) else bytes(value).decode()
    return None


def _leader_of(target: str, metadata: Any, code: grpc.StatusCode | None) -> str | None:
    """What a probe of ``target`` says of the leader: ``target`` itself when
    it answered without naming another (``code`` None), the one an answer or
    a standby's refusal names; None when it tells nothing (down, a standby
    knowing no leader yet, or one that cannot reach the leader it knows:
    failing over, the next address may lead)."""
    import grpc

    named = leader_named(metadata)
    if code is None:
        # Answered: by the leader itself, or forwarded to the one named.
        return named or target
    if code == grpc.StatusCode.FAILED_PRECONDITION and named:
        return named
    return None


def find_leader(
    targets: Sequence[str], transport: Transport, options: Sequence[tuple[str, Any]] = ()
) -> str:
    """Of several managers' addresses, the leader's: the first that answers a
    read itself, or the one a standby's answer names; else the first (whose
    error the caller then meets)."""
    import grpc

    from ..v1 import manager_pb2, manager_pb2_grpc

    for target in targets:
        channel: grpc.Channel = transport.channel(target, options)
        try:
            stub = manager_pb2_grpc.ManagerStub(channel)
            _, call = stub.GetVersion.with_call(
                manager_pb2.GetVersionRequest(), timeout=_PROBE_SECONDS
            )
            found = _leader_of(target, call.trailing_metadata(), None)
        except grpc.RpcError as exc:
            found = _leader_of(target, exc.trailing_metadata(), exc.code())
        finally:
            channel.close()
        if found:
            return found
    return targets[0]


async def find_leader_aio(
    targets: Sequence[str], transport: Transport, options: Sequence[tuple[str, Any]] = ()
) -> str:
    """find_leader on asyncio channels."""
    import grpc.aio

    from ..v1 import manager_pb2, manager_pb2_grpc

    for target in targets:
        channel = transport.aio_channel(target, options)
        try:
            call = manager_pb2_grpc.ManagerStub(channel).GetVersion(
                manager_pb2.GetVersionRequest(), timeout=_PROBE_SECONDS
            )
            await call
            found = _leader_of(target, await call.trailing_metadata(), None)
        except grpc.aio.AioRpcError as exc:
            found = _leader_of(target, exc.trailing_metadata(), exc.code())
        finally:
            await channel.close(None)
        if found:
            return found
    return targets[0]
