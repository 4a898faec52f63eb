"""`pycontainer token create|list|revoke`: bootstrap tokens, with which a
container the manager did not launch joins it (Manager.CreateBootstrapToken,
ListBootstrapTokens, RevokeBootstrapToken).

``create`` prints the export lines a joiner needs on stdout (the token is
shown this once; ``eval "$(pycontainer token create)"`` sets them) and what
the token is on stderr."""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING

from .._tls_env import BOOTSTRAP_TOKEN_ENV, CA_PIN_ENV, JOIN_ENV
from ..client import MANAGER_ENV
from ..units import duration_to_proto, format_duration
from ..v1 import manager_pb2
from ._context import Context
from ._output import console, message_dict, print_data, show
from ._render import local_time, plain_table

if TYPE_CHECKING:
    from ..client import ManagerClient

#: The container id a launched container reads; a joiner with a token made
#: for one id sets it so that it asks for that id.
CONTAINER_ID_ENV = "PYCONTAINER_CONTAINER_ID"


def run(args: argparse.Namespace, ctx: Context) -> int:
    action = args.token_action
    with ctx.manager(args) as manager:
        if action == "create":
            return _create(args, ctx, manager)
        if action == "list":
            tokens = manager.list_bootstrap_tokens().tokens
            if args.output != "table":
                print_data(ctx, [message_dict(t) for t in tokens], args.output)
                return 0
            if not tokens:
                ctx.err("no bootstrap tokens (make one with `pycontainer token create`)")
                return 0
            table = plain_table("ID", "CONTAINER", "USES LEFT", "EXPIRES")
            for token in tokens:
                table.add_row(
                    token.token_id,
                    token.container_id or "(any)",
                    str(token.uses_left),
                    local_time(token.expire_time, date=True),
                )
            show(console(ctx), table)
            return 0
        manager.revoke_bootstrap_token(
            manager_pb2.RevokeBootstrapTokenRequest(token_id=args.token_id)
        )
        ctx.out(f"bootstrap token {args.token_id} revoked")
        return 0


def _create(args: argparse.Namespace, ctx: Context, manager: ManagerClient) -> int:
    response = manager.create_bootstrap_token(
        manager_pb2.CreateBootstrapTokenRequest(
            ttl=duration_to_proto(args.ttl),
            uses=args.uses,
            container_id=args.name or "",
            description=args.description,
        )
    )
    if args.output == "json":
        print_data(ctx, message_dict(response), "json")
        return 0
    exports = {
        BOOTSTRAP_TOKEN_ENV: response.token,
        JOIN_ENV: response.join_address,
        CA_PIN_ENV: response.ca_pin,
        MANAGER_ENV: response.manager_address,
    }
    if args.name:
        exports[CONTAINER_ID_ENV] = args.name
    for name, value in exports.items():
        ctx.out(f"export {name}={shlex.quote(value)}")
    ctx.stdout.flush()
    count = args.uses or 1
    uses = "1 use" if count == 1 else f"{count} uses"
    who = f"container {args.name}" if args.name else "any container id"
    ctx.err(
        f"bootstrap token {response.token_id}: {uses} by {who}, for {format_duration(args.ttl)} "
        f"(until {local_time(response.expire_time, date=True)}); shown only now. Set these "
        "where the container runs; it joins at its start (pycontainer token revoke "
        f"{response.token_id} to withdraw it)"
    )
    return 0
