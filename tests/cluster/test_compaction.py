"""Log compaction: the dump is written at a fast gzip level by a child at the lowest priority."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import time
import types
from pathlib import Path

import pytest
from cluster_harness import InProcessCluster

from cluster import compaction
from statemachine import commands as c


def test_a_compaction_writes_its_dump_at_gzip_level_1_and_it_reads_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path)
        await cluster.start_all()
        try:
            await cluster.wait_for_leader()
            for i in range(30):
                await cluster.apply(c.Put("dump", 1, 0, 60_000, b"job-%d" % i))
            await cluster.assert_converged()  # every node has applied job-29
            node = next(iter(cluster.nodes.values()))
            dump = node.config.dump_path
            before = dump.stat().st_mtime_ns if dump.exists() else 0
            node.syncobj.forceLogCompaction()
            give_up = time.monotonic() + 20
            while not (dump.exists() and dump.stat().st_mtime_ns != before):
                assert time.monotonic() < give_up, "no dump written after a forced compaction"
                await asyncio.sleep(0.05)
            data = dump.read_bytes()
            # RFC 1952: XFL 4 = "compressor used fastest algorithm" (level 1); level 9 writes 2.
            assert data[:2] == b"\x1f\x8b" and data[8] == 4
            assert b"job-29" in gzip.decompress(data)
        finally:
            await cluster.stop_all()

    asyncio.run(scenario())


def test_the_compaction_child_is_lowered_to_the_lowest_priority_once() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        # The attribute path pysyncobj keeps the forked child's pid under.
        serializer = types.SimpleNamespace(_Serializer__pid=child.pid)
        priority = compaction.ChildPriority(types.SimpleNamespace(_SyncObj__serializer=serializer))
        priority.tend()
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == compaction.CHILD_NICE
        os.setpriority(os.PRIO_PROCESS, child.pid, 5)
        priority.tend()  # the same child: left alone (one syscall per child, not per tick)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == 5
        child.kill()
        child.wait()
        serializer._Serializer__pid = 2**22 + 12345  # a child that is already gone
        priority.tend()  # only logged
    finally:
        child.kill()
        child.wait()


def test_install_refuses_a_pysyncobj_whose_serializer_no_longer_uses_gzip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pysyncobj import serializer as serializer_module

    monkeypatch.setattr(serializer_module, "gzip", object())
    with pytest.raises(RuntimeError, match=r"review cluster/compaction\.py"):
        compaction.install()
