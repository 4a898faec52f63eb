"""`pycontainer manager`: serve the manager until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from ..manager import (
    Manager,
    ManagerSettings,
    Resources,
    StartRefused,
    parse_cpu,
    parse_memory,
)
from ..telemetry import configure_tracing
from ._context import Context
from ._errors import CliError


def run(args: argparse.Namespace, ctx: Context) -> int:
    capacity = None
    if args.cpu or args.memory:
        from ..manager._scheduler import machine_capacity

        machine = machine_capacity()
        capacity = Resources(
            cpu_millis=parse_cpu(args.cpu) if args.cpu else machine.cpu_millis,
            memory_bytes=parse_memory(args.memory) if args.memory else machine.memory_bytes,
        )
    settings = ManagerSettings(
        listen=args.listen,
        state_dir=args.state_dir,
        capacity=capacity,
        heartbeat_interval=args.heartbeat,
    )
    provider = configure_tracing("pycontainer-manager")
    try:
        asyncio.run(_serve(settings, args.stop_containers, ctx))
    except StartRefused as exc:  # another manager has the address or the state
        raise CliError(str(exc)) from None
    finally:
        if provider is not None:
            provider.shutdown()
    return 0


async def _serve(settings: ManagerSettings, stop_containers: bool, ctx: Context) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    manager = Manager(settings)
    await manager.start()
    ctx.out(f"manager serving on {manager.address}")
    ctx.stdout.flush()
    await stop.wait()
    if stop_containers:
        await manager.shutdown_containers()
    await manager.stop()
