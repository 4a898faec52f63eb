"""The runc runtime: containers as OCI containers run by runc (see _runtime's
docstring), their bundles (_config) and the shim that waits for them (shim)."""

from ._config import NAMESPACES, build_config, cgroup_limits_support, make_host_root
from ._runtime import RuncContainer, RuncRuntime

__all__ = [
    "NAMESPACES",
    "RuncContainer",
    "RuncRuntime",
    "build_config",
    "cgroup_limits_support",
    "make_host_root",
]
