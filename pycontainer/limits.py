"""The bounds of what pycontainer accepts from the network, in one place.

Every limit a request or a Lifecycle session can hit is a constant here, with
why it is that number; the errors that enforce them name the constant, so an
operator who meets one knows what to change. The container side (agent) and
the manager import the same numbers: both ends of a stream agree.
"""

from __future__ import annotations

import datetime
import re

_KiB = 1024
_MiB = 1024 * _KiB

#: The largest checkpoint (and restore state, and replicate seed) a Lifecycle
#: session carries: the README's documented limit. A checkpoint is one gRPC
#: message, held whole in memory on both sides and in one SQLite blob; state
#: bigger than this belongs in a file or object store, checkpointed by
#: reference. ManagerSettings.max_checkpoint_bytes may lower it, not raise it
#: past this (the containers' channels are sized from this constant).
MAX_CHECKPOINT_BYTES = 64 * _MiB

#: Room for everything else in a message that carries a checkpoint (ids,
#: trace context, a result message): generous, since it costs nothing unused.
MESSAGE_OVERHEAD_BYTES = 1 * _MiB

#: gRPC max send/receive message length of the Lifecycle session, on the
#: manager's server and on each container's channel (gRPC's default receive
#: limit, 4 MiB, would kill the session on any checkpoint over it).
MAX_LIFECYCLE_MESSAGE_BYTES = MAX_CHECKPOINT_BYTES + MESSAGE_OVERHEAD_BYTES

#: Longest container name or id: a DNS subdomain (RFC 1123, as Kubernetes
#: object names), so names fit in hostnames, label values of other tools and
#: file names, and a listing of many stays far below gRPC's 4 MiB default.
MAX_NAME_LENGTH = 253
#: A spec's name, shorter by the suffix the manager adds to make each
#: replica's id (NAME-xxxxxxxx), so that the id is a valid name too.
MAX_SPEC_NAME_LENGTH = MAX_NAME_LENGTH - len("-xxxxxxxx")
#: What a name or id may contain: DNS-subdomain-ish, with '_' (Python apps'
#: names) and upper case (ids some runtimes make) allowed.
NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")

#: Label keys ([prefix/]name) and values, as Kubernetes bounds them: a prefix
#: of at most 253 (a DNS subdomain) plus '/' plus a name of at most 63; a value
#: of at most 63.
MAX_LABEL_KEY_LENGTH = 253 + 1 + 63
MAX_LABEL_VALUE_LENGTH = 63
#: Labels on one container: selectors need a handful; 64 is far above any
#: real use and keeps one record small.
MAX_LABELS = 64

#: Containers the manager keeps (live ones and the ended it remembers): each
#: holds a record, a session and its queues (some 30 KiB with its stream). A
#: manager is meant to hold 20,000 connected containers (issue 9, P4), within
#: a GiB; past this bound a new registration or launch is RESOURCE_EXHAUSTED.
MAX_CONTAINERS = 30_000

#: Endpoints one container advertises (management, its services, metrics...).
MAX_ENDPOINTS = 32
#: An endpoint's address (host:port, a unix: path or a URL) and its name.
MAX_ADDRESS_LENGTH = 1024
MAX_ENDPOINT_NAME_LENGTH = 253

#: A version string (semver with build metadata is far shorter).
MAX_VERSION_LENGTH = 128

#: A registration's free-text error (why it FAILED): shown in `ps` and events.
MAX_ERROR_LENGTH = 4 * _KiB

#: Priorities, as Kubernetes bounds user-defined PriorityClasses: a registration
#: or spec past these is a mistake or an attempt to outrank everything.
MIN_PRIORITY = -1_000_000_000
MAX_PRIORITY = 1_000_000_000

#: Messages queued for one Lifecycle session that its container has not read
#: yet. Heartbeat replies past SOFT are dropped (a newer one says the same);
#: past HARD (commands and all) the session is closed: a peer that reads
#: nothing cannot make the manager's memory grow. A command is a few hundred
#: bytes, so HARD bounds one session's queue to about a megabyte (a few
#: checkpoint-sized restores aside, which are sent one per command).
SESSION_OUTBOX_SOFT = 64
SESSION_OUTBOX_HARD = 4096

#: How much of a client's input an error message echoes back: gRPC's trailers
#: (where the message travels) are limited to 16 KiB by default, and an error
#: that echoes a megabyte becomes a metadata error instead of the answer.
MAX_ECHOED_CHARS = 80
#: The longest error message sent at all (everything echoed included), in
#: UTF-8 bytes: the trailers carry it percent-encoded (up to 3 bytes a byte) in
#: grpc-message and again, base64'd, in grpc-status-details-bin (twice for a
#: BadRequest), and grpc-core starts refusing trailers past its 8 KiB soft
#: limit. 1 KiB keeps the worst case near 6 KiB.
MAX_ERROR_MESSAGE_BYTES = _KiB
#: The longest field path an error names.
MAX_ERROR_FIELD_BYTES = 256

