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
from ._client import CliError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "manager",
        help="serve the central manager",
        description="Serve the Lifecycle and Manager APIs. Containers dial in; operators "
        "use the other verbs. Ctrl-C or SIGTERM stops serving (containers keep running "
        "and reconnect to the next manager on the same address and state directory).",
    )
    parser.add_argument("--listen", default="127.0.0.1:50050", help="HOST:PORT to serve on")
    parser.add_argument("--state-dir", default="state", help="where the SQLite state lives")
    parser.add_argument("--cpu", help="capacity in cpus (e.g. 4 or 3500m); default: this machine")
    parser.add_argument("--memory", help="capacity in bytes (e.g. 8Gi); default: this machine")
    parser.add_argument(
        "--heartbeat", type=float, default=5.0, help="heartbeat interval of sessions, seconds"
    )
    parser.add_argument(
        "--stop-containers",
        action="store_true",
        help="on Ctrl-C, stop every container gracefully before exiting",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
        asyncio.run(_serve(settings, args.stop_containers))
    except StartRefused as exc:  # another manager has the address or the state
        raise CliError(str(exc)) from None
    finally:
        if provider is not None:
            provider.shutdown()
    return 0


async def _serve(settings: ManagerSettings, stop_containers: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    manager = Manager(settings)
    await manager.start()
    print(f"manager serving on {manager.address}", flush=True)
    await stop.wait()
    if stop_containers:
        await manager.shutdown_containers()
    await manager.stop()
