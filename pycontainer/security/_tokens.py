"""Bootstrap tokens: short-lived secrets a container the manager did not launch joins with.

``pycontainer token create --ttl 1h`` makes one (:meth:`TokenStore.create`);
the joining container presents it with a CSR, and the manager redeems it
(:meth:`TokenStore.redeem`) before signing (kubelet's TLS bootstrap, in small).
A token reads ``pct_<id>.<secret>``: the id finds the record, the secret
proves possession. Only the secret's SHA-256 is stored (the secret is 256
random bits, so a fast hash is enough), in a JSON file (mode 0600) the store
rewrites atomically under a file lock, so several processes can share it
(:class:`TokenFile`), or in the manager's state store on etcd, so that every
replica redeems what any of them made (a :class:`TokenRecords` of its own).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import hmac
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pycontainer.limits import DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, MAX_TOKEN_USES
from pycontainer.security._errors import SecurityError
from pycontainer.security._files import read_private, write_atomic
from pycontainer.security._identity import Identity, parse_identity
from pycontainer.units import format_duration

TOKENS_FILE = "tokens.json"
TOKEN_PREFIX = "pct_"

_TOKEN = re.compile(r"pct_([0-9a-f]{12})\.([A-Za-z0-9_-]{43})")
_VERSION = 1


class TokenError(SecurityError):
    """A token that cannot be redeemed; the message says why."""


class TokenNotFor(TokenError):
    """A good token made for another identity than the one asked for (no use is spent)."""


@dataclass(frozen=True)
class Grant:
    """What redeeming a token gives: who it was made for and what it allows."""

    token_id: str
    # The identity the token was made for; None lets the redeemer name itself
    # (a container choosing its own id), within what ``roles`` allow.
    identity: Identity | None
    roles: tuple[str, ...]
    expires_at: datetime.datetime
    uses_left: int


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenRecords(Protocol):
    """Where a TokenStore keeps its records: a file of its own by default,
    or the manager's state store (etcd: every replica redeems the tokens any
    of them made)."""

    def transaction(self) -> AbstractContextManager[dict[str, dict[str, Any]]]:
        """The records by token id, exclusively until the block ends, and
        written back if the block changed them and raised nothing; a
        SecurityError when they cannot be read or written."""
        ...


def encode_records(records: dict[str, dict[str, Any]]) -> bytes:
    """The records as the token document (the file's and etcd's bytes)."""
    return json.dumps({"version": _VERSION, "tokens": records}, indent=2).encode() + b"\n"


def decode_records(raw: bytes, where: str) -> dict[str, dict[str, Any]]:
    """The records of a token document read from ``where``; SecurityError if
    it is not one."""
    try:
        document = json.loads(raw)
        records = document["tokens"]
        if document.get("version") != _VERSION or not isinstance(records, dict):
            raise ValueError("unknown layout")
    except (ValueError, KeyError, TypeError) as error:
        raise SecurityError(
            f"token store {where} is not a pycontainer token document ({error}); "
            "move it away to start with no tokens"
        ) from None
    return records


class TokenFile:
    """The token records in one JSON file (mode 0600), rewritten atomically
    under a file lock, so that several processes can share it."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[dict[str, dict[str, Any]]]:
        lock_path = self._path.with_name(self._path.name + ".lock")
        with self._lock:
            try:
                self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                lock = lock_path.open("a")
            except OSError as error:
                raise SecurityError(
                    f"cannot use the token store {self._path}: {error.strerror or error}"
                ) from None
            with lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                try:
                    records = self._read()
                    before = json.dumps(records, sort_keys=True)
                    yield records
                    if json.dumps(records, sort_keys=True) != before:
                        self._write(records)
                finally:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write(self, records: dict[str, dict[str, Any]]) -> None:
        try:
            write_atomic(self._path, encode_records(records))
        except OSError as error:
            raise SecurityError(
                f"cannot write the token store {self._path}: {error.strerror or error}"
            ) from None

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self._path.exists():
            return {}
        return decode_records(read_private(self._path, "token store"), str(self._path))


