"""The leader's append messages (cluster/appends.py): under load each entry goes to a follower
once and a follower never truncates entries it already holds.

Three real nodes in one process (cluster_harness.py), with counters wrapped around the
leader's send and the followers' journal truncation: nothing of ours is faked."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from cluster_harness import InProcessCluster

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


async def _put_from_many_clients(cluster: InProcessCluster) -> None:
    async def client(n: int) -> None:
        for i in range(PUTS_EACH):
            await cluster.apply(c.Put("default", 1, 0, 60_000, b"c%d-%d" % (n, i)))

    await asyncio.gather(*(client(n) for n in range(WORKERS)))


def test_under_load_each_entry_goes_to_each_follower_once_and_nothing_is_truncated(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path)
        await cluster.start_all()
        try:
            leader = await cluster.wait_for_leader()
            followers = [n for n in cluster.nodes.values() if n is not leader]
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
        finally:
            await cluster.stop_all()

    _run(scenario())
