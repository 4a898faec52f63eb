"""The command line's grammar: every verb, its arguments and its help, and the
module and function that run it (imported only when it runs, so that
``pycontainer --help`` and completion need neither grpc nor rich)."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from .. import __version__, limits
from .._tls_env import INSECURE_ENV, TLS_DIR_ENV
from ..client import (
    DEFAULT_CERT_DIR,
    DEFAULT_MANAGER,
    MANAGER_ENV,
    listen_arg,
    manager_targets_arg,
    target_arg,
)
from ..units import DURATION_HELP, duration_arg, format_duration
from . import _args

__all__ = ["EPILOG", "build_parser", "has_verb", "verb_in"]

EPILOG = f"""\
The client verbs find the manager through --manager HOST:PORT, else
${MANAGER_ENV}, else {DEFAULT_MANAGER}, and dial it with mutual TLS using the
certificate in --cert-dir, else ${TLS_DIR_ENV}, else {DEFAULT_CERT_DIR}
(--insecure: plaintext). Durations are written like 30s, 2m,
1h30m or 500ms. Exit status: 0 done, 1 refused or failed (error: CODE: details)
or a usage error (bare `pycontainer` prints this help and exits 1), 2 manager
unreachable, 130 interrupted (Ctrl-C; a following verb such as logs -f,
events -w or top too; a stop or a rollout the manager runs goes on there).
`pycontainer VERB --help` tells more; --version prints this command's version.
"""

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_SECOND = datetime.timedelta(seconds=1)
_TOKEN_TTLS = (
    f"{format_duration(limits.DEFAULT_TOKEN_TTL)}, at most {format_duration(limits.MAX_TOKEN_TTL)}"
)


def _verb(
    subparsers: Subparsers,
    name: str,
    runs: str,
    help: str,
    description: str = "",
    *,
    add_help: bool = True,
    aliases: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """A verb run by ``runs`` ("module:function" in pycontainer.cli)."""
    wanted = getattr(subparsers, "only_verb", None)
    if wanted is not None and wanted != name and wanted not in aliases:
        return cast(argparse.ArgumentParser, _Skipped())
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        add_help=add_help,
        aliases=list(aliases),
    )
    parser.set_defaults(runs=runs)
    return parser


def _manager_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manager",
        metavar="ADDR",
        type=manager_targets_arg,
        default=None,
        help=f"HOST:PORT of the manager, or several comma-separated (managers in high "
        f"availability: the leader among them) (default: ${MANAGER_ENV}, else {DEFAULT_MANAGER})",
    )
    _client_tls_options(parser, "")


def _client_tls_options(parser: argparse.ArgumentParser, prefix: str) -> None:
    """--cert-dir and --insecure: how a client verb dials the manager."""
    parser.add_argument(
        "--cert-dir",
        "--tls-dir",
        dest=f"{prefix}cert_dir",
        metavar="DIR",
        default=None,
        help=f"the client certificate (tls.pem, ca.pem) for mutual TLS (default: "
        f"${TLS_DIR_ENV}, else {DEFAULT_CERT_DIR}, the admin certificate of a manager "
        "with --state-dir state)",
    )
    parser.add_argument(
        "--insecure",
        dest=f"{prefix}insecure",
        action="store_true",
        default=None,
        help=f"dial the manager without TLS (one started with --insecure; also ${INSECURE_ENV}=1)",
    )


def _serving_tls_options(parser: argparse.ArgumentParser) -> None:
    """--insecure, an external CA and role bindings: how a manager serves."""
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve plaintext and let every call through, no certificates or roles "
        f"(default: mutual TLS; also ${INSECURE_ENV}=1); warns when listening beyond loopback",
    )
    parser.add_argument(
        "--ca-cert",
        metavar="FILE",
        help="an external CA's PEM certificate, instead of the one the manager creates in "
        "STATE_DIR (with --ca-key)",
    )
    parser.add_argument("--ca-key", metavar="FILE", help="the external CA's PEM private key")
    parser.add_argument(
        "--health-listen",
        type=listen_arg,
        metavar="ADDR",
        help="also serve grpc.health.v1 alone, in plaintext, on this HOST:PORT (for probes "
        "that speak no TLS, such as kubelet's)",
    )
    parser.add_argument(
        "--http-listen",
        type=listen_arg,
        metavar="ADDR",
        help="serve the manager's HTTP face (the fleet's /metrics, the web view) on this "
        "HOST:PORT (port 0: any free one)",
    )
    parser.add_argument(
        "--join-listen",
        type=listen_arg,
        metavar="ADDR",
        help="where containers it did not launch join with a bootstrap token (server-side "
        "TLS; default: the --listen host on a free port, kept in the state directory for "
        "restarts, as `token create` reports it)",
    )
    parser.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="IDENTITY=ROLE",
        help="bind a role (read, operate, admin) to an identity such as user/alice "
        "(repeatable; user/admin is admin by default)",
    )


def _output_option(parser: argparse.ArgumentParser, *formats: str, help: str = "") -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=formats,
        default=formats[0],
        help=help or f"output format: {', '.join(formats)} (default: {formats[0]})",
    )


def _selection(parser: argparse.ArgumentParser, what: str, which: str = "live") -> None:
    """IDs, or -l SELECTOR, or --all: the containers a verb acts on (of the
    ``which`` ones: live, or ended for rm)."""
    parser.add_argument("containers", nargs="*", metavar="ID", help="container ids or names")
    parser.add_argument(
        "-l",
        "--selector",
        default="",
        type=_args.selector,
        metavar="SELECTOR",
        help=f"{what} every {which} container matching this label selector (such as app=web)",
    )
    parser.add_argument(
        "--all", action="store_true", dest="all_containers", help=f"{what} every {which} container"
    )


def _grace_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--grace",
        type=duration_arg,
        metavar="DURATION",
        help=f"grace period, {DURATION_HELP}; 0 means none (default: {default})",
    )


class _Skipped:
    """The parser of a verb that is not on the command line (build_parser's
    ``verb``): every call to it is taken and ignored."""

    def __getattr__(self, name: str) -> Any:
        return self._ignore

    def _ignore(self, *args: object, **kwargs: object) -> _Skipped:
        return self


# The options before the verb that build_parser(verb) knows take a value; any
# other option there than these and --insecure (such as -h, which lists every
# verb) needs the whole grammar.
_GLOBAL_VALUED = ("--manager", "--cert-dir", "--tls-dir")


def verb_in(argv: Sequence[str]) -> str | None:
    """The verb of a command line that names it after global options only
    (``--manager ADDR ps -a``: "ps"); None when anything else comes first."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in _GLOBAL_VALUED:
            index += 2
        elif arg == "--insecure" or arg.partition("=")[0] in _GLOBAL_VALUED:
            index += 1
        else:
            return None if arg.startswith("-") else arg
    return None


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The whole grammar; with ``verb``, only that verb's parser under the
    global options (a verb's run builds only its own arguments: argparse
    makes each verb's parser when it is added, which took a run of ``ps``
    as long as its call to the manager). A verb that is not one gets a
    parser without verbs: ask again without ``verb`` (``has_verb``)."""
    parser = argparse.ArgumentParser(
        prog="pycontainer",
        description="Manage containers through their gRPC interface.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--manager",
        dest="global_manager",
        metavar="ADDR",
        type=manager_targets_arg,
        help=f"HOST:PORT of the manager, or several comma-separated (the leader among "
        f"them), for every client verb (default: ${MANAGER_ENV}, else {DEFAULT_MANAGER})",
    )
    _client_tls_options(parser, "global_")
    parser.add_argument(
        "--version",
        action="version",
        version=f"pycontainer {__version__}",
        help="print this command's version and exit (without the manager: see `version`)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers.only_verb = verb  # type: ignore[attr-defined]  # read by _verb
    _apply(subparsers)
    _diff(subparsers)
    _containers(subparsers)
    _logs(subparsers)
    _top(subparsers)
    _events(subparsers)
    _operation(subparsers)
    _profile(subparsers)
    _up(subparsers)
    _run(subparsers)
    _manager(subparsers)
    _health(subparsers)
    _version(subparsers)
    _completion(subparsers)
    _token(subparsers)
    _certificate(subparsers)
    _mesh(subparsers)
    _route(subparsers)
    return parser


def has_verb(parser: argparse.ArgumentParser, verb: str) -> bool:
    """Whether build_parser(verb) found ``verb`` (a name or an alias)."""
    return any(
        isinstance(action, argparse._SubParsersAction) and verb in action.choices
        for action in parser._actions
    )


_OWNER_HELP = (
    "owner label value (pycontainer.dev/owner) of what this apply launches; prune removes "
    "only this owner's containers (default: the owner label each spec carries, as ps -o yaml "
    "prints it, so several owners' specs apply each as its owner's; else the first file's "
    "name and a short hash of the files' absolute paths, such as demo-3f2a1b9c; 'stdin' for -)"
)


def _apply_arguments(parser: argparse.ArgumentParser) -> None:
    """What apply and diff share: the files, the owner, prune."""
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="SPEC",
        help="spec file (repeat for several; '-' reads YAML from stdin)",
    )
    parser.add_argument("--owner", metavar="NAME", help=_OWNER_HELP)
    parser.add_argument(
        "--prune",
        action="store_true",
        help="also stop the owner's containers whose name the files no longer list (specs "
        "of one owner only: several owners' are refused)",
    )


def _apply(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "apply",
        "_apply:run",
        "make the running containers match spec files",
        "Make the running containers match spec files (YAML, or TOML by the .toml "
        "extension; '-' reads YAML from stdin), as kubectl apply does: a container that "
        "is missing is created, replicas are scaled up or down, and a container whose spec "
        "changed is replaced one replica at a time (the new one started and ready before "
        "an old one stops with its grace period; restored from the old one's checkpoint "
        "when checkpointPolicy is OnStop). Applying the same files again changes nothing. "
        "Every file is checked first and every mistake reported, each with its place in "
        "the file; nothing changes then. The manager keeps what was applied, and a "
        "restarted manager brings the replicas back to it.",
    )
    _apply_arguments(parser)
    parser.add_argument(
        "--dry-run",
        nargs="?",
        const="server",
        default="",
        choices=["server", "client"],
        help="change nothing: --dry-run (=server) has the manager check the files as apply "
        "would (its checks, <redacted> markers) and say what apply would do; "
        "--dry-run=client only checks the files, without the manager",
    )
    parser.add_argument(
        "--wait", action="store_true", help="then wait until every replica of the files is RUNNING"
    )
    parser.add_argument(
        "--timeout",
        type=duration_arg,
        default=datetime.timedelta(seconds=60),
        metavar="DURATION",
        help=f"how long --wait waits, {DURATION_HELP} (default: 60s)",
    )
    _output_option(parser, "table", "json", "yaml")
    _manager_option(parser)


def _diff(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "diff",
        "_apply:run_diff",
        "show what apply would change",
        "Show what `pycontainer apply` would do with spec files, per spec: unchanged, or "
        "the action and the fields that differ. Changes nothing. Exit status, as kubectl "
        "diff's: 0 no change, 1 changes, 2 or more when it could not tell (a mistake in a "
        "file, a refusal, an unreachable manager).",
    )
    _apply_arguments(parser)
    _output_option(parser, "table", "json", "yaml")
    _manager_option(parser)


def _containers(subparsers: Subparsers) -> None:
    ps = _verb(
        subparsers,
        "ps",
        "_containers:run_ps",
        "list containers",
        "List the manager's live containers (not STOPPED or FAILED; -a for all), or "
        "those named (ps web, as kubectl get pods web), sorted by name. -o name prints "
        "one name per line; -o yaml prints the specs in the spec "
        "file's own keys, to apply again.",
    )
    ps.add_argument(
        "containers",
        nargs="*",
        metavar="ID",
        help="only these (ids or names; a name is all its replicas); one that matches "
        "nothing is an error (exit 1)",
    )
    ps.add_argument("-a", "--all", action="store_true", help="also stopped and failed containers")
    ps.add_argument(
        "-l",
        "--selector",
        default="",
        type=_args.selector,
        metavar="SELECTOR",
        help="label selector, such as app=web,tier!=db (Kubernetes syntax)",
    )
    ps.add_argument(
        "--state",
        type=_args.states,
        action="append",
        default=[],
        metavar="STATE",
        help="only containers in this state (repeat or comma-separate: "
        f"{', '.join(_args.STATE_NAMES)}); implies -a",
    )
    ps.add_argument("--show-labels", action="store_true", help="add a LABELS column")
    _output_option(
        ps,
        "table",
        "wide",
        "name",
        "id",
        "json",
        "yaml",
        help="table; wide (with version, Management address, reason and labels); name or id (one "
        "a line); json (the API's messages); yaml (the specs, as a spec file)",
    )
    _manager_option(ps)

    describe = _verb(
        subparsers,
        "describe",
        "_containers:run_describe",
        "show everything about one container",
        "Show everything the manager knows about a container: identity, state, "
        "process, endpoints and the spec it was launched from.",
    )
    describe.add_argument("container", metavar="ID", help="container id or name")
    _output_option(describe, "table", "json", "yaml")
    _manager_option(describe)

    stop = _verb(
        subparsers,
        "stop",
        "_containers:run_stop",
        "stop containers gracefully",
        "Stop containers gracefully: health turns NOT_SERVING and on_stop runs "
        "with the grace period; a program still running at its end is killed, and the "
        "stop still succeeds (as docker stop). --grace 0 means no grace at all.",
    )
    _selection(stop, "stop")
    _grace_option(stop, "the container's own, 30s unless set")
    stop.add_argument("--reason", default="", help="why, for the hook and the events")
    _manager_option(stop)

    for name, verb_help in (
        ("pause", "pause running containers"),
        ("resume", "resume paused containers"),
    ):
        parser = _verb(subparsers, name, f"_containers:run_{name}", verb_help)
        _selection(parser, name)
        _manager_option(parser)

    restart = _verb(
        subparsers,
        "restart",
        "_containers:run_restart",
        "stop containers gracefully and start them again",
        "Stop containers gracefully (as stop does) and start them again from their "
        "spec, under the same name.",
    )
    _selection(restart, "restart")
    _grace_option(restart, "the container's own, 30s unless set")
    _manager_option(restart)

    kill = _verb(
        subparsers,
        "kill",
        "_containers:run_kill",
        "send a signal to containers now, without a grace period",
        "Send a signal to containers' processes at once (docker kill): no hook, no grace period.",
    )
    _selection(kill, "kill")
    kill.add_argument(
        "-s",
        "--signal",
        default="KILL",
        metavar="SIGNAL",
        help="signal name (KILL, TERM, INT, SIGHUP, ...) or number (default: KILL)",
    )
    _manager_option(kill)

    rm = _verb(
        subparsers,
        "rm",
        "_containers:run_rm",
        "remove the records of containers that have ended",
        "Remove the manager's records of stopped or failed containers (stop them "
        "first); --purge also removes their retained logs and stored checkpoints. A "
        "name several ended records share removes the newest of them (as every verb "
        "resolves a name: the live container, else the newest ended); give ids for others.",
    )
    _selection(rm, "remove", which="ended")
    rm.add_argument("--purge", action="store_true", help="also remove their logs and checkpoints")
    _manager_option(rm)

    checkpoint = _verb(
        subparsers,
        "checkpoint",
        "_containers:run_checkpoint",
        "take and store a checkpoint of a container",
        "Ask the container for its state (on_checkpoint) and store it in the "
        "manager; prints the checkpoint's id, size and SHA-256.",
    )
    checkpoint.add_argument("container", metavar="ID", help="container id or name")
    _output_option(checkpoint, "table", "json", "yaml")
    _manager_option(checkpoint)

    restore = _verb(
        subparsers,
        "restore",
        "_containers:run_restore",
        "give a stored checkpoint back to a container",
        "Give a stored checkpoint to the container's on_restore.",
    )
    restore.add_argument("container", metavar="ID", help="container id or name")
    restore.add_argument(
        "--checkpoint",
        default="",
        metavar="CID",
        help="checkpoint id (default: the newest of containers with this name)",
    )
    _manager_option(restore)

    evict = _verb(
        subparsers,
        "evict",
        "_containers:run_evict",
        "evict containers as the scheduler would",
        "Stop containers with reason EVICTED (checkpointed first when their "
        "spec says checkpointPolicy: OnStop).",
    )
    evict.add_argument("containers", nargs="+", metavar="ID", help="container ids or names")
    _grace_option(evict, "the container's own")
    evict.add_argument("--reason", default="", help="why (default: evicted by an operator)")
    _manager_option(evict)

    scale = _verb(
        subparsers,
        "scale",
        "_containers:run_scale",
        "change the number of replicas",
        "Scale the replicas of a container's name: up asks the container to "
        "replicate itself (on_replicate) and launches the new ones from its spec; down "
        "stops the youngest.",
    )
    scale.add_argument("container", metavar="ID", help="container id or name")
    scale.add_argument(
        "--replicas",
        type=_args.count,
        required=True,
        metavar="N",
        help="desired replicas, 0 or more",
    )
    _output_option(scale, "table", "json", "yaml")
    _manager_option(scale)


def _logs(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "logs",
        "_logs:run",
        "print (and follow) containers' logs",
        "Print containers' logs through the manager. Several containers are "
        "interleaved as their entries arrive, each line prefixed by the container's name "
        "in a colour of its own. Colour is off when stdout is not a terminal, with "
        "--no-color, or with $NO_COLOR. Filters apply at the source. A container that "
        "has exited still has the output the manager retained of it; a followed "
        "container that stops ends with a line saying so.",
    )
    parser.add_argument("containers", nargs="*", metavar="ID", help="container ids or names")
    parser.add_argument(
        "-l",
        "--selector",
        default="",
        type=_args.selector,
        metavar="SELECTOR",
        help="every container matching this label selector (such as app=web) that has "
        f"logs; the last {_args.SELECTOR_TAIL} entries of each unless --tail says",
    )
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new entries")
    parser.add_argument(
        "-p",
        "--previous",
        action="store_true",
        help="the run before the last restart (from what the manager retained)",
    )
    parser.add_argument(
        "--since",
        type=duration_arg,
        metavar="DURATION",
        help=f"only entries newer than this, {DURATION_HELP}",
    )
    parser.add_argument(
        "--level",
        type=_args.level,
        metavar="LEVEL",
        help=f"only entries at or above this level: {', '.join(_args.SEVERITY_CHOICES)}",
    )
    parser.add_argument(
        "--grep", type=_args.pattern, default="", metavar="RE", help="only messages matching RE"
    )
    parser.add_argument("--contains", default="", metavar="TEXT", help="only messages with TEXT")
    parser.add_argument("--logger", default="", help="only this logger and its children")
    parser.add_argument(
        "--tail",
        type=_args.count,
        metavar="N",
        help="only the newest N entries of each container "
        f"(default: all, or {_args.SELECTOR_TAIL} with -l)",
    )
    parser.add_argument(
        "--timestamps",
        action="store_true",
        help="prefix each line with its time in RFC 3339 (UTC, to the nanosecond)",
    )
    parser.add_argument(
        "--prefix",
        action="store_true",
        help="prefix lines with the container's name even for one container",
    )
    parser.add_argument("--no-color", action="store_true", help="no colour, even on a terminal")
    _output_option(
        parser, "text", "json", help="text lines, or one JSON object per entry (default: text)"
    )
    _manager_option(parser)


def _top(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "top",
        "_top:run",
        "live figures of containers: CPU, memory, threads, RPCs",
        "A live table of every live, connected container (or those named or "
        "selected): CPU % of one core, resident memory, threads, open files, RPC calls "
        "per second and uptime, from the manager's WatchMetrics proxy. Ctrl-C ends it. "
        "Off a terminal (piped, redirected) it prints a plain table every interval, each "
        "after a line with its time; --once prints one.",
    )
    parser.add_argument("containers", nargs="*", metavar="ID", help="only these (ids or names)")
    parser.add_argument(
        "-l",
        "--selector",
        default="",
        type=_args.selector,
        metavar="SELECTOR",
        help="only containers matching",
    )
    parser.add_argument(
        "--interval",
        type=_args.bounded_duration(datetime.timedelta(milliseconds=100), 3600 * _SECOND),
        default=_SECOND,
        metavar="DURATION",
        help=f"time between updates, {DURATION_HELP} (100ms to 1h; default: 1s)",
    )
    parser.add_argument(
        "--sort",
        choices=("cpu", "memory", "rpc", "name"),
        default="cpu",
        help="order of rows: busiest CPU, largest memory, most RPCs, or by name (default: cpu)",
    )
    parser.add_argument(
        "--once", action="store_true", help="print one table and exit (for scripts and tests)"
    )
    _output_option(parser, "table", "json", "yaml")
    _manager_option(parser)


def _events(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "events",
        "_events:run",
        "show what happened to containers",
        "Show the manager's recent events (registrations, state changes, "
        "commands, evictions, exits, checkpoints, refusals); -w keeps watching. "
        "Containers are named NAME/SHORT-ID.",
    )
    parser.add_argument(
        "container", nargs="?", default="", metavar="ID", help="only this container (id or name)"
    )
    parser.add_argument(
        "-w", "--watch", action="store_true", help="after the history, print events as they come"
    )
    _output_option(parser, "table", "json", "yaml")
    _manager_option(parser)


def _operation(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "operation",
        "_operation:run",
        "what became of a command, by its request id",
        "Show one mutating command by its request id (as a verb prints it when the "
        "answer was lost): method, target, who asked, state (RUNNING, SUCCEEDED, "
        "FAILED, or INTERRUPTED by a manager restart), status and times; exit 1 when "
        "it FAILED or was INTERRUPTED. Without an id, list the newest.",
    )
    parser.add_argument(
        "request_id", nargs="?", default="", metavar="REQUEST_ID", help="the request id"
    )
    parser.add_argument(
        "--container", default="", metavar="ID", help="list only those naming this container"
    )
    parser.add_argument(
        "-n",
        "--limit",
        # 0 would be "unset" to the manager (its default page, 100).
        type=_args.bounded_count(1, limits.MAX_OPERATIONS_PAGE),
        default=20,
        metavar="N",
        help=f"list at most N (default: 20, at most {limits.MAX_OPERATIONS_PAGE:,})",
    )
    _output_option(parser, "table", "json", "yaml")
    _manager_option(parser)


def _profile(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "profile",
        "_profile:run",
        "threads, tasks, locks and a CPU profile of a container",
        "Ask a container's Management endpoint (found through the manager) for "
        "its threads and their stacks, asyncio tasks and tracked-lock contention, and, "
        "with --cpu or -o, sample its CPU and write the profile to a file (pprof, as "
        "'go tool pprof' and speedscope read, or collapsed stacks for flamegraph.pl).",
    )
    parser.add_argument("container", metavar="ID", help="container id or name")
    parser.add_argument(
        "--cpu",
        type=_args.bounded_duration(datetime.timedelta(0), 300 * _SECOND, exclusive_low=True),
        metavar="DURATION",
        help=f"sample the CPU this long, {DURATION_HELP} (at most 5m; default with -o: 10s)",
    )
    parser.add_argument(
        "--hz", type=_args.hz, default=0, help="samples per second (default 100, at most 1000)"
    )
    parser.add_argument(
        "-o",
        "--out",
        metavar="FILE",
        help="where to write the CPU profile ('-' for stdout; default with --cpu: "
        "ID.cpu.pb.gz or ID.cpu.folded)",
    )
    parser.add_argument(
        "--format",
        choices=("pprof", "collapsed"),
        default="pprof",
        help="CPU profile format (default: pprof)",
    )
    parser.add_argument("--stacks", action="store_true", help="print every thread's stack")
    _manager_option(parser)


def _up(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "up",
        "_up:run",
        "run a manager, apply a spec and watch it live (make run)",
        "Start a manager with embedded defaults, launch what the spec files "
        "describe, and show a live view of containers and events. Ctrl-C (or SIGTERM, "
        "or the terminal closing) stops every container gracefully, then the manager. Traces go to "
        "STATE_DIR/traces.jsonl, or as the OTEL_* variables say (OTLP when "
        "OTEL_EXPORTER_OTLP_ENDPOINT is set).",
    )
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        metavar="SPEC",
        help="spec file to apply (repeatable; default examples/demo.yaml)",
    )
    parser.add_argument(
        "--listen", type=listen_arg, default=DEFAULT_MANAGER, help="manager address"
    )
    parser.add_argument("--state-dir", default="state", help="manager state directory")
    _serving_tls_options(parser)
    parser.add_argument(
        "--headless",
        action="store_true",
        help="no live view: print events as lines (for scripts and CI)",
    )
    parser.add_argument(
        "--duration",
        type=duration_arg,
        default=datetime.timedelta(0),
        metavar="DURATION",
        help=f"stop everything after this long, {DURATION_HELP} (0: until Ctrl-C)",
    )
    parser.add_argument(
        "--grace",
        type=duration_arg,
        default=10 * _SECOND,
        metavar="DURATION",
        help=f"grace period of the stops on Ctrl-C, {DURATION_HELP} (default: 10s)",
    )


def _run(subparsers: Subparsers) -> None:
    # The sidecar's own parser reads the arguments when the verb runs (it is
    # built by pycontainer.sidecar, which --help must not import).
    parser = _verb(
        subparsers,
        "run",
        "_run:run",
        "supervise any program and host the Management API for it (the sidecar)",
        "Supervise any program and host the Management API for it: "
        "pycontainer run [OPTIONS] -- CMD ARGS... (pycontainer run --help tells more).",
        add_help=False,
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _manager(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "manager",
        "_manager:run",
        "serve the central manager",
        "Serve the Lifecycle and Manager APIs. Containers dial in; operators "
        "use the other verbs. Ctrl-C or SIGTERM stops serving (containers keep running "
        "and reconnect to the next manager on the same address and state directory).",
    )
    parser.add_argument(
        "--listen",
        type=listen_arg,
        default=DEFAULT_MANAGER,
        help=f"HOST:PORT to serve on; port 0 picks a free one (default: {DEFAULT_MANAGER})",
    )
    parser.add_argument("--state-dir", default="state", help="where the SQLite state lives")
    parser.add_argument(
        "--state",
        metavar="etcd://HOST:PORT,...",
        help="keep the registry, applied specs, checkpoints and journal on this etcd "
        "cluster instead of SQLite in --state-dir (which still holds the CA, logs and keys)",
    )
    parser.add_argument("--cpu", help="capacity in cpus (e.g. 4 or 3500m); default: this machine")
    parser.add_argument("--memory", help="capacity in bytes (e.g. 8Gi); default: this machine")
    parser.add_argument(
        "--heartbeat",
        type=_args.bounded_duration(datetime.timedelta(0), 3600 * _SECOND, exclusive_low=True),
        default=5 * _SECOND,
        metavar="DURATION",
        help="how often each container's connection is pinged (gRPC keepalive); it is "
        f"lost after 3 unanswered, {DURATION_HELP} (default: 5s)",
    )
    parser.add_argument(
        "--idle-heartbeat",
        type=_args.bounded_duration(datetime.timedelta(0), 3600 * _SECOND, exclusive_low=True),
        default=60 * _SECOND,
        metavar="DURATION",
        help="how often an idle container sends a Lifecycle heartbeat message; it is lost "
        f"after 3 unsent, {DURATION_HELP} (default: 60s)",
    )
    parser.add_argument(
        "--stop-containers",
        action="store_true",
        help="on Ctrl-C, stop every container gracefully before exiting",
    )
    parser.add_argument(
        "--leader-ttl",
        type=_args.bounded_duration(_SECOND, 60 * _SECOND),
        default=4 * _SECOND,
        metavar="DURATION",
        help="with --state etcd://: managers elect one leader on a lease this long; a "
        f"leader that cannot renew it within it steps down, {DURATION_HELP} (default: 4s)",
    )
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="another manager of the same etcd cluster (repeatable): containers this one "
        "launches are given every address, so that they follow the leader",
    )
    _serving_tls_options(parser)


def _health(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "health",
        "_health:run",
        "probe a container's grpc.health.v1 service",
        "Exit 0 serving, 2 connection failed, 3 RPC failed, 4 not serving "
        "(grpc_health_probe's codes).",
    )
    parser.add_argument("address", type=target_arg, help="HOST:PORT of the container")
    parser.add_argument(
        "--service", default="", help='service name: "" (overall), "liveness" or "readiness"'
    )
    parser.add_argument(
        "--timeout",
        type=duration_arg,
        default=_SECOND,
        metavar="DURATION",
        help=f"RPC timeout, {DURATION_HELP} (default: 1s)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=duration_arg,
        default=_SECOND,
        metavar="DURATION",
        help=f"connection timeout, {DURATION_HELP} (default: 1s)",
    )


def _completion(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "completion",
        "_completion:run",
        "print a shell completion script",
        "Print a completion script for bash or zsh, generated from the command line's "
        "grammar. bash: source <(pycontainer completion bash); zsh: "
        "source <(pycontainer completion zsh).",
    )
    parser.add_argument("shell", choices=("bash", "zsh"), help="the shell")


def _version(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "version",
        "_version:run",
        "print the client's and the manager's versions",
        "Print this command's version and the manager's (with the Python, grpcio and "
        "protobuf each runs on); --client for this command's alone.",
    )
    parser.add_argument("--client", action="store_true", help="only this command's version")
    _output_option(parser, "table", "json", "yaml")
    _manager_option(parser)


def _token(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "token",
        "_token:run",
        "make, list and revoke bootstrap tokens (containers the manager did not launch)",
        "A bootstrap token lets a container the manager did not launch join it: with "
        "the token, the join address and the CA pin that `token create` prints (as "
        "export lines) in its environment, the container gets a certificate at its "
        "start and then connects with mutual TLS. Admin only.",
    )
    actions = parser.add_subparsers(dest="token_action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="make a token; print the export lines a joiner needs (the token only this once)",
        description="Make a bootstrap token and print the export lines a joining container "
        'needs (eval "$(pycontainer token create)" sets them).',
    )
    create.add_argument(
        "--ttl",
        type=_args.bounded_duration(
            datetime.timedelta(0), limits.MAX_TOKEN_TTL, exclusive_low=True
        ),
        default=limits.DEFAULT_TOKEN_TTL,
        metavar="DURATION",
        help=f"how long it can be used, {DURATION_HELP} (default: {_TOKEN_TTLS})",
    )
    create.add_argument(
        "--uses",
        type=_args.bounded_count(
            1, limits.MAX_TOKEN_USES
        ),  # 0 would mean "unset" (1) to the manager
        default=1,
        help="joins it pays for (default: 1, at most 1000)",
    )
    create.add_argument(
        "--name",
        "--id",
        dest="name",
        metavar="ID",
        help="the only container id that may join with it (default: any; the joiner "
        "then asks for its own)",
    )
    create.add_argument("--description", default="", help="a note kept with the token")
    _output_option(create, "env", "json", help="env: export lines (default); json: the answer")
    _manager_option(create)
    listing = actions.add_parser("list", help="the tokens not expired yet (ids, never secrets)")
    _output_option(listing, "table", "json", "yaml")
    _manager_option(listing)
    revoke = actions.add_parser("revoke", help="withdraw a token: nobody joins with it any more")
    revoke.add_argument("token_id", metavar="TOKEN_ID", help="the token's id, as listed")
    _manager_option(revoke)


def _certificate(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "certificate",
        "_certificate:run",
        "issue users' client certificates from the manager's CA",
        "Issue a user's client certificate (Manager.IssueCertificate): the key is made "
        "here and stays here, the manager's CA signs its request. The user then holds "
        "the roles the manager binds to it (none unless bound with --role). Admin only.",
        aliases=("cert",),
    )
    actions = parser.add_subparsers(dest="certificate_action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="make a key, have the manager's CA sign it for IDENTITY, write DIR",
        description="Make a key and a certificate signing request here, have the manager's "
        "CA sign it for IDENTITY, and write DIR/tls.pem (key and certificate, mode 0600) and "
        "DIR/ca.pem (the trust bundle): what --cert-dir DIR reads.",
    )
    create.add_argument("identity", metavar="IDENTITY", help="whom it names: user/NAME")
    create.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the directory to write (made; one with files in it only with --force)",
    )
    create.add_argument(
        "--ttl",
        type=_args.bounded_duration(
            datetime.timedelta(0), limits.MAX_ISSUED_CERTIFICATE_TTL, exclusive_low=True
        ),
        default=None,
        metavar="DURATION",
        help=f"how long it is valid, {DURATION_HELP} (default: the manager's certificate "
        "lifetime, 24h unless configured; at most 30d)",
    )
    create.add_argument(
        "--force", action="store_true", help="replace the certificate already in DIR"
    )
    _manager_option(create)


def _mesh(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "mesh",
        "_mesh:run",
        "the service mesh: its services and xDS clients, and bootstraps for apps",
        "The manager is the mesh's xDS control plane: a spec's service puts its "
        "containers behind xds:///NAME. `mesh status` shows each service's endpoints "
        "and route, and what each xDS client acknowledged (as istioctl proxy-status); "
        "`mesh bootstrap` prints the gRPC xDS bootstrap of a program the manager did "
        "not launch (the ones it launches get theirs in $GRPC_XDS_BOOTSTRAP).",
    )
    actions = parser.add_subparsers(dest="mesh_action", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status",
        help="services (endpoints, route) and xDS clients (acknowledged versions, NACKs)",
        description="Each service's healthy and draining endpoints and its route split, "
        "and each connected xDS client: per resource type (CDS, EDS, LDS, RDS) whether it "
        "acknowledged what it was sent (SYNCED), not yet (STALE) or rejected it (NACK, "
        "with the client's error).",
    )
    status.add_argument(
        "service", nargs="?", default="", metavar="SERVICE", help="only this service"
    )
    _output_option(status, "table", "json", "yaml")
    _manager_option(status)
    bootstrap = actions.add_parser(
        "bootstrap",
        help="print a gRPC xDS bootstrap (GRPC_XDS_BOOTSTRAP) for a program of your own",
        description="Print the gRPC xDS bootstrap JSON that lets a grpcio program dial "
        "xds:///NAME through this manager: its address (--manager; managers in high "
        "availability: every one's, comma-separated, and the xDS stream follows the "
        "leader), and with mutual TLS "
        "the certificate in --tls-dir (the CLI's own by default) for the manager and the "
        "mesh's services; plaintext with --insecure.",
    )
    bootstrap.add_argument(
        "--node-id",
        metavar="ID",
        help="who the program is, as `mesh status` lists its xDS client (default: this "
        "machine's host name)",
    )
    bootstrap.add_argument("--cluster", default="", help="the node's cluster (a service name)")
    bootstrap.add_argument("--zone", default="", help="the node's locality zone")
    _manager_option(bootstrap)


def _route(subparsers: Subparsers) -> None:
    parser = _verb(
        subparsers,
        "route",
        "_mesh:run_route",
        "split a mesh service's traffic between its subsets by weight (a canary)",
        "Split SERVICE's traffic between its subsets (a spec's service.subset, or the "
        "spec's name) by weight, such as `pycontainer route orders v1=90 v2=10`; pushed "
        "to every client at once and kept by the manager across restarts. --clear goes "
        "back to the specs' trafficWeight, or no split.",
    )
    parser.add_argument("service", metavar="SERVICE", help="the mesh service")
    parser.add_argument(
        "weights",
        nargs="*",
        type=_args.route_weight,
        metavar="SUBSET=WEIGHT",
        help=f"a subset and its share, a whole number from 0 to {limits.MAX_MESH_TRAFFIC_WEIGHT}",
    )
    parser.add_argument("--clear", action="store_true", help="remove the split")
    _output_option(parser, "table", "json", "yaml")
    _manager_option(parser)
