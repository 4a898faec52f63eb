"""Who is an endpoint, through a real grpcio client dialling ``xds:///``: a
replica whose readiness fails (reported over its Lifecycle stream) leaves at
once and comes back when it recovers; one whose process is killed (kill -9,
its session lost) leaves at once. Neither is a stop, so neither is drained:
the calls that reach the replica between the failure and the client's new
picker fail (it refuses them, not ready; or its connection is reset), and
are counted; once it is out, none fails."""

from __future__ import annotations

import time
from pathlib import Path

from pycontainer.testing import MeshRig
from pycontainer.v1 import manager_pb2

SERVICE = "orders"


def test_a_replica_whose_readiness_fails_leaves_and_comes_back(tmp_path: Path) -> None:
    ready_a, ready_b = tmp_path / "a.ready", tmp_path / "b.ready"
    ready_a.write_text("")
    ready_b.write_text("")
    with MeshRig(tmp_path / "rig") as rig:
        [a] = rig.run(
            rig.backend_spec("orders-a", service=SERVICE, args=["--ready-file", str(ready_a)])
        )
        [b] = rig.run(
            rig.backend_spec("orders-b", service=SERVICE, args=["--ready-file", str(ready_b)])
        )
        rig.wait_endpoints(SERVICE, 2)
        with rig.load(SERVICE) as load:
            load.until_answered([a, b])
            started = time.monotonic()
            ready_a.unlink()
            rig.wait_endpoints(SERVICE, 1, timeout=5)
            gone_after = time.monotonic() - started
            rig.wait_acknowledged(SERVICE)
            leaving = load.phase()
            print(
                f"MESH readiness failed: endpoint gone after {gone_after:.2f}s; {leaving}",
                flush=True,
            )
            # From here on a gets no call (it would refuse it: not ready).
            time.sleep(0.3)  # the picker's lag after the ACK
            load.phase()
            _calls_for(0.5)
            without = load.phase()
            print(f"MESH while not ready: {without}", flush=True)
            assert without.failed == 0, without
            assert set(without.answers) == {b}, without
            ready_a.write_text("")
            rig.wait_endpoints(SERVICE, 2, timeout=10)
            back = load.until_answered([a])
            assert back.failed == 0, back
            load.finish()


def test_a_killed_replica_leaves_at_once(tmp_path: Path) -> None:
    with MeshRig(tmp_path) as rig:
        ids = rig.run_service(SERVICE, replicas=3, delay=0.0)
        with rig.load(SERVICE, concurrency=12) as load:
            load.until_answered(ids)
            victim = ids[0]
            started = time.monotonic()
            rig.host.stub.KillContainer(
                manager_pb2.KillContainerRequest(container=victim, signal="KILL"), timeout=10
            )
            left = rig.wait_endpoints(SERVICE, 2, timeout=5)
            gone_after = time.monotonic() - started
            assert victim not in left
            rig.wait_acknowledged(SERVICE)
            time.sleep(0.3)  # the picker's lag after the ACK
            killed = load.phase()
            print(f"MESH kill -9: endpoint gone after {gone_after:.2f}s; {killed}", flush=True)
            # The calls in flight on it fail (UNAVAILABLE: the connection
            # reset), and those grpcio picked for it before it saw the reset:
            # counted, not bounded. Once it is out, none.
            _calls_for(0.5)
            after = load.finish()
            assert after.failed == 0, after
            assert set(after.answers) == set(left), after
        assert victim not in rig.drains()  # nothing to drain: it was gone


def _calls_for(seconds: float) -> None:
    """Let the load run ``seconds``: the calls it makes then are what is counted."""
    time.sleep(seconds)
