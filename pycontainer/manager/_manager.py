"""The manager: a thin facade over its collaborators, each with one reason to
change — the registry (_registry), Lifecycle sessions and command routing
(_sessions), stops with a deadline (_stopping), admission and eviction
(_admission), supervision of what it launched (_supervision), checkpoints
(_checkpoints) and declarative apply (_apply). The servers (_server) and the
CLI talk to this facade."""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message
from opentelemetry import trace

from .._errors import RequestError, failed_precondition, invalid_argument
from .._secrets import keep_stored_secrets
from ..agent._metrics import RpcStats
from ..agent._observe import Observer
from ..security import TokenStore, health_port_warning, peer_identity
from ..units import format_cpu, format_memory
from ..v1 import container_pb2, lifecycle_pb2, manager_pb2, mesh_pb2, spec_pb2
from ._admission import Admission
from ._apply import Reconciler
from ._bootstrap import Bootstrapping
from ._checkpoints import Checkpoints
from ._collector import keep_frozen
from ._events import EventBus
from ._exclusive import StartRefused, StateLock, bind, unusable_state_dir
from ._journal import Journal
from ._logstore import LogStore
from ._operations import Operations
from ._registry import Entry, Registry, state_word
from ._runtime import ProcessRuntime, Runtime
from ._scheduler import machine_capacity
from ._sealing import Sealer
from ._sessions import Sessions
from ._settings import EVENT_HISTORY, ManagerSettings
from ._stopping import Stopped, Stopper
from ._store import (
    JournalStore,
    MeshRouteStore,
    SQLiteStore,
    StateStore,
    StoreError,
    TokenRecordStore,
)
from ._storewriter import StoreHealth, StoreWriter, advice, classify
from ._supervision import Supervisor
from ._trust import Trust
from ._xds import Mesh
from ._xds._bootstraps import Bootstraps
from ._xds._envoy import EnvoyResources
from .runc import RuncRuntime

if TYPE_CHECKING:
    from ._http import HttpFace
    from ._server import ManagerHealth

_log = logging.getLogger("pycontainer.manager")

# How long a delete waits for the process of a container that has ended
# (STOPPED, FAILED) to exit before it is refused as still running.
_EXIT_AFTER_STOP_SECONDS = 5.0

S = container_pb2

# Told a container's id when its record is purged: removes what it left
# elsewhere (the retained logs of the log store, a runtime's run directory).
Purger = Callable[[str], None]


