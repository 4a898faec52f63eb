"""Roles: the pure table and bindings, and the interceptors on real sync and aio servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from security_support import issue_files

from pycontainer.security import (
    DEFAULT_BINDINGS,
    MANAGER,
    METHOD_ROLES,
    AioAuthorizationInterceptor,
    AuthorizationInterceptor,
    Authorizer,
    Bindings,
    CertificateAuthority,
    Role,
    SecurityError,
    channel_credentials,
    check_registration,
    container,
    peer_identity,
    required_role,
    server_credentials,
    user,
)
from pycontainer.v1 import bootstrap_pb2, lifecycle_pb2, management_pb2, manager_pb2

# -- the table -----------------------------------------------------------------

_MANAGER = "/pycontainer.v1.Manager/"
_MANAGEMENT = "/pycontainer.v1.Management/"


@pytest.mark.parametrize(
    ("method", "role"),
    [
        *[
            (_MANAGEMENT + name, Role.READ)
            for name in (
                "GetInfo",
                "GetHealth",
                "WatchMetrics",
                "StreamLogs",
                "GetProfile",
                "GetConfig",
            )
        ],
        *[
            (_MANAGER + name, Role.READ)
            for name in ("ListContainers", "GetContainer", "WatchEvents", "GetVersion")
        ],
        *[
            (_MANAGER + name + "Container", Role.OPERATE)
            for name in (
                "Stop",
                "Pause",
                "Resume",
                "Evict",
                "Checkpoint",
                "Restore",
                "Scale",
                "Restart",
                "Kill",
                "Delete",
            )
        ],
        (_MANAGER + "RunContainer", Role.ADMIN),
        (_MANAGER + "ApplySpecs", Role.ADMIN),
        ("/pycontainer.v1.Lifecycle/Connect", Role.CONTAINER),
        ("/grpc.health.v1.Health/Check", Role.READ),
        ("/grpc.health.v1.Health/Watch", Role.READ),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Role.READ),
        # Not in the table (a token or certificate RPC, a typo): admin only.
        (_MANAGER + "CreateToken", Role.ADMIN),
        ("/other.Service/Method", Role.ADMIN),
        ("garbage", Role.ADMIN),
    ],
)
def test_each_method_needs_its_role(method: str, role: Role) -> None:
    assert required_role(method) == role


def test_every_method_in_the_table_is_a_real_rpc() -> None:
    real = {
        f"/{service.full_name}/{method.name}"
        for module in (manager_pb2, management_pb2, lifecycle_pb2, bootstrap_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(METHOD_ROLES) <= real, set(METHOD_ROLES) - real


def test_bindings_include_lower_roles_and_wildcards_cover_a_kind() -> None:
    bindings = Bindings.from_mapping(
        {
            "user/alice": "operate",
            "spiffe://pycontainer.local/user/bob": ["read"],
            "user/*": [],
            "container/*": "container",
        }
    )
    # Every role that reads, and containers, may subscribe to the mesh (ADS).
    mesh = {Role.MESH}
    assert bindings.roles(user("alice")) == {Role.READ, Role.OPERATE} | mesh
    assert bindings.roles(user("bob")) == {Role.READ} | mesh
    assert bindings.roles(user("carol")) == set()
    assert bindings.roles(container("any")) == {Role.CONTAINER} | mesh
    merged = bindings.merged(Bindings.from_mapping({"user/bob": "ADMIN"}))
    assert merged.roles(user("bob")) == {Role.READ, Role.OPERATE, Role.ADMIN} | mesh
    assert DEFAULT_BINDINGS.roles(MANAGER) == {Role.READ} | mesh
    assert DEFAULT_BINDINGS.roles(user("admin")) == {Role.READ, Role.OPERATE, Role.ADMIN} | mesh
    assert Bindings.from_mapping({"user/envoy": "mesh"}).roles(user("envoy")) == mesh


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        ({"user/alice": "root"}, "unknown role 'root'; use read, operate, admin, container, mesh"),
        ({"manager/*": "read"}, "only container/\\* and user/\\* may use"),
        ({"group/x": "read"}, "is not one of"),
    ],
)
def test_bad_bindings_are_refused_saying_what_to_fix(mapping: dict[str, str], problem: str) -> None:
    with pytest.raises(SecurityError, match=problem):
        Bindings.from_mapping(mapping)


def test_check_names_the_role_needed_and_the_roles_held() -> None:
    authorizer = Authorizer(Bindings.from_mapping({"user/bob": "operate"}))
    stop = _MANAGER + "StopContainer"
    run = _MANAGER + "RunContainer"
    assert authorizer.check(user("bob"), stop) is None
    denial = authorizer.check(user("bob"), run)
    assert denial is not None
    assert denial.code == grpc.StatusCode.PERMISSION_DENIED
    assert "needs the admin role and holds operate" in denial.message
    assert "spiffe://pycontainer.local/user/bob" in denial.message
    nobody = authorizer.check(user("eve"), stop)
    assert nobody is not None
    assert "holds no roles" in nobody.message
    # Says how to bind it, in the form --role takes.
    assert "binds it with --role user/bob=admin (on `pycontainer manager` or `up`)" in (
        denial.message
    )
    assert "--role user/eve=operate" in nobody.message
    anonymous = authorizer.check(None, stop)
    assert anonymous is not None
    assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED
    assert "needs the operate role" in anonymous.message
    assert Authorizer(public_methods=frozenset({stop})).check(None, stop) is None


def test_a_container_registers_only_as_itself() -> None:
    assert check_registration(container("web-1"), "web-1") is None
    posing = check_registration(container("web-2"), "web-1")
    assert posing is not None
    assert posing.code == grpc.StatusCode.PERMISSION_DENIED
    assert "certificate names spiffe://pycontainer.local/container/web-2" in posing.message
    assert "claims container/web-1" in posing.message
    admin = check_registration(user("admin"), "web-1")
    assert admin is not None
    assert admin.code == grpc.StatusCode.PERMISSION_DENIED
    anonymous = check_registration(None, "web-1")
    assert anonymous is not None
    assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED
    # A huge claimed id is not echoed whole (the trailer limit).
    huge = check_registration(container("a"), "x" * 100_000)
    assert huge is not None
    assert len(huge.message) < 400


# -- the interceptors on real servers -----------------------------------------

_BINDINGS = Bindings.from_mapping(
    {
        "user/reader": "read",
        "user/operator": "operate",
        "user/admin": "admin",
        "container/*": "container",
    }
)


@dataclass
class Servers:
    kind: str
    secure: str
    plaintext: str
    ca: CertificateAuthority
    directory: Path
    calls: list[str] = field(default_factory=list)

    def channel(self, identity_name: str | None) -> grpc.Channel:
        if identity_name is None:
            return grpc.insecure_channel(self.plaintext)
        kind, _, name = identity_name.partition("/")
        identity = container(name) if kind == "container" else user(name)
        files = issue_files(self.ca, identity, self.directory / identity_name.replace("/", "-"))
        return grpc.secure_channel(self.secure, channel_credentials(files))


def _echo_identity(context: Any) -> bytes:
    identity = peer_identity(context)
    return str(identity).encode() if identity else b"anonymous"


def _sync_handlers(calls: list[str]) -> list[grpc.GenericRpcHandler]:
    def unary(name: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        def behaviour(request: bytes, context: grpc.ServicerContext) -> bytes:
            calls.append(name)
            return _echo_identity(context)

        return grpc.unary_unary_rpc_method_handler(behaviour)

    def events(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        calls.append("WatchEvents")
        yield b"one"
        yield b"two"

    def connect(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        calls.append("Connect")
        yield from requests

    return [
        grpc.method_handlers_generic_handler(
            "pycontainer.v1.Manager",
            {
                "GetVersion": unary("GetVersion"),
                "StopContainer": unary("StopContainer"),
                "RunContainer": unary("RunContainer"),
                "CreateToken": unary("CreateToken"),
                "WatchEvents": grpc.unary_stream_rpc_method_handler(events),
            },
        ),
        grpc.method_handlers_generic_handler(
            "pycontainer.v1.Lifecycle", {"Connect": grpc.stream_stream_rpc_method_handler(connect)}
        ),
    ]


def _aio_handlers(calls: list[str]) -> list[grpc.GenericRpcHandler]:
    def unary(name: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def behaviour(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            calls.append(name)
            return _echo_identity(context)

        return grpc.unary_unary_rpc_method_handler(behaviour)

    async def events(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        calls.append("WatchEvents")
        yield b"one"
        yield b"two"

    async def logs(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # The context.write() style of a streaming servicer.
        calls.append("StreamLogs")
        await context.write(b"line 1")
        await context.write(b"line 2")

    async def connect(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        calls.append("Connect")
        async for request in requests:
            yield request

    return [
        grpc.method_handlers_generic_handler(
            "pycontainer.v1.Manager",
            {
                "GetVersion": unary("GetVersion"),
                "StopContainer": unary("StopContainer"),
                "RunContainer": unary("RunContainer"),
                "CreateToken": unary("CreateToken"),
                "WatchEvents": grpc.unary_stream_rpc_method_handler(events),
            },
        ),
        grpc.method_handlers_generic_handler(
            "pycontainer.v1.Management",
            {"StreamLogs": grpc.unary_stream_rpc_method_handler(logs)},
        ),
        grpc.method_handlers_generic_handler(
            "pycontainer.v1.Lifecycle", {"Connect": grpc.stream_stream_rpc_method_handler(connect)}
        ),
    ]


@pytest.fixture(params=["sync", "aio"])
async def servers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Servers]:
    ca = CertificateAuthority.open(tmp_path / "state")
    files = issue_files(ca, MANAGER, tmp_path / "manager")
    calls: list[str] = []
    authorizer = Authorizer(_BINDINGS)
    if request.param == "sync":
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            interceptors=[AuthorizationInterceptor(authorizer)],
        )
        server.add_generic_rpc_handlers(_sync_handlers(calls))
        secure = server.add_secure_port("127.0.0.1:0", server_credentials(files))
        plaintext = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield Servers(
                request.param, f"127.0.0.1:{secure}", f"127.0.0.1:{plaintext}", ca, tmp_path, calls
            )
        finally:
            server.stop(None)
    else:
        aio_server = grpc.aio.server(interceptors=[AioAuthorizationInterceptor(authorizer)])
        aio_server.add_generic_rpc_handlers(_aio_handlers(calls))
        secure = aio_server.add_secure_port("127.0.0.1:0", server_credentials(files))
        plaintext = aio_server.add_insecure_port("127.0.0.1:0")
        await aio_server.start()
        try:
            yield Servers(
                request.param, f"127.0.0.1:{secure}", f"127.0.0.1:{plaintext}", ca, tmp_path, calls
            )
        finally:
            await aio_server.stop(None)


def _unary(servers: Servers, who: str | None, method: str) -> bytes:
    with servers.channel(who) as channel:
        response: bytes = channel.unary_unary(method)(b"", timeout=10)
        return response


def _refusal(servers: Servers, who: str | None, method: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        _unary(servers, who, method)
    return raised.value


# The sync client blocks; the aio server's loop must keep running meanwhile.
async def _in_thread(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


async def test_a_call_within_the_role_runs_and_sees_the_caller(servers: Servers) -> None:
    answer = await _in_thread(_unary, servers, "user/reader", _MANAGER + "GetVersion")
    assert answer == b"spiffe://pycontainer.local/user/reader"
    assert await _in_thread(_unary, servers, "user/operator", _MANAGER + "StopContainer")
    assert await _in_thread(_unary, servers, "user/admin", _MANAGER + "RunContainer")
    assert await _in_thread(_unary, servers, "user/admin", _MANAGER + "CreateToken")
    assert servers.calls == ["GetVersion", "StopContainer", "RunContainer", "CreateToken"]


@pytest.mark.parametrize(
    ("who", "method", "needed", "held"),
    [
        ("user/reader", "StopContainer", "operate", "read"),
        ("user/operator", "RunContainer", "admin", "operate"),
        ("user/operator", "CreateToken", "admin", "operate"),
        ("user/stranger", "GetVersion", "read", "no roles"),
        ("container/c1", "GetVersion", "read", "container"),
    ],
)
async def test_a_call_outside_the_role_is_permission_denied_naming_the_role(
    servers: Servers, who: str, method: str, needed: str, held: str
) -> None:
    error = await _in_thread(_refusal, servers, who, _MANAGER + method)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"needs the {needed} role and holds {held}" in error.details()
    assert f"spiffe://pycontainer.local/{who}" in error.details()
    assert servers.calls == []


async def test_a_call_without_a_certificate_is_unauthenticated(servers: Servers) -> None:
    error = await _in_thread(_refusal, servers, None, _MANAGER + "GetVersion")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "needs the read role" in error.details()
    assert "no client certificate" in error.details()
    assert servers.calls == []


def _stream(servers: Servers, who: str, method: str) -> list[bytes]:
    with servers.channel(who) as channel:
        return list(channel.unary_stream(method)(b"", timeout=10))


def _connect(servers: Servers, who: str) -> list[bytes]:
    with servers.channel(who) as channel:
        call = channel.stream_stream("/pycontainer.v1.Lifecycle/Connect")
        return list(call(iter([b"hello", b"again"]), timeout=10))


async def test_streaming_calls_are_checked_before_the_servicer_runs(servers: Servers) -> None:
    assert await _in_thread(_stream, servers, "user/reader", _MANAGER + "WatchEvents") == [
        b"one",
        b"two",
    ]
    assert await _in_thread(_connect, servers, "container/c1") == [b"hello", b"again"]
    with pytest.raises(grpc.RpcError) as raised:
        await _in_thread(_connect, servers, "user/admin")
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs the container role" in raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        await _in_thread(_stream, servers, "user/stranger", _MANAGER + "WatchEvents")
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert servers.calls == ["WatchEvents", "Connect"]


# The context.write() style of streaming servicer exists only on grpc.aio.
@pytest.mark.parametrize("servers", ["aio"], indirect=True)
async def test_aio_writer_style_streams_are_checked(servers: Servers) -> None:
    method = _MANAGEMENT + "StreamLogs"
    assert await _in_thread(_stream, servers, "user/reader", method) == [b"line 1", b"line 2"]
    with pytest.raises(grpc.RpcError) as raised:
        await _in_thread(_stream, servers, "container/c1", method)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert servers.calls == ["StreamLogs"]


def test_the_readme_roles_table_names_every_method_in_its_role_row() -> None:
    """The README's Roles table is what a user reads to choose a role: each
    Manager and Management method is in the row of the role it needs."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2]
        for line in readme.splitlines()
        if line.startswith("| `")
    }
    missing = [
        f"{method} ({role.value})"
        for method, role in METHOD_ROLES.items()
        if role != Role.CONTAINER and f"`{method.rsplit('/', 1)[1]}`" not in rows[role.value]
    ]
    assert not missing, f"not in the README's Roles table: {missing}"
