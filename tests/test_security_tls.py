"""Mutual TLS between real gRPC servers and clients (sync and asyncio) on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from security_support import issue_files

from pycontainer.security import (
    MANAGER,
    CertificateAuthority,
    CredentialFiles,
    Identity,
    SecurityError,
    channel_credentials,
    container,
    is_loopback,
    peer_identity,
    plaintext_warning,
    server_credentials,
    server_name_options,
    user,
)

_METHOD = "/test.Peer/WhoAmI"


def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    identity = peer_identity(context)
    return str(identity).encode() if identity else b"anonymous"


async def _aio_who_am_i(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    identity = peer_identity(context)
    return str(identity).encode() if identity else b"anonymous"


def _handlers(behaviour: object) -> list[grpc.GenericRpcHandler]:
    return [
        grpc.method_handlers_generic_handler(
            "test.Peer", {"WhoAmI": grpc.unary_unary_rpc_method_handler(behaviour)}
        )
    ]


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path / "state")


@pytest.fixture
def server_files(ca: CertificateAuthority, tmp_path: Path) -> CredentialFiles:
    return issue_files(ca, MANAGER, tmp_path / "server")


@pytest.fixture
def sync_server(server_files: CredentialFiles) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(_handlers(_who_am_i))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(server_files))
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def _call(
    target: str,
    credentials: grpc.ChannelCredentials,
    options: list[tuple[str, str]] | None = None,
) -> bytes:
    with grpc.secure_channel(target, credentials, options=options or []) as channel:
        response: bytes = channel.unary_unary(_METHOD)(b"", timeout=10)
        return response


def test_mtls_handshake_with_a_ca_issued_certificate_names_the_peer(
    ca: CertificateAuthority, sync_server: str, tmp_path: Path
) -> None:
    alice = issue_files(ca, user("alice"), tmp_path / "alice")
    assert (
        _call(sync_server, channel_credentials(alice)) == b"spiffe://pycontainer.local/user/alice"
    )
    # Dialled by its DNS name too: the manager's certificate names localhost.
    target = sync_server.replace("127.0.0.1", "localhost")
    assert _call(target, channel_credentials(alice)).endswith(b"/user/alice")


async def test_mtls_on_an_aio_server_names_the_peer(
    ca: CertificateAuthority, server_files: CredentialFiles, tmp_path: Path
) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(_handlers(_aio_who_am_i))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(server_files))
    await server.start()
    try:
        worker = issue_files(ca, container("c0ffee"), tmp_path / "worker")
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", channel_credentials(worker)
        ) as channel:
            answer = await channel.unary_unary(_METHOD)(b"", timeout=10)
        assert answer == b"spiffe://pycontainer.local/container/c0ffee"
    finally:
        await server.stop(None)


def _refused(target: str, credentials: grpc.ChannelCredentials) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        _call(target, credentials)
    error = raised.value
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    return error


def test_a_client_without_a_certificate_is_refused(
    ca: CertificateAuthority, sync_server: str
) -> None:
    _refused(sync_server, grpc.ssl_channel_credentials(root_certificates=ca.certificate_pem))


def test_a_client_certificate_from_another_ca_is_refused(
    ca: CertificateAuthority, sync_server: str, tmp_path: Path
) -> None:
    intruder_ca = CertificateAuthority.open(tmp_path / "intruder")
    intruder = issue_files(intruder_ca, user("admin"), tmp_path / "intruder-admin")
    leaf, _ = intruder.read()
    # It trusts our CA (so it would accept our server) but its own certificate is foreign.
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.certificate_pem,
        private_key=leaf.private_key_pem,
        certificate_chain=leaf.certificate_chain_pem,
    )
    _refused(sync_server, credentials)


def test_a_client_refuses_a_server_from_another_ca(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    fake_ca = CertificateAuthority.open(tmp_path / "fake")
    fake_files = issue_files(fake_ca, MANAGER, tmp_path / "fake-manager")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(_handlers(_who_am_i))
    # The fake manager accepts any client at all: only the client's check can stop this.
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(fake_files, require_client_certificate=False)
    )
    server.start()
    try:
        alice = issue_files(ca, user("alice"), tmp_path / "alice")
        _refused(f"127.0.0.1:{port}", channel_credentials(alice))
    finally:
        server.stop(None)


def _serve_as(files: CredentialFiles) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(_handlers(_who_am_i))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
    server.start()
    return server, f"127.0.0.1:{port}"


def test_a_client_checks_it_reached_the_container_it_meant(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    server, target = _serve_as(issue_files(ca, container("web-1"), tmp_path / "web-1"))
    try:
        manager = channel_credentials(issue_files(ca, MANAGER, tmp_path / "manager"))
        meant = server_name_options(container("web-1"))
        assert _call(target, manager, meant) == b"spiffe://pycontainer.local/manager"
        # Another container's certificate at the address a registration claimed: refused.
        with pytest.raises(grpc.RpcError) as raised:
            _call(target, manager, server_name_options(container("db-1")))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)
    with pytest.raises(SecurityError, match="no DNS name"):
        server_name_options(user("alice"))


def test_a_rotated_server_leaf_is_used_by_new_connections_without_a_restart(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    files = issue_files(ca, container("blue"), tmp_path / "served")
    server, target = _serve_as(files)
    try:
        client = channel_credentials(issue_files(ca, MANAGER, tmp_path / "manager"))
        as_blue, as_green = (
            server_name_options(container("blue")),
            server_name_options(container("green")),
        )
        assert _call(target, client, as_blue)
        with pytest.raises(grpc.RpcError):
            _call(target, client, as_green)

        # The runtime rotates the file in place; the server reads it at the next handshake.
        files.write(ca.issue(container("green")), ca.certificate_pem)
        assert _call(target, client, as_green)
        with pytest.raises(grpc.RpcError):
            _call(target, client, as_blue)
    finally:
        server.stop(None)


def test_a_rotated_trust_bundle_and_leaf_move_a_server_to_a_new_ca(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    files = issue_files(ca, MANAGER, tmp_path / "served")
    server, target = _serve_as(files)
    try:
        new_ca = CertificateAuthority.open(tmp_path / "new-state")
        old_client = channel_credentials(issue_files(ca, user("alice"), tmp_path / "old"))
        new_client = channel_credentials(issue_files(new_ca, user("alice"), tmp_path / "new"))
        assert _call(target, old_client)
        files.write(new_ca.issue(MANAGER), new_ca.certificate_pem)
        assert _call(target, new_client) == b"spiffe://pycontainer.local/user/alice"
        _refused(target, old_client)
    finally:
        server.stop(None)


def test_a_broken_rotation_keeps_the_servers_current_certificate(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    files = issue_files(ca, MANAGER, tmp_path / "served")
    server, target = _serve_as(files)
    try:
        client = channel_credentials(issue_files(ca, user("alice"), tmp_path / "alice"))
        files.leaf.write_bytes(b"not a certificate")
        assert _call(target, client) == b"spiffe://pycontainer.local/user/alice"
    finally:
        server.stop(None)


def test_a_client_with_a_rotated_leaf_is_known_by_it_on_a_new_channel(
    ca: CertificateAuthority, sync_server: str, tmp_path: Path
) -> None:
    files = issue_files(ca, user("alice"), tmp_path / "client")
    assert _call(sync_server, channel_credentials(files)).endswith(b"/user/alice")
    files.write(ca.issue(user("bob")), ca.certificate_pem)
    assert _call(sync_server, channel_credentials(files)).endswith(b"/user/bob")


def test_server_credentials_need_readable_files(tmp_path: Path) -> None:
    with pytest.raises(SecurityError):
        server_credentials(CredentialFiles.in_directory(tmp_path / "nothing-here"))


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "127.0.0.2:1", "unix:/run/x.sock"],
)
def test_plaintext_on_loopback_needs_no_warning(address: str) -> None:
    assert is_loopback(address)
    assert plaintext_warning(address) is None


@pytest.mark.parametrize(
    "address", ["0.0.0.0:50051", "[::]:50051", ":50051", "10.0.0.5:50051", "example.com:80"]
)
def test_plaintext_beyond_loopback_warns_naming_the_address_and_the_fix(address: str) -> None:
    warning = plaintext_warning(["127.0.0.1:9000", address])
    assert warning is not None
    assert address in warning
    assert "127.0.0.1:9000" not in warning
    assert "--insecure" in warning


def test_an_identity_has_one_spiffe_uri() -> None:
    identity: Identity = container("abc")
    assert identity.uri == "spiffe://pycontainer.local/container/abc"
    assert str(MANAGER) == "spiffe://pycontainer.local/manager"