#: The largest Bootstrap.Join request the join server reads: a token, a
#: container id and a CSR (an EC P-256 one is under 1 KiB, RSA-4096 under 4).
MAX_JOIN_REQUEST_BYTES = 16 * _KiB
#: Joins the join server answers per second, with bursts of twice as many;
#: past that RESOURCE_EXHAUSTED (each join signs a certificate and rewrites
#: the token file: cheap, but the listener takes anyone's calls).
JOIN_RATE_PER_SECOND = 10
#: The largest CSR Manager.IssueCertificate signs (the manager's main port
#: reads 64 MiB messages, for checkpoints): an EC P-256 CSR is under 1 KiB,
#: an RSA-4096 one under 4.
MAX_CSR_BYTES = 8 * _KiB
#: The longest lifetime Manager.IssueCertificate gives a user's certificate.
#: Nothing revokes a certificate before it expires, so a leaked one is good
#: until then: a month at most, issued again when it ends.
MAX_ISSUED_CERTIFICATE_TTL = datetime.timedelta(days=30)
#: Operations (mutating Manager calls and their outcomes, GetOperation's
#: answers) kept in the state store, across manager restarts; the oldest go
#: first. A record is a few hundred bytes plus its response: 10,000 is days of
#: an operator's calls and a few MiB.
OPERATIONS_KEPT = 10_000
#: Responses of the newest operations also held in memory (an older one's is
#: read back from the store when a retry or GetOperation asks for it).
OPERATION_RESPONSES_CACHED = 1_000
#: Events kept in the state store (the audit trail, WatchEvents' history after
#: a restart); the oldest go first. An event is about 200 bytes.
EVENTS_KEPT = 50_000
#: A request_id (AIP-155): a UUID is 36 characters.
MAX_REQUEST_ID_LENGTH = 64
#: What a request_id may contain.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
#: The most of a call's target (container name, or ApplySpecs' names) an
#: operation and its audit event keep: the request may hold megabytes.
MAX_OPERATION_TARGET_CHARS = 1024
#: ListOperations' largest page (AIP-158: a bigger page_size is read as this).
MAX_OPERATIONS_PAGE = 1_000
#: A bootstrap token's lifetime when none is given, and the longest allowed:
#: a bootstrap token is a door left open; a long-lived one should be a certificate.
DEFAULT_TOKEN_TTL = datetime.timedelta(hours=1)
MAX_TOKEN_TTL = datetime.timedelta(days=7)
#: Joins one bootstrap token may pay for.
MAX_TOKEN_USES = 1000

#: The most log entries a container's ring may keep (ContainerSpec.log_capacity,
#: `pycontainer run --log-capacity`): an entry of the program's output holds
#: a line of up to 64 KiB, most are ~200 bytes, so ten million is a few GiB
#: at worst; past that a spec is a mistake.
MAX_LOG_CAPACITY = 10_000_000
#: The ring's size when nothing says: ContainerSettings.log_capacity.
DEFAULT_LOG_CAPACITY = 10_000
#: App RPCs traced (pycontainer.telemetry.RpcTracing) waiting for their spans
#: to be built and handed to the span processors: the background thread
#: drains them every 200 ms or per 512, so this is seconds of calls at
#: thousands per second; past it a call's span is dropped and counted (a
#: record is ~200 bytes: 16 MiB at most).
MAX_RPC_TRACE_QUEUE = 65536
#: Methods whose wrapped handler a server interceptor keeps (pycontainer's app
#: interceptor, the authorization interceptor), so that a call costs a lookup,
#: not a new wrapper. A server's methods are far fewer; past this (a generic
#: handler that answers any name a client sends) calls are wrapped one by one.
MAX_INTERCEPTED_METHODS = 1024

#: A name in a spec file (a spec's name) and in the mesh (a service, a subset,
#: a zone): a DNS label (RFC 1123), since ids (NAME-xxxxxxxx), hostnames and
#: the xDS resource names derive from them.
DNS_LABEL_PATTERN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
MAX_DNS_LABEL_LENGTH = 63
#: Attempts of a call through a mesh route's retry policy, the first included:
#: grpcio makes at most 5 whatever it is told (gRFC A6, A44).
MAX_MESH_RETRY_ATTEMPTS = 5
#: A spec's endpoint weight in load balancing (MeshService.weight): weights are
#: relative, so 128 to 1 is as lopsided as balancing gets (Envoy's own bound on
#: an endpoint's weight, before v3 lifted it), and 1,000 replicas of it stay far
#: below the uint32 sum of a locality's weights that Envoy and grpcio require.
MAX_MESH_ENDPOINT_WEIGHT = 128
#: A spec's share in a split of its service (MeshService.traffic_weight): 1000
#: gives splits to a tenth of a percent.
MAX_MESH_TRAFFIC_WEIGHT = 1000
#: Local listeners of one Envoy for the services its program calls
#: (EnvoySettings.upstreams): a program calls a handful.
MAX_MESH_UPSTREAMS = 64
#: How long one container has to give its metrics to a scrape through the
#: manager (/metrics/containers), unless the scraper allows less: a slow one
#: is left out, not waited for (Prometheus' own scrape_timeout is 10 s).
SCRAPE_CONTAINER_TIMEOUT = datetime.timedelta(seconds=2)
#: How long a scrape of every container may take when the scraper does not
#: say (Prometheus' default scrape_timeout).
SCRAPE_TIMEOUT = datetime.timedelta(seconds=10)
#: Containers asked for their metrics at once by one scrape: a channel and a
#: call each, so a fleet of 10,000 does not open 10,000 connections at once.
SCRAPE_CONCURRENCY = 32
#: Spec names the manager's /metrics shows by name (its per-spec gauges): a
#: series each; past it a fleet of one-off names would make thousands, so the
#: rest are summed under spec="".
MAX_METRICS_SPECS = 500
