"""pycontainer.manager._etcd's client against a real 3-member etcd cluster."""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path

import pytest
from etcd_support import EtcdCluster, etcd_cluster, shared_etcd, unique_prefix

from pycontainer.manager._etcd import (
    BadEtcdUrl,
    EtcdClient,
    EtcdError,
    LeaseKeeper,
    create_revision_is,
    delete_op,
    get_op,
    mod_revision_is,
    parse_etcd_url,
    put_op,
    value_is,
)

__all__ = ["shared_etcd"]

SECONDS = datetime.timedelta(seconds=1)


async def test_put_get_range_delete(shared_etcd: EtcdCluster) -> None:
    p = unique_prefix().encode()
    client = EtcdClient(shared_etcd.addresses)
    try:
        assert await client.get(p + b"a") is None
        first = await client.put(p + b"a", b"1")
        await client.put(p + b"b", b"2")
        await client.put(p + b"c/x", b"3")
        kv = await client.get(p + b"a")
        assert kv is not None
        assert (kv.value, kv.create_revision, kv.mod_revision) == (b"1", first, first)
        found, revision = await client.range_prefix(p)
        assert [k.key for k in found] == [p + b"a", p + b"b", p + b"c/x"]
        assert revision >= first
        # Read at an older revision: the store's history.
        await client.put(p + b"a", b"changed")
        old = await client.get(p + b"a", revision=first)
        assert old is not None
        assert old.value == b"1"
        assert await client.delete(p, prefix=True) == 3
        assert (await client.range_prefix(p))[0] == []
    finally:
        await client.close()


async def test_range_pages_past_one_page(shared_etcd: EtcdCluster) -> None:
    p = unique_prefix().encode()
    client = EtcdClient(shared_etcd.addresses)
    try:
        from pycontainer.manager._etcd._client import RANGE_PAGE

        count = RANGE_PAGE + 7
        for start in range(0, count, 100):
            await client.txn(
                [], [put_op(p + b"%06d" % i, b"x") for i in range(start, min(count, start + 100))]
            )
        found, _ = await client.range_prefix(p, keys_only=True)
        assert [k.key for k in found] == [p + b"%06d" % i for i in range(count)]
    finally:
        await client.close()


async def test_txn_compares(shared_etcd: EtcdCluster) -> None:
    p = unique_prefix().encode()
    key = p + b"k"
    client = EtcdClient(shared_etcd.addresses)
    try:
        # Create if absent: once.
        created = await client.txn([create_revision_is(key, 0)], [put_op(key, b"v1")])
        assert created.succeeded
        again = await client.txn([create_revision_is(key, 0)], [put_op(key, b"v2")], [get_op(key)])
        assert not again.succeeded
        assert again.responses[0].response_range.kvs[0].value == b"v1"

        kv = await client.get(key)
        assert kv is not None
        # A stale mod revision fails, the current one succeeds.
        stale = await client.txn([mod_revision_is(key, kv.mod_revision - 1)], [put_op(key, b"x")])
        assert not stale.succeeded
        fresh = await client.txn([mod_revision_is(key, kv.mod_revision)], [put_op(key, b"v3")])
        assert fresh.succeeded
        # Compares on the create revision survive the key's rewrites (an epoch).
        assert (await client.txn([create_revision_is(key, kv.create_revision)], [])).succeeded
        assert not (await client.txn([value_is(key, b"v1")], [delete_op(key)])).succeeded
        assert (await client.txn([value_is(key, b"v3")], [delete_op(key)])).succeeded
        assert await client.get(key) is None
    finally:
        await client.close()


async def test_short_keepalives_keep_a_2s_lease_for_10s(shared_etcd: EtcdCluster) -> None:
    p = unique_prefix().encode()
    client = EtcdClient(shared_etcd.addresses)
    try:
        lease, ttl = await client.grant(2 * SECONDS)
        assert ttl == 2
        await client.put(p + b"alive", b"yes", lease=lease)
        keeper = LeaseKeeper(client, lease, ttl)
        keeper.start()
        start = time.monotonic()
        # The lease's key must be there all along, checked every half TTL.
        while time.monotonic() - start < 10:
            assert await client.get(p + b"alive") is not None, "the lease lapsed"
            assert keeper.alive
            await asyncio.sleep(1.0)
        assert keeper.renewals >= 10
        assert await client.time_to_live(lease) > 0

        # Without keepalives it lapses, and its key with it.
        await keeper.stop()
        deadline = time.monotonic() + 10
        while await client.get(p + b"alive") is not None:
            assert time.monotonic() < deadline, "the lease outlived its keepalives"
            await asyncio.sleep(0.2)
        assert await client.keepalive_once(lease) == 0
    finally:
        await client.close()


