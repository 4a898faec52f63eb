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


# Joining a manager that did not launch this container (kubelet's TLS
# bootstrap, in small): `pycontainer token create` prints the three. With a
# token and no current certificate in $PYCONTAINER_TLS_DIR (default
# $XDG_STATE_HOME/pycontainer/tls/<ID>, else ~/.local/state/...), the container
# sends a CSR to the join address, after checking that the server there
# presents the CA with the pin, and writes the certificate it gets into that
# directory. ContainerSettings.bootstrap_token / join_address / ca_pin are the
# same for embedders.
#: A bootstrap token (pct_<id>.<secret>), as `pycontainer token create` prints it.
BOOTSTRAP_TOKEN_ENV = "PYCONTAINER_BOOTSTRAP_TOKEN"
#: HOST:PORT of the manager's join listener (Bootstrap.Join, server-side TLS);
#: in high availability every manager's, comma-separated: the first that answers.
JOIN_ENV = "PYCONTAINER_JOIN"
#: The manager CA certificate's SHA-256, sha256:HEX: the join server must present it.
CA_PIN_ENV = "PYCONTAINER_CA_PIN"
