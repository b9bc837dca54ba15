"""The leader's proposer (cluster/proposer.py): requests that arrive together share a log entry,
each caller gets its own results in order, and pysyncobj's fail reasons become NotApplied or
Ambiguous as a retry needs them.

pysyncobj is replaced by the smallest fake of its ``propose(entry, now_ms, callback=...)``: it
records each proposal, and the test answers it as pysyncobj would, from another thread. The
cluster tests check the same path end to end on real nodes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from pysyncobj import FAIL_REASON

from cluster import envelope
from cluster.clock import FakeClock, LeaderTime
from cluster.errors import Ambiguous, NotApplied
from cluster.proposer import Proposer
from cluster.replicated import OK


class _FakeRaft:
    """Records proposals; ``commit`` and ``fail`` answer one from pysyncobj's tick thread."""

    def __init__(self) -> None:
        self.proposals: list[tuple[list[envelope.Request], Callable[[Any, int], None]]] = []
        self.applied = 0
        self.proposed = asyncio.Event()

    def propose(self, entry: bytes, now_ms: int, callback: Callable[[Any, int], None]) -> None:
        self.proposals.append((envelope.decode_batch(entry), callback))
        self.proposed.set()

    def commit(self, n: int) -> None:
        requests, callback = self.proposals[n]
        outcomes = [(OK, f"outcome of {r.request_id}".encode()) for r in requests]
        self._on_tick_thread(lambda: self._apply(callback, outcomes))

    def fail(self, n: int, reason: int) -> None:
        self._on_tick_thread(lambda: self.proposals[n][1](None, reason))

    def _apply(self, callback: Callable[[Any, int], None], outcomes: Any) -> None:
        callback(outcomes, FAIL_REASON.SUCCESS)  # pysyncobj counts the entry after the call
        self.applied += 1

    @staticmethod
    def _on_tick_thread(fn: Callable[[], None]) -> None:
        thread = threading.Thread(target=fn)
        thread.start()
        thread.join()


def _proposer(raft: _FakeRaft, **options: Any) -> Proposer:
    return Proposer(
        raft.propose,
        LeaderTime(FakeClock()),
        lambda index, fn: fn(),  # every entry already on disk
        lambda: raft.applied,
        asyncio.get_running_loop(),
        **options,
    )


def _requests(*ids: str) -> list[envelope.Request]:
    return [envelope.Request(envelope.COMMAND, rid, rid.encode()) for rid in ids]


async def _proposed(raft: _FakeRaft, count: int) -> None:
    while len(raft.proposals) < count:
        raft.proposed.clear()
        await asyncio.wait_for(raft.proposed.wait(), 5)


async def test_requests_that_arrive_together_share_one_entry_and_each_caller_gets_its_own() -> None:
    raft = _FakeRaft()
    proposer = _proposer(raft)
    # Two callers in one turn of the loop (as two connections' tasks woken by one poll).
    first = proposer.submit_many(_requests("a", "b"))
    second = proposer.submit_many(_requests("c"))
    await _proposed(raft, 1)
    assert [r.request_id for r in raft.proposals[0][0]] == ["a", "b", "c"]
    raft.commit(0)
    assert await first == [(OK, b"outcome of a", 1), (OK, b"outcome of b", 1)]
    assert await second == [(OK, b"outcome of c", 1)]


