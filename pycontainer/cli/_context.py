"""What a verb runs with, given from outside (as kubectl's IOStreams and
client factory): the output streams and the manager client. ``main()`` builds
one from the command line; tests and embedders give their own (a client of an
in-process manager and StringIO streams)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from ._errors import CliError, Interrupted

if TYPE_CHECKING:
    from ..client import ManagerClient

__all__ = ["Context"]

# Seconds a channel may take to close after Ctrl-C before the verb ends anyway.
_CLOSE_AFTER_INTERRUPT = 1.0


@dataclass
class Context:
    """Streams and clients of one run of a verb."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    #: A client to use instead of dialling --manager (it stays open: its owner closes it).
    client: ManagerClient | None = None

    @contextlib.contextmanager
    def manager(self, args: argparse.Namespace) -> Iterator[ManagerClient]:
        """The manager client: the given one, else one dialling --manager
        (else $PYCONTAINER_MANAGER, else 127.0.0.1:50050) with mutual TLS
        (--cert-dir, else $PYCONTAINER_TLS_DIR, else state/admin) or
        plaintext (--insecure), closed after."""
        if self.client is not None:
            yield self.client
            return
        from ..client import ManagerClient, TargetError, TransportError, manager_transport

        given: str | None = getattr(args, "manager", None) or getattr(args, "global_manager", None)
        cert_dir = getattr(args, "cert_dir", None) or getattr(args, "global_cert_dir", None)
        insecure = bool(getattr(args, "insecure", None) or getattr(args, "global_insecure", None))
        try:
            transport = manager_transport(cert_dir, insecure=insecure)
            # Several addresses: the client finds the leader and follows it.
            client = ManagerClient(given, transport=transport)
        except TargetError as exc:
            raise CliError(f"--manager: {exc}") from None
        except TransportError as exc:
            raise CliError(str(exc)) from None
        try:
            yield client
        except (KeyboardInterrupt, Interrupted):
            # Ctrl-C may have landed inside grpc, whose close then can wait
            # for ever on the call it was in: close without waiting for it.
            closing = threading.Thread(target=client.close, name="close", daemon=True)
            closing.start()
            closing.join(_CLOSE_AFTER_INTERRUPT)
            raise
        client.close()

    def out(self, text: str = "") -> None:
        """A line on stdout."""
        self.stdout.write(text + "\n")

    def err(self, text: str) -> None:
        """A line on stderr."""
        self.stderr.write(text + "\n")
        self.stderr.flush()
