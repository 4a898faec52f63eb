"""Who a peer is: SPIFFE-style identities in the ``pycontainer.local`` trust domain.

An identity is what a certificate names in its URI SAN and what the role
bindings are keyed by: ``spiffe://pycontainer.local/container/<ID>`` for a
container, ``spiffe://pycontainer.local/manager`` for the manager and
``spiffe://pycontainer.local/user/<NAME>`` for an operator or admin. The
certificate authority puts the identity it is told into a certificate; this
module only names, parses and checks identities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pycontainer.security._errors import SecurityError

TRUST_DOMAIN = "pycontainer.local"
_SCHEME = "spiffe://"

Kind = Literal["container", "manager", "user"]

# SPIFFE path segments: letters, digits, dots, dashes and underscores; not "." or "..".
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,128}")
# A DNS label, for the name a client checks a container's server certificate against.
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, order=True)
class Identity:
    """One principal: a container (with its id), the manager, or a user (with a name)."""

    kind: Kind
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind == "manager":
            if self.name:
                raise SecurityError("the manager's identity has no name")
            return
        if self.kind not in ("container", "user"):
            raise SecurityError(
                f"unknown identity kind {self.kind!r}: use container, manager or user"
            )
        if not _SEGMENT.fullmatch(self.name) or self.name in (".", ".."):
            raise SecurityError(
                f"{self.kind} name {self.name[:64]!r} cannot be an identity: use 1 to 128 "
                "letters, digits, '.', '-' or '_'"
            )

    @property
    def uri(self) -> str:
        """The SPIFFE ID, as a certificate's URI SAN carries it."""
        path = "manager" if self.kind == "manager" else f"{self.kind}/{self.name}"
        return f"{_SCHEME}{TRUST_DOMAIN}/{path}"

    @property
    def dns_name(self) -> str | None:
        """The DNS SAN a client checks this identity's server certificate against.

        A container's Management endpoint is dialled at whatever address it
        registered; the caller verifies the certificate against this name
        (``grpc.ssl_target_name_override``) so that it talks to the container it
        meant, whatever answers at the address. ``None`` for users (they serve
        nothing) and for container ids that are not DNS labels.
        """
        if self.kind == "manager":
            return f"manager.{TRUST_DOMAIN}"
        if self.kind == "container" and _DNS_LABEL.fullmatch(self.name):
            return f"{self.name}.container.{TRUST_DOMAIN}"
        return None

    def __str__(self) -> str:
        return self.uri


def container(container_id: str) -> Identity:
    """The identity of the container with this id."""
    return Identity("container", container_id)


def user(name: str) -> Identity:
    """The identity of an operator or admin."""
    return Identity("user", name)


MANAGER = Identity("manager")


def parse_identity(text: str) -> Identity:
    """An identity from its SPIFFE ID or its short form (``user/alice``, ``manager``)."""
    path = text
    if text.startswith(_SCHEME):
        rest = text[len(_SCHEME) :]
        domain, _, path = rest.partition("/")
        if domain != TRUST_DOMAIN:
            raise SecurityError(
                f"identity {text[:200]!r} is outside the trust domain {TRUST_DOMAIN!r}"
            )
    if path == "manager":
        return MANAGER
    kind, slash, name = path.partition("/")
    if not slash or kind not in ("container", "user"):
        raise SecurityError(
            f"identity {text[:200]!r} is not one of container/<ID>, user/<NAME> or manager "
            f"(optionally prefixed with {_SCHEME}{TRUST_DOMAIN}/)"
        )
    return Identity(kind, name)  # type: ignore[arg-type]  # kind checked just above
