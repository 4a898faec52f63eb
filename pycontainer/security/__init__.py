"""Identities, a certificate authority, mutual TLS credentials, bootstrap tokens and roles.

The building blocks of pycontainer's trust model (issue 8, sections 1 and 2):

- :class:`CertificateAuthority`: the manager's CA (created on first use in its
  state directory) or an external one; issues short-lived leaves naming a
  SPIFFE identity and signs CSRs for the identity it is told.
- :class:`CredentialFiles`: a peer's key+certificate file and trust bundle,
  written atomically for rotation; :func:`server_credentials` (mTLS, reloaded
  on change), :func:`channel_credentials`, :func:`server_name_options`,
  :func:`plaintext_warning`.
- :func:`ensure_leaf`: issue a peer's leaf file when missing, reissue it before expiry.
- :func:`certificate_request`: the joining side's key and CSR (bootstrap with a token).
- :class:`TokenStore`: single-use or bounded bootstrap tokens, stored hashed;
  :func:`certificate_pin` / :func:`parse_pin`: the CA pin a joiner checks.
- :func:`peer_identity`: who the peer of a call is, from its certificate.
- :class:`Authorizer`, :class:`Bindings`, :func:`required_role`, and the
  interceptors :class:`AuthorizationInterceptor` / :class:`AioAuthorizationInterceptor`.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pycontainer.limits import DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL
    from pycontainer.security._ca import (
        CA_CERT_FILE,
        CA_KEY_FILE,
        CA_TTL,
        DEFAULT_LEAF_TTL,
        LOOPBACK_HOSTS,
        CertificateAuthority,
        IssuedCertificate,
    )
    from pycontainer.security._credentials import (
        channel_credentials,
        health_port_warning,
        is_loopback,
        plaintext_warning,
        server_credentials,
        server_name_options,
    )
    from pycontainer.security._errors import SecurityError
    from pycontainer.security._identity import (
        MANAGER,
        TRUST_DOMAIN,
        Identity,
        container,
        parse_identity,
        user,
    )
    from pycontainer.security._interceptor import (
        AioAuthorizationInterceptor,
        AuthorizationInterceptor,
        OnDenied,
    )
    from pycontainer.security._leaf import (
        LEAF_FILE,
        RENEW_AT_FRACTION,
        TRUST_FILE,
        CredentialFiles,
        Leaf,
        certificate_identity,
        read_leaf,
        renewal_due,
        write_leaf,
    )
    from pycontainer.security._peer import identity_from_auth_context, peer_identity
    from pycontainer.security._pin import PIN_PREFIX, certificate_pin, der_pin, parse_pin
    from pycontainer.security._request import CertificateRequest, certificate_request, check_csr
    from pycontainer.security._roles import (
        DEFAULT_BINDINGS,
        METHOD_ROLES,
        Authorizer,
        Bindings,
        Denial,
        Role,
        check_registration,
        required_role,
    )
    from pycontainer.security._rotation import ensure_leaf
    from pycontainer.security._tokens import (
        TOKENS_FILE,
        Grant,
        TokenError,
        TokenNotFor,
        TokenStore,
    )

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CA_TTL",
    "DEFAULT_BINDINGS",
    "DEFAULT_LEAF_TTL",
    "DEFAULT_TOKEN_TTL",
    "LEAF_FILE",
    "LOOPBACK_HOSTS",
    "MANAGER",
    "MAX_TOKEN_TTL",
    "METHOD_ROLES",
    "PIN_PREFIX",
    "RENEW_AT_FRACTION",
    "TOKENS_FILE",
    "TRUST_DOMAIN",
    "TRUST_FILE",
    "AioAuthorizationInterceptor",
    "AuthorizationInterceptor",
    "Authorizer",
    "Bindings",
    "CertificateAuthority",
    "CertificateRequest",
    "CredentialFiles",
    "Denial",
    "Grant",
    "Identity",
    "IssuedCertificate",
    "Leaf",
    "OnDenied",
    "Role",
    "SecurityError",
    "TokenError",
    "TokenNotFor",
    "TokenStore",
    "certificate_identity",
    "certificate_pin",
    "certificate_request",
    "channel_credentials",
    "check_csr",
    "check_registration",
    "container",
    "der_pin",
    "ensure_leaf",
    "health_port_warning",
    "identity_from_auth_context",
    "is_loopback",
    "parse_identity",
    "parse_pin",
    "peer_identity",
    "plaintext_warning",
    "read_leaf",
    "renewal_due",
    "required_role",
    "server_credentials",
    "server_name_options",
    "user",
    "write_leaf",
]

# Each name is imported from its module when first used: a client dialling
# with mutual TLS needs the credential files and names, not the CA, the
# token store or the interceptors (and cryptography, which the CA needs).
_LAZY = {
    "DEFAULT_TOKEN_TTL": "pycontainer.limits",
    "MAX_TOKEN_TTL": "pycontainer.limits",
    "CA_CERT_FILE": "pycontainer.security._ca",
    "CA_KEY_FILE": "pycontainer.security._ca",
    "CA_TTL": "pycontainer.security._ca",
    "CertificateAuthority": "pycontainer.security._ca",
    "DEFAULT_LEAF_TTL": "pycontainer.security._ca",
    "IssuedCertificate": "pycontainer.security._ca",
    "LOOPBACK_HOSTS": "pycontainer.security._ca",
    "channel_credentials": "pycontainer.security._credentials",
    "health_port_warning": "pycontainer.security._credentials",
    "is_loopback": "pycontainer.security._credentials",
    "plaintext_warning": "pycontainer.security._credentials",
    "server_credentials": "pycontainer.security._credentials",
    "server_name_options": "pycontainer.security._credentials",
    "SecurityError": "pycontainer.security._errors",
    "Identity": "pycontainer.security._identity",
    "MANAGER": "pycontainer.security._identity",
    "TRUST_DOMAIN": "pycontainer.security._identity",
    "container": "pycontainer.security._identity",
    "parse_identity": "pycontainer.security._identity",
    "user": "pycontainer.security._identity",
    "AioAuthorizationInterceptor": "pycontainer.security._interceptor",
    "AuthorizationInterceptor": "pycontainer.security._interceptor",
    "OnDenied": "pycontainer.security._interceptor",
    "CredentialFiles": "pycontainer.security._leaf",
    "LEAF_FILE": "pycontainer.security._leaf",
    "Leaf": "pycontainer.security._leaf",
    "RENEW_AT_FRACTION": "pycontainer.security._leaf",
    "TRUST_FILE": "pycontainer.security._leaf",
    "certificate_identity": "pycontainer.security._leaf",
    "read_leaf": "pycontainer.security._leaf",
    "renewal_due": "pycontainer.security._leaf",
    "write_leaf": "pycontainer.security._leaf",
    "identity_from_auth_context": "pycontainer.security._peer",
    "peer_identity": "pycontainer.security._peer",
    "PIN_PREFIX": "pycontainer.security._pin",
    "certificate_pin": "pycontainer.security._pin",
    "der_pin": "pycontainer.security._pin",
    "parse_pin": "pycontainer.security._pin",
    "CertificateRequest": "pycontainer.security._request",
    "certificate_request": "pycontainer.security._request",
    "check_csr": "pycontainer.security._request",
    "Authorizer": "pycontainer.security._roles",
    "Bindings": "pycontainer.security._roles",
    "DEFAULT_BINDINGS": "pycontainer.security._roles",
    "Denial": "pycontainer.security._roles",
    "METHOD_ROLES": "pycontainer.security._roles",
    "Role": "pycontainer.security._roles",
    "check_registration": "pycontainer.security._roles",
    "required_role": "pycontainer.security._roles",
    "ensure_leaf": "pycontainer.security._rotation",
    "Grant": "pycontainer.security._tokens",
    "TOKENS_FILE": "pycontainer.security._tokens",
    "TokenError": "pycontainer.security._tokens",
    "TokenNotFor": "pycontainer.security._tokens",
    "TokenStore": "pycontainer.security._tokens",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
