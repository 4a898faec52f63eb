"""pytest fixtures over :mod:`pycontainer.testing`; enable them with
``pytest_plugins = ["pycontainer.testing.pytest_plugin"]`` in a conftest.py.

- ``manager``: a :class:`~pycontainer.testing.ManagerHost` on a fresh state
  directory under ``tmp_path`` (in-process runtime included); what it launched
  is killed at the end of the test.
- ``container_factory``: ``container_factory(settings, manager=..., start=...)``
  gives served containers, all closed at the end of the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import ContainerHost, ManagerHost, container_host, manager_host

__all__ = ["container_factory", "manager"]


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerHost]:
    """A real manager for this test."""
    with manager_host(tmp_path / "state") as host:
        yield host


@pytest.fixture
def container_factory() -> Iterator[Callable[..., ContainerHost]]:
    """Served containers for this test, closed at its end."""
    with contextlib.ExitStack() as stack:

        def factory(*args: Any, **kwargs: Any) -> ContainerHost:
            return stack.enter_context(container_host(*args, **kwargs))

        yield factory
