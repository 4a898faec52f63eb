"""One candidate's part in an election on etcd's election service: a lease
kept alive by short calls (LeaseKeeper), a campaign on it, and the term won
(its epoch: the leader key's create revision, the fencing token)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from dataclasses import dataclass

import grpc

from ._client import Compare, EtcdClient, EtcdError, LeaseKeeper, create_revision_is


@dataclass(frozen=True)
class Term:
    """A leadership won: the leader key, its epoch and the lease it lives on."""

    key: bytes
    # The leader key's create revision: later leaders have higher ones.
    epoch: int
    lease: int

    def fence(self) -> tuple[Compare, ...]:
        """The compares that hold while this term lasts (EtcdStore.fence)."""
        return (create_revision_is(self.key, self.epoch),)


class Candidate:
    """Campaigns in the election ``name`` with ``value`` (who it is, such as
    its address) on a lease of ``ttl``; ``lost`` is set once the lease may be
    gone (its local deadline passed), after which it must stop acting as the
    leader by itself."""

    def __init__(
        self, client: EtcdClient, name: bytes, value: bytes, ttl: datetime.timedelta
    ) -> None:
        self.client = client
        self.name = name
        self.value = value
        self.ttl = ttl
        self.term: Term | None = None
        self._keeper: LeaseKeeper | None = None

    @property
    def lost(self) -> asyncio.Event:
        assert self._keeper is not None, "campaign first"
        return self._keeper.lost

    @property
    def leading(self) -> bool:
        """Whether it won and its lease is alive by its own reckoning."""
        return self.term is not None and self._keeper is not None and self._keeper.alive

    async def campaign(self, wait: datetime.timedelta) -> Term:
        """Wait at most ``wait`` to lead (while another leads, the lease is kept
        alive); the term won. EtcdError when the lease is lost meanwhile or the
        wait passes."""
        lease, granted = await self.client.grant(self.ttl)
        keeper = LeaseKeeper(self.client, lease, granted)
        self._keeper = keeper
        keeper.start()
        campaign = asyncio.ensure_future(self.client.campaign(self.name, lease, self.value, wait))
        lost = asyncio.ensure_future(keeper.lost.wait())
        try:
            await asyncio.wait({campaign, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not campaign.done():
            campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError, EtcdError):
                await campaign
            await self._end(revoke=True)
            raise EtcdError(
                f"election {self.name!r}: lease {lease:x} lost while campaigning",
                grpc.StatusCode.UNAVAILABLE,
            )
        try:
            leader = campaign.result()
        except BaseException:
            await self._end(revoke=True)
            raise
        self.term = Term(key=leader.key, epoch=leader.rev, lease=lease)
        return self.term

    async def resign(self) -> None:
        """Stop leading (or campaigning): the next candidate leads at once."""
        await self._end(revoke=True)

    async def _end(self, *, revoke: bool) -> None:
        keeper, self.term = self._keeper, None
        if keeper is not None:
            # Revoking the lease deletes the leader key: resigning without a
            # call of its own.
            with contextlib.suppress(EtcdError):
                await keeper.stop(revoke=revoke)
