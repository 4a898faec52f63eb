"""`pycontainer manager`: serve the manager until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import Any

from .._tls_env import INSECURE_ENV, truthy
from ..manager import (
    Manager,
    ManagerSettings,
    Resources,
    StartRefused,
    parse_cpu,
    parse_memory,
)
from ..telemetry import TelemetryConfigError, configure_log_export, configure_tracing
from ._context import Context
from ._errors import CliError


def tls_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ManagerSettings fields of --insecure ($PYCONTAINER_INSECURE), --ca-cert,
    --ca-key and --role."""
    insecure = args.insecure
    if insecure is None:
        insecure = bool(getattr(args, "global_insecure", None)) or truthy(
            os.environ.get(INSECURE_ENV)
        )
    if bool(args.ca_cert) != bool(args.ca_key):
        raise CliError("--ca-cert and --ca-key go together: give the external CA's both files")
    roles: dict[str, list[str]] = {}
    for binding in args.role:
        identity, equals, role = binding.partition("=")
        if not equals or not identity.strip() or not role.strip():
            raise CliError(f"--role {binding!r}: write IDENTITY=ROLE, such as user/alice=operate")
        roles.setdefault(identity.strip(), []).append(role.strip())
    if roles:
        from ..security import Bindings, SecurityError

        try:
            Bindings.from_mapping(roles)
        except SecurityError as exc:
            raise CliError(f"--role: {exc}") from None
    return {
        "insecure": insecure,
        "ca_cert": args.ca_cert,
        "ca_key": args.ca_key,
        "role_bindings": roles,
        "health_listen": args.health_listen,
        "http_listen": getattr(args, "http_listen", None),
        "join_listen": getattr(args, "join_listen", None),
    }


def run(args: argparse.Namespace, ctx: Context) -> int:
    capacity = None
    if args.cpu or args.memory:
        from ..manager._scheduler import machine_capacity

        machine = machine_capacity()
        capacity = Resources(
            cpu_millis=parse_cpu(args.cpu) if args.cpu else machine.cpu_millis,
            memory_bytes=parse_memory(args.memory) if args.memory else machine.memory_bytes,
        )
    if args.state is not None:
        from ..manager._etcd import BadEtcdUrl, parse_etcd_url

        try:
            parse_etcd_url(args.state)
        except BadEtcdUrl as exc:
            raise CliError(f"--state: {exc}") from None
    settings = ManagerSettings(
        listen=args.listen,
        state_dir=args.state_dir,
        state=args.state,
        capacity=capacity,
        heartbeat_interval=args.heartbeat,
        idle_heartbeat_interval=args.idle_heartbeat,
        leader_ttl=args.leader_ttl,
        manager_addresses=tuple(args.peer),
        **tls_settings(args),
    )
    try:
        provider = configure_tracing("pycontainer-manager")
        log_provider = configure_log_export("pycontainer-manager")
    except TelemetryConfigError as exc:
        raise CliError(str(exc)) from None
    try:
        asyncio.run(_serve(settings, args.stop_containers, ctx))
    except StartRefused as exc:  # another manager has the address or the state
        raise CliError(str(exc)) from None
    finally:
        if provider is not None:
            provider.shutdown()
        if log_provider is not None:
            log_provider.shutdown()
    return 0


async def _serve(settings: ManagerSettings, stop_containers: bool, ctx: Context) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if settings.state is not None:
        await _serve_elected(settings, stop_containers, stop, ctx)
        return
    manager = Manager(settings)
    await manager.start()
    ctx.out(f"manager serving on {manager.address}")
    if manager.http is not None:
        from ..manager._web import web_url

        ctx.out(f"web view on {web_url(manager)}")
    ctx.err(_security_note(manager))
    ctx.stdout.flush()
    await stop.wait()
    if stop_containers:
        await manager.shutdown_containers()
    await manager.stop()


async def _serve_elected(
    settings: ManagerSettings, stop_containers: bool, stop: asyncio.Event, ctx: Context
) -> None:
    """With the state on etcd: one of several managers, the leader or a standby."""
    from ..manager._leadership import HighAvailability

    ha = HighAvailability(settings)

    def serving(address: str) -> None:
        ctx.out(f"manager serving on {address}")
        ctx.stdout.flush()

    def leading(epoch: int) -> None:
        ctx.out(f"leading (epoch {epoch})")
        ctx.stdout.flush()

    def stepped_down(epoch: int, why: str) -> None:
        ctx.out(f"stepped down (epoch {epoch}: {why}); a standby, campaigning again")
        ctx.stdout.flush()

    ha.on_serving = serving
    ha.on_leading = leading
    ha.on_stepped_down = stepped_down
    ha.stop_containers = stop_containers
    await ha.run(stop)


def _security_note(manager: Manager) -> str:
    """How clients connect: with the admin certificate, or plaintext."""
    if manager.trust.insecure:
        return "serving without TLS (--insecure): clients pass --insecure too"
    note = f"serving mutual TLS: clients use --cert-dir {manager.trust.admin_dir} (the admin)"
    if manager.bootstrap.join_address:
        note += (
            f"; containers it did not launch join at {manager.bootstrap.join_address} "
            "(pycontainer token create)"
        )
    return note
