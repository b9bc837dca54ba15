"""cluster/raftcore.py runs only on the pysyncobj it was written for: every function it replaces
or relies on is checked by the sha256 of its source, and the version exactly."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pysyncobj
import pytest
from cluster_harness import InProcessCluster
from harness import async_wait_until
from pysyncobj import SyncObj

from cluster import envelope, raftcore
from statemachine import codec
from statemachine import commands as c


def test_the_installed_pysyncobj_is_the_release_the_raft_changes_were_written_for() -> None:
    raftcore.verify()
    assert pysyncobj.version.VERSION == raftcore.PYSYNCOBJ_VERSION


def test_a_changed_pysyncobj_function_is_refused_and_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def _on_tick(self: SyncObj, time_to_wait: float = 0.0) -> None:
        """A release that changed how a tick works."""

    monkeypatch.setattr(SyncObj, "_onTick", _on_tick)
    with pytest.raises(raftcore.UnsupportedPysyncobj, match=r"syncobj\.SyncObj\._onTick"):
        raftcore.verify()


def test_another_pysyncobj_version_is_refused_with_the_one_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pysyncobj.version, "VERSION", "0.3.18")
    with pytest.raises(raftcore.UnsupportedPysyncobj, match=r"pip install pysyncobj==0\.3\.17"):
        raftcore.verify()


def test_every_overridden_pysyncobj_method_is_among_the_verified() -> None:
    overridden = {
        f"syncobj.SyncObj.{name}"
        for name in vars(raftcore.RaftCore)
        if name.startswith("_SyncObj__") or name == "_onTick"
    }
    assert overridden <= set(raftcore._VERIFIED), overridden - set(raftcore._VERIFIED)


async def test_a_returning_leader_never_applies_its_uncommitted_tail_while_it_receives_a_dump(
    tmp_path: Path,
) -> None:
    """A leader cut off from the others appends entries nobody else gets. Back, it is too far
    behind for the log and receives the new leader's dump in chunks; pysyncobj's handling of a
    chunk commits up to the node's own last entry, so it applied that uncommitted tail (and
    then vouched for it to the new leader, which counted it toward commits: acknowledged puts
    were lost in the fault harness)."""

    cluster = InProcessCluster(tmp_path)
    await cluster.start_all()
    old = await cluster.wait_for_leader()
    old_i = next(i for i, n in cluster.nodes.items() if n is old)
    for n in range(5):
        await cluster.apply(c.Put("default", 1, 0, 60_000, b"committed-%d" % n))
    await cluster.assert_converged()
    for i in [i for i in cluster.nodes if i != old_i]:
        await cluster.stop(i)
    divergent = [
        envelope.Request(
            envelope.COMMAND, "", codec.encode_command(c.Put("d", 1, 0, 60_000, b"divergent"))
        )
    ]
    last = old.journal[-1][1]
    pending = [asyncio.ensure_future(old.submit(divergent)) for _ in range(3)]
    await async_wait_until(
        lambda: old.journal[-1][1] > last, 10, "the cut-off leader to append the divergent tail"
    )
    await cluster.stop(old_i)
    for task in pending:
        task.cancel()
    for i in range(3):
        if i != old_i:
            cluster.start(i)
    new = await cluster.wait_for_leader()
    for n in range(300):  # random bodies: a dump of several chunks
        body = random.Random(n).randbytes(200)
        await cluster.apply(c.Put("default", 1, 0, 60_000, body))
    for node in cluster.nodes.values():
        written = node.dumps.written
        node.syncobj.forceLogCompaction()
        await async_wait_until(
            lambda n=node, w=written: n.dumps.written > w and n.journal[0][1] > 10,
            10,
            "a new dump and a compacted log",
        )
    new.dumps._chunk_bytes = 4096
    seen: list[bool] = []
    returned = cluster.start(old_i)
    machine = returned.consumer

    def watch() -> None:
        seen.append(b"divergent" in machine.state.machine.snapshot())
        returned.hub.notify()

    machine.on_applied = watch
    await cluster.assert_converged(timeout_s=30)
    assert returned.syncobj.installs >= 1, "the returning node caught up without a dump"
    assert not any(seen), "the returning node applied entries that were never committed"
    await cluster.stop_all()


class _Applying:
    """Just the state RaftCore's apply reads: pysyncobj's commit and applied indexes."""

    def __init__(self, commit: int, applied: int) -> None:
        self._SyncObj__raftCommitIndex = commit
        self._SyncObj__raftLastApplied = applied
        self.apply_left = False
        self.news = 0

    def _news(self) -> int:
        return self.news


def test_a_long_backlog_is_applied_a_slice_per_tick_with_the_commit_index_put_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rule 9: one tick applies for at most APPLY_SLICE_S, a few entries between looks at the
    clock, so a node with thousands of committed entries to apply still answers its peers."""
    seen: list[int] = []

    def apply_up_to_commit(node: _Applying) -> bool:  # pysyncobj's apply, its effect only
        seen.append(node._SyncObj__raftCommitIndex)
        node._SyncObj__raftLastApplied = node._SyncObj__raftCommitIndex
        node.news += 1
        return True

    clock = iter(range(1_000))
    monkeypatch.setattr(SyncObj, "_SyncObj__applyLogEntries", apply_up_to_commit)
    monkeypatch.setattr(raftcore.time, "monotonic", lambda: next(clock) * 0.01)
    node = _Applying(commit=10_000, applied=100)
    made_news = raftcore.RaftCore._SyncObj__applyLogEntries(node)  # type: ignore[arg-type]
    step = raftcore.APPLY_STEP_ENTRIES
    assert seen == [100 + step, 100 + 2 * step]  # 0.01 s a step: the 0.02 s slice holds two
    assert node._SyncObj__raftCommitIndex == 10_000
    assert node.apply_left and made_news
    node._SyncObj__raftCommitIndex = node._SyncObj__raftLastApplied + 3
    seen.clear()
    raftcore.RaftCore._SyncObj__applyLogEntries(node)  # type: ignore[arg-type]
    assert seen == [node._SyncObj__raftCommitIndex] and not node.apply_left


async def test_a_cluster_applying_one_entry_per_tick_answers_everything_and_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(raftcore, "APPLY_SLICE_S", 0.0)
    monkeypatch.setattr(raftcore, "APPLY_STEP_ENTRIES", 1)
    cluster = InProcessCluster(tmp_path)
    await cluster.start_all()
    try:
        outcomes = await asyncio.gather(
            *(cluster.apply(c.Put("default", 1, 0, 60_000, b"j%d" % i)) for i in range(300))
        )
        assert sorted(o.reply.job_id for o in outcomes) == list(range(1, 301))  # type: ignore[union-attr]
        await cluster.assert_converged()
    finally:
        await cluster.stop_all()
