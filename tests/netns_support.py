"""Hosts made of Linux network namespaces, for tests of containers on other hosts.

A :class:`Network` is a switch (a namespace holding a bridge) with hosts
plugged into it: each host a namespace of its own with a veth pair (one end in
the host as ``eth0``, the other a port of the bridge) and an address on a
private /24 (10.200.X.0/24, X free in this namespace). The test process
itself sits on the switch too, through a veth from its own namespace (the
``.1`` address), so that it reaches every host's services while a host is
cut off from the others::

    with Network("cut") as net:
        a, b = net.add_host("a"), net.add_host("b")
        manager = a.popen([sys.executable, "-m", "pycontainer.cli", "manager",
                           "--listen", f"{a.address}:0", ...])
        net.cut(b)   # b's cable pulled at the switch
        net.heal(b)
        net.cut_between(a, b)   # a and b no longer hear each other, only
        net.heal_between(a, b)

A cut sets the switch's port of the host down (``ip link set DEV down`` in the
switch's namespace). Packets to and from that host then die inside the switch:
no RST, no ICMP, nothing either end's TCP could take as an answer, only
silence, as when a cable is pulled or a switch fails. The other ways were
worse models: ``tc netem loss`` on a host's own egress is reported to the
local TCP (netem's documented caveat: it resends as if nothing was lost), and
this kernel has neither netem nor tc's filters and actions; iptables is not
installed here, and its rules live in tables shared with the rest of the
machine. Healing sets the
port up again; the bridge runs no STP, so it forwards at once.

Nothing is left behind: names are unique per process and network
(``pcn<pid hex>-<n>``); :meth:`Network.close` (a ``with`` block's exit, a
fixture's finalizer) kills what runs in its namespaces and deletes them,
which deletes their devices too; and every new Network first sweeps the
namespaces of test processes that died without closing theirs (SIGKILLed
pytest), killing what still ran in those, by pid. The owner is told by the
pid in the name, so test runs that share /run/netns must share a pid
namespace too (as processes of one machine do).

Needs root and ``ip`` (iproute2) with netns support: a skip otherwise, a
failure when CI=true.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest
from support import IN_CI

# Every name this harness makes starts so: pcn<pid of the test process in hex>-<n>.
_PREFIX = "pcn"
_OWNED = re.compile(rf"^{_PREFIX}([0-9a-f]+)-(\d+)")
_SUBNET_FIRST = "10.200."
_IP_TIMEOUT = 20.0
# A locally administered unicast MAC that no veth here takes (the kernel
# makes random ones, with this bit set too, but never with these zeros).
_NOWHERE = "02:00:00:00:00:01"
_sequence = itertools.count()


class NetnsUnavailable(Exception):
    """Network namespaces cannot be made here (not root, no iproute2, no netns)."""


def require_netns() -> None:
    """Skip (locally) or fail (CI) unless namespaces and veths can be made here."""
    try:
        _check_available()
    except NetnsUnavailable as exc:
        if IN_CI:
            pytest.fail(f"network namespaces are required in CI: {exc}")
        pytest.skip(f"network namespaces unavailable: {exc}")


def _check_available() -> None:
    if os.geteuid() != 0:
        raise NetnsUnavailable("not root (ip netns needs CAP_SYS_ADMIN and CAP_NET_ADMIN)")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("no `ip` on PATH (package iproute2)")
    probe = f"{_PREFIX}{os.getpid():x}-{next(_sequence)}-probe"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        raise NetnsUnavailable(f"`ip netns add` failed: {exc.stderr.strip()}") from None
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", probe)


def _ip(*args: str, namespace: str | None = None) -> str:
    argv = ["ip"] + (["-n", namespace] if namespace else []) + list(args)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout


def _namespaces() -> list[str]:
    # "NAME (id: N)" or "NAME" per line.
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _pids_in(namespace: str) -> list[int]:
    with contextlib.suppress(subprocess.CalledProcessError):
        return [int(p) for p in _ip("netns", "pids", namespace).split()]
    return []


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        # "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def _kill_all_in(namespace: str) -> None:
    """SIGKILL what still runs in ``namespace`` (started by this harness), by pid."""
    for _ in range(5):
        pids = _pids_in(namespace)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:  # reap those that are our children; the rest init reaps
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def sweep_stale() -> list[str]:
    """Delete the namespaces and root veths of test processes no longer alive
    (killed before they could close their networks); the names swept."""
    swept: list[str] = []
    for name in _namespaces():
        owner = _OWNED.match(name)
        if owner and not _alive(int(owner.group(1), 16)):
            _kill_all_in(name)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", name)
                swept.append(name)
    for line in _ip("-o", "link", "show").splitlines():
        # "7: pcn1a2b-0@if6: <...>": a root veth whose switch namespace is held open.
        device = line.split(":")[1].strip().split("@")[0]
        owner = _OWNED.match(device)
        if owner and not _alive(int(owner.group(1), 16)):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", device)
                swept.append(device)
    return swept


def _subnet_lock() -> IO[bytes]:
    """An exclusive lock of this machine's on choosing a subnet, held until
    the file returned is closed."""
    directory = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
    lock = open(directory / "pycontainer-netns-subnets.lock", "ab")  # noqa: SIM115 - returned
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _free_subnet(seed: int) -> str:
    """A 10.200.X prefix that no address or route in this namespace uses."""
    used = _ip("-4", "addr", "show") + _ip("-4", "route", "show", "table", "all")
    for step in range(256):
        prefix = f"{_SUBNET_FIRST}{(seed + step) % 256}."
        if prefix not in used:
            return prefix
    raise NetnsUnavailable(f"every {_SUBNET_FIRST}X.0/24 is in use here")


class Host:
    """A network namespace plugged into a :class:`Network`'s switch as ``eth0``."""

    def __init__(self, network: Network, label: str, namespace: str, address: str) -> None:
        self.network = network
        self.label = label
        self.namespace = namespace
        self.address = address
        # The switch's end of this host's cable: what a cut sets down.
        self.port = f"p-{label}"
        self.processes: list[subprocess.Popen[str]] = []

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside this host."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def popen(self, argv: Sequence[str], **options: Any) -> subprocess.Popen[str]:
        """Start ``argv`` inside this host (text pipes unless ``options`` say
        otherwise); killed by :meth:`Network.close` if still running."""
        options.setdefault("stdout", subprocess.PIPE)
        options.setdefault("stderr", subprocess.PIPE)
        options.setdefault("text", True)
        # `ip netns exec` execs the program: the pid is the program's own.
        process: subprocess.Popen[str] = subprocess.Popen(self.command(argv), **options)
        self.processes.append(process)
        return process

    def run(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this host to its end; its output."""
        return subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, check=False
        )

    def __repr__(self) -> str:
        return f"Host({self.label!r}, {self.address})"


class Network:
    """A switch and the hosts plugged into it (see the module's doc)."""

    def __init__(self, tag: str = "") -> None:
        require_netns()
        sweep_stale()
        sequence = next(_sequence)
        self.name = f"{_PREFIX}{os.getpid():x}-{sequence}"
        self.tag = tag
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._closed = False
        self.switch = f"{self.name}-sw"
        # Chosen and taken (the address on this namespace's veth) under a
        # lock of the machine's: test processes side by side (pytest-xdist's
        # workers) never take one prefix twice.
        subnets = _subnet_lock()
        self.prefix = _free_subnet(os.getpid() + sequence)
        #: The test process's own address on the switch.
        self.address = f"{self.prefix}1"
        try:
            self._add_namespace(self.switch)
            _ip("link", "add", "br0", "type", "bridge", namespace=self.switch)
            # No STP: a port set up again forwards at once.
            _ip("link", "set", "br0", "type", "bridge", "stp_state", "0", namespace=self.switch)
            _ip("link", "set", "br0", "up", namespace=self.switch)
            # The test process's cable: its end stays here, named after the network.
            _ip("link", "add", self.name, "type", "veth", "peer", "name", "p-root")
            _ip("link", "set", "p-root", "netns", self.switch)
            self._plug("p-root")
            _ip("addr", "add", f"{self.address}/24", "dev", self.name)
            _ip("link", "set", self.name, "up")
        except BaseException:
            self.close()
            raise
        finally:
            subnets.close()  # the lock with it

    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("link", "set", "lo", "up", namespace=namespace)

    def _plug(self, port: str) -> None:
        _ip("link", "set", port, "master", "br0", namespace=self.switch)
        _ip("link", "set", port, "up", namespace=self.switch)

    def add_host(self, label: str) -> Host:
        """A new host on the switch: its address is the next free one on the /24."""
        if not re.fullmatch(r"[a-z][a-z0-9]{0,9}", label) or any(
            h.label == label for h in self.hosts
        ):
            raise ValueError(f"host label {label!r}: a new short lowercase word, please")
        namespace = f"{self.name}-{label}"
        host = Host(self, label, namespace, f"{self.prefix}{len(self.hosts) + 2}")
        self._add_namespace(namespace)
        # Made in the switch, one end moved into the host and renamed there
        # (not "h": ip reads that as "help").
        end = "hostend"
        _ip("link", "add", host.port, "type", "veth", "peer", "name", end, namespace=self.switch)
        _ip("link", "set", end, "netns", namespace, namespace=self.switch)
        _ip("link", "set", end, "name", "eth0", namespace=namespace)
        _ip("addr", "add", f"{host.address}/24", "dev", "eth0", namespace=namespace)
        _ip("link", "set", "eth0", "up", namespace=namespace)
        self._plug(host.port)
        self.hosts.append(host)
        return host

    def cut(self, host: Host) -> None:
        """Pull ``host``'s cable at the switch: its packets die there, silently."""
        _ip("link", "set", host.port, "down", namespace=self.switch)

    def heal(self, host: Host) -> None:
        """Plug ``host``'s cable back in."""
        _ip("link", "set", host.port, "up", namespace=self.switch)

    def cut_between(self, one: Host, other: Host) -> None:
        """Cut ``one`` and ``other`` off from each other only: each takes the
        other's address for a MAC no host has (a permanent neighbour entry),
        so their frames to each other go out and reach nobody (the bridge
        floods an unknown address; every host's NIC drops what is not for
        it), and both still reach everyone else. Silent for both stacks, as a
        cut is; the cable of either stays in (no carrier lost). iproute2 alone:
        this kernel has no tc filters or actions to drop by address."""
        for here, there in ((one, other), (other, one)):
            _ip(
                *("neigh", "replace", there.address, "lladdr", _NOWHERE),
                *("nud", "permanent", "dev", "eth0"),
                namespace=here.namespace,
            )

    def heal_between(self, one: Host, other: Host) -> None:
        """Undo :meth:`cut_between`: each looks the other up again (ARP)."""
        for here, there in ((one, other), (other, one)):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("neigh", "del", there.address, "dev", "eth0", namespace=here.namespace)

    def close(self) -> None:
        """Kill what runs in the hosts and delete every namespace and device
        (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        processes = [p for host in self.hosts for p in host.processes]
        for process in processes:
            if process.poll() is None:
                process.kill()
        for namespace in self._namespaces:
            _kill_all_in(namespace)  # what the hosts' programs started in turn
        for process in processes:  # their pipes' other ends are closed now
            with contextlib.suppress(Exception):
                process.communicate(timeout=10)
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        for namespace in reversed(self._namespaces):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", namespace)
        # Gone with the switch's namespace, unless something held that open.
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.name)

    def __enter__(self) -> Network:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
