"""Several managers against one etcd cluster, one of them the leader.

Each manager campaigns in an election on etcd (a Candidate: a lease of
``ManagerSettings.leader_ttl`` kept alive by short calls, its value the
manager's address). Only the leader has a :class:`Manager` at all: it runs
containers' commands, supervision, reconciliation, admission and the mesh,
and every write it makes to the state store is fenced by its term (the
leader key's create revision, its epoch): a deposed leader's write lands
nowhere. A manager that is not leading serves a :class:`Standby` on the same
address instead, which refuses every call with FAILED_PRECONDITION naming the
leader (its address in the ``pycontainer-leader`` trailing metadata too), so
that containers and the CLI go there.

The leader steps down by itself, without waiting for etcd to say so, when
its lease may have lapsed (last acknowledged keepalive + TTL passed:
LeaseKeeper.lost), or when a store write comes back fenced: it stops its
Manager (its Lifecycle sessions close, so containers move to the next
leader), serves the standby again and campaigns again. The keepalives run on
the manager's event loop: a stall of the loop longer than a third of the TTL
can cost the leadership.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from ..agent._connector import LEADER_METADATA
from ._etcd import (
    Candidate,
    EtcdClient,
    EtcdError,
    EtcdStore,
    Term,
    create_revision_is,
    parse_etcd_url,
    put_op,
)
from ._exclusive import StartRefused
from ._manager import Manager, _open_etcd_store
from ._sealing import KEY_FILE, Sealer
from ._settings import ManagerSettings
from ._store import StateStore, StoreError
from ._trust import Trust
from ._xds._forward import AdsForwarder, dial_leader

_log = logging.getLogger("pycontainer.manager.leadership")

#: A MAC of the managers' sealing key (_check_sealing_key).
SEALING_CHECK = b"/pycontainer/sealing-key-check"
#: The election's name, under the store's key prefix.
ELECTION = b"/pycontainer/election/managers"
# How often a standby asks etcd who leads (what its refusals name).
_LEADER_POLL = datetime.timedelta(seconds=0.5)
# A campaign's single call waits this long before it is made again (on a new
# lease): a member that hangs (SIGSTOP) holding the call costs a successor at
# most this much, not the call's whole life.
_CAMPAIGN_WAIT = datetime.timedelta(seconds=10)


def standby_message(leader: str) -> str:
    """What a standby says to every call."""
    if leader:
        return f"this manager is a standby; the leader is at {leader}"
    return "this manager is a standby and no leader is elected yet: try again shortly"


class Standby:
    """The server of a manager not leading: every method refused with
    FAILED_PRECONDITION, naming the leader (``leader``, kept current by the
    caller). It serves no reads: what a standby knows may be behind the
    leader's, and a client given every manager's address finds the leader."""

    def __init__(self, listen: str, trust: Trust) -> None:
        self.leader = ""
        self._server = grpc.aio.server()
        # The mesh's xDS streams go on to the leader (_xds._forward), the
        # rest is refused.
        self._ads = AdsForwarder(
            lambda: self.leader, dial_leader(trust.insecure, trust.manager_files)
        )
        self._server.add_generic_rpc_handlers((self._ads, _Refusal(self)))
        # Served as the leader serves (mutual TLS unless insecure), so that
        # a container's dial gets the refusal, not a failed handshake.
        self.port = trust.bind(self._server, listen)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(0)
        await self._ads.close()


class _Refusal(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, standby: Standby) -> None:
        self._standby = standby

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.stream_stream_rpc_method_handler(self._refuse)

    async def _refuse(self, requests: AsyncIterator[bytes], context: Any) -> None:
        leader = self._standby.leader
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            standby_message(leader),
            trailing_metadata=((LEADER_METADATA, leader),),
        )


class HighAvailability:
    """One manager's part in the cluster: standby, campaign, lead, step down,
    over again, until ``stop`` is set. ``settings.state`` is the etcd URL."""

    def __init__(self, settings: ManagerSettings) -> None:
        if settings.state is None:
            raise ValueError("high availability needs the state on etcd (settings.state)")
        self.settings = settings
        self.manager: Manager | None = None
        self.term: Term | None = None
        self.address = ""
        #: Terms won so far (a test's and an operator's figure).
        self.terms = 0
        #: Set while leading, cleared on stepping down.
        self.leading = asyncio.Event()
        self._fenced = asyncio.Event()
        #: Told the address once it is bound (the standby's, then the leader's).
        self.on_serving: Callable[[str], object] = lambda address: None
        #: Told each term won (its epoch), and why each ended.
        self.on_leading: Callable[[int], object] = lambda epoch: None
        self.on_stepped_down: Callable[[int, str], object] = lambda epoch, why: None
        #: Stop every container gracefully when stopped while leading.
        self.stop_containers = False

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        assert settings.state is not None
        # The cluster answers and holds our keys, or the start is refused
        # (StartRefused naming it) as a single manager's is; the first term's store.
        store: StateStore | None = await asyncio.to_thread(
            _open_etcd_store, settings.state, settings
        )
        client = EtcdClient(parse_etcd_url(settings.state))
        trust = Trust(settings)
        try:
            await _check_sealing_key(client, settings.state_dir)
            await asyncio.to_thread(trust.open)
            standby = Standby(settings.listen, trust)
        except BaseException:
            await client.close()
            if store is not None:
                await asyncio.to_thread(store.close)
            raise
        host = settings.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", ""):
            host = "127.0.0.1"
        self.address = f"{host}:{standby.port}"
        self.on_serving(self.address)
        try:
            while not stop.is_set():
                # Its first refusal already names the leader.
                await _look_up(client, standby)
                await standby.start()
                watcher = asyncio.ensure_future(_follow(client, standby))
                try:
                    candidate = Candidate(
                        client, ELECTION, self.address.encode(), settings.leader_ttl
                    )
                    term = await _until(stop, self._campaign(candidate))
                finally:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                if term is None:  # stopping
                    with contextlib.suppress(EtcdError):
                        await candidate.resign()
                    return
                await standby.stop()
                try:
                    if store is None:
                        store = await asyncio.to_thread(_open_etcd_store, settings.state, settings)
                    term_store: StateStore = store
                    store = None  # the Manager closes it when it stops
                    await self._lead(candidate, term, term_store, stop)
                finally:
                    with contextlib.suppress(EtcdError):
                        await candidate.resign()
                if not stop.is_set():
                    standby = Standby(self.address, trust)
        finally:
            await standby.stop()
            await client.close()
            if store is not None:
                await asyncio.to_thread(store.close)

    async def _campaign(self, candidate: Candidate) -> Term:
        while True:
            try:
                return await candidate.campaign(_CAMPAIGN_WAIT)
            except EtcdError as exc:
                # Its wait passing while another leads is the common case.
                level = (
                    logging.DEBUG
                    if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
                    else logging.WARNING
                )
                _log.log(level, "campaign for leadership ended (%s): campaigning again", exc)
                await asyncio.sleep(_LEADER_POLL.total_seconds())

    async def _lead(
        self, candidate: Candidate, term: Term, store: StateStore, stop: asyncio.Event
    ) -> None:
        settings = dataclasses.replace(self.settings, listen=self.address)
        self._fenced.clear()
        # Every write from now on passes only while this term lasts.
        assert isinstance(store, EtcdStore)
        store.fence = term.fence()
        manager = Manager(settings, store=store)
        manager.store_writer.on_fenced = self._fenced.set
        # The epoch goes on every command it sends: containers refuse a
        # deposed leader's.
        manager.sessions.epoch = term.epoch
        try:
            await manager.start()
        except StartRefused as exc:
            # Its address or state directory taken meanwhile: another may lead.
            _log.error("cannot lead (epoch %d): %s; a standby again", term.epoch, exc)
            self.on_stepped_down(term.epoch, f"cannot start: {exc}")
            return
        self.manager, self.term = manager, term
        self.terms += 1
        self.leading.set()
        _log.info("leading at %s (epoch %d)", self.address, term.epoch)
        self.on_leading(term.epoch)
        why = await _first(
            {"stop": stop, "lease lost": candidate.lost, "store write fenced": self._fenced}
        )
        _log.warning("stepping down as the leader (epoch %d): %s", term.epoch, why)
        self.leading.clear()
        self.manager = None
        if why == "stop" and self.stop_containers:
            await manager.shutdown_containers()
        # Its sessions close: containers move to the next leader. Nothing
        # pending is written (it would be fenced, or land under a deposed term).
        await manager.stop()
        self.on_stepped_down(term.epoch, why)


async def _check_sealing_key(client: EtcdClient, state_dir: str) -> None:
    """Every manager of a cluster seals stored secrets with one key (each
    its copy of ``secrets.key``): the first to start records a MAC of it on
    etcd (saying nothing of the key), a later one with another key is
    refused its start (a leader could not open what the others sealed)."""
    sealer = await asyncio.to_thread(Sealer.in_directory, state_dir)
    mine = sealer.mac(b"pycontainer.v1 sealing-key check").hex().encode()
    try:
        await client.txn([create_revision_is(SEALING_CHECK, 0)], [put_op(SEALING_CHECK, mine)])
        recorded = await client.get(SEALING_CHECK)
    except EtcdError as exc:
        raise StartRefused(f"cannot check the sealing key on etcd: {exc}") from None
    if recorded is not None and recorded.value != mine:
        key = Path(state_dir) / KEY_FILE
        raise StartRefused(
            f"{key} is not the key the other managers of this etcd cluster seal secrets "
            f"with: copy {KEY_FILE} from another manager's state directory to {key} "
            "(mode 600) before starting this one"
        )


async def _look_up(client: EtcdClient, standby: Standby) -> None:
    """Tell the standby who leads now (as far as etcd answers)."""
    with contextlib.suppress(EtcdError):
        kv = await client.leader(ELECTION)
        standby.leader = kv.value.decode() if kv is not None else ""


async def _follow(client: EtcdClient, standby: Standby) -> None:
    """Keep the standby's leader address current."""
    while True:
        await asyncio.sleep(_LEADER_POLL.total_seconds())
        await _look_up(client, standby)


async def _until(stop: asyncio.Event, coroutine: Any) -> Term | None:
    """The coroutine's result, or None (it cancelled) once ``stop`` is set."""
    task = asyncio.ensure_future(coroutine)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        result: Term = task.result()
        return result
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, EtcdError):
        await task
    return None


async def _first(events: dict[str, asyncio.Event]) -> str:
    """The name of the first of ``events`` set."""
    waits = {asyncio.ensure_future(e.wait()): name for name, e in events.items()}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return waits[next(iter(done))]


__all__ = ["ELECTION", "LEADER_METADATA", "HighAvailability", "Standby", "StoreError"]
