"""The network-namespace harness itself (tests/netns_support.py): hosts reach
each other and the test process over the switch, a cut silences exactly one
host's cable and heals, and nothing is left behind (nor by a test process
that died without cleaning up)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import netns_support
import pytest
from netns_support import Host, Network, _alive, _namespaces, require_netns, sweep_stale
from support import wait_until

# Echoes what each connection sends until it closes, on the host's address;
# prints its port.
_ECHO = """
import socket, sys, threading
def echo(c):
    with c:
        while data := c.recv(64):
            c.sendall(data)
s = socket.create_server((sys.argv[1], 0))
print(s.getsockname()[1], flush=True)
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""
# Connects to HOST PORT with a short timeout and says what became of it.
_DIAL = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
        c.sendall(b"hi"); print(c.recv(64).decode())
except OSError as exc:
    print(type(exc).__name__)
"""

# Says "hi" over one connection, then again (2 s to answer) for each line of stdin.
_HOLD = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
c.sendall(b"hi"); print(c.recv(64).decode(), flush=True)
for _ in sys.stdin:
    try:
        c.sendall(b"hi"); print(c.recv(64).decode() or "closed", flush=True)
    except OSError as exc:
        print(type(exc).__name__, flush=True)
"""


@pytest.fixture(autouse=True)
def _netns() -> None:
    require_netns()


def _echo(host: Host) -> int:
    server = host.popen([sys.executable, "-c", _ECHO, host.address])
    assert server.stdout is not None
    return int(server.stdout.readline())


def _dial(host: Host, address: str, port: int, timeout: float = 2.0) -> str:
    done = host.run([sys.executable, "-c", _DIAL, address, str(port), str(timeout)])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_hosts_reach_each_other_and_a_cut_silences_one_cable_until_healed() -> None:
    with Network("reach") as net:
        a, b, c = net.add_host("a"), net.add_host("b"), net.add_host("c")
        assert len({a.address, b.address, c.address, net.address}) == 4
        port = _echo(a)
        assert _dial(b, a.address, port) == "hi"
        with socket.create_connection((a.address, port), timeout=5) as direct:
            direct.sendall(b"me")  # the test process is on the switch too
            assert direct.recv(64) == b"me"
        # Each host has its own loopback, up.
        assert _dial(a, "127.0.0.1", port) in ("ConnectionRefusedError",)

        net.cut(b)
        started = time.monotonic()
        # Silence, not a refusal: the connect waits out its timeout.
        assert _dial(b, a.address, port, timeout=1.5) in ("TimeoutError", "timeout")
        assert time.monotonic() - started >= 1.4
        assert _dial(c, a.address, port) == "hi"  # only b's cable is cut
        net.heal(b)
        # b's neighbour lookup of a, begun in the cut, may still fail the
        # first dial after it (EHOSTUNREACH), as on a real LAN.
        wait_until(lambda: _dial(b, a.address, port) == "hi", 15, "b reaches a again")


def test_a_cut_between_two_hosts_silences_them_to_each_other_only() -> None:
    with Network("pair") as net:
        a, b, c = net.add_host("a"), net.add_host("b"), net.add_host("c")
        a_port, b_port = _echo(a), _echo(b)
        # A connection open across the cut goes silent too, not only new ones.
        held = b.popen([sys.executable, "-c", _HOLD, a.address, str(a_port)], stdin=subprocess.PIPE)
        assert held.stdout is not None
        assert held.stdout.readline().strip() == "hi"

        net.cut_between(a, b)
        assert _dial(b, a.address, a_port, timeout=1.5) == "TimeoutError"
        assert _dial(a, b.address, b_port, timeout=1.5) == "TimeoutError"
        assert held.stdin is not None
        held.stdin.write("again\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() == "TimeoutError"  # no answer, no reset
        # Everyone else still reaches both, and both everyone else.
        assert _dial(c, a.address, a_port) == "hi"
        assert _dial(c, b.address, b_port) == "hi"
        assert _dial(b, net.address, 1) == "ConnectionRefusedError"  # the test's own address
        with socket.create_connection((b.address, b_port), timeout=5) as direct:
            direct.sendall(b"me")
            assert direct.recv(64) == b"me"

        net.heal_between(a, b)
        wait_until(lambda: _dial(b, a.address, a_port) == "hi", 15, "b reaches a again")
        assert _dial(a, b.address, b_port) == "hi"


def test_close_leaves_no_namespace_or_device_even_with_programs_running() -> None:
    net = Network("close")
    a = net.add_host("a")
    sleeper = a.popen(["sleep", "600"])
    # A grandchild the harness did not start itself still dies with the host.
    a.popen(["sh", "-c", "sleep 600 & wait"])
    names = [net.switch, a.namespace]
    assert set(names) <= set(_namespaces())
    net.close()
    assert sleeper.poll() is not None
    assert not set(names) & set(_namespaces())
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert net.name not in links
    net.close()  # again: nothing


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_a_dead_test_process_s_namespaces_are_swept_by_the_next_network(reaped: bool) -> None:
    gone = subprocess.Popen(["sleep", "600"])
    gone.kill()
    if reaped:
        gone.wait()  # a pid no process has now
    else:  # killed, not yet reaped by its parent: dead all the same
        wait_until(lambda: not _alive(gone.pid), 10, "a zombie")
    stale = f"pcn{gone.pid:x}-0-sw"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in sweep_stale()
        assert stale not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
        gone.wait()


def test_a_live_test_process_s_namespaces_are_not_swept() -> None:
    with Network("live") as net:
        assert net.switch not in sweep_stale()
        assert net.switch in _namespaces()


def test_without_root_it_is_a_skip_locally_and_a_failure_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(netns_support, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="not root"):
        require_netns()
    monkeypatch.setattr(netns_support, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="required in CI: not root"):
        require_netns()
