"""The --fsync policy on pysyncobj's journal: when a put is acknowledged, a majority synced it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_harness import InProcessCluster

from cluster.durability import JournalSync
from cluster.journal import Journal
from statemachine import commands as c


def _put(i: int) -> c.Put:
    return c.Put("default", 1, 0, 60_000, b"durable-%d" % i)


async def test_with_batch_an_acknowledged_put_is_synced_on_the_leader_and_a_follower(
    tmp_path: Path,
) -> None:
    cluster = InProcessCluster(tmp_path, fsync="batch")
    await cluster.start_all()
    try:
        leader = await cluster.wait_for_leader()
        followers = [n for n in cluster.nodes.values() if n is not leader]
        for i in range(20):
            before = [f.journal_sync.syncs for f in followers]
            await cluster.apply(_put(i))
            assert not leader.journal_sync.dirty  # the leader synced before the ack
            synced = [f.journal_sync.syncs > b for f, b in zip(followers, before, strict=True)]
            assert any(synced), "no follower synced before the put was acknowledged"
        await cluster.assert_converged()
    finally:
        await cluster.stop_all()


async def test_with_never_nothing_is_synced_but_everything_is_written(tmp_path: Path) -> None:
    cluster = InProcessCluster(tmp_path, fsync="never")
    await cluster.start_all()
    try:
        for i in range(10):
            await cluster.apply(_put(i))
        assert all(n.journal_sync.syncs == 0 for n in cluster.nodes.values())
        before = await cluster.assert_converged()
        await cluster.stop_all()
        await cluster.start_all()
        assert await cluster.assert_converged() == before
    finally:
        await cluster.stop_all()


def test_an_unknown_fsync_policy_is_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="always, batch or never"):
        JournalSync(Journal(tmp_path / "raft.log"), "sometimes")


async def test_with_always_every_appended_entry_is_synced_as_it_is_written(tmp_path: Path) -> None:
    cluster = InProcessCluster(tmp_path, fsync="always")
    await cluster.start_all()
    try:
        leader = await cluster.wait_for_leader()
        before = leader.journal_sync.syncs
        for i in range(10):
            await cluster.apply(_put(i))
            assert not leader.journal_sync.dirty
        assert leader.journal_sync.syncs >= before + 10  # one per entry at least
        await cluster.assert_converged()
    finally:
        await cluster.stop_all()
