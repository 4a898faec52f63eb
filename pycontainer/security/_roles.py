"""Authorization: which role each method needs, which roles each identity has.

Three operator roles, each including the ones below it:

- ``read``: info, health, metrics, logs, profile, config, list, get, watch, version;
- ``operate``: stop, pause, resume, evict, checkpoint, restore, scale, restart, kill, delete;
- ``admin``: run and apply arbitrary specs, tokens, certificates (anything not named here:
  a method this table does not know is admin-only, so a new RPC is closed until placed).

``mesh``: subscribe to the manager's xDS server (ADS), what a proxyless
client or an Envoy of the mesh does; held by containers and by ``read``;

and ``container``, which only containers hold: ``Lifecycle.Connect`` (the manager
then checks that a container registers as the identity its certificate names)
and ``Bootstrap.RenewCertificate`` (signed for the caller's own identity).

Bindings map identities (``user/alice``, ``manager``, ``container/<ID>``, or
``user/*`` / ``container/*`` for every identity of a kind) to roles, from the
manager's configuration. This module is pure: no gRPC servers, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from pycontainer.security._errors import SecurityError
from pycontainer.security._identity import Identity, parse_identity


class Role(enum.StrEnum):
    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"
    CONTAINER = "container"
    MESH = "mesh"


_IMPLIED: dict[Role, frozenset[Role]] = {
    Role.READ: frozenset({Role.READ, Role.MESH}),
    Role.OPERATE: frozenset({Role.READ, Role.OPERATE, Role.MESH}),
    Role.ADMIN: frozenset({Role.READ, Role.OPERATE, Role.ADMIN, Role.MESH}),
    Role.CONTAINER: frozenset({Role.CONTAINER, Role.MESH}),
    Role.MESH: frozenset({Role.MESH}),
}

_MANAGEMENT = "/pycontainer.v1.Management/"
_MANAGER = "/pycontainer.v1.Manager/"

METHOD_ROLES: Mapping[str, Role] = {
    **{
        _MANAGEMENT + name: Role.READ
        for name in (
            "GetInfo",
            "GetHealth",
            "WatchMetrics",
            "StreamLogs",
            "GetProfile",
            "GetConfig",
        )
    },
    **{
        _MANAGER + name: Role.READ
        for name in (
            "ListContainers",
            "GetContainer",
            "WatchEvents",
            "StreamLogs",
            "WatchMetrics",
            "GetVersion",
            "GetOperation",
            "ListOperations",
            "GetMeshStatus",
        )
    },
    **{
        _MANAGER + name: Role.OPERATE
        for name in (
            "StopContainer",
            "StopContainers",
            "PauseContainer",
            "ResumeContainer",
            "EvictContainer",
            "CheckpointContainer",
            "RestoreContainer",
            "ScaleContainer",
            "RestartContainer",
            "KillContainer",
            "DeleteContainer",
            # A route's split moves traffic between subsets, as a scale would.
            "SetMeshRoute",
        )
    },
    _MANAGER + "RunContainer": Role.ADMIN,
    _MANAGER + "ApplySpecs": Role.ADMIN,
    # Bootstrap tokens (Bootstrap.Join itself is served on the join listener
    # alone, paid for by a token, never on an authorized server).
    **{
        _MANAGER + name: Role.ADMIN
        for name in ("CreateBootstrapToken", "ListBootstrapTokens", "RevokeBootstrapToken")
    },
    # A user's certificate, signed by the manager's CA.
    _MANAGER + "IssueCertificate": Role.ADMIN,
    "/pycontainer.v1.Lifecycle/Connect": Role.CONTAINER,
    # A container renews its own certificate (the manager signs for the caller's identity).
    "/pycontainer.v1.Bootstrap/RenewCertificate": Role.CONTAINER,
}

# Whole services whose every method needs one role.
SERVICE_ROLES: Mapping[str, Role] = {
    "grpc.health.v1.Health": Role.READ,
    "grpc.reflection.v1.ServerReflection": Role.READ,
    "grpc.reflection.v1alpha.ServerReflection": Role.READ,
    "grpc.channelz.v1.Channelz": Role.READ,
    # The mesh's configuration (endpoints, routes) for its clients.
    "envoy.service.discovery.v3.AggregatedDiscoveryService": Role.MESH,
    "envoy.service.status.v3.ClientStatusDiscoveryService": Role.READ,
}


def required_role(method: str) -> Role:
    """The role a call of ``method`` (``/package.Service/Method``) needs; admin if unknown."""
    role = METHOD_ROLES.get(method)
    if role is not None:
        return role
    service = method.lstrip("/").partition("/")[0]
    return SERVICE_ROLES.get(service, Role.ADMIN)


def _parse_roles(key: str, value: str | Sequence[str]) -> frozenset[Role]:
    names = [value] if isinstance(value, str) else list(value)
    roles: set[Role] = set()
    for name in names:
        try:
            roles |= _IMPLIED[Role(str(name).strip().lower())]
        except ValueError:
            raise SecurityError(
                f"roles of {key!r}: unknown role {name!r}; use "
                + ", ".join(role.value for role in Role)
            ) from None
    return frozenset(roles)


@dataclass(frozen=True)
class Bindings:
    """Identities and the roles they hold (each role with the ones it includes)."""

    exact: Mapping[Identity, frozenset[Role]] = field(default_factory=dict)
    # "container" -> roles of every container identity ("container/*").
    by_kind: Mapping[str, frozenset[Role]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str | Sequence[str]]) -> Bindings:
        """Bindings from configuration.

        For example ``{"user/alice": "operate", "container/*": ["container"]}``.
        """
        exact: dict[Identity, frozenset[Role]] = {}
        by_kind: dict[str, frozenset[Role]] = {}
        for key, value in mapping.items():
            roles = _parse_roles(key, value)
            text = str(key)
            if text.endswith("/*"):
                kind = text[: -len("/*")].rpartition("/")[2]
                if kind not in ("container", "user"):
                    raise SecurityError(
                        f"role binding {text!r}: only container/* and user/* may use '*'"
                    )
                by_kind[kind] = by_kind.get(kind, frozenset()) | roles
            else:
                identity = parse_identity(text)
                exact[identity] = exact.get(identity, frozenset()) | roles
        return cls(exact, by_kind)

    def roles(self, identity: Identity) -> frozenset[Role]:
        """Every role ``identity`` holds, the included ones too."""
        return self.exact.get(identity, frozenset()) | self.by_kind.get(identity.kind, frozenset())

    def named_roles(self, identity: Identity) -> list[str]:
        """The roles ``identity`` holds worth naming (not those merely included), sorted."""
        return sorted(_top_roles(self.roles(identity)))

    def merged(self, other: Bindings) -> Bindings:
        """These bindings and ``other``'s together (roles add up)."""
        exact = dict(self.exact)
        for identity, roles in other.exact.items():
            exact[identity] = exact.get(identity, frozenset()) | roles
        by_kind = dict(self.by_kind)
        for kind, roles in other.by_kind.items():
            by_kind[kind] = by_kind.get(kind, frozenset()) | roles
        return Bindings(exact, by_kind)


