"""Where a client connects and a server listens: ``HOST:PORT`` checked before any
channel exists, so that a mistake gets a sentence saying what to write instead
of a connection that never succeeds (or, for a server, a port picked at random)."""

from __future__ import annotations

import argparse
import os
import re

__all__ = [
    "DEFAULT_MANAGER",
    "MANAGER_ENV",
    "TargetError",
    "listen_arg",
    "manager_target",
    "manager_targets",
    "manager_targets_arg",
    "parse_listen",
    "parse_target",
    "target_arg",
]

#: Where the manager listens unless told otherwise, and where clients look for it.
DEFAULT_MANAGER = "127.0.0.1:50050"
#: The environment variable that names the manager for every client.
MANAGER_ENV = "PYCONTAINER_MANAGER"

_EXAMPLE = "write HOST:PORT such as 127.0.0.1:50050"
# What could be a host name or an IPv4 address (to suggest NAME:PORT for it).
_HOST_LIKE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
# gRPC target schemes passed through as they are (grpc's own name resolvers).
_GRPC_SCHEMES = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")


class TargetError(ValueError):
    """An address that cannot be dialled or served on; the message says what to write."""


def _split(text: str, *, listen: bool) -> tuple[str, int]:
    stripped = text.strip()
    if not stripped:
        raise TargetError(f"empty address: {_EXAMPLE}")
    if "://" in stripped:
        scheme = stripped.split("://", 1)[0]
        rest = stripped.split("://", 1)[1].rstrip("/")
        raise TargetError(
            f"{text!r} has a scheme ({scheme}://): gRPC addresses have none; "
            f"{_EXAMPLE}" + (f" (here: {rest})" if ":" in rest else "")
        )
    if stripped.startswith("["):
        host, bracket, tail = stripped[1:].partition("]")
        if not bracket or not host:
            raise TargetError(f"{text!r}: an IPv6 address goes in brackets, such as [::1]:50050")
        if not tail.startswith(":"):
            raise TargetError(f"{text!r} has no port: write [{host}]:PORT such as [{host}]:50050")
        port_text = tail[1:]
        host = f"[{host}]"
    else:
        host, colon, port_text = stripped.rpartition(":")
        if not colon and stripped.isdigit():
            # A port alone (--health-listen 8081): the host is what is missing.
            where = "0.0.0.0:{0} (every interface)" if listen else "HOST:{0}"
            raise TargetError(
                f"{text!r} has no host: write 127.0.0.1:{stripped} (this machine) or "
                + where.format(stripped)
            )
        if not colon and not _HOST_LIKE.fullmatch(stripped):
            raise TargetError(f"{text!r} is not an address: {_EXAMPLE}")
        if not colon:
            raise TargetError(
                f"{text!r} has no port: write {stripped}:PORT such as {stripped}:50050"
            )
        if ":" in host:
            raise TargetError(f"{text!r}: an IPv6 address goes in brackets, such as [::1]:50050")
        if not host:
            raise TargetError(f"{text!r} has no host: {_EXAMPLE}")
    if not port_text.isdigit():
        raise TargetError(f"{text!r}: the port {port_text!r} is not a number; {_EXAMPLE}")
    port = int(port_text)
    low = 0 if listen else 1
    if not low <= port <= 65535:
        allowed = "0 (any free port) to 65535" if listen else "1 to 65535"
        raise TargetError(f"{text!r}: port {port} is out of range ({allowed})")
    return host, port


def parse_target(text: str) -> str:
    """The gRPC target to dial for ``text`` (``HOST:PORT``, ``[V6]:PORT`` or a
    gRPC scheme such as ``unix:PATH``); TargetError saying what to write."""
    stripped = text.strip()
    if stripped.startswith(_GRPC_SCHEMES) and "://" not in stripped.replace(":///", ""):
        return stripped
    host, port = _split(text, listen=False)
    return f"{host}:{port}"


def split_address(text: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT`` or ``[V6]:PORT`` (the brackets dropped),
    a port from 0 to 65535; TargetError saying what is wrong otherwise."""
    host, port = _split(text, listen=True)
    return host.strip("[]"), port


def parse_listen(text: str) -> str:
    """The address to serve on: ``HOST:PORT`` with a port from 0 (any free
    one) to 65535; TargetError otherwise (grpc would silently pick a port)."""
    host, port = _split(text, listen=True)
    return f"{host}:{port}"


def manager_target(given: str | None = None) -> str:
    """The manager to dial: ``given``, else $PYCONTAINER_MANAGER, else 127.0.0.1:50050."""
    text = given or os.environ.get(MANAGER_ENV) or DEFAULT_MANAGER
    try:
        return parse_target(text)
    except TargetError as exc:
        if not given and os.environ.get(MANAGER_ENV):
            raise TargetError(f"${MANAGER_ENV}: {exc}") from None
        raise


def _targets(text: str) -> list[str]:
    parts = [part for part in text.split(",") if part.strip()]
    return [parse_target(part) for part in parts] or [parse_target(text)]


def manager_targets(given: str | None = None) -> list[str]:
    """The managers to dial, as manager_target finds them, each checked:
    several comma-separated (managers in high availability: one leads), or one."""
    text = given or os.environ.get(MANAGER_ENV) or DEFAULT_MANAGER
    try:
        return _targets(text)
    except TargetError as exc:
        if not given and os.environ.get(MANAGER_ENV):
            raise TargetError(f"${MANAGER_ENV}: {exc}") from None
        raise


def manager_targets_arg(text: str) -> str:
    """argparse ``type=`` for --manager: one address, or several comma-separated."""
    try:
        return ",".join(_targets(text))
    except TargetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def target_arg(text: str) -> str:
    """argparse ``type=`` for an address to dial."""
    try:
        return parse_target(text)
    except TargetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def listen_arg(text: str) -> str:
    """argparse ``type=`` for an address to serve on."""
    try:
        return parse_listen(text)
    except TargetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
