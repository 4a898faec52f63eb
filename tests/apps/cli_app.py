"""The smallest container a spec can launch: the program of the CLI tests.

    command: [python, tests/apps/cli_app.py]

It dials the manager that launched it ($PYCONTAINER_MANAGER, with its id in
$PYCONTAINER_CONTAINER_ID), waits to be started, logs a line at INFO and one at
WARNING when it is, keeps a counter that checkpoints and restores as ASCII
digits, and exits when the manager stops it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import sys

import pycontainer

log = logging.getLogger("cli_app")


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    state = {"counter": 0}

    async def on_start() -> None:
        state["counter"] += 1
        log.info("cli app started")
        log.warning("cli app has nothing to do")

    async def on_checkpoint() -> bytes:
        return str(state["counter"]).encode()

    async def on_restore(data: bytes) -> None:
        state["counter"] = int(data.decode() or 0)
        log.info("restored %d", state["counter"])

    container = pycontainer.Container(
        pycontainer.ContainerSettings(
            name=os.environ.get("PYCONTAINER_NAME", "cli-app"),
            grace_period=datetime.timedelta(seconds=5),
        ),
        hooks=pycontainer.Hooks(
            on_start=on_start, on_checkpoint=on_checkpoint, on_restore=on_restore
        ),
    )
    asyncio.run(pycontainer.serve(container, "127.0.0.1:0"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