async def test_a_call_larger_than_one_entry_gets_every_result_in_order() -> None:
    raft = _FakeRaft()
    proposer = _proposer(raft, max_inflight=1)
    ids = [f"r{i}" for i in range(5000)]  # MAX_BATCH_REQUESTS is 2048
    call = asyncio.ensure_future(proposer.submit_many(_requests(*ids)))
    for n in range(3):
        await _proposed(raft, n + 1)
        raft.commit(n)
    results = await call
    assert [payload for _, payload, _ in results] == [f"outcome of {i}".encode() for i in ids]
    assert [index for _, _, index in results] == [1] * 2048 + [2] * 2048 + [3] * 904


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        (FAIL_REASON.NOT_LEADER, NotApplied),
        (FAIL_REASON.DISCARDED, NotApplied),
        (FAIL_REASON.QUEUE_FULL, NotApplied),
        (FAIL_REASON.LEADER_CHANGED, Ambiguous),
    ],
)
async def test_a_failed_entry_fails_every_caller_in_it_as_a_retry_needs(
    reason: int, error: type[Exception]
) -> None:
    raft = _FakeRaft()
    proposer = _proposer(raft)
    calls = [asyncio.ensure_future(proposer.submit_many(_requests(r))) for r in "xy"]
    await _proposed(raft, 1)
    raft.fail(0, reason)
    for call in calls:
        with pytest.raises(error):
            await call


async def test_a_call_with_one_part_failed_fails_once_every_part_is_settled() -> None:
    raft = _FakeRaft()
    proposer = _proposer(raft, max_inflight=1)
    call = asyncio.ensure_future(proposer.submit_many(_requests(*map(str, range(3000)))))
    await _proposed(raft, 1)
    raft.fail(0, FAIL_REASON.NOT_LEADER)
    await _proposed(raft, 2)  # the rest still goes out: it was pending, not failed
    assert not call.done()
    raft.commit(1)
    with pytest.raises(NotApplied):
        await call


async def test_no_outcome_in_time_is_ambiguous_and_the_unsent_rest_is_never_proposed() -> None:
    raft = _FakeRaft()
    proposer = _proposer(raft, max_inflight=1, timeout_s=0.2)
    first = asyncio.ensure_future(proposer.submit_many(_requests("a")))
    await _proposed(raft, 1)
    late = asyncio.ensure_future(proposer.submit_many(_requests("b")))  # waits for a slot
    with pytest.raises(Ambiguous, match="retry with the same request id"):
        await first
    with pytest.raises(Ambiguous):
        await late
    raft.commit(0)  # the slot frees; "b" was given up, so nothing more is proposed
    fresh = asyncio.ensure_future(proposer.submit_many(_requests("c")))
    await _proposed(raft, 2)
    assert [r.request_id for r in raft.proposals[1][0]] == ["c"]
    raft.commit(1)
    assert await fresh == [(OK, b"outcome of c", 2)]


async def test_a_cancelled_caller_is_not_proposed_and_does_not_disturb_the_others() -> None:
    raft = _FakeRaft()
    proposer = _proposer(raft, max_inflight=1)
    first = asyncio.ensure_future(proposer.submit_many(_requests("a")))
    await _proposed(raft, 1)
    gone = asyncio.ensure_future(proposer.submit_many(_requests("b")))
    kept = asyncio.ensure_future(proposer.submit_many(_requests("c")))
    await asyncio.sleep(0)
    gone.cancel()
    raft.commit(0)
    await first
    await _proposed(raft, 2)
    assert [r.request_id for r in raft.proposals[1][0]] == ["c"]
    raft.commit(1)
    assert await kept == [(OK, b"outcome of c", 2)]
    assert gone.cancelled()


async def test_a_deposed_leader_answers_its_calls_in_flight_at_once_as_maybe_applied() -> None:
    raft = _FakeRaft()
    proposer = _proposer(raft, max_inflight=1, timeout_s=30)
    call = asyncio.ensure_future(proposer.submit_many(_requests("a")))
    await _proposed(raft, 1)
    proposer.abandon_inflight()  # the node stopped leading (raftcore rule 8)
    with pytest.raises(Ambiguous, match="stopped being the leader"):
        await asyncio.wait_for(call, 1)  # at once, not after the 30 s timeout
    raft.commit(0)  # pysyncobj learns the entry's fate later: the slot frees, nothing breaks
    again = asyncio.ensure_future(proposer.submit_many(_requests("b")))
    await _proposed(raft, 2)
    raft.commit(1)
    assert await again == [(OK, b"outcome of b", 2)]
