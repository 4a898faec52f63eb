"""Containers on another host than the manager's (hosts made of network
namespaces, tests/netns_support.py): the manager on host A serves mutual TLS
(`pycontainer manager`, the default, not --insecure) on A's address; three
containers on host B join it with bootstrap tokens over the switch and run.
B's cable is cut: the manager sees every session lost within its liveness
bound; healed, every container re-registers on its own, in the same run (no
restart, its hooks' counts and its counter kept), and a pause caught in the
cut is answered on the new session, run once. Each with the manager's state
in SQLite and on an etcd member of a third host."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hosts_support import HostManager, join_from, start_etcd, start_manager
from netns_support import Host, Network, require_netns
from support import wait_until

from pycontainer.client import CallError, ManagerClient
from pycontainer.manager._etcd import EtcdStore
from pycontainer.v1 import container_pb2, manager_pb2

S = container_pb2
# The manager pings each connection every HEARTBEAT and takes 3 unanswered
# as a lost session (`pycontainer manager --heartbeat`); the rest is slack
# for a loaded machine.
HEARTBEAT = datetime.timedelta(seconds=1)
LOST_WITHIN = 3 * HEARTBEAT.total_seconds() + 7.0
# The container notices a silent manager after 3 of its heartbeats but at
# least 5 s (pycontainer.agent._connector), and gives the session up.
CONTAINER_GIVES_UP_WITHIN = 5.0 + 10.0
# Then it dials again with a backoff (jittered, up to a few seconds).
RESUMED_WITHIN = 30.0
CONTAINERS = ("alpha", "beta", "gamma")


@dataclass
class Site:
    """Host A's manager (and the test's admin client to it), host B."""

    network: Network
    a: Host
    b: Host
    manager: HostManager
    etcd_url: str  # "" with the state in SQLite

    @property
    def client(self) -> ManagerClient:
        return self.manager.client


@pytest.fixture(params=["sqlite", "etcd"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """``sqlite``: the manager's state in its state directory; ``etcd``: on an
    etcd member of a host of its own (E), reached across the switch too."""
    require_netns()
    with Network("hosts") as network:
        a, b = network.add_host("a"), network.add_host("b")
        etcd_url = ""
        if request.param == "etcd":
            etcd_url = start_etcd(network.add_host("e"), tmp_path / "etcd")
        state = ("--state", etcd_url) if etcd_url else ()
        manager = start_manager(
            a, tmp_path / "state", *state, "--heartbeat", "1s", "--idle-heartbeat", "1s"
        )
        assert manager.address.startswith(f"{a.address}:")
        try:
            yield Site(network, a, b, manager, etcd_url)
        finally:
            manager.close()


def _shown(site: Site, name: str) -> container_pb2.Container | None:
    try:
        return site.client.get_container(manager_pb2.GetContainerRequest(container=name)).container
    except CallError:
        return None


def _all(site: Site, ok: Callable[[container_pb2.Container], bool]) -> bool:
    shown = [_shown(site, name) for name in CONTAINERS]
    return all(c is not None and ok(c) for c in shown)


def _hooks(tmp_path: Path, name: str) -> dict[str, int]:
    calls: dict[str, int] = json.loads((tmp_path / f"{name}.json").read_text())["calls"]
    return calls


def _sessions_ended(tmp_path: Path, name: str) -> int:
    """How often the container on B saw its manager session end (its log)."""
    return (tmp_path / f"{name}.log").read_text().count("manager session with")


@pytest.mark.parametrize("seen_by", ["manager", "both"])
def test_a_cut_between_hosts_is_seen_and_healed_without_a_restart_or_a_rerun(
    site: Site, tmp_path: Path, seen_by: str
) -> None:
    """``seen_by``: heal once the manager saw the sessions lost (the containers'
    connections still open, their data stalled), or once the containers
    also gave their sessions up and dial again into the cut."""
    apps = {
        name: join_from(
            site.b, site.manager, name, tmp_path, *(["--pause-seconds", "3"] * (name == "alpha"))
        )
        for name in CONTAINERS
    }

    def running_and_connected(c: container_pb2.Container) -> bool:
        return c.state == S.LIFECYCLE_STATE_RUNNING and c.connected

    def alive() -> None:
        for name, app in apps.items():
            log = (tmp_path / f"{name}.log").read_text()
            assert app.poll() is None, (name, log[-2000:])

    def joined() -> bool:
        alive()
        return _all(site, running_and_connected)

    wait_until(joined, 60, "every container on B joins over mTLS and runs")
    [endpoint] = _shown(site, "alpha").identity.endpoints  # type: ignore[union-attr]
    assert endpoint.tls

    # A pause reaches alpha and runs (3 s); the cut comes while it does.
    pause = site.manager.stub.PauseContainer.future(
        manager_pb2.PauseContainerRequest(container="alpha"), timeout=120
    )
    wait_until(
        lambda: _shown(site, "alpha").state == S.LIFECYCLE_STATE_PAUSING,  # type: ignore[union-attr]
        15,
        "alpha pausing",
    )
    site.network.cut(site.b)
    cut_at = time.monotonic()
    wait_until(lambda: _all(site, lambda c: not c.connected), LOST_WITHIN, "every session lost")
    seen_after = time.monotonic() - cut_at
    assert site.manager.process.poll() is None
    alive()  # the containers kept running meanwhile
    assert not pause.done()  # how the pause ended is on the other side of the cut
    if seen_by == "both":
        wait_until(
            lambda: all(_sessions_ended(tmp_path, name) for name in CONTAINERS),
            CONTAINER_GIVES_UP_WITHIN,
            "every container gave its session up",
        )
        print(f"\ncontainers gave up {time.monotonic() - cut_at:.1f}s after the cut", end="")

    site.network.heal(site.b)
    healed_at = time.monotonic()
    wait_until(lambda: _all(site, _resumed), RESUMED_WITHIN, "every container re-registered")
    resumed_after = time.monotonic() - healed_at
    paused = pause.result(30)  # answered on the new session
    assert paused.container.state == S.LIFECYCLE_STATE_PAUSED
    for name in CONTAINERS:
        shown = _shown(site, name)
        assert shown is not None, name
        assert shown.restarts == 0, name  # the same run
        expected = {"start": 1, "pause": 1} if name == "alpha" else {"start": 1}
        assert _hooks(tmp_path, name) == expected, name  # nothing ran twice
        registered = (tmp_path / f"{name}.log").read_text().count("registered with manager")
        assert registered == 2, name  # one new session after the heal
    print(
        f"\ncut seen by the manager after {seen_after:.1f}s;"
        f" resumed {resumed_after:.1f}s after the heal"
    )
    assert not any("Traceback" in (tmp_path / f"{n}.log").read_text() for n in CONTAINERS)

    if site.etcd_url:  # the registry is etcd's: every container's record there
        reader = EtcdStore(site.etcd_url)
        try:
            wait_until(
                lambda: {r.id for r in reader.list_containers()} >= set(CONTAINERS),
                20,
                "the records on etcd",
            )
        finally:
            reader.close()

    # Still commanded across the hosts: a stop ends each program.
    for name in CONTAINERS:
        site.client.stop_container(manager_pb2.StopContainerRequest(container=name))
    for name, app in apps.items():
        assert app.wait(30) == 0, name


def _resumed(c: container_pb2.Container) -> bool:
    wanted = S.LIFECYCLE_STATE_PAUSED if c.identity.id == "alpha" else S.LIFECYCLE_STATE_RUNNING
    return c.connected and c.state == wanted
