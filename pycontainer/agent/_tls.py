"""A container's side of mutual TLS: the certificate the manager gave it
($PYCONTAINER_TLS_DIR), and who may call pycontainer's services on its servers.

The manager that launches a container issues it a certificate naming it and
passes the directory in the environment; pycontainer's own server then serves
mutual TLS with it, and an app's own server can too (``listen_on(server,
address, tls_dir=tls_dir())``). Calls of pycontainer's services are authorized
by role (the manager may read, to forward logs and metrics; ``user/admin`` may
do everything); the app's own services are the app's business.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._tls_env import TLS_DIR_ENV
from ._hosting import is_own_method

if TYPE_CHECKING:
    from ..security import Authorizer

__all__ = ["management_authorizer", "tls_dir"]


def tls_dir() -> str | None:
    """The container's TLS directory, when the manager that launched it gave one."""
    return os.environ.get(TLS_DIR_ENV) or None


def management_authorizer(enforce: bool) -> Authorizer:
    """The Authorizer for a container's servers: pycontainer's services by role
    when ``enforce`` (with mutual TLS), everything let through otherwise."""
    # Here, not at the top: cryptography is imported only by containers that use TLS.
    from ..security import Authorizer, Denial, Identity, Role

    @dataclass(frozen=True)
    class _OurServices(Authorizer):
        enforced: bool = True

        def check(self, identity: Identity | None, method: str) -> Denial | None:
            if not self.guards(method):
                return None
            return super().check(identity, method)

        def guards(self, method: str) -> bool:
            return self.enforced and is_own_method(method) and super().guards(method)

        def remedy(self, identity: Identity, role: Role) -> str:
            # A container binds no roles of its own: users read it through the manager.
            return (
                "a container's Management API answers the manager and user/admin: read it "
                "through the manager (pycontainer logs, top, profile)"
            )

    return _OurServices(enforced=enforce)
