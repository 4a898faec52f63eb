"""The mesh: the registry's containers as xDS resources, kept up to date.

The registry tells of every change that may move a container in or out of
a service (Registry.serving_changed); the services touched are rebuilt on
the next turn of the loop (a burst of changes is one push), and the ADS
streams are told which types changed. A stop drains first
(:meth:`Mesh.drain`): the container's endpoints go DRAINING, and the stop
waits (bounded) until every client subscribed to the service acknowledged
that, so that no new call is sent to a container once it is told to stop.

A manager that takes over (a new leader, or one restarted) holds the
endpoints of the containers it inherits RUNNING from the state store until
each reconnects, or until a window passes (:meth:`Mesh.hold_inherited`,
:meth:`Mesh.release_held_after`): gRPC's xDS clients keep their resources
while their stream is down, and one reconnecting to the new manager before
the containers did gets the endpoints it had, not an empty assignment. A
container that really died leaves at the window's end.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from google.protobuf import any_pb2

from ..._errors import echo, invalid_argument, not_found
from ...limits import MAX_MESH_TRAFFIC_WEIGHT
from ...units import format_duration
from ...v1 import container_pb2, manager_pb2, mesh_pb2
from .._registry import Entry, Registry
from ._ads import AdsServicer, Client, Versioned
from ._model import ServiceView, build_view, endpoint_of, route_proto, service_of
from ._resources import TYPES, build, cluster_names

_log = logging.getLogger("pycontainer.manager.xds")

E = manager_pb2
S = container_pb2

#: The share of a stop's grace period the drain may take at most: the rest
#: is the container's, for its in-flight calls and its hook.
DRAIN_SHARE_OF_GRACE = 0.5
#: After the last acknowledgement, how long clients are given to put their
#: new picker in place: grpcio acknowledges a response once it has parsed it,
#: and its load balancer takes the new endpoints a moment later, on another
#: work serializer; Envoy's workers likewise take a cluster update from the
#: main thread. Without it a call picked in that moment goes to a container
#: that is about to stop taking new ones. The least given: a client that
#: took longer to acknowledge is given as long as it took (Mesh.drain).
#: 250 ms: with 100 ms, one call in about 4,500 of an eviction went to the
#: stopping replica when the machine's two cores ran three test processes
#: (the picker's swap waits for the client's CPU, its ACK did not).
SETTLE = datetime.timedelta(milliseconds=250)


class NodeResources(Protocol):
    """Resources of one client of its own (an Envoy's listeners), by type."""

    def resources(self, client: Client, type_url: str) -> Mapping[str, Versioned] | None: ...


def _versioned(built: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, Versioned]]:
    out: dict[str, dict[str, Versioned]] = {}
    for type_url, resources in built.items():
        out[type_url] = {}
        for name, packed in resources.items():
            value = packed.value  # type: ignore[attr-defined]
            out[type_url][name] = (hash(value), packed)  # type: ignore[assignment]
    return out


