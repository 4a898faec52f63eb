"""gRPC socket statistics of this process's servers, from channelz."""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format

from pycontainer.v1 import profile_pb2

__all__ = ["channelz_sockets"]


def _address(address: Any) -> str:
    if address.HasField("tcpip_address"):
        tcp = address.tcpip_address
        try:
            ip = ipaddress.ip_address(tcp.ip_address)
        except ValueError:  # not 4 or 16 bytes
            return f"{tcp.ip_address.hex()}:{tcp.port}"
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"{host}:{tcp.port}"
    if address.HasField("uds_address"):
        return f"unix:{address.uds_address.filename}"
    return str(address.other_address.name)


def channelz_sockets() -> list[profile_pb2.SocketStats]:
    """Per-connection statistics of this process's gRPC servers, from channelz.

    Empty when grpcio-channelz is not installed.
    """
    try:
        from grpc_channelz.v1 import channelz_pb2

        cygrpc: Any = importlib.import_module("grpc._cython.cygrpc")
    except ImportError:
        return []

    def call(fn: Callable[..., bytes | str], message: Any, *args: int) -> Any:
        # The grpcio-channelz servicer parses strictly, so it fails as soon as
        # the gRPC core is newer than its protos; unknown fields are harmless.
        return json_format.Parse(fn(*args), message, ignore_unknown_fields=True)

    out: list[profile_pb2.SocketStats] = []
    # channelz lists in pages; each page says where the listing ends.
    server_start, servers_done = 0, False
    while not servers_done:
        try:
            servers = call(
                cygrpc.channelz_get_servers, channelz_pb2.GetServersResponse(), server_start
            )
        except (ValueError, json_format.ParseError):  # channelz off or unreadable
            return out
        server_ids = [s.ref.server_id for s in servers.server]
        servers_done = servers.end or not server_ids
        server_start = max(server_ids, default=0) + 1
        for server_id in server_ids:
            socket_start, sockets_done = 0, False
            while not sockets_done:
                try:
                    page = call(
                        cygrpc.channelz_get_server_sockets,
                        channelz_pb2.GetServerSocketsResponse(),
                        server_id,
                        socket_start,
                        0,
                    )
                except (ValueError, json_format.ParseError):  # server gone meanwhile
                    break
                socket_ids = [ref.socket_id for ref in page.socket_ref]
                sockets_done = page.end or not socket_ids
                socket_start = max(socket_ids, default=0) + 1
                for socket_id in socket_ids:
                    try:
                        socket = call(
                            cygrpc.channelz_get_socket, channelz_pb2.GetSocketResponse(), socket_id
                        ).socket
                    except (ValueError, json_format.ParseError):  # closed meanwhile
                        continue
                    out.append(_socket_stats(socket))
    return out


def _socket_stats(socket: Any) -> profile_pb2.SocketStats:
    data = socket.data
    stats = profile_pb2.SocketStats(
        remote=_address(socket.remote) if socket.HasField("remote") else socket.remote_name,
        local=_address(socket.local) if socket.HasField("local") else "",
        streams_started=data.streams_started,
        streams_succeeded=data.streams_succeeded,
        streams_failed=data.streams_failed,
        messages_sent=data.messages_sent,
        messages_received=data.messages_received,
        keepalives_sent=data.keep_alives_sent,
    )
    if data.HasField("last_message_sent_timestamp"):
        stats.last_message_sent_time.CopyFrom(data.last_message_sent_timestamp)
    if data.HasField("last_message_received_timestamp"):
        stats.last_message_received_time.CopyFrom(data.last_message_received_timestamp)
    return stats