class Manager:
    """The central manager. Use ``async with Manager(settings) as m``."""

    def __init__(
        self,
        settings: ManagerSettings | None = None,
        *,
        store: StateStore | None = None,
        runtimes: dict[int, Runtime] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.settings = settings or ManagerSettings()
        if store is None:
            store = _open_store(self.settings)
        self.store = store
        # Container records written behind, the store's other calls off the
        # loop: a slow, full or locked disk never stalls the manager.
        self.store_writer = StoreWriter(
            store, self.settings.state_dir, call_timeout=self.settings.store_timeout
        )
        self.store_writer.on_health = self._store_health
        self.capacity = self.settings.capacity or machine_capacity()
        # Operations and events outlive the manager in the store's journal
        # (_journal), written off the loop; the audit trail with them.
        journaled = store if isinstance(store, JournalStore) else None
        if journaled is None:
            _log.warning(
                "the state store %s keeps no journal (JournalStore): operations and events "
                "are kept in memory only and lost on restart",
                type(store).__name__,
            )
        self.journal = Journal(journaled)
        self.events = _restored_events(self.journal)
        self.operations = Operations(self.journal)
        # What launched programs print (kept in the state directory).
        self.logs = LogStore(Path(self.settings.state_dir) / "logs")
        processes = ProcessRuntime(self.logs)
        self.runtimes: dict[int, Runtime] = {
            spec_pb2.RUNTIME_KIND_UNSPECIFIED: processes,
            spec_pb2.RUNTIME_KIND_PROCESS: processes,
            spec_pb2.RUNTIME_KIND_RUNC: RuncRuntime(
                Path(self.settings.state_dir) / "runc", logs=self.logs
            ),
        }
        self.runtimes.update(runtimes or {})
        self.tracer = trace.get_tracer("pycontainer.manager", tracer_provider=tracer_provider)
        self._tracer_provider = tracer_provider
        # Per-method call statistics of the manager's server (its interceptor's).
        self.rpc_stats = RpcStats()
        # Its CA, the certificates it issues and who may call what (_trust).
        self.trust = Trust(self.settings)
        # Bootstrap tokens and the join listener of containers it did not launch.
        self.bootstrap = Bootstrapping(
            self.settings,
            self.trust,
            self.events,
            lambda: self.address,
            known=lambda container_id: container_id in self.registry.entries,
            tokens=(
                TokenStore(self.store.token_records())
                if isinstance(self.store, TokenRecordStore)
                else None
            ),
        )
        self._tasks: set[asyncio.Future[Any]] = set()
        self._server: grpc.aio.Server | None = None
        # grpc.health.v1 in plaintext on a port of its own (health_listen).
        self._health_server: grpc.aio.Server | None = None
        # The HTTP face (settings.http_listen), once it serves.
        self.http: HttpFace[Manager] | None = None
        self.health_port = 0
        self._health: ManagerHealth | None = None
        self._state_lock: StateLock | None = None
        self.port = 0
        # What else a purged record leaves behind: its retained logs.
        self._purgers: list[Purger] = [self.logs.purge, self.trust.forget]

        # Env values are sealed in the state store under the directory's key.
        sealer = Sealer.in_directory(self.settings.state_dir)
        self.registry = Registry(
            self.store_writer, self.events, sealer, max_ended=self.settings.max_ended_containers
        )
        self.sessions = Sessions(
            self.registry,
            self.settings,
            on_registered=self._registered,
            on_ended=self._ended,
        )
        # A registration claiming to run is admitted against the capacity; a
        # lost one's room, released after the heartbeat timeout, goes to what waits.
        self.sessions.capacity = self.capacity
        self.sessions.on_released = self._released
        # The records forgotten for the bound on ended ones: what they left
        # goes with them (their checkpoints stay with their name).
        self.registry.forgotten = self._purge_leftovers
        self.checkpoints = Checkpoints(self.registry, self.sessions, self.store_writer)
        self.stopper = Stopper(
            self.registry, self.sessions, self.runtimes, self.settings, spawn=self._spawn
        )
        # The services of its containers, as an xDS control plane; a stop
        # drains a container's endpoints before the Stop is sent.
        self.mesh = Mesh(
            self.registry,
            drain_timeout=self.settings.mesh_drain_timeout,
            # Who each xDS client is, by its certificate (mesh status shows it).
            identify=_peer_name,
        )
        self.stopper.drain = self.mesh.drain
        self.stopper.drained = self.mesh.drained
        # SetMeshRoute's splits outlive the manager in the store; one at a
        # time, so that the store and the mesh agree on the last one.
        self._route_store = self.store if isinstance(self.store, MeshRouteStore) else None
        self._route_lock = asyncio.Lock()
        # The xDS bootstrap file of every container it launches (GRPC_XDS_BOOTSTRAP).
        # Every manager is named (its own first): the xDS stream follows the leader.
        # Absolute: a container's own working directory (spec working_dir, a
        # runc bind mount's destination) is not the manager's.
        self.mesh_bootstraps = Bootstraps(
            Path(self.settings.state_dir).resolve() / "mesh", self.container_manager_address
        )
        self._purgers.append(self.mesh_bootstraps.forget)
        # Envoys beside programs (spec.proxy envoy) get listeners of their own.
        self.mesh.node_resources = EnvoyResources(
            self.registry, lambda: self.mesh.views, self.mesh.ads.changed
        )
        self.admission = Admission(
            self.registry,
            self.sessions,
            self.checkpoints,
            self.stopper,
            self.capacity,
            auto_start=self.settings.auto_start,
            spawn=self._spawn,
        )
        self.supervisor = Supervisor(
            self.registry,
            self.sessions,
            self.checkpoints,
            self.admission,
            self.stopper,
            self.runtimes,
            manager_address=self.container_manager_address,
            spawn=self._spawn,
            issue_credentials=self._issue_credentials,
            mesh_bootstrap=self._mesh_bootstrap,
        )
        self.registry.forget_oldest_ended()  # of what an earlier manager left
        self.reconciler = Reconciler(
            self.registry,
            self.store_writer,
            self.sessions,
            self.checkpoints,
            self.stopper,
            self.supervisor,
            self.runtimes,
            reconnect_window=self.settings.reconnect_window,
            spawn=self._spawn,
            dial=self.trust.container_channel,
        )

    @property
    def entries(self) -> dict[str, Entry]:
        return self.registry.entries

    @property
    def health(self) -> ManagerHealth | None:
        """The manager's own grpc.health.v1 statuses, once it serves (None before)."""
        return self._health

    # -- serving ---------------------------------------------------------------------
    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    def container_manager_address(self) -> str:
        """$PYCONTAINER_MANAGER of the containers it launches: every manager's
        address (settings.manager_addresses), its own first."""
        others = [a for a in self.settings.manager_addresses if a != self.address]
        return ",".join([self.address, *others])

    async def start(self) -> int:
        """Serve the Lifecycle and Manager APIs; returns the port. StartRefused
        when another manager has the state directory or the address."""
        from ._server import build_health_server, build_server

        self._state_lock = StateLock(self.settings.state_dir)
        # Only now: the records queued since the store was opened are ours
        # to write once the state directory is (another manager's otherwise).
        self.store_writer.start()
        try:
            # The state directory is this manager's: what its predecessor left
            # running is INTERRUPTED, and the journal writes from now on.
            self.operations.open()
            self.trust.open()
            if self._route_store is not None:
                self.mesh.load_routes(
                    await self.store_writer.call(
                        "mesh routes not read", self._route_store.list_mesh_routes, write=False
                    )
                )
            # Endpoints of what an earlier manager left RUNNING stay while
            # those containers reconnect (their clients see no change).
            self.mesh.hold_inherited()
            server, health = build_server(self)
            self.port = self.trust.bind(server, self.settings.listen)
            self.bootstrap.bind(Observer(self.rpc_stats, self.tracer))
            if self.settings.health_listen:
                self._health_server = build_health_server(health)
                self.health_port = bind(
                    self._health_server, self.settings.health_listen, flag="--health-listen"
                )
                warning = health_port_warning(self.settings.health_listen, "the manager")
                if warning:
                    _log.warning("%s", warning)
            if self.settings.http_listen is not None:
                from ._http import HttpFace, manager_sources

                self.http = HttpFace(self, self.settings.http_listen, manager_sources())
                self.http.bind()
        except BaseException:
            if self.http is not None:
                await self.http.stop()
                self.http = None
            self.store_writer.close()
            self._state_lock.release()
            raise
        self._server, self._health = server, health
        await self._server.start()
        await self.bootstrap.start()
        if self._health_server is not None:
            await self._health_server.start()
        if self.http is not None:
            await self.http.start()
        health.serving()
        health.store(self.store_writer.health.ok)
        self._spawn(self.sessions.watchdog())
        self._spawn(self.reconciler.resume())
        self._spawn(self.mesh.release_held_after(self.settings.reconnect_window))
        self._spawn(self.trust.renewals())
        self._spawn(self.store_writer.watchdog())
        # Thousands of sessions: survivors frozen as they come (_collector).
        self._spawn(keep_frozen(lambda: len(self.registry.entries)))
        # Long-lived objects made so far never become garbage: keep the cyclic
        # collector from walking them (half-second pauses at 10,000 sessions).
        gc.freeze()
        _log.info("manager serving on %s", self.address)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop serving; containers keep running and will reconnect later."""
        if self._health is not None:
            self._health.shutting_down()
        for task in list(self._tasks):
            task.cancel()
        self.sessions.close_all()
        if self._server is not None:
            await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(None)
        if self.http is not None:
            await self.http.stop()
            self.http = None
        await self.bootstrap.stop()
        # What still runs is INTERRUPTED; everything journaled is written, and
        # the successor numbers its events right after this one's last.
        self.journal.reserve_events(self.events.sequence)
        await self.operations.close()
        # Containers outlive the manager (they reconnect to the next one);
        # shutdown_containers() and close_runtimes() end them on purpose.
        # What is pending for the store is written first (within a bound),
        # under the state directory's lock; a manager that never had it
        # writes nothing.
        self.store_writer.close(write_pending=self._state_lock is not None)
        if self._state_lock is not None:
            self._state_lock.release()

    async def shutdown_containers(self, grace: datetime.timedelta | float | None = None) -> None:
        """Stop every container gracefully (make run's Ctrl-C), connected or
        launched by this manager: the manager's shutdown has begun (it is not
        ready any more)."""
        if self._health is not None:
            self._health.shutting_down()
        if isinstance(grace, int | float):
            grace = datetime.timedelta(seconds=grace)
        live = [
            e
            for e in self.registry
            if not e.terminal and (e.connected or self.stopper.process_of(e) is not None)
        ]
        await asyncio.gather(
            *(
                self.stop_container(e.id, grace, "manager shutdown", S.STOP_REASON_SHUTDOWN)
                for e in live
            ),
            return_exceptions=True,
        )

    async def close_runtimes(self) -> None:
        """Kill what the runtimes launched and is still there (after a graceful
        shutdown_containers(), only what overran)."""
        for runtime in {id(r): r for r in self.runtimes.values()}.values():
            await runtime.close()

    async def __aenter__(self) -> Manager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def _issue_credentials(self, container_id: str) -> str:
        """The TLS directory of a container about to launch ("" when insecure)."""
        return await asyncio.to_thread(self.trust.issue_container, container_id)

    async def _mesh_bootstrap(
        self, container_id: str, spec: spec_pb2.ContainerSpec, tls_dir: str
    ) -> str:
        """The xDS bootstrap file of a container about to launch."""
        return await asyncio.to_thread(self.mesh_bootstraps.write, container_id, spec, tls_dir)

    def _store_health(self, health: StoreHealth) -> None:
        """The store started failing or writes again: an event, and the
        state-store service of the manager's health says so."""
        message = health.message if not health.ok else "state store writes again"
        self.events.publish(manager_pb2.EVENT_TYPE_STATE_STORE, "", "", message)
        if self._health is not None:
            self._health.store(health.ok)

    def _registered(self, entry: Entry) -> None:
        self.supervisor.registered(entry)
        self.admission.start_if_waiting(entry)

    def add_purger(self, purger: Purger) -> None:
        """Have ``purger(container_id)`` called when a record is deleted with purge."""
        self._purgers.append(purger)

    def _released(self) -> None:
        self.admission.admit_waiting_soon()

    def _ended(self, entry: Entry) -> None:
        """A container reached a terminal state: its room is free."""
        self.admission.admit_waiting_soon()
        self.supervisor.ended(entry)

    # -- the operator's verbs ------------------------------------------------------------
    def resolve(self, name_or_id: str) -> Entry:
        """A container by id, or by a name only one live container has."""
        return self.registry.resolve(name_or_id)

    def select(self, selector: str, states: Iterable[int]) -> list[Entry]:
        return self.registry.select(selector, states)

    def connect(
        self, requests: AsyncIterator[lifecycle_pb2.ConnectRequest]
    ) -> AsyncIterator[lifecycle_pb2.ConnectResponse]:
        """One container's Lifecycle session."""
        return self.sessions.connect(requests)

    async def command(
        self,
        entry: Entry,
        name: str,
        action: Message,
        *,
        limit: float | None = None,
        command_id: str = "",
    ) -> lifecycle_pb2.CommandResult:
        return await self.sessions.command(entry, name, action, limit=limit, command_id=command_id)

    async def stop_container(
        self,
        name_or_id: str,
        grace: datetime.timedelta | None,
        message: str,
        reason: int = S.STOP_REASON_REQUESTED,
    ) -> Stopped:
        return await self.stopper.stop(self.resolve(name_or_id), grace, message, reason)

    async def stop_containers(
        self, selector: str, every: bool, grace: datetime.timedelta | None, message: str
    ) -> list[tuple[Entry, Stopped | RequestError]]:
        """Stop every live container ``selector`` matches (all of them with
        ``every``), at once: one request for thousands. INVALID_ARGUMENT for
        a malformed selector, for none with ``every`` unset, or both."""
        if every and selector:
            raise invalid_argument("label_selector", "give a label selector or all, not both")
        if not every and not selector.strip():
            raise invalid_argument(
                "label_selector",
                "give a label selector (such as app=web), or set all to stop every container",
            )
        live = [
            e
            for e in self.registry.select(selector, [])
            if not e.terminal and (e.connected or self.stopper.process_of(e) is not None)
        ]
        outcomes = await self.stopper.stop_many(live, grace, message)
        return list(zip(live, outcomes, strict=True))

    async def restart_container(self, name_or_id: str, grace: datetime.timedelta | None) -> Entry:
        return await self.supervisor.restart(self.resolve(name_or_id), grace)

    async def kill_container(self, name_or_id: str, signal: str) -> Entry:
        return await self.supervisor.kill(self.resolve(name_or_id), signal)

    async def simple(self, name_or_id: str, action: str) -> Entry:
        entry = self.resolve(name_or_id)
        kinds = {
            "start": lifecycle_pb2.StartCommand(),
            "pause": lifecycle_pb2.PauseCommand(),
            "resume": lifecycle_pb2.ResumeCommand(),
        }
        await self.sessions.command(entry, action, kinds[action])
        return entry

    async def delete_container(self, name_or_id: str, purge: bool = False) -> Entry:
        """Forget a container that has ended: its record goes from the state
        store; with ``purge`` also the checkpoints it took and what the
        purgers keep of it (its retained logs). Without, its checkpoints stay
        for its name's next replicas. A stream it still has stays open,
        unlisted, until it ends."""
        entry = self.resolve(name_or_id)
        if entry.terminal and self.stopper.process_of(entry) is not None:
            # Stopped a moment ago (`stop` then `rm`, as people type them):
            # its process is on its way out; given a moment to end.
            await self.wait_for(
                entry, lambda e: self.stopper.process_of(e) is None, _EXIT_AFTER_STOP_SECONDS
            )
        if not entry.terminal or self.stopper.process_of(entry) is not None:
            state = state_word(entry.state)
            raise failed_precondition(
                f"container {entry.id} is {state}"
                + (" and its process still runs" if entry.terminal else "")
                + f": stop it first (pycontainer stop {entry.id})"
            )
        self.registry.delete(entry)
        if purge:
            await self.store_writer.call(
                f"checkpoints of {entry.id} not purged", self.store.delete_checkpoints, entry.id
            )
            self._purge_leftovers(entry)
        return entry

    def _purge_leftovers(self, entry: Entry) -> None:
        """What a forgotten container left outside its record: its runtime's
        run directories and what the purgers keep (its retained logs)."""
        runtime = self.stopper.runtime_of(entry)
        if runtime is not None:
            runtime.forget(entry.id)
        for purger in self._purgers:
            try:
                purger(entry.id)
            except OSError as exc:
                _log.warning("cannot purge what %s left: %s", entry.id, exc)

    async def checkpoint(self, name_or_id: str) -> manager_pb2.CheckpointContainerResponse:
        return await self.checkpoints.take(self.resolve(name_or_id))

    async def restore(self, name_or_id: str, checkpoint_id: str) -> Entry:
        return await self.checkpoints.restore(self.resolve(name_or_id), checkpoint_id)

    async def evict(self, entry: Entry, grace: datetime.timedelta | None, message: str) -> Entry:
        """Stop with reason EVICTED, checkpointing first when the spec asks."""
        return await self.admission.evict(entry, grace, message)

    async def admit(self, entry: Entry) -> bool:
        return await self.admission.admit(entry)

    async def run(self, spec: spec_pb2.ContainerSpec) -> list[Entry]:
        """Launch a spec's replicas through its runtime (admission first); a
        "<redacted>" in its env keeps the value stored for its name."""
        spec = keep_stored_secrets(spec, self.reconciler.stored_specs(spec.name), "spec")
        return await self.supervisor.run(spec)

    async def apply(self, request: manager_pb2.ApplySpecsRequest) -> manager_pb2.ApplySpecsResponse:
        """Make the running set match the request's specs (kubectl apply)."""
        return await self.reconciler.apply(request)

    async def scale(self, name_or_id: str, replicas: int) -> list[Entry]:
        return await self.supervisor.scale(name_or_id, replicas)

    async def set_mesh_route(self, service: str, weights: dict[str, int]) -> mesh_pb2.MeshRoute:
        """Split ``service``'s traffic (empty: clear the split): checked, kept in
        the state store (a restarted manager routes the same), then pushed."""
        async with self._route_lock:
            self.mesh.check_route(service, weights)
            if self._route_store is not None:
                await self.store_writer.call(
                    f"route of {service} not kept",
                    self._route_store.put_mesh_route,
                    service,
                    weights,
                )
            return self.mesh.set_route(service, weights)

    async def wait_for(
        self, entry: Entry, predicate: Callable[[Entry], bool], seconds: float
    ) -> bool:
        """Wait until predicate(entry) holds, at most ``seconds``."""
        return await self.sessions.wait_for(entry, predicate, seconds)


def _open_store(settings: ManagerSettings) -> StateStore:
    """The state store in the state directory (or on etcd: settings.state);
    StartRefused, in one line naming the directory (the cluster) and what to
    do, when it cannot be made or opened."""
    if settings.state is not None:
        return _open_etcd_store(settings.state, settings)
    state_dir = settings.state_dir
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        return SQLiteStore(
            Path(state_dir) / "manager.db", max_checkpoint_bytes=settings.max_checkpoint_bytes
        )
    except OSError as exc:
        raise unusable_state_dir(state_dir, exc) from None
    except StoreError as exc:
        where = str(Path(state_dir).absolute())
        raise StartRefused(
            f"cannot open the state store: {advice(classify(exc, where), where)} ({exc})"
        ) from None


def _open_etcd_store(url: str, settings: ManagerSettings) -> StateStore:
    from ._etcd import BadEtcdUrl, EtcdStore

    try:
        return EtcdStore(url, max_checkpoint_bytes=settings.max_checkpoint_bytes)
    except BadEtcdUrl as exc:
        raise StartRefused(f"ManagerSettings.state: {exc}") from None
    except StoreError as exc:
        raise StartRefused(
            f"cannot open the state store on etcd: {exc}; check that the members of {url} "
            "run and are reachable from here"
        ) from None


def _restored_events(journal: Journal) -> EventBus:
    """The event bus, its history and sequence going on from the journal's."""
    store = journal.store
    if store is None:
        return EventBus(history=EVENT_HISTORY)
    restored = [
        manager_pb2.Event.FromString(data) for _, data in store.recent_events(EVENT_HISTORY)
    ]
    return EventBus(
        history=EVENT_HISTORY,
        restored=restored,
        last_sequence=store.last_event_sequence(),
        sink=journal.event,
        reserve=journal.reserve_events,
    )


def _peer_name(context: Any) -> str:
    """The identity of a call's peer (its SPIFFE ID), or "" (plaintext)."""
    identity = peer_identity(context)
    return "" if identity is None else str(identity)


def _log_failure(task: asyncio.Future[Any]) -> None:
    """A background task's failure, in one line (never "Task exception was
    never retrieved" with a traceback: a stop whose caller gave up is one)."""
    if task.cancelled():
        return
    exc = task.exception()
    if isinstance(exc, RequestError):
        _log.info("%s", exc.message)
    elif exc is not None:
        _log.error("background task failed: %s: %s", type(exc).__name__, exc)


__all__ = ["Manager", "ManagerSettings", "StartRefused", "format_cpu", "format_memory"]