class Mesh:
    """The services of the registry's containers, served over ADS."""

    def __init__(
        self,
        registry: Registry,
        *,
        drain_timeout: datetime.timedelta,
        identify: Callable[[object], str] | None = None,
    ) -> None:
        self._registry = registry
        self.drain_timeout = drain_timeout
        self.ads = AdsServicer(self, identify=identify)
        # Service name -> ids of the containers whose spec names it.
        self._members: dict[str, set[str]] = {}
        # Container id -> the service it was counted in.
        self._service_of: dict[str, str] = {}
        self._views: dict[str, ServiceView] = {}
        # Service name -> its resources (proxyless), by type, versioned.
        self._built: dict[str, dict[str, dict[str, Versioned]]] = {}
        # Every service's resources merged, by type: what proxyless clients see.
        self._shared: dict[str, dict[str, Versioned]] = {t: {} for t in TYPES}
        # Resources replaced by a test (replace_resource), by type and name.
        self._replaced: dict[str, dict[str, Versioned]] = {}
        # SetMeshRoute's splits, by service.
        self._routes: dict[str, dict[str, int]] = {}
        self._dirty: set[str] = set()
        self._scheduled = False
        # Inherited containers not connected yet whose endpoints are kept
        # as they were last known (hold_inherited), by id.
        self._held: set[str] = set()
        # Resources of Envoy clients (their own listeners), when Envoy is served.
        self.node_resources: NodeResources | None = None
        previous = registry.serving_changed

        def changed(entry: Entry) -> None:
            previous(entry)
            self.container_changed(entry)

        registry.serving_changed = changed
        for entry in registry:
            self._count(entry)
        self._flush()

    # -- changes -------------------------------------------------------------------------
    def _count(self, entry: Entry) -> None:
        """Keep the membership of ``entry`` current; mark what it touches."""
        service = service_of(entry)
        name = service.name if service is not None else None
        if self._registry.get(entry.id) is not entry:
            name = None  # forgotten
        before = self._service_of.get(entry.id)
        if before is not None and before != name:
            self._members.get(before, set()).discard(entry.id)
            self._dirty.add(before)
            del self._service_of[entry.id]
        if name is not None:
            self._members.setdefault(name, set()).add(entry.id)
            self._service_of[entry.id] = name
            self._dirty.add(name)

    def container_changed(self, entry: Entry) -> None:
        if entry.id in self._held and (
            entry.connected
            or entry.state != S.LIFECYCLE_STATE_RUNNING
            or entry.draining
            or self._registry.get(entry.id) is not entry
        ):
            # What it says (or its end) counts from now on.
            self._held.discard(entry.id)
        self._count(entry)
        if self._dirty and not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self._flush)
            except RuntimeError:  # no loop (the manager not started): now
                self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, set()
        # Type -> the names whose resource changed (compared by digest: the
        # packed messages themselves are not compared).
        changed: dict[str, set[str]] = {}
        for name in sorted(dirty):
            members = [
                entry
                for container_id in self._members.get(name, ())
                if (entry := self._registry.get(container_id)) is not None
            ]
            if not members:
                self._members.pop(name, None)
                view = None
            else:
                view = build_view(name, members, self._routes.get(name), self._held)
            if view == self._views.get(name):
                continue
            old = self._built.pop(name, {})
            if view is None:
                del self._views[name]
                new: dict[str, dict[str, Versioned]] = {}
            else:
                self._views[name] = view
                new = _versioned(build(view).by_type)
                self._built[name] = new
            for type_url in TYPES:
                before, after = old.get(type_url, {}), new.get(type_url, {})
                names = {
                    resource
                    for resource in before.keys() | after.keys()
                    if (before[resource][0] if resource in before else None)
                    != (after[resource][0] if resource in after else None)
                }
                if not names:
                    continue
                changed.setdefault(type_url, set()).update(names)
                shared = self._shared[type_url]
                for gone in before.keys() - after.keys():
                    shared.pop(gone, None)
                shared.update(after)
        if changed:
            self.ads.changed(changed, {t: frozenset(n) for t, n in changed.items()})

    # -- a manager's start: what it inherited ----------------------------------------------
    def hold_inherited(self) -> int:
        """Keep the endpoints of the containers the registry has RUNNING and
        not connected (an earlier manager's, from the state store) as they
        were, until each connects or changes, or release_held; how many."""
        for entry in self._registry:
            if entry.connected or endpoint_of(entry, held=True) is None:
                continue
            self._held.add(entry.id)
            name = self._service_of.get(entry.id)
            if name is not None:
                self._dirty.add(name)
        self._flush()
        return len(self._held)

    async def release_held_after(self, window: datetime.timedelta) -> None:
        """At the end of ``window``, the held endpoints of containers that
        did not reconnect leave (they are taken for gone)."""
        if not self._held:
            return
        _log.info(
            "mesh: keeping the endpoints of %d inherited container(s) for up to %s "
            "while they reconnect",
            len(self._held),
            format_duration(window),
        )
        await asyncio.sleep(window.total_seconds())
        self.release_held()

    def release_held(self) -> None:
        held, self._held = self._held, set()
        if held:
            _log.info(
                "mesh: %d inherited container(s) did not reconnect in time: their endpoints leave",
                len(held),
            )
        for container_id in held:
            name = self._service_of.get(container_id)
            if name is not None:
                self._dirty.add(name)
        self._flush()

    @property
    def held(self) -> frozenset[str]:
        """Ids of the inherited containers whose endpoints are held."""
        return frozenset(self._held)

    # -- what clients see ----------------------------------------------------------------
    def resources(self, client: Client, type_url: str) -> Mapping[str, Versioned]:
        if self.node_resources is not None:
            own = self.node_resources.resources(client, type_url)
            if own is not None:
                return own
        return self.shared(type_url)

    def shared(self, type_url: str) -> Mapping[str, Versioned]:
        """Every service's resources of ``type_url`` (proxyless clients' view)."""
        shared = self._shared.get(type_url, {})
        replaced = self._replaced.get(type_url)
        if replaced:
            return {**shared, **{n: r for n, r in replaced.items() if n in shared}}
        return shared

    def replace_resource(self, type_url: str, name: str, resource: any_pb2.Any | None) -> None:
        """A test seam: serve ``resource`` to proxyless clients in place of
        the mesh's own ``name`` of ``type_url`` while that one exists (None:
        the mesh's own again), so that a test can give a real client a config
        it rejects and see the NACK handled end to end. Not for production use."""
        replaced = self._replaced.setdefault(type_url, {})
        if resource is None:
            replaced.pop(name, None)
        else:
            replaced[name] = (hash(resource.SerializeToString()), resource)
        self.ads.changed([type_url])

    def view(self, name: str) -> ServiceView | None:
        return self._views.get(name)

    @property
    def views(self) -> Mapping[str, ServiceView]:
        return self._views

    # -- the drain before a stop ---------------------------------------------------------
    async def drain(
        self,
        entry: Entry,
        grace: datetime.timedelta,
        announce: Callable[[], None] = lambda: None,
    ) -> datetime.timedelta:
        """Take ``entry`` out of its service's traffic before it is told to
        stop: its endpoint goes DRAINING, then this waits until every client
        subscribed to the service acknowledged it (at most the drain timeout,
        and never more than half the grace period), and a moment more for
        their pickers (SETTLE). ``announce`` is called as it begins (the
        container is told, and reports itself not ready). Returns the time
        it took (taken off the stop's grace period); zero for a container in
        no service."""
        found = endpoint_of(entry)
        limit = min(self.drain_timeout, grace * DRAIN_SHARE_OF_GRACE)
        if found is None or limit <= datetime.timedelta(0):
            return datetime.timedelta(0)
        service, _ = found
        started = time.monotonic()
        entry.draining = True
        self._count(entry)
        self._flush()
        announce()
        view = self._views.get(service)
        names = [
            name
            for name, endpoints in (cluster_names(view).items() if view else ())
            if any(e.container_id == entry.id for e in endpoints)
        ]
        subscribed = self.ads.subscribed(names)
        waiting = await self.ads.wait_acknowledged(names, limit.total_seconds())
        spent = time.monotonic() - started
        if waiting:
            _log.warning(
                "drain of %s from %s: %d client(s) did not acknowledge within %.1fs (%s); "
                "stopping it anyway",
                entry.id,
                service,
                len(waiting),
                limit.total_seconds(),
                ", ".join(sorted(waiting)[:5]),
            )
        elif subscribed:
            # A client slow to acknowledge (a loaded machine) is as slow to
            # put its new picker in place: it is given as long again as its
            # acknowledgement took, SETTLE at least, within the bound. (No
            # client subscribed: no picker to wait for.)
            settle = min(max(SETTLE.total_seconds(), spent), limit.total_seconds() - spent)
            if settle > 0:
                await asyncio.sleep(settle)
        took = datetime.timedelta(seconds=time.monotonic() - started)
        # The container's events say the stop drained it, and how it went.
        self._registry.event(
            E.EVENT_TYPE_STATE_CHANGED,
            entry,
            f"drained from mesh service {service}: "
            + (
                f"{len(waiting)} of {subscribed} client(s) did not acknowledge within "
                f"{format_duration(limit)}"
                if waiting
                else f"{subscribed} client(s) acknowledged"
            )
            + f" in {format_duration(took)}",
        )
        return took

    def drained(self, entry: Entry) -> None:
        """The stop that drained ``entry`` ended (it may run again: a restart)."""
        if entry.draining:
            entry.draining = False
            self.container_changed(entry)

    # -- routes and status -----------------------------------------------------------------
    def check_route(self, service: str, weights: Mapping[str, int]) -> None:
        """Refuse a split set_route would refuse (before it is kept anywhere)."""
        view = self._views.get(service)
        if view is None:
            raise not_found("service", _no_service(service, self._views))
        unknown = sorted(set(weights) - set(view.subsets))
        if unknown:
            raise invalid_argument(
                "weights",
                f"service {service} has no subset {', '.join(unknown)}; its subsets are "
                + ", ".join(sorted(view.subsets))
                + " (a spec's service.subset, or the spec's name)",
            )
        if weights and not any(weights.values()):
            raise invalid_argument("weights", "at least one subset needs a weight above 0")
        heavy = sorted(s for s, weight in weights.items() if weight > MAX_MESH_TRAFFIC_WEIGHT)
        if heavy:
            # As a spec's traffic_weight: a route's split is the same share.
            raise invalid_argument(
                "weights",
                f"the weight of {', '.join(heavy)} is above {MAX_MESH_TRAFFIC_WEIGHT} "
                "(pycontainer.limits.MAX_MESH_TRAFFIC_WEIGHT): weights are shares, such as "
                "90 and 10",
            )

    def load_routes(self, routes: Mapping[str, Mapping[str, int]]) -> None:
        """The splits an earlier manager kept (the state store), in force again
        for services that have members now and for those that come later."""
        for service, weights in routes.items():
            if weights:
                self._routes[service] = dict(weights)
                if service in self._members:
                    self._dirty.add(service)
        self._flush()

    def set_route(self, service: str, weights: Mapping[str, int]) -> mesh_pb2.MeshRoute:
        self.check_route(service, weights)
        if weights:
            self._routes[service] = dict(weights)
        else:
            self._routes.pop(service, None)
        self._dirty.add(service)
        self._flush()
        return route_proto(self._views[service])

    def status(self, service: str = "") -> manager_pb2.GetMeshStatusResponse:
        if service and service not in self._views:
            raise not_found("service", _no_service(service, self._views))
        response = manager_pb2.GetMeshStatusResponse()
        for name, view in sorted(self._views.items()):
            if service and name != service:
                continue
            response.services.add(
                name=name,
                healthy=[e.container_id for e in view.endpoints if not e.draining],
                draining=[e.container_id for e in view.endpoints if e.draining],
                route=route_proto(view),
                version=self.ads.version,
            )
        names = None
        if service:
            built = self._built.get(service, {})
            names = frozenset(n for t in TYPES for n in built.get(t, {}))
        response.clients.extend(self.ads.status(names))
        return response


def _no_service(service: str, views: Mapping[str, ServiceView]) -> str:
    known = ", ".join(sorted(views)) or "none yet"
    return (
        f"no mesh service {echo(service)}: a spec's service.name declares one, and it "
        f"appears once a container of it registers (services now: {known})"
    )


__all__ = ["DRAIN_SHARE_OF_GRACE", "SETTLE", "Mesh", "NodeResources"]
