"""Bootstrap tokens and the join listener: how a container the manager did not launch joins.

An admin makes a token (Manager.CreateBootstrapToken, ``pycontainer token
create``); the joiner presents it with a CSR to Bootstrap.Join on the join
address, which serves that service alone over server-side TLS (the joiner has
no certificate yet, and grpcio's server cannot ask for one optionally, so the
main port's mutual TLS cannot take it). The join server presents the CA
certificate in its chain: the joiner checks it against the CA pin it was given
before it sends the token. Join redeems the token, signs the CSR for
``container/<ID>`` and returns the certificate and the trust bundle; from then
on the container dials the main port with mutual TLS as any other.

Tokens never appear in errors, events or logs: only their ids. The manager
does not renew a joined container's certificate (it never holds its key): the
leaf lives ``certificate_ttl`` and the container joins again at a restart.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from .. import limits
from .._errors import (
    RequestError,
    abort,
    echo,
    failed_precondition,
    invalid_argument,
    not_found,
    resource_exhausted,
)
from ..agent._observe import AioServerInterceptor, Observer
from ..agent._serve import EXCLUSIVE_PORT
from ..security import (
    DEFAULT_TOKEN_TTL,
    Grant,
    Identity,
    Role,
    SecurityError,
    TokenError,
    TokenNotFor,
    TokenStore,
    certificate_pin,
    check_csr,
    container,
    peer_identity,
    server_credentials,
)
from ..security._files import write_atomic
from ..units import duration_field, format_duration, timestamp_to_proto
from ..v1 import bootstrap_pb2, bootstrap_pb2_grpc, manager_pb2
from ._events import EventBus
from ._exclusive import StartRefused, bind
from ._settings import ManagerSettings
from ._trust import Trust
from ._validation import check_message

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

_log = logging.getLogger("pycontainer.manager")

_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
_MAX_TOKEN_CHARS = 128
_MAX_DESCRIPTION_CHARS = 200
_WILDCARD_HOSTS = ("", "0.0.0.0", "[::]", "::")
# The default join listener's port, kept in the state directory for the next start.
JOIN_PORT_FILE = "join.port"

JOIN_SERVER_OPTIONS = (
    EXCLUSIVE_PORT,
    ("grpc.max_receive_message_length", limits.MAX_JOIN_REQUEST_BYTES),
    # Calls in flight per connection; past the join rate they are refused at once anyway.
    ("grpc.max_concurrent_streams", 100),
)


def _host(listen: str) -> str:
    return listen.rpartition(":")[0]


def _check_container_id(container_id: str, field: str) -> None:
    if not container_id:
        raise invalid_argument(field, "give the container id the certificate is to name")
    if len(container_id) > limits.MAX_NAME_LENGTH or not limits.NAME_PATTERN.fullmatch(
        container_id
    ):
        raise invalid_argument(
            field, f"{echo(container_id)} is not a container id (letters, digits, '-', '_', '.')"
        )
    try:
        container(container_id)
    except SecurityError as exc:
        raise invalid_argument(field, str(exc)) from None


class _RateLimit:
    """A token bucket: ``rate`` a second, bursts of twice that."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = 2 * rate
        self._level = self._capacity
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._level = min(self._capacity, self._level + (now - self._at) * self._rate)
        self._at = now
        if self._level < 1:
            return False
        self._level -= 1
        return True