async def test_election_one_leader_then_the_other(shared_etcd: EtcdCluster) -> None:
    name = unique_prefix().encode() + b"leader"
    a, b = EtcdClient(shared_etcd.addresses), EtcdClient(shared_etcd.addresses[::-1])
    try:
        assert await a.leader(name) is None
        lease_a, ttl = await a.grant(2 * SECONDS)
        lease_b, _ = await b.grant(2 * SECONDS)
        keepers = [LeaseKeeper(a, lease_a, ttl), LeaseKeeper(b, lease_b, ttl)]
        for keeper in keepers:
            keeper.start()
        key_a = await a.campaign(name, lease_a, b"manager-a", 5 * SECONDS)
        b_campaign = asyncio.create_task(b.campaign(name, lease_b, b"manager-b", 30 * SECONDS))
        # B waits behind A: the leader stays A across several keepalives.
        for _ in range(3):
            leader = await b.leader(name)
            assert leader is not None
            assert leader.value == b"manager-a"
            assert not b_campaign.done()
            await asyncio.sleep(1.0)

        # A's lease revoked: B leads, with a later epoch.
        await keepers[0].stop(revoke=True)
        key_b = await asyncio.wait_for(b_campaign, 10)
        assert key_b.rev > key_a.rev
        leader = await a.leader(name)
        assert leader is not None
        assert leader.value == b"manager-b"
        assert leader.create_revision == key_b.rev
        # The deposed leader cannot proclaim.
        with pytest.raises(EtcdError):
            await a.proclaim(key_a, b"still me")
        await b.proclaim(key_b, b"manager-b v2")
        leader = await a.leader(name)
        assert leader is not None
        assert leader.value == b"manager-b v2"
        await b.resign(key_b)
        assert await a.leader(name) is None
        await keepers[1].stop(revoke=True)
    finally:
        await a.close()
        await b.close()


async def test_calls_carry_on_when_a_member_dies(tmp_path: Path) -> None:
    with etcd_cluster(tmp_path) as cluster:
        client = EtcdClient(cluster.addresses, call_timeout=2 * SECONDS)
        try:
            await client.put(b"/k", b"before")
            lease, ttl = await client.grant(3 * SECONDS)
            # The member the client talks to first dies.
            cluster.kill(cluster.members[0])
            await client.put(b"/k", b"after")
            kv = await client.get(b"/k")
            assert kv is not None
            assert kv.value == b"after"
            assert await client.keepalive_once(lease) == ttl
            assert (
                await client.txn([value_is(b"/k", b"after")], [put_op(b"/k", b"txn")])
            ).succeeded
            # And back: the member rejoins and serves.
            cluster.start_member(cluster.members[0])
            solo = EtcdClient([cluster.members[0].address])
            try:
                kv = await solo.get(b"/k")
                assert kv is not None
                assert kv.value == b"txn"
            finally:
                await solo.close()
        finally:
            await client.close()


async def test_no_member_answering_is_unavailable_naming_them(tmp_path: Path) -> None:
    from etcd_support import free_ports

    members = [f"127.0.0.1:{port}" for port in free_ports(2)]
    client = EtcdClient(members, call_timeout=datetime.timedelta(milliseconds=300))
    try:
        with pytest.raises(EtcdError) as caught:
            await client.get(b"/k")
        assert caught.value.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        for member in members:
            assert member in str(caught.value)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("url", "members"),
    [
        ("etcd://h1:2379,h2:2380", ["h1:2379", "h2:2380"]),
        ("etcd://10.0.0.1", ["10.0.0.1:2379"]),
        ("etcd://[::1]:2379, h2", ["[::1]:2379", "h2:2379"]),
    ],
)
def test_parse_etcd_url(url: str, members: list[str]) -> None:
    assert parse_etcd_url(url) == members


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h1:2379", "not an etcd URL"),
        ("etcd://", "empty member"),
        ("etcd://h1:2379,,h2", "empty member"),
        ("etcd://h1:http", "not a number"),
        ("etcd://h1:70000", "not a number"),
        ("etcd://h1:2379/prefix", "no path"),
        ("etcd://::1", "brackets"),
        ("etcd://h1,h1:2379", "twice"),
    ],
)
def test_bad_etcd_url_says_what_to_write(url: str, says: str) -> None:
    with pytest.raises(BadEtcdUrl, match=says) as caught:
        parse_etcd_url(url)
    assert "etcd://HOST:PORT" in str(caught.value) or "twice" in says


