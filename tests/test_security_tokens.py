"""Bootstrap tokens in a real JSON file: single use, bounded uses, expiry, hashing."""

from __future__ import annotations

import datetime
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pycontainer.security import (
    MAX_TOKEN_TTL,
    TOKENS_FILE,
    SecurityError,
    TokenError,
    TokenStore,
    container,
)


class Clock:
    """A settable clock, so that expiry is tested without waiting for it."""

    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> TokenStore:
    return TokenStore.in_directory(tmp_path, clock=clock)


def test_a_token_is_redeemed_once_then_used_up(
    store: TokenStore, tmp_path: Path, clock: Clock
) -> None:
    token = store.create(datetime.timedelta(hours=1), identity=container("joiner"))
    assert token.startswith("pct_")
    grant = store.redeem(token)
    assert grant.identity == container("joiner")
    assert grant.uses_left == 0
    with pytest.raises(TokenError, match="used up"):
        store.redeem(token)
    # A new store on the same file (a manager restart) knows it is used up too.
    with pytest.raises(TokenError, match="used up"):
        TokenStore.in_directory(tmp_path, clock=clock).redeem(token)


def test_a_bounded_token_serves_its_uses(store: TokenStore) -> None:
    token = store.create(datetime.timedelta(minutes=5), uses=3, roles=["container"])
    assert [store.redeem(token).uses_left for _ in range(3)] == [2, 1, 0]
    with pytest.raises(TokenError, match="used up"):
        store.redeem(token)


def test_a_token_expires_after_its_ttl(store: TokenStore, clock: Clock) -> None:
    token = store.create(datetime.timedelta(minutes=10))
    clock.now += datetime.timedelta(minutes=10)
    with pytest.raises(TokenError, match="expired at 2026-01-01T00:10:00"):
        store.redeem(token)


def test_unknown_wrong_secret_and_malformed_tokens_are_refused(store: TokenStore) -> None:
    token = store.create()
    token_id, _, secret = token.removeprefix("pct_").partition(".")
    forged = f"pct_{token_id}.{'A' * len(secret)}"
    with pytest.raises(TokenError, match=f"{token_id} is unknown") as wrong:
        store.redeem(forged)
    # The id is listed (`token list`): the message says the secret may be what is wrong.
    assert "or its secret is not the one `pycontainer token create` printed" in str(wrong.value)
    with pytest.raises(TokenError, match="43 characters") as short:
        store.redeem(f"pct_{token_id}.{secret[:20]}")
    assert "copied whole" in str(short.value)
    with pytest.raises(TokenError, match="is unknown"):
        store.redeem(f"pct_{'0' * 12}.{secret}")
    with pytest.raises(TokenError, match=r"expected pct_<id>\.<secret>"):
        store.redeem("hunter2")
    # The forgery did not spend the real token's use.
    assert store.redeem(token).uses_left == 0


def test_only_a_hash_of_the_secret_is_stored_owner_only(store: TokenStore, tmp_path: Path) -> None:
    token = store.create(description="for the batch host")
    path = tmp_path / TOKENS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    secret = token.partition(".")[2]
    assert secret not in text
    record = next(iter(json.loads(text)["tokens"].values()))
    assert set(record) >= {"sha256", "expires_at", "uses_left"}


def test_revoked_and_expired_tokens_are_gone(store: TokenStore, clock: Clock) -> None:
    short = store.create(datetime.timedelta(minutes=1))
    long = store.create(datetime.timedelta(hours=2))
    revoked = store.create(datetime.timedelta(hours=2))
    assert store.revoke(revoked.removeprefix("pct_").partition(".")[0])
    with pytest.raises(TokenError, match="unknown"):
        store.redeem(revoked)
    clock.now += datetime.timedelta(minutes=5)
    assert [grant.token_id for grant in store.list_tokens()] == [
        long.removeprefix("pct_").partition(".")[0]
    ]
    with pytest.raises(TokenError, match="unknown"):
        store.redeem(short)


@pytest.mark.parametrize(
    ("ttl", "uses", "problem"),
    [
        (datetime.timedelta(0), 1, "--ttl must be more than 0"),
        (MAX_TOKEN_TTL + datetime.timedelta(seconds=1), 1, "at most 168h, not 168h1s"),
        (datetime.timedelta(hours=1), 0, "uses must be 1 to"),
    ],
)
def test_token_limits_are_checked(
    store: TokenStore, ttl: datetime.timedelta, uses: int, problem: str
) -> None:
    with pytest.raises(SecurityError, match=problem):
        store.create(ttl, uses=uses)


def test_a_token_file_readable_by_others_or_corrupt_is_refused(
    store: TokenStore, tmp_path: Path
) -> None:
    token = store.create()
    path = tmp_path / TOKENS_FILE
    path.chmod(0o644)
    with pytest.raises(SecurityError, match=f"chmod 600 {path}"):
        store.redeem(token)
    path.chmod(0o600)
    path.write_text("{not json")
    with pytest.raises(SecurityError, match="not a pycontainer token document"):
        store.redeem(token)


_REDEEM = (
    "import sys; from pycontainer.security import TokenStore, TokenError\n"
    "try:\n    TokenStore(sys.argv[1]).redeem(sys.argv[2]); print('granted')\n"
    "except TokenError as error:\n    print('refused', error)\n"
)


def test_processes_racing_to_redeem_a_single_use_token_get_one_grant(tmp_path: Path) -> None:
    path = tmp_path / TOKENS_FILE
    token = TokenStore(path).create()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _REDEEM, str(path), token],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        outcomes.append(out.split()[0])
    assert sorted(outcomes) == ["granted", "refused", "refused", "refused"]


def test_a_token_store_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(SecurityError, match=f"cannot use the token store {blocker}"):
        TokenStore.in_directory(blocker).create()
