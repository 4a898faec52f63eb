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