class TokenStore:
    """The bootstrap tokens, kept in ``records`` (a path: a TokenFile there)."""

    def __init__(
        self,
        records: TokenRecords | Path | str,
        *,
        clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        self._records = TokenFile(records) if isinstance(records, Path | str) else records
        self._clock = clock

    @classmethod
    def in_directory(
        cls,
        directory: Path | str,
        *,
        clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> TokenStore:
        """The store at ``tokens.json`` in the manager's state directory."""
        return cls(Path(directory) / TOKENS_FILE, clock=clock)

    def _purge(self, records: dict[str, dict[str, Any]], now: datetime.datetime) -> None:
        # Expired records go; used-up ones stay until they expire, so that a
        # second redeem says "used up" rather than "unknown".
        for token_id in [i for i, r in records.items() if _expiry(r) <= now]:
            del records[token_id]

    # -- the operations ----------------------------------------------------

    def create(
        self,
        ttl: datetime.timedelta = DEFAULT_TOKEN_TTL,
        *,
        uses: int = 1,
        identity: Identity | None = None,
        roles: Sequence[str] = (),
        description: str = "",
    ) -> str:
        """A new token valid for ``ttl`` and ``uses`` redeems; shown once, only its hash is kept."""
        if not datetime.timedelta(0) < ttl <= MAX_TOKEN_TTL:
            raise SecurityError(
                f"a token's --ttl must be more than 0 and at most {format_duration(MAX_TOKEN_TTL)}"
                f", not {format_duration(ttl)}"
            )
        if not 1 <= uses <= MAX_TOKEN_USES:
            raise SecurityError(f"a token's uses must be 1 to {MAX_TOKEN_USES}, not {uses}")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = self._clock()
        with self._records.transaction() as records:
            self._purge(records, now)
            records[token_id] = {
                "sha256": _digest(secret),
                "created_at": now.isoformat(),
                "expires_at": (now + ttl).isoformat(),
                "uses_left": uses,
                "identity": identity.uri if identity else None,
                "roles": list(roles),
                "description": description[:200],
            }
        return f"{TOKEN_PREFIX}{token_id}.{secret}"

    def redeem(
        self,
        token: str,
        *,
        identity: Identity | None = None,
        may_choose: Callable[[Identity], str | None] | None = None,
    ) -> Grant:
        """Spend one use of ``token``; what it grants, or :class:`TokenError` saying why not.

        With ``identity``, a token made for another identity is refused
        (:class:`TokenNotFor`) before a use is spent; so is, for a token that
        lets the joiner name itself, an identity ``may_choose`` gives a reason
        against (one already in use, or bound to more than its own session).
        """
        match = _TOKEN.fullmatch(token.strip())
        if match is None:
            raise TokenError(
                "not a bootstrap token: expected pct_<id>.<secret> (12 hex digits, a dot, "
                "43 characters) as printed by `pycontainer token create`; check that it was "
                "copied whole"
            )
        token_id, secret = match.groups()
        now = self._clock()
        with self._records.transaction() as records:
            record = records.get(token_id)
            # Compared even for an unknown id, so the time taken says nothing.
            expected = record["sha256"] if record else _digest("")
            matches = hmac.compare_digest(_digest(secret), expected)
            if record is None or not matches:
                raise TokenError(
                    f"bootstrap token {token_id} is unknown (or was revoked), or its secret "
                    "is not the one `pycontainer token create` printed"
                )
            if _expiry(record) <= now:
                raise TokenError(
                    f"bootstrap token {token_id} expired at {record['expires_at']}; "
                    "create a new one with `pycontainer token create`"
                )
            if record["uses_left"] <= 0:
                raise TokenError(
                    f"bootstrap token {token_id} is used up; create a new one with "
                    "`pycontainer token create` (--uses N for several)"
                )
            allowed = record.get("identity")
            if identity is not None and allowed and allowed != identity.uri:
                raise TokenNotFor(
                    f"bootstrap token {token_id} is for {allowed}, not {identity}: join with "
                    "that container id, or create a token for this one (--name)"
                )
            if identity is not None and not allowed and may_choose is not None:
                reason = may_choose(identity)
                if reason is not None:
                    raise TokenNotFor(
                        f"bootstrap token {token_id} cannot name {identity}: {reason}"
                    )
            record["uses_left"] -= 1
            return _grant(token_id, record)

    def revoke(self, token_id: str) -> bool:
        """Forget a token; whether it existed."""
        with self._records.transaction() as records:
            return records.pop(token_id, None) is not None

    def list_tokens(self) -> list[Grant]:
        """The tokens not expired yet (used-up ones with uses_left 0), oldest first."""
        now = self._clock()
        with self._records.transaction() as records:
            self._purge(records, now)
            ordered = sorted(records.items(), key=lambda item: str(item[1]["created_at"]))
            return [_grant(token_id, record) for token_id, record in ordered]


def _expiry(record: dict[str, Any]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(str(record["expires_at"]))


def _grant(token_id: str, record: dict[str, Any]) -> Grant:
    identity = record.get("identity")
    return Grant(
        token_id,
        parse_identity(identity) if identity else None,
        tuple(record.get("roles", ())),
        _expiry(record),
        int(record["uses_left"]),
    )