# What holds without configuration: every container may hold its session, the
# manager may read a container's Management endpoint (to forward logs and
# metrics), and the admin identity issued at the manager's first start is admin.
DEFAULT_BINDINGS = Bindings.from_mapping(
    {"container/*": "container", "manager": "read", "user/admin": "admin"}
)


@dataclass(frozen=True)
class Denial:
    """Why a call is refused: the gRPC status to end it with."""

    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class Authorizer:
    """Decides each call from the caller's identity, the method's role and the bindings."""

    bindings: Bindings = DEFAULT_BINDINGS
    # Methods anyone may call, identified or not (the bootstrap RPC a token pays for).
    public_methods: frozenset[str] = frozenset()

    def guards(self, method: str) -> bool:
        """Whether calls of ``method`` are checked at all: an authorizer that
        lets every call of a method through says no, and the interceptors then
        leave that method's handler as it is (no wrapper on its calls)."""
        return method not in self.public_methods

    def check(self, identity: Identity | None, method: str) -> Denial | None:
        """None if ``identity`` may call ``method``; else the status to refuse it with."""
        if method in self.public_methods:
            return None
        role = required_role(method)
        if identity is None:
            return Denial(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs the {role} role and this call presented no client "
                "certificate: connect with mutual TLS, using a certificate from the "
                "manager's CA",
            )
        held = self.bindings.roles(identity)
        if role in held:
            return None
        has = ", ".join(sorted(_top_roles(held))) or "no roles"
        return Denial(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{identity} may not call {method}: it needs the {role} role and holds {has}; "
            + self.remedy(identity, role),
        )

    def remedy(self, identity: Identity, role: Role) -> str:
        """What to do about a refusal: on the manager, the --role that binds the role."""
        return (
            f"the manager binds it with --role {_short(identity)}={role} "
            "(on `pycontainer manager` or `up`)"
        )


def _short(identity: Identity) -> str:
    """The form --role takes: user/NAME, container/ID or manager."""
    return "manager" if identity.kind == "manager" else f"{identity.kind}/{identity.name}"


def check_registration(identity: Identity | None, container_id: str) -> Denial | None:
    """None if the peer ``identity`` may register (or act) as container ``container_id``.

    A container holds its session only as itself: the id in its
    ``Lifecycle.Connect`` registration must be the one its certificate names.
    """
    claimed = f"container/{container_id[:80]}"
    if identity is None:
        return Denial(
            grpc.StatusCode.UNAUTHENTICATED,
            f"registering as {claimed} needs a client certificate naming that container: "
            "connect with mutual TLS (the manager issues one to the containers it launches; "
            "others join with a bootstrap token)",
        )
    if identity.kind == "container" and identity.name == container_id:
        return None
    return Denial(
        grpc.StatusCode.PERMISSION_DENIED,
        f"a container registers only as itself: this connection's certificate names "
        f"{identity}, the registration claims {claimed}",
    )


def _top_roles(roles: Iterable[Role]) -> set[str]:
    """The roles worth naming: those not merely included in another one held."""
    held = set(roles)
    return {
        role.value
        for role in held
        if not any(role in _IMPLIED[other] and other != role for other in held)
    }