@pytest.mark.parametrize("hung_role", ["follower", "raft leader"])
async def test_a_hung_member_costs_neither_calls_nor_the_lease(
    tmp_path: Path, hung_role: str
) -> None:
    """A member that takes connections but never answers (SIGSTOP): every
    call's deadline passes it to another member, and a 2 s lease kept alive by
    short calls lives on (a long-lived keepalive stream's write hangs there).
    A hung follower costs nothing; a hung raft leader costs an election
    (etcd's election timeout, 1 s by default), after which etcd gives every
    lease a fresh TTL: the lease survives, though its holder's local deadline
    may have passed meanwhile (it then stops acting by itself: safe)."""
    with etcd_cluster(tmp_path) as cluster:
        leader = cluster.raft_leader()
        hung = (
            leader
            if hung_role == "raft leader"
            else next(m for m in cluster.members if m is not leader)
        )
        # The client talks to the hung member first.
        order = [hung.address, *(m.address for m in cluster.members if m is not hung)]
        client = EtcdClient(order, call_timeout=SECONDS)
        assert hung.process is not None
        try:
            lease, ttl = await client.grant(2 * SECONDS)
            await client.put(b"/held", b"x", lease=lease)
            keeper = LeaseKeeper(client, lease, ttl)
            keeper.start()
            cluster.freeze(hung)
            start = time.monotonic()
            await client.put(b"/k", b"through another member")
            took = time.monotonic() - start
            # One try's deadline, and an election when it led raft.
            assert took < 5
            lapsed = False
            start = time.monotonic()
            while time.monotonic() - start < 6:  # three TTLs
                lapsed = lapsed or not keeper.alive
                if hung_role == "follower":
                    assert keeper.alive, "the lease was lost to a hung follower"
                await asyncio.sleep(0.25)
            print(f"\nhung {hung_role}: a put took {took:.2f} s; local deadline lapsed: {lapsed}")
            kv = await client.get(b"/held")
            if lapsed:
                # The holder knew, and stopped renewing: the lease may be gone.
                assert keeper.lost.is_set()
                assert hung_role == "raft leader"
            else:
                assert kv is not None, "etcd let a renewed lease expire"
                assert kv.lease == lease
            await keeper.stop(revoke=True)
        finally:
            cluster.thaw(hung)
            await client.close()


async def test_a_dead_leaders_successor_within_its_ttl(shared_etcd: EtcdCluster) -> None:
    """A leader that stops renewing (kill -9) is followed by the next candidate
    once its 2 s lease expires; Observe sees the change."""
    name = unique_prefix().encode() + b"leader"
    a, b = EtcdClient(shared_etcd.addresses), EtcdClient(shared_etcd.addresses)
    try:
        lease_a, ttl = await a.grant(2 * SECONDS)
        lease_b, _ = await b.grant(2 * SECONDS)
        keeper_a, keeper_b = LeaseKeeper(a, lease_a, ttl), LeaseKeeper(b, lease_b, ttl)
        keeper_a.start()
        keeper_b.start()
        await a.campaign(name, lease_a, b"a", 5 * SECONDS)
        seen: list[bytes] = []

        async def observe() -> None:
            async for kv in b.observe(name, 30 * SECONDS):
                seen.append(kv.value)
                if kv.value == b"b":
                    return

        observer = asyncio.create_task(observe())
        successor = asyncio.create_task(b.campaign(name, lease_b, b"b", 30 * SECONDS))
        await asyncio.sleep(0.5)
        assert not successor.done()
        await keeper_a.stop()  # "killed": no revoke, its lease runs out
        died = time.monotonic()
        await asyncio.wait_for(successor, 10)
        handover = time.monotonic() - died
        print(f"\nnew leader {handover:.2f} s after the old one stopped renewing (TTL 2 s)")
        assert handover < ttl + 2
        await asyncio.wait_for(observer, 10)
        assert seen[0] == b"a"
        assert seen[-1] == b"b"
        await keeper_b.stop(revoke=True)
    finally:
        await a.close()
        await b.close()


def test_the_private_stubs_leave_etcds_own_names_free() -> None:
    """Another etcd stub set (etcd's own packages: mvccpb, etcdserverpb) loads
    beside ours in the same process: ours are pycontainer.etcd.*."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    from pycontainer._etcdpb import kv_pb2, rpc_pb2

    assert kv_pb2.KeyValue.DESCRIPTOR.full_name == "pycontainer.etcd.mvccpb.KeyValue"
    assert rpc_pb2.DESCRIPTOR.services_by_name["KV"].full_name == (
        "pycontainer.etcd.etcdserverpb.KV"
    )
    theirs = descriptor_pb2.FileDescriptorProto(
        name="etcd/mvcc/mvccpb/kv.proto", package="mvccpb", syntax="proto3"
    )
    message = theirs.message_type.add(name="KeyValue")
    message.field.add(
        name="key",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.Default()
    pool.Add(theirs)  # a clash would raise TypeError: duplicate symbol
    assert pool.FindMessageTypeByName("mvccpb.KeyValue").full_name == "mvccpb.KeyValue"
