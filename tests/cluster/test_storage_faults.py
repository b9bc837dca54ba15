"""Storage faults on real node processes: torn and damaged journals, a damaged dump, and log
compactions under gRPC load. A node cut back to its last valid record catches up from the
leader; a node whose log is damaged before its tail refuses to start and says why, while the
others carry on; every compaction succeeds."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import async_wait_until
from process_harness import ProcessCluster

from api.client import RemoteQueue
from cluster.journal import _header_salt, scan
from statemachine import commands as c
from statemachine import replies as r

pytestmark = pytest.mark.slow
EXIT_DAMAGED = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(tmp_path)
    yield cluster
    cluster.stop_all()


def _put(body: bytes) -> c.Put:
    return c.Put("default", 1, 0, 120_000, body)


def _record_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    return scan(data, _header_salt(data, path)).offsets


async def _put_many(queue: RemoteQueue, prefix: str, count: int) -> None:
    for i in range(count):
        assert isinstance(await queue.apply(_put(b"%s-%d" % (prefix.encode(), i))), r.Inserted)


async def _follower(cluster: ProcessCluster) -> object:
    leader = await cluster.wait_for_leader()
    return next(n for n in cluster.nodes if n is not leader)


def _tear_last_record(path: Path) -> None:
    os.truncate(path, _record_offsets(path)[-1] + 13)


def _zero_last_record(path: Path) -> None:
    start = _record_offsets(path)[-1]
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(64))


@pytest.mark.parametrize("damage", [_tear_last_record, _zero_last_record])
async def test_a_follower_whose_last_journal_record_was_torn_is_cut_back_and_catches_up(
    cluster: ProcessCluster, damage: object
) -> None:
    cluster.start_all()
    queue = cluster.queue()
    await _put_many(queue, "before", 20)
    follower = await _follower(cluster)
    await cluster.assert_converged()
    follower.kill()  # type: ignore[attr-defined]
    damage(follower.data_dir / "raft.log")  # type: ignore[attr-defined, operator]
    await _put_many(queue, "while-down", 5)
    follower.restart()  # type: ignore[attr-defined]
    await _put_many(queue, "after", 5)
    snapshot = await cluster.assert_converged()
    assert b"after-4" in snapshot and b"before-0" in snapshot
    assert follower.running  # type: ignore[attr-defined]
    await queue.close()


async def test_a_node_whose_journal_is_damaged_inside_refuses_to_start_and_the_rest_serve(
    cluster: ProcessCluster,
) -> None:
    cluster.start_all()
    queue = cluster.queue()
    await _put_many(queue, "job", 20)
    follower = await _follower(cluster)
    await cluster.assert_converged()
    follower.kill()  # type: ignore[attr-defined]
    journal = follower.data_dir / "raft.log"  # type: ignore[attr-defined]
    offset = _record_offsets(journal)[5] + 40
    with open(journal, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x20]))
    follower.restart()  # type: ignore[attr-defined]
    proc = follower.proc  # type: ignore[attr-defined]
    assert await asyncio.to_thread(proc.wait, 30) == EXIT_DAMAGED
    follower.proc = None  # type: ignore[attr-defined]
    text = follower.log_path.read_text()  # type: ignore[attr-defined]
    assert "refusing to start" in text and "is followed by valid records" in text
    await _put_many(queue, "two-nodes", 3)  # the other two still form a majority
    await queue.close()


async def test_a_node_whose_dump_is_damaged_refuses_to_start(cluster: ProcessCluster) -> None:
    for node in cluster.nodes:
        node.extra = ["--compact-after-entries", "20"]

    cluster.start_all()
    queue = cluster.queue()
    await _put_many(queue, "job", 60)
    follower = await _follower(cluster)
    dump = follower.data_dir / "state.dump"  # type: ignore[attr-defined]
    await async_wait_until(dump.exists, 10, f"{dump} written")
    follower.kill()  # type: ignore[attr-defined]
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x10
    dump.write_bytes(bytes(data))
    follower.restart()  # type: ignore[attr-defined]
    proc = follower.proc  # type: ignore[attr-defined]
    assert await asyncio.to_thread(proc.wait, 30) == EXIT_DAMAGED
    follower.proc = None  # type: ignore[attr-defined]
    assert "checksum does not match" in follower.log_path.read_text()  # type: ignore[attr-defined]
    await queue.close()


async def test_every_log_compaction_under_grpc_load_succeeds(cluster: ProcessCluster) -> None:
    for node in cluster.nodes:
        node.extra = ["--compact-after-entries", "40"]

    cluster.start_all()
    queue = cluster.queue()

    async def producer(worker: int) -> None:
        await _put_many(queue, f"w{worker}", 150)

    # 16 connections' worth of gRPC calls in flight while the nodes fork their dumps
    await asyncio.gather(*(producer(w) for w in range(16)))
    await cluster.assert_converged()
    await queue.close()
    for node in cluster.nodes:
        text = node.log_path.read_text()
        assert text.count("dump written") >= 3, f"node {node.node_id} wrote too few dumps"
        assert "could not write a dump" not in text
        assert "Failed to store full dump" not in text
