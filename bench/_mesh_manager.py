"""A manager (plaintext) whose process runtime starts nothing: each launch is
written as a line (the container's id) to LAUNCHES, for the simulated fleet of
bench/mesh_fleet.py to register under that id. Everything else is the manager
as it ships: its specs, registry, sessions and mesh.

    python -m bench._mesh_manager LISTEN STATE_DIR LAUNCHES

Prints "serving" once it serves; ends on SIGTERM. With $BENCH_PROFILE set,
SIGUSR1 starts cProfile and the next SIGUSR1 writes its stats there (what
the mesh costs under churn: bench/mesh_fleet.py --profile).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import datetime
import os
import signal
import sys
from pathlib import Path

from pycontainer.manager import Manager, ManagerSettings
from pycontainer.manager._runtime import ExitListener, Launch
from pycontainer.v1 import spec_pb2

# The simulated fleet sends no heartbeats (their cost is P7's row): nothing
# is declared lost during a run.
_HEARTBEAT = datetime.timedelta(seconds=600)


class FleetRuntime:
    """Launches by writing the id down; the fleet process dials back with it."""

    reports_exits = False
    own_pid_namespace = False

    def __init__(self, launches: Path) -> None:
        self._out = launches.open("a", buffering=1)
        self._running: set[str] = set()

    def add_exit_listener(self, listener: ExitListener) -> None:
        """Nothing to report: no process of its own."""

    async def launch(self, launch: Launch) -> int:
        self._running.add(launch.container_id)
        self._out.write(launch.container_id + "\n")
        return 0

    def running(self, container_id: str) -> bool:
        return container_id in self._running

    def pid(self, container_id: str) -> int | None:
        return None

    async def signal(self, container_id: str, signum: int) -> bool:
        return False

    async def kill(self, container_id: str) -> None:
        self._running.discard(container_id)


_profiler: list[cProfile.Profile] = []


def _toggle_profile(path: str) -> None:
    if _profiler:
        profiler = _profiler.pop()
        profiler.disable()
        profiler.dump_stats(path)
    else:
        _profiler.append(cProfile.Profile())
        _profiler[0].enable()


async def main(listen: str, state_dir: str, launches: str) -> None:
    settings = ManagerSettings(
        listen=listen,
        state_dir=state_dir,
        insecure=True,
        heartbeat_interval=_HEARTBEAT,
        idle_heartbeat_interval=_HEARTBEAT,
    )
    runtime = FleetRuntime(Path(launches))
    manager = Manager(settings, runtimes={spec_pb2.RUNTIME_KIND_PROCESS: runtime})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    profile_to = os.environ.get("BENCH_PROFILE")
    if profile_to:
        loop.add_signal_handler(signal.SIGUSR1, _toggle_profile, profile_to)
    await manager.start()
    print("serving", flush=True)
    await stop.wait()
    await manager.stop()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
