"""pycontainer: every container a managed object with a typed gRPC interface.

Embed in an existing server::

    container = pycontainer.Container(pycontainer.ContainerSettings(name="orders"))
    container.add_to_server(server)   # grpc.Server or grpc.aio.Server
    container.start()                 # or: await container.astart()
"""

__version__ = "0.1.0"

from .agent import (  # after __version__: agent modules read it
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
