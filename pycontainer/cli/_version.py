"""`pycontainer version`: this command's version and the manager's (GetVersion)."""

from __future__ import annotations

import argparse
import platform

import grpc
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation

from .. import __version__
from ..v1 import manager_pb2
from ._context import Context
from ._output import message_dict, print_data


def client_version() -> manager_pb2.GetVersionResponse:
    """This process's versions, in the message the manager answers with."""
    return manager_pb2.GetVersionResponse(
        version=__version__,
        python_version=platform.python_version(),
        grpc_version=grpc.__version__,
        protobuf_version=f"{protobuf_version} {api_implementation.Type()}",
    )


def _line(who: str, v: manager_pb2.GetVersionResponse) -> str:
    return (
        f"{who} Version: {v.version} (Python {v.python_version}, grpcio {v.grpc_version}, "
        f"protobuf {v.protobuf_version})"
    )


def run(args: argparse.Namespace, ctx: Context) -> int:
    client = client_version()
    if args.output != "table":
        data = {"client": message_dict(client)}
        if not args.client:
            with ctx.manager(args) as manager:
                data["manager"] = message_dict(manager.get_version())
        print_data(ctx, data, args.output)
        return 0
    ctx.out(_line("Client", client))
    ctx.stdout.flush()
    if not args.client:
        with ctx.manager(args) as manager:
            ctx.out(_line("Manager", manager.get_version()))
    return 0
