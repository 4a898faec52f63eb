"""A manager in a process of its own, for tests that kill it.

    python tests/apps/run_manager.py --listen 127.0.0.1:PORT --state-dir DIR

Serves until SIGTERM or SIGINT; prints "serving HOST:PORT" once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from pycontainer.manager import Manager, ManagerSettings
from pycontainer.testing import TEST_LOST_AFTER_HEARTBEATS
from pycontainer.units import duration_arg


async def amain(args: argparse.Namespace) -> None:
    settings = ManagerSettings(
        listen=args.listen,
        state_dir=args.state_dir,
        heartbeat_interval=args.heartbeat,
        # As a ManagerHost's: 1.5 s of silence is a false loss on a loaded machine.
        lost_after_heartbeats=TEST_LOST_AFTER_HEARTBEATS,
        insecure=True,  # the tests that kill it dial plaintext
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Manager(settings) as manager:
        print(f"serving {manager.address}", flush=True)
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--heartbeat", type=duration_arg, default="500ms")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
