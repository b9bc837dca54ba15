"""The leader's append messages (cluster/appends.py): under load each entry goes to a follower
once and a follower never truncates entries it already holds; the commit index goes out on its
own only when the applied entries made wake-ups, and then at once.

Three real nodes in one process (cluster_harness.py), with counters wrapped around the
leader's send and the followers' journal truncation: nothing of ours is faked."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cluster_harness import InProcessCluster, running_cluster

from cluster.node import RaftNode
from statemachine import commands as c

WORKERS = 16
PUTS_EACH = 25


def _run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def _record_appends(leader: RaftNode) -> list[tuple[str, list[int], int]]:
    """Every append message the leader sends from now on: (follower's Raft address, the Raft
    indices of the entries it carries, the commit index it carries)."""
    appends: list[tuple[str, list[int], int]] = []
    transport = leader.syncobj._SyncObj__transport
    send = transport.send

    def recording_send(node: Any, message: Any) -> Any:
        if isinstance(message, dict) and message.get("type") == "append_entries":
            indices = [entry[1] for entry in message.get("entries", ())]
            appends.append((node.id, indices, message["commit_index"]))
        return send(node, message)

    transport.send = recording_send
    return appends


def _sent_entries(appends: list[tuple[str, list[int], int]]) -> Counter[tuple[str, int]]:
    """(follower, Raft index) -> how many append messages to it carried that entry."""
    return Counter((node, index) for node, indices, _ in appends for index in indices)


def _count_truncations(node: RaftNode) -> list[int]:
    """Indices (into the journal) from which ``node`` deleted entries it held."""
    truncated: list[int] = []
    journal = node.syncobj._SyncObj__raftLog
    delete_from = journal.deleteEntriesFrom

    def counting_delete_from(entry_from: int) -> None:
        if entry_from < len(journal):
            truncated.append(entry_from)
        delete_from(entry_from)

    journal.deleteEntriesFrom = counting_delete_from
    return truncated


async def _roles(cluster: InProcessCluster) -> tuple[RaftNode, list[RaftNode]]:
    leader = await cluster.wait_for_leader()
    return leader, [n for n in cluster.nodes.values() if n is not leader]


async def _put_from_many_clients(cluster: InProcessCluster) -> None:
    async def client(n: int) -> None:
        for i in range(PUTS_EACH):
            await cluster.apply(c.Put("default", 1, 0, 60_000, b"c%d-%d" % (n, i)))

    await asyncio.gather(*(client(n) for n in range(WORKERS)))


def test_under_load_each_entry_goes_to_each_follower_once_and_nothing_is_truncated(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running_cluster(tmp_path) as cluster:
            leader, followers = await _roles(cluster)
            appends = _record_appends(leader)
            truncated = [_count_truncations(f) for f in followers]
            first = leader.syncobj.raftCommitIndex
            await _put_from_many_clients(cluster)
            await cluster.assert_converged()
            entries = leader.syncobj.raftCommitIndex - first
            sent = _sent_entries(appends)
            assert entries > WORKERS, "the load should keep several entries in flight"
            repeated = {key: n for key, n in sent.items() if n > 1}
            assert repeated == {}
            assert len({index for _, index in sent}) >= entries
            assert truncated == [[], []]

    _run(scenario())


@contextlib.asynccontextmanager
async def _heartbeats_off(leader: RaftNode) -> AsyncIterator[None]:
    """No heartbeats from the leader for a moment, so that every append without entries it
    sends is commit news. Followers call an election after 0.3 s without a message, and the
    scenarios inside take a few tens of milliseconds of appends."""
    conf = leader.syncobj._getConf()
    period_s = conf.appendEntriesPeriod
    conf.appendEntriesPeriod = 3600.0
    await asyncio.sleep(2 * period_s)  # the heartbeat already due goes out
    try:
        yield
    finally:
        conf.appendEntriesPeriod = period_s
        leader.syncobj._SyncObj__newAppendEntriesTime = 0.0  # a heartbeat on the next tick


def _news_to(appends: list[tuple[str, list[int], int]], follower: RaftNode) -> list[int]:
    """The commit indices of the appends without entries sent to ``follower``."""
    return [
        commit
        for node, indices, commit in appends
        if node == follower.config.raft_addr and not indices
    ]


def test_a_put_nobody_waits_for_sends_no_message_with_only_the_commit_index(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running_cluster(tmp_path) as cluster:
            leader, followers = await _roles(cluster)
            async with _heartbeats_off(leader):
                appends = _record_appends(leader)
                for i in range(10):
                    await cluster.apply(c.Put("default", 1, 0, 60_000, b"job%d" % i))
                await asyncio.sleep(0.02)
            assert len([a for a in appends if a[1]]) == 20  # each entry, to each follower
            assert [_news_to(appends, f) for f in followers] == [[], []]
            await cluster.assert_converged()  # the commit index rode on the next heartbeat

    _run(scenario())


def test_a_put_that_wakes_a_waiting_reserve_sends_the_commit_index_at_once(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running_cluster(tmp_path) as cluster:
            leader, followers = await _roles(cluster)
            await cluster.apply(c.Connect("w1", "p1"))
            await cluster.apply(c.Reserve("w1", None, "rsv-1"))
            async with _heartbeats_off(leader):
                # A proxy's stream on a follower gets the wake-up now, not at the heartbeat.
                seen = [asyncio.create_task(_wakeup_seen(f, "p1")) for f in followers]
                await asyncio.sleep(0.01)  # the streams attach
                appends = _record_appends(leader)
                put = await cluster.apply(c.Put("default", 1, 0, 60_000, b"x"))
                assert put.wakeups, "the put answers the waiting reserve"
                await asyncio.wait_for(asyncio.gather(*seen), 10)  # only a guard against hangs
            # Heartbeats are off: commit news carrying the put's index told the followers.
            for follower in followers:
                assert max(_news_to(appends, follower)) >= cluster.last_index

    _run(scenario())


async def _wakeup_seen(node: RaftNode, proxy_id: str) -> None:
    async for event in node.hub.stream(proxy_id, 0):
        if event.wakeup:
            return
