"""Fault tests with real node processes: kill -9, restarts, membership, snapshot and restore.

Each test ends by checking that every running replica holds an equal snapshot.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import async_wait_until
from process_harness import ProcessCluster

from api import cluster_pb2_grpc, empty_pb2
from api.client import RemoteQueue
from jobqueue.interface import QueueUnavailable
from statemachine import commands as c
from statemachine import replies as r

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(tmp_path)
    cluster.start_all()
    try:
        yield cluster
    finally:
        cluster.stop_all()


def _put(body: bytes) -> c.Put:
    return c.Put("default", 1, 0, 120_000, body)


async def _bodies(queue: RemoteQueue, max_id: int) -> list[bytes]:
    bodies = []
    for job_id in range(1, max_id + 1):
        reply = await queue.apply(c.Peek(job_id))
        if isinstance(reply, r.Found):
            bodies.append(reply.body)
    return bodies


async def test_killing_the_leader_during_puts_loses_no_acknowledged_put_and_applies_none_twice(
    cluster: ProcessCluster,
) -> None:
    leader = await cluster.wait_for_leader()
    queue = cluster.queue()
    acknowledged: dict[bytes, int] = {}
    failed: list[bytes] = []
    stop = asyncio.Event()

    async def producer(worker: int) -> None:
        n = 0
        while not stop.is_set():
            body = b"w%d-%d" % (worker, n)
            n += 1
            try:
                reply = await queue.apply(_put(body))
            except QueueUnavailable:  # the outcome is unknown: it may or may not be there
                failed.append(body)
                continue
            assert isinstance(reply, r.Inserted), reply  # anything else fails the test
            acknowledged[body] = reply.job_id

    producers = [asyncio.create_task(producer(w)) for w in range(8)]
    await async_wait_until(lambda: len(acknowledged) >= 20, 30, "puts under way before the kill")
    leader.kill()
    await asyncio.sleep(3.0)  # the scenario: keep putting through the failover
    stop.set()
    await asyncio.gather(*producers)
    assert len(acknowledged) > 50
    stats = await queue.apply(c.Stats())
    assert isinstance(stats, r.ServerStats)
    bodies = await _bodies(queue, stats.total_jobs)
    assert len(bodies) == len(set(bodies)), "a put was applied twice"
    assert set(acknowledged) <= set(bodies), "an acknowledged put was lost"
    assert stats.current_jobs_ready == len(bodies)
    leader.restart()
    await cluster.assert_converged()
    await queue.close()


async def test_killing_every_node_at_once_and_restarting_brings_the_state_back(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    queue = cluster.queue()
    for i in range(30):
        assert await queue.apply(_put(b"job-%d" % i)) == r.Inserted(i + 1)
    await queue.apply(c.Delete("", 3))
    before = await cluster.assert_converged()
    await queue.close()
    for node in cluster.nodes:
        node.kill()
    for node in cluster.nodes:
        node.restart()
    await cluster.wait_for_leader()
    assert await cluster.assert_converged() == before
    queue = cluster.queue()
    assert await queue.apply(_put(b"after")) == r.Inserted(31)
    await queue.close()
    await cluster.assert_converged()


async def test_a_fourth_node_joins_and_catches_up_then_the_leader_leaves(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    queue = cluster.queue()
    for i in range(20):
        await queue.apply(_put(b"early-%d" % i))
    await _compact_logs(cluster)  # so the new node must catch up from a snapshot
    fourth = cluster.add_node_slot()
    fourth.extra = ["--join", cluster.nodes[0].grpc_addr]
    cluster.start(fourth, peers=[])
    await _wait_members(cluster, 4)
    await queue.apply(_put(b"with-four"))
    await cluster.assert_converged()
    assert "snapshot loaded" in fourth.log_path.read_text()

    leader = await cluster.wait_for_leader()
    _admin(cluster, "leave", "--node-id", leader.node_id)
    assert leader.proc is not None
    await asyncio.to_thread(leader.proc.wait, 30)  # a removed node stops by itself
    assert "removed from the cluster" in leader.log_path.read_text()
    leader.proc = None
    await _wait_members(cluster, 3)
    assert isinstance(await queue.apply(_put(b"after-leave")), r.Inserted)
    await cluster.assert_converged()
    await queue.close()


async def _compact_logs(cluster: ProcessCluster) -> None:
    for node in cluster.running():
        async with cluster.channel(node) as channel:
            await cluster_pb2_grpc.ClusterStub(channel).Snapshot(empty_pb2.Empty(), timeout=10)
    for node in cluster.running():
        dump = node.data_dir / "state.dump"
        await async_wait_until(dump.exists, 10, f"{dump} written")
    await asyncio.sleep(0.5)  # the journal is cut on the tick after the dump is renamed


async def _wait_members(cluster: ProcessCluster, count: int) -> None:
    async def connected_members() -> bool:
        leader = await cluster.wait_for_leader()
        status = await cluster.status(leader)
        members = status.members if status is not None else []
        return len(members) == count and all(m.connected for m in members)

    await async_wait_until(connected_members, 30, f"{count} connected members", poll_s=0.1)


def _admin(cluster: ProcessCluster, *args: str) -> str:
    addresses = ",".join(n.grpc_addr for n in cluster.running())
    argv = [sys.executable, "-m", "beanraft", "cluster", args[0], "--cluster", addresses]
    argv += ["--tls-dir", str(cluster.tls_dir)] if cluster.tls_dir else ["--insecure"]
    result = subprocess.run([*argv, *args[1:]], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_a_snapshot_restores_into_a_new_cluster_with_the_same_jobs_and_numbering(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    await cluster.wait_for_leader()
    queue = cluster.queue()
    for i in range(10):
        await queue.apply(c.Put("emails", i, 0, 60_000, b"mail-%d" % i))
    await queue.apply(c.Put("later", 5, 3_600_000, 60_000, b"delayed"))
    await queue.apply(c.Delete("", 10))
    await queue.apply(c.Delete("", 11))  # the highest ids are gone: numbering must go on
    original = await cluster.assert_converged()
    out = tmp_path / "backup.snap"
    _admin(cluster, "snapshot", "--out", str(out))
    assert out.read_bytes() == original
    await queue.close()

    restored = ProcessCluster(tmp_path / "restored")
    dirs = [a for n in restored.nodes for a in ("--data-dir", str(n.data_dir))]
    result = subprocess.run(
        [sys.executable, "-m", "beanraft", "cluster", "restore", str(out), *dirs],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    restored.start_all()
    try:
        await restored.wait_for_leader()
        assert await restored.assert_converged() == original
        queue = restored.queue()
        assert await queue.apply(_put(b"next")) == r.Inserted(12)
        assert await queue.apply(c.Peek(3)) == r.Found(3, b"mail-2")
        await restored.assert_converged()
        await queue.close()
    finally:
        restored.stop_all()


async def test_a_blocked_reserve_is_answered_after_the_leader_is_killed(
    cluster: ProcessCluster,
) -> None:
    leader = await cluster.wait_for_leader()
    proxy = cluster.queue()
    wakeups: list[r.Wakeup] = []
    proxy.subscribe("proxy-1", wakeups.append)
    await proxy.apply(c.Connect("worker-1", "proxy-1"))
    assert await proxy.apply(c.Reserve("worker-1", None, "rsv-1")) == r.Waiting()
    leader.kill()
    producer = cluster.queue()
    assert await producer.apply(_put(b"work")) == r.Inserted(1)
    await async_wait_until(lambda: wakeups, 10, "the wake-up after the failover")
    assert wakeups == [r.Wakeup("worker-1", "proxy-1", "rsv-1", r.Reserved(1, b"work"))]
    await proxy.close()
    await producer.close()
    leader.restart()
    await cluster.assert_converged()


async def test_a_node_added_with_cluster_join_and_started_with_peers_catches_up(
    cluster: ProcessCluster,
) -> None:
    await cluster.wait_for_leader()
    queue = cluster.queue()
    await queue.apply(_put(b"before-join"))
    fourth = cluster.add_node_slot()
    out = _admin(
        cluster, "join", "--node-id", "4", "--raft-addr", fourth.raft_addr,
        "--grpc-addr", fourth.grpc_addr,
    )  # fmt: skip
    assert "is a member" in out
    cluster.start(fourth)  # --peers: every other member
    await _wait_members(cluster, 4)
    await queue.apply(_put(b"after-join"))
    await cluster.assert_converged()
    await queue.close()


async def test_a_paused_leader_is_replaced_and_rejoins_as_a_follower_without_divergence(
    cluster: ProcessCluster,
) -> None:
    old = await cluster.wait_for_leader()
    queue = cluster.queue()
    await queue.apply(_put(b"before-pause"))
    old.pause()  # a leader that stops answering, as in a long GC pause or a partition
    try:
        for i in range(20):
            assert isinstance(await queue.apply(_put(b"during-%d" % i)), r.Inserted)
        new = await cluster.wait_for_leader()
        assert new is not old
    finally:
        old.resume()
    assert isinstance(await queue.apply(_put(b"after-resume")), r.Inserted)
    await cluster.assert_converged()
    stats = await queue.apply(c.Stats())
    assert isinstance(stats, r.ServerStats) and stats.current_jobs_ready == 22
    await queue.close()


async def test_a_node_left_and_replaced_at_the_same_address_with_join_stays_and_catches_up(
    cluster: ProcessCluster,
) -> None:
    """The new node replays the old node's removal from the log; it names the old incarnation,
    so the new node carries on instead of stopping itself."""

    leader = await cluster.wait_for_leader()
    queue = cluster.queue()
    for i in range(10):
        await queue.apply(_put(b"before-%d" % i))
    leaving = next(n for n in cluster.nodes if n is not leader)
    _admin(cluster, "leave", "--node-id", leaving.node_id)
    assert leaving.proc is not None
    await asyncio.to_thread(leaving.proc.wait, 30)  # the removed node stops by itself
    leaving.proc = None
    await _wait_members(cluster, 2)
    shutil.rmtree(leaving.data_dir)  # a new machine at the same address
    leaving.extra = ["--join", leader.grpc_addr]
    cluster.start(leaving, peers=[])
    await _wait_members(cluster, 3)
    await queue.apply(_put(b"after"))
    snapshot = await cluster.assert_converged()
    assert b"after" in snapshot and b"before-9" in snapshot
    await asyncio.sleep(1.0)  # it would have stopped by now if it obeyed the old removal
    assert leaving.running, leaving.log_path.read_text()[-2000:]
    assert "removed from the cluster" not in leaving.log_path.read_text().split("joined")[-1]
    await queue.close()
