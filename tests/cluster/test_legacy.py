"""A data dir written before beanraft had its own journal (pysyncobj's raft.journal, its meta
and raft.dump) comes back with its jobs: the node moves it to the current files at start."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any

import pytest
from cluster_harness import InProcessCluster
from pysyncobj.journal import FileJournal
from pysyncobj.node import TCPNode

import cluster.replicated
from statemachine import commands as c
from statemachine import replies as r


class _OldState:
    """Pickles as the old code pickled ClusterState: _state_from_bytes(its bytes)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (cluster.replicated._state_from_bytes, (self.data,))  # type: ignore[attr-defined]


def _write_old_data_dir(
    data_dir: Path,
    head: list[tuple[bytes, int, int]],
    state: bytes,
    term: int,
    members: list[str],
) -> None:
    """Old files as right after a compaction: the journal holds the dump's two entries."""
    for path in data_dir.iterdir():
        if path.name != "node.incarnation":
            path.unlink()
    journal = FileJournal(str(data_dir / "raft.journal"))
    for entry in head:
        journal.add(*entry)
    journal.setRaftCommitIndex(head[-1][1])
    journal.setCurrentTerm(term, None)
    journal._destroy()
    old = ([{}, {"state": _OldState(state)}], head[-1], head[-2], {TCPNode(m) for m in members})
    with gzip.open(data_dir / "raft.dump", "wb") as f:
        pickle.dump(old, f, protocol=4)


async def test_a_cluster_on_data_dirs_of_the_old_format_comes_back_with_every_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster.replicated, "_state_from_bytes", bytes, raising=False)

    nodes = InProcessCluster(tmp_path)
    await nodes.start_all()
    for n in range(10):
        await nodes.apply(c.Put("default", 1, 0, 600_000, b"old-%d" % n))
    await nodes.assert_converged()
    node = next(iter(nodes.nodes.values()))
    applied = int(node.syncobj.raftLastApplied)
    head = [e for e in node.journal if e[1] in (applied - 1, applied)]
    state, term = node.state.to_bytes(), node.journal.getCurrentTerm()
    await nodes.stop_all()
    for i in range(3):
        _write_old_data_dir(nodes.config(i).data_dir, head, state, term, nodes.raft_addrs)
    await nodes.start_all()
    assert (await nodes.apply(c.Peek(10))).reply == r.Found(10, b"old-9")
    new = await nodes.apply(c.Put("default", 1, 0, 600_000, b"new"))
    assert new.reply == r.Inserted(11)
    await nodes.assert_converged()
    data_dir = nodes.config(0).data_dir
    assert (data_dir / "raft.journal.migrated").exists()
    assert (data_dir / "raft.log").exists() and (data_dir / "state.dump").exists()
    await nodes.stop_all()
