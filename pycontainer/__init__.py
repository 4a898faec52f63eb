"""pycontainer: every container a managed object with a typed gRPC interface.

Embed in an existing server::

    container = pycontainer.Container(pycontainer.ContainerSettings(name="orders"))
    container.add_to_server(server)   # grpc.Server or grpc.aio.Server
    container.start()                 # or: await container.astart()
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agent import (
        TRANSITIONS,
        BackgroundServer,
        CheckKind,
        Command,
        Config,
        Container,
        ContainerSettings,
        Hooks,
        State,
        TrackedLock,
        TrackedRLock,
        run,
        serve,
        serve_in_background,
    )

__all__ = [
    "TRANSITIONS",
    "BackgroundServer",
    "CheckKind",
    "Command",
    "Config",
    "Container",
    "ContainerSettings",
    "Hooks",
    "State",
    "TrackedLock",
    "TrackedRLock",
    "__version__",
    "run",
    "serve",
    "serve_in_background",
]


def __getattr__(name: str) -> Any:
    # The container side (grpc, OpenTelemetry) is imported when first used:
    # `pycontainer --help` and the client need none of it.
    if name in __all__ and name != "__version__":
        from . import agent

        return getattr(agent, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
