"""pycontainer.testing's ManagerHost (the one in-process manager of the tests
and of users' tests) and the timedelta-only durations of the public settings."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from support import free_address, make_container, wait_until

import pycontainer
from pycontainer.manager import ManagerSettings
from pycontainer.testing import (
    TEST_HEARTBEAT,
    TEST_LOST_AFTER_HEARTBEATS,
    ManagerHost,
    container_host,
    manager_host,
)


@pytest.mark.parametrize(
    "field", ["heartbeat_interval", "max_grace_extension", "command_timeout", "reconnect_window"]
)
def test_manager_settings_take_timedelta_only(field: str) -> None:
    with pytest.raises(TypeError, match=rf"ManagerSettings\.{field} must be a datetime.timedelta"):
        ManagerSettings(**{field: 5})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"write timedelta\(seconds=2\.5\)"):
        ManagerSettings(**{field: 2.5})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"ManagerSettings\.{field} must not be negative"):
        ManagerSettings(**{field: timedelta(seconds=-1)})  # type: ignore[arg-type]
    assert getattr(ManagerSettings(**{field: timedelta(seconds=2)}), field) == timedelta(seconds=2)  # type: ignore[arg-type]


def test_a_grace_extension_is_asked_as_a_timedelta() -> None:
    container = make_container("asker")
    try:
        with pytest.raises(TypeError, match=r"takes a datetime.timedelta, not float"):
            container.request_grace_extension(2.0, "flushing")  # type: ignore[arg-type]
        # Outside a stop nothing is granted, as a timedelta.
        assert container.request_grace_extension(timedelta(seconds=2)) == timedelta(0)
    finally:
        container.close()


def test_a_manager_restarted_on_its_fixed_address_gets_its_container_back(
    tmp_path: Path,
) -> None:
    address = free_address()
    state = tmp_path / "state"
    with manager_host(state, listen=address) as first:
        assert first.address == address
        assert first.settings.heartbeat_interval == TEST_HEARTBEAT
        assert first.settings.lost_after_heartbeats == TEST_LOST_AFTER_HEARTBEATS
        with container_host(pycontainer.ContainerSettings(name="web"), manager=first):

            def connected(manager: ManagerHost) -> bool:
                got = manager.client.list_containers().containers
                return any(c.identity.name == "web" and c.connected for c in got)

            wait_until(lambda: connected(first), what="web registered")
            first.close()
            with manager_host(state, listen=address) as second:
                assert second.address == address
                wait_until(lambda: connected(second), timeout=20, what="web back")


def test_a_graceful_close_stops_every_container_as_a_shutdown_does(tmp_path: Path) -> None:
    for graceful, after in ((False, pycontainer.State.RUNNING), (True, pycontainer.State.STOPPED)):
        settings = pycontainer.ContainerSettings(name=f"web-{graceful}")
        with container_host(settings) as web:
            with manager_host(tmp_path / f"state-{graceful}", graceful=graceful) as manager:
                web.container.connect(manager.address)
                wait_until(
                    lambda w=web: w.container.state == pycontainer.State.RUNNING,
                    what="web running",
                )
            # A manager's plain exit leaves a container it did not launch running.
            assert web.container.state == after
