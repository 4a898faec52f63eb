"""Keeping leaves current (ensure_leaf) and the bootstrap flow: token + CSR -> mTLS."""

from __future__ import annotations

import datetime
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from security_support import issue_files

from pycontainer.security import (
    MANAGER,
    CertificateAuthority,
    CredentialFiles,
    SecurityError,
    TokenError,
    TokenStore,
    certificate_request,
    channel_credentials,
    container,
    ensure_leaf,
    identity_from_auth_context,
    peer_identity,
    server_credentials,
    user,
    write_leaf,
)


def test_ensure_leaf_issues_once_then_only_when_stale(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path / "state")
    files = CredentialFiles.in_directory(tmp_path / "manager")
    assert ensure_leaf(ca, files, MANAGER, hosts=["10.0.0.7"])
    first = files.leaf.read_bytes()
    assert not ensure_leaf(ca, files, MANAGER, hosts=["10.0.0.7"])
    assert files.leaf.read_bytes() == first

    # A host the certificate lacks, another identity, another CA, renewal time: reissued.
    assert ensure_leaf(ca, files, MANAGER, hosts=["10.0.0.7", "manager.example"])
    assert not ensure_leaf(ca, files, MANAGER, hosts=["manager.example"])
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=20)
    assert ensure_leaf(ca, files, MANAGER, now=later)
    assert ensure_leaf(ca, files, container("c1"))
    assert files.read()[0].identity == container("c1")
    other = CertificateAuthority.open(tmp_path / "other")
    assert ensure_leaf(other, files, container("c1"))
    assert files.read()[1] == other.certificate_pem
    # An exposed key file is replaced by a fresh, private one.
    files.leaf.chmod(0o644)
    assert ensure_leaf(other, files, container("c1"))
    assert files.leaf.stat().st_mode & 0o077 == 0


def test_a_joining_container_bootstraps_with_a_token_and_a_csr(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ca = CertificateAuthority.open(state)
    tokens = TokenStore.in_directory(state)
    token = tokens.create(datetime.timedelta(hours=1), identity=container("batch-7"))

    # The joining side: its own key, a CSR that claims to be the manager.
    request = certificate_request(MANAGER)

    # The manager's side of the (future) bootstrap RPC: redeem, then sign for the grant.
    grant = tokens.redeem(token)
    assert grant.identity is not None
    issued = ca.sign_csr(request.csr_pem, grant.identity)
    with pytest.raises(TokenError, match="used up"):
        tokens.redeem(token)

    # Back on the joining side: the leaf file, then mutual TLS as itself.
    files = CredentialFiles.in_directory(tmp_path / "joiner")
    files.leaf.parent.mkdir()
    files.trust.write_bytes(ca.certificate_pem)
    write_leaf(files.leaf, request.leaf(issued.certificate_pem))
    assert files.read()[0].identity == container("batch-7")

    server_files = issue_files(ca, MANAGER, tmp_path / "manager")
    seen: list[object] = []

    def who(request_bytes: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(peer_identity(context))
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.T", {"Who": grpc.unary_unary_rpc_method_handler(who)}
            )
        ]
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(server_files))
    server.start()
    try:
        with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(files)) as channel:
            channel.unary_unary("/t.T/Who")(b"", timeout=10)
    finally:
        server.stop(None)
    assert seen == [container("batch-7")]


def test_a_certificate_for_another_key_is_refused_by_the_requester(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path)
    request = certificate_request()
    other = ca.issue(user("alice"))
    with pytest.raises(SecurityError, match="not for this request's key"):
        request.leaf(other.certificate_pem)


def test_auth_context_without_verified_tls_has_no_identity(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path)
    pem = ca.issue(user("alice")).certificate_pem
    assert identity_from_auth_context({"transport_security_type": [b"insecure"]}) is None
    assert identity_from_auth_context({}) is None
    spiffe = [b"spiffe://pycontainer.local/user/alice"]
    assert identity_from_auth_context(
        {"transport_security_type": [b"ssl"], "peer_spiffe_id": spiffe}
    ) == user("alice")
    assert (
        identity_from_auth_context(
            {"transport_security_type": [b"ssl"], "peer_uri": [b"spiffe://evil.example/user/a"]}
        )
        is None
    )
    # Only the certificate itself: it is read.
    assert identity_from_auth_context(
        {"transport_security_type": [b"ssl"], "x509_pem_cert": [pem]}
    ) == user("alice")
    assert x509.load_pem_x509_certificate(pem)


async def test_an_aio_server_picks_up_a_rotated_leaf_without_a_restart(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path / "state")
    files = issue_files(ca, MANAGER, tmp_path / "served")
    server = grpc.aio.server()

    async def ok(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return b"ok"

    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.T", {"Ok": grpc.unary_unary_rpc_method_handler(ok)}
            )
        ]
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
    await server.start()
    try:
        new_ca = CertificateAuthority.open(tmp_path / "new")
        old_client = channel_credentials(issue_files(ca, user("a"), tmp_path / "old"))
        new_client = channel_credentials(issue_files(new_ca, user("a"), tmp_path / "new-a"))

        async def call(credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                try:
                    await channel.unary_unary("/t.T/Ok")(b"", timeout=10)
                except grpc.aio.AioRpcError as error:
                    return error.code()
            return grpc.StatusCode.OK

        assert await call(old_client) == grpc.StatusCode.OK
        files.write(new_ca.issue(MANAGER), new_ca.certificate_pem)
        assert await call(new_client) == grpc.StatusCode.OK
        assert await call(old_client) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
