"""The `pycontainer` console script: says which extra to install when the
command's dependencies are missing, else runs pycontainer.cli.

The base distribution is what an app that embeds the container side needs;
the command and the manager it runs come with the ``cli`` extra. The check
runs before ``pycontainer.cli`` is imported, whose modules need them.
"""

from __future__ import annotations

import gc
import importlib.util
import sys

# The distribution's name on PyPI ("pycontainer" there is an unrelated project).
DISTRIBUTION = "pycontainer-grpc"
# What the command imports beyond the base install: the `cli` extra (with
# the manager's: the mesh's xDS API and CSDS).
CLI_MODULES = (
    "rich",
    "opentelemetry.instrumentation.grpc",
    "envoy.service.discovery.v3",
    "grpc_csds",
)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def missing_cli_modules() -> list[str]:
    return [m for m in CLI_MODULES if not _installed(m)]


def main() -> int:
    missing = missing_cli_modules()
    if missing:
        print(
            f"error: the pycontainer command needs the 'cli' extra "
            f"(missing {', '.join(missing)}): pip install '{DISTRIBUTION}[cli]'",
            file=sys.stderr,
        )
        return 1
    # What pycontainer.cli.pause_collector does, before the grammar's imports
    # (pycontainer.cli.main resumes the collector after the verb's).
    gc.disable()
    from .cli import main as cli_main

    return cli_main(own_process=True)
