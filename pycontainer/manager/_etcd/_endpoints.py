"""``etcd://host:port,host:port,...``: the members of an etcd cluster."""

from __future__ import annotations

SCHEME = "etcd://"
DEFAULT_PORT = 2379


class BadEtcdUrl(ValueError):
    """An etcd URL that cannot be used; the message says what to write."""


def parse_etcd_url(url: str) -> list[str]:
    """The members' ``host:port`` addresses of ``etcd://h1:2379,h2:2379``
    (the port defaults to 2379), in the order given; BadEtcdUrl otherwise."""
    example = "write etcd://HOST:PORT[,HOST:PORT...], such as etcd://10.0.0.1:2379,10.0.0.2:2379"
    if not url.startswith(SCHEME):
        raise BadEtcdUrl(f"{url!r} is not an etcd URL: {example}")
    rest = url[len(SCHEME) :]
    if "/" in rest or "?" in rest or "@" in rest:
        raise BadEtcdUrl(
            f"{url!r}: no path, query or user in an etcd URL (the keys' prefix is fixed): {example}"
        )
    members: list[str] = []
    for part in rest.split(","):
        part = part.strip()
        if not part:
            raise BadEtcdUrl(f"{url!r} names an empty member: {example}")
        try:
            host, port = _host_port(part)
        except ValueError as exc:
            raise BadEtcdUrl(f"{url!r}: member {part!r}: {exc}; {example}") from None
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if address in members:
            raise BadEtcdUrl(f"{url!r} names {address} twice")
        members.append(address)
    return members


def _host_port(member: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; ValueError saying what is wrong."""
    if member.startswith("["):
        host, bracket, rest = member[1:].partition("]")
        if not bracket or not host:
            raise ValueError("an IPv6 address goes in brackets, such as [::1]:2379")
        if rest and not rest.startswith(":"):
            raise ValueError("write [ADDRESS]:PORT")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = member.partition(":")
        if ":" in port_text:
            raise ValueError("an IPv6 address goes in brackets, such as [::1]:2379")
    if not host or any(c.isspace() for c in host):
        raise ValueError("no host")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)
