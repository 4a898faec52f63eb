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

__all__ = ["LEADER_METADATA", "find_leader", "leader_named"]

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
            named = leader_named(call.trailing_metadata())
        except grpc.RpcError as exc:
            named = leader_named(exc.trailing_metadata())
            refused = exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            if refused and named:
                return named
            # Down, a standby knowing no leader yet, or one that cannot reach
            # the leader it knows (failing over): the next address may lead.
            continue
        finally:
            channel.close()
        # Answered: by the leader itself, or forwarded to the one named.
        return named or target
    return targets[0]
