"""The environment variables through which peers find their TLS material.

Apart from pycontainer.security so that reading them costs no import of
``cryptography`` (the CLI's --help and completion stay fast)."""

#: The directory with a peer's ``tls.pem`` and ``ca.pem``: set by the manager
#: for the containers it launches, read by the CLI and clients too.
TLS_DIR_ENV = "PYCONTAINER_TLS_DIR"
#: Set to 1 (or true/yes): clients dial plaintext, as ``--insecure`` does.
INSECURE_ENV = "PYCONTAINER_INSECURE"


def truthy(value: str | None) -> bool:
    """Whether an environment variable's value means yes."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")
