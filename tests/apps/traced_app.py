"""A standalone container that dials the manager in $PYCONTAINER_MANAGER and
exports its spans as set by OTEL_* variables (the tracing test sets console)."""

from __future__ import annotations

import asyncio
import sys

import pycontainer
from pycontainer.telemetry import configure_tracing


def main() -> None:
    provider = configure_tracing("traced-app")

    async def on_stop(reason: str, deadline: float) -> None:
        print(f"on_stop ({reason})", file=sys.stderr, flush=True)

    container = pycontainer.Container(
        pycontainer.ContainerSettings(name="traced", log_level=None),
        hooks=pycontainer.Hooks(on_stop=on_stop),
    )
    asyncio.run(pycontainer.serve(container, "127.0.0.1:0"))
    if provider is not None:
        provider.shutdown()


if __name__ == "__main__":
    main()
