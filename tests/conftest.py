"""Shared fixtures: real servers on ephemeral loopback ports, sync and aio."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from support import Host, make_container, start_aio_host, start_container, start_sync_host

import pycontainer

# The suite's managers serve plaintext (tests/support.py, pycontainer.testing,
# and `pycontainer manager`/`up` started by tests read this as --insecure), and
# so do its clients; tests/test_mtls.py proves mutual TLS with it unset.
os.environ.setdefault("PYCONTAINER_INSECURE", "1")


@pytest.fixture(params=["sync", "aio"])
def host(request: pytest.FixtureRequest) -> Iterator[Host]:
    """A started container embedded in a sync or an aio app server."""
    container = make_container("orders", priority=5)
    h = start_sync_host(container) if request.param == "sync" else start_aio_host(container)
    start_container(h)
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(params=["sync", "aio"])
def new_host(request: pytest.FixtureRequest) -> Iterator[Callable[..., Host]]:
    """A factory of hosts of one kind, for tests that build the container."""
    hosts: list[Host] = []

    def factory(container: pycontainer.Container) -> Host:
        h = start_sync_host(container) if request.param == "sync" else start_aio_host(container)
        hosts.append(h)
        return h

    yield factory
    for h in hosts:
        h.stop()


# pycontainer.testing's fixtures (`manager`, `container_factory`), as users enable them.
pytest_plugins = ["pycontainer.testing.pytest_plugin"]