class Bootstrapping:
    """The manager's bootstrap tokens and its join listener."""

    def __init__(
        self,
        settings: ManagerSettings,
        trust: Trust,
        events: EventBus,
        manager_address: Callable[[], str],
        known: Callable[[str], bool] = lambda container_id: False,
        tokens: TokenStore | None = None,
    ) -> None:
        self._settings = settings
        # Whether a container id is one the manager knows (launched, registered).
        self._known = known
        self._manager_address = manager_address
        self._trust = trust
        self._events = events
        # The state store's when it keeps them (etcd), else the state directory's.
        self.tokens = tokens if tokens is not None else TokenStore.in_directory(settings.state_dir)
        self._server: grpc.aio.Server | None = None
        self._rate = _RateLimit(limits.JOIN_RATE_PER_SECOND)
        self.join_port = 0

    # -- the join listener -------------------------------------------------------------
    def _listen(self) -> str | None:
        """Where to serve Bootstrap.Join: --join-listen, else the manager's host on
        an ephemeral port; nowhere when insecure or turned off ("")."""
        if self._trust.insecure:
            return None
        given = self._settings.join_listen
        if given is None:
            return f"{_host(self._settings.listen)}:0"
        return given or None

    @property
    def join_address(self) -> str:
        """HOST:PORT a joiner dials ("" without a join listener)."""
        listen = self._listen()
        if listen is None or not self.join_port:
            return ""
        host = _host(listen)
        if host in _WILDCARD_HOSTS:
            host = "127.0.0.1"
        return f"{host}:{self.join_port}"

    def bind(self, observer: Observer) -> None:
        """Build the join server and bind it (StartRefused when it cannot listen).
        ``observer`` counts its calls and answers undecodable requests with
        INVALID_ARGUMENT, as on the manager's main server. The default address
        keeps its port across restarts (JOIN_PORT_FILE): the join addresses
        that tokens kept in the state directory were printed with stay true."""
        listen = self._listen()
        if self._trust.insecure and self._settings.join_listen:
            _log.warning(
                "--join-listen %s is ignored: the manager serves --insecure, where containers "
                "connect with $PYCONTAINER_MANAGER alone (no bootstrap tokens, no join listener)",
                self._settings.join_listen,
            )
        if listen is None:
            return
        if self._settings.join_listen is not None:  # given: that, or refuse to start
            self._server, self.join_port = self._bound(observer, listen)
            return
        remembered = self._remembered_port()
        if remembered:
            again = f"{_host(listen)}:{remembered}"
            try:
                self._server, self.join_port = self._bound(observer, again)
                return
            except StartRefused as exc:
                self._server, self.join_port = self._bound(observer, listen)
                _log.warning(
                    "the join address %s of earlier starts cannot be served (%s): joins are "
                    "served on %s now; join addresses printed before are stale (or give "
                    "--join-listen)",
                    self._public(remembered),
                    exc,
                    self._public(self.join_port),
                )
        else:
            self._server, self.join_port = self._bound(observer, listen)
        self._remember_port(self.join_port)

    def _bound(self, observer: Observer, listen: str) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(
            options=JOIN_SERVER_OPTIONS, interceptors=[AioServerInterceptor(observer)]
        )
        bootstrap_pb2_grpc.add_BootstrapServicer_to_server(JoinServicer(self), server)
        credentials = server_credentials(
            self._trust.manager_files, require_client_certificate=False, send_trust_bundle=True
        )
        return server, bind(server, listen, credentials, flag="--join-listen")

    def _public(self, port: int) -> str:
        """HOST:PORT a joiner dials for ``port`` of the listen address."""
        host = _host(self._listen() or "")
        return f"{'127.0.0.1' if host in _WILDCARD_HOSTS else host}:{port}"

    @property
    def _port_file(self) -> Path:
        return Path(self._settings.state_dir) / JOIN_PORT_FILE

    def _remembered_port(self) -> int:
        """The default join port an earlier start chose (0 for none, or unreadable)."""
        try:
            text = self._port_file.read_text().strip()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            _log.warning("cannot read %s: %s (a new join port is chosen)", self._port_file, exc)
            return 0
        if not text.isdigit() or not 0 < int(text) < 65536:
            _log.warning("%s holds no port (%r): a new join port is chosen", self._port_file, text)
            return 0
        return int(text)

    def _remember_port(self, port: int) -> None:
        try:
            write_atomic(self._port_file, f"{port}\n".encode(), mode=0o644)
        except OSError as exc:
            _log.warning(
                "cannot keep the join port in %s: %s (the next start may choose another)",
                self._port_file,
                exc,
            )

    async def start(self) -> None:
        if self._server is not None:
            await self._server.start()
            _log.info("bootstrap joins served on %s", self.join_address)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(1.0)

    # -- Manager's token RPCs ------------------------------------------------------
    def _ready(self) -> None:
        if self._trust.insecure:
            raise failed_precondition(
                "the manager serves without TLS (--insecure): there is nothing to join, a "
                "container connects with $PYCONTAINER_MANAGER alone"
            )
        if self._server is None:
            raise failed_precondition(
                "the manager has no join listener (--join-listen is off): restart it with "
                "--join-listen HOST:PORT"
            )

    async def create(
        self, request: manager_pb2.CreateBootstrapTokenRequest
    ) -> manager_pb2.CreateBootstrapTokenResponse:
        self._ready()
        check_message(request, "")
        ttl = duration_field(request, "ttl")
        if ttl is None:  # unset; a set zero is refused below
            ttl = DEFAULT_TOKEN_TTL
        uses = request.uses or 1
        if request.container_id:
            _check_container_id(request.container_id, "container_id")
        if len(request.description) > _MAX_DESCRIPTION_CHARS:
            raise invalid_argument(
                "description",
                f"at most {_MAX_DESCRIPTION_CHARS} characters, got {len(request.description)}",
            )
        identity = container(request.container_id) if request.container_id else None
        try:
            token = await asyncio.to_thread(
                self.tokens.create,
                ttl,
                uses=uses,
                identity=identity,
                description=request.description,
            )
            token_id = token.removeprefix("pct_").partition(".")[0]
            grants = await asyncio.to_thread(self.tokens.list_tokens)
            [grant] = [g for g in grants if g.token_id == token_id]
        except SecurityError as exc:
            field = "uses" if "uses" in str(exc) else "ttl"
            raise invalid_argument(field, str(exc)) from None
        ca = self._trust.ca
        assert ca is not None  # not insecure: open() made it
        _log.info(
            "bootstrap token %s created (%d use(s), expires in %s)",
            token_id,
            uses,
            format_duration(ttl),
        )
        return manager_pb2.CreateBootstrapTokenResponse(
            token=token,
            token_id=token_id,
            expire_time=timestamp_to_proto(grant.expires_at),
            join_address=self.join_address,
            ca_pin=certificate_pin(ca.certificate_pem),
            manager_address=self._manager_address(),
        )

    async def list(self) -> manager_pb2.ListBootstrapTokensResponse:
        try:
            grants = await asyncio.to_thread(self.tokens.list_tokens)
        except SecurityError as exc:
            raise failed_precondition(str(exc)) from None
        return manager_pb2.ListBootstrapTokensResponse(tokens=[_token_proto(g) for g in grants])

    async def revoke(self, token_id: str) -> manager_pb2.RevokeBootstrapTokenResponse:
        if not _TOKEN_ID.fullmatch(token_id):
            raise invalid_argument(
                "token_id", f"{echo(token_id)} is not a token id (12 hex digits, as listed)"
            )
        try:
            existed = await asyncio.to_thread(self.tokens.revoke, token_id)
        except SecurityError as exc:
            raise failed_precondition(str(exc)) from None
        if not existed:
            raise not_found(
                "token_id",
                f"no bootstrap token {token_id} (expired ones are forgotten): see "
                "`pycontainer token list`",
            )
        return manager_pb2.RevokeBootstrapTokenResponse()

    # -- Bootstrap.Join ------------------------------------------------------------
    async def join(
        self, request: bootstrap_pb2.JoinRequest, peer: str
    ) -> bootstrap_pb2.JoinResponse:
        if not request.token:
            raise RequestError(
                grpc.StatusCode.UNAUTHENTICATED,
                "no bootstrap token: set $PYCONTAINER_BOOTSTRAP_TOKEN to one that "
                "`pycontainer token create` printed",
            )
        if len(request.token) > _MAX_TOKEN_CHARS:
            raise invalid_argument("token", "not a bootstrap token (too long)")
        _check_container_id(request.container_id, "container_id")
        identity = container(request.container_id)
        # Only for the events that name it (NAME/ID8, as others do); one out of
        # bounds is left out rather than refused: it grants nothing.
        name = request.container_name
        if len(name) > limits.MAX_NAME_LENGTH or not limits.NAME_PATTERN.fullmatch(name):
            name = ""
        try:
            check_csr(request.csr_pem.encode())
        except SecurityError as exc:
            raise invalid_argument("csr_pem", str(exc)) from None
        # The checks above are cheap; what follows (the token file, signing) is rate-bound.
        if not self._rate.take():
            raise resource_exhausted(
                f"more than {limits.JOIN_RATE_PER_SECOND} joins a second "
                "(pycontainer.limits.JOIN_RATE_PER_SECOND): retry in a second"
            )
        try:
            grant = await asyncio.to_thread(
                self.tokens.redeem, request.token, identity=identity, may_choose=self._choosable
            )
        except TokenNotFor as exc:
            self._audit(identity.uri, name, f"refused: {exc}", peer)
            raise RequestError(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
        except TokenError as exc:
            self._audit(identity.uri, name, f"refused: {exc}", peer)
            raise RequestError(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        except SecurityError as exc:  # the token file itself
            raise failed_precondition(str(exc)) from None
        self._audit(identity.uri, name, f"with bootstrap token {grant.token_id}", peer)
        ca = self._trust.ca
        if ca is None:
            raise failed_precondition("the manager has no CA (it serves --insecure)")
        issued = await self._trust.sign(
            ca, request.csr_pem.encode(), identity, self._settings.certificate_ttl
        )
        _log.info("%s joined with bootstrap token %s", identity, grant.token_id)
        return bootstrap_pb2.JoinResponse(
            certificate_pem=issued.certificate_pem.decode(),
            trust_bundle_pem=ca.certificate_pem.decode(),
            identity=identity.uri,
            expire_time=timestamp_to_proto(issued.not_after),
        )

    def _choosable(self, identity: Identity) -> str | None:
        """Why a joiner naming itself may not take ``identity``, or None: its
        certificate would take over a container this manager knows (its
        session, its checkpoints), or hold roles bound to that id beyond its
        own session (``--role container/ID=admin``). A token made for the id
        (token create --name ID) is the operator saying it may."""
        remedy = f"create a token for it (pycontainer token create --name {identity.name})"
        if self._known(identity.name):
            return f"a container this manager knows has that id: join with another id, or {remedy}"
        held = [
            r for r in self._trust.authorizer.bindings.named_roles(identity) if r != Role.CONTAINER
        ]
        if held:
            return f"that id is bound to the {', '.join(held)} role (--role): {remedy}"
        return None

    # -- Bootstrap.RenewCertificate (main port) -----------------------------------
    async def renew(
        self, request: bootstrap_pb2.RenewCertificateRequest, identity: Identity | None
    ) -> bootstrap_pb2.RenewCertificateResponse:
        ca = self._trust.ca
        if ca is None:
            raise failed_precondition(
                "the manager serves without TLS (--insecure): there are no certificates to renew"
            )
        if identity is None or identity.kind != "container":
            raise RequestError(
                grpc.StatusCode.UNAUTHENTICATED,
                "RenewCertificate renews a container's own certificate: call it with mutual "
                f"TLS and the current certificate of a container (this call shows "
                f"{identity or 'none'})",
            )
        try:
            check_csr(request.csr_pem.encode())
        except SecurityError as exc:
            raise invalid_argument("csr_pem", str(exc)) from None
        self._events.publish(
            manager_pb2.EVENT_TYPE_REQUESTED,
            identity.name,
            "",
            f"RenewCertificate {identity} by {identity}",
            actor=identity.uri,
        )
        issued = await self._trust.sign(
            ca, request.csr_pem.encode(), identity, self._settings.certificate_ttl
        )
        _log.info("renewed the certificate of %s", identity)
        return bootstrap_pb2.RenewCertificateResponse(
            certificate_pem=issued.certificate_pem.decode(),
            trust_bundle_pem=ca.certificate_pem.decode(),
            identity=identity.uri,
            expire_time=timestamp_to_proto(issued.not_after),
        )

    def _audit(self, identity: str, name: str, outcome: str, peer: str) -> None:
        """The audit trail of joins: the identity asked for and the token's id (never
        the token), as the operator API's REQUESTED events are."""
        container_id = identity.rpartition("/")[2]
        actor = f"bootstrap join from {peer}"
        self._events.publish(
            manager_pb2.EVENT_TYPE_REQUESTED,
            container_id,
            name,
            f"Join {identity} {outcome} by {actor}",
            actor=actor,
        )


def _token_proto(grant: Grant) -> manager_pb2.BootstrapToken:
    return manager_pb2.BootstrapToken(
        token_id=grant.token_id,
        container_id=grant.identity.name if grant.identity is not None else "",
        expire_time=timestamp_to_proto(grant.expires_at),
        uses_left=grant.uses_left,
    )


class JoinServicer(bootstrap_pb2_grpc.BootstrapServicer):
    """The Bootstrap service: Join on the join listener (``main`` False),
    RenewCertificate on the manager's main, mutual-TLS, port (``main`` True)."""

    def __init__(self, bootstrapping: Bootstrapping, *, main: bool = False) -> None:
        self._b = bootstrapping
        self._main = main

    async def Join(
        self, request: bootstrap_pb2.JoinRequest, context: Context
    ) -> bootstrap_pb2.JoinResponse:
        try:
            if self._main:
                raise failed_precondition(
                    "Bootstrap.Join is served on the manager's join address (server-side TLS), "
                    "as Manager.CreateBootstrapToken reports it, not on its main port"
                )
            return await self._b.join(request, context.peer())
        except RequestError as exc:
            await abort(context, exc)
            raise  # abort raises; for the type checker

    async def RenewCertificate(
        self, request: bootstrap_pb2.RenewCertificateRequest, context: Context
    ) -> bootstrap_pb2.RenewCertificateResponse:
        try:
            if not self._main:
                raise RequestError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "RenewCertificate is served on the manager's main port (mutual TLS, with "
                    "the current certificate), not on the join address",
                )
            return await self._b.renew(request, peer_identity(context))
        except RequestError as exc:
            await abort(context, exc)
            raise  # abort raises; for the type checker


__all__ = ["Bootstrapping", "JoinServicer"]
