"""The pysyncobj adapter in one process: three real Raft nodes on loopback sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cluster_harness import InProcessCluster
from harness import async_wait_until

from cluster import envelope
from cluster.clock import FakeClock
from statemachine import codec
from statemachine import commands as c
from statemachine import replies as r


async def test_puts_replicate_to_every_node_with_increasing_ids(tmp_path: Path) -> None:
    cluster = InProcessCluster(tmp_path)
    await cluster.start_all()
    try:
        outcomes = await asyncio.gather(
            *(cluster.apply(c.Put("default", 1, 0, 60_000, b"job%d" % i)) for i in range(50))
        )
        ids = sorted(o.reply.job_id for o in outcomes)  # type: ignore[union-attr]
        assert ids == list(range(1, 51))
        await cluster.assert_converged()
    finally:
        await cluster.stop_all()


async def test_a_retried_request_id_returns_the_first_outcome_and_applies_nothing_twice(
    tmp_path: Path,
) -> None:
    cluster = InProcessCluster(tmp_path)
    await cluster.start_all()
    try:
        first = await cluster.apply(c.Put("default", 1, 0, 60_000, b"a"), request_id="rq-1")
        again = await cluster.apply(c.Put("default", 1, 0, 60_000, b"a"), request_id="rq-1")
        assert first == again == r.Outcome(r.Inserted(1))
        stats = await cluster.apply(c.Stats())
        assert isinstance(stats.reply, r.ServerStats)
        assert stats.reply.current_jobs_ready == 1
        await cluster.assert_converged()
    finally:
        await cluster.stop_all()


async def test_an_idle_cluster_writes_nothing_and_ticks_only_when_a_deadline_is_due(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    cluster = InProcessCluster(tmp_path, clock=clock)
    await cluster.start_all()
    try:
        await cluster.apply(c.Put("default", 1, 5_000, 60_000, b"later"))
        leader = await cluster.wait_for_leader()
        term, index = leader.syncobj.raftCurrentTerm, cluster.last_index

        def ticks() -> int:
            # Summed over nodes and counted by kind, not read off the log's index: a re-election
            # on a busy machine appends its own entries (a no-op, the member record).
            return sum(n.ticks_committed for n in cluster.nodes.values())

        await asyncio.sleep(1.0)  # the delay is not due: no Tick may be proposed
        assert ticks() == 0
        if leader.syncobj.raftCurrentTerm == term:  # no re-election: nothing was written at all
            assert leader.syncobj.raftLastApplied == index
        clock.advance(5_000)
        await async_wait_until(
            lambda: all(n.state.next_deadline_ms is None for n in cluster.nodes.values()),
            5,
            "the due delay to be ticked on every replica",
        )
        assert ticks() == 1
        peek = await cluster.apply(c.PeekReady("default"))
        assert peek.reply == r.Found(1, b"later")
        await cluster.assert_converged()
    finally:
        await cluster.stop_all()


async def test_wakeups_are_numbered_identically_on_every_replica(tmp_path: Path) -> None:
    cluster = InProcessCluster(tmp_path)
    await cluster.start_all()
    try:
        await cluster.apply(c.Connect("w1", "p1"))
        waiting = await cluster.apply(c.Reserve("w1", None, "rsv-1"))
        assert waiting.reply == r.Waiting()
        put = await cluster.apply(c.Put("default", 1, 0, 60_000, b"x"))
        # The put's caller gets its reply only; the wake-up goes to the ring, numbered.
        assert put.wakeups == ()
        await cluster.assert_converged()
        rings = {tuple(n.state.wakeups.ring) for n in cluster.nodes.values()}
        assert len(rings) == 1
        ((seq, proxy, data),) = rings.pop()
        assert (seq, proxy) == (1, "p1")
        assert codec.decode_wakeup(data) == r.Wakeup("w1", "p1", "rsv-1", r.Reserved(1, b"x"))
    finally:
        await cluster.stop_all()


async def test_a_malformed_command_in_a_batch_is_refused_without_harming_its_neighbours(
    tmp_path: Path,
) -> None:
    cluster = InProcessCluster(tmp_path)
    await cluster.start_all()
    try:
        leader = await cluster.wait_for_leader()
        good = codec.encode_command(c.Put("default", 1, 0, 60_000, b"ok"))
        results = await leader.submit(
            [
                envelope.Request(envelope.COMMAND, "", b"\x01garbage"),
                envelope.Request(envelope.COMMAND, "", good),
            ]
        )
        assert results[0][0] == 1 and b"unknown value tag" in results[0][1]
        assert results[1][1] == r.Inserted(1)
        await cluster.assert_converged()
    finally:
        await cluster.stop_all()


async def test_a_restarted_node_comes_back_with_its_state_from_journal_and_dump(
    tmp_path: Path,
) -> None:
    cluster = InProcessCluster(tmp_path)
    await cluster.start_all()
    try:
        for i in range(20):
            await cluster.apply(c.Put("default", 1, 0, 60_000, b"%d" % i))
        before = await cluster.assert_converged()
        await cluster.stop_all()
        await cluster.start_all()
        after = await cluster.assert_converged()
        assert after == before
        assert (await cluster.apply(c.Put("default", 1, 0, 60_000, b"n"))).reply == r.Inserted(21)
    finally:
        await cluster.stop_all()


def test_the_wakeup_ring_evicts_oldest_first_when_it_holds_too_many_bytes() -> None:
    from collections import deque

    from cluster import replicated

    ring = replicated.Wakeups(deque(), 0)
    chunk = b"x" * (1 << 20)
    for _ in range(replicated.WAKEUP_RING_MAX_BYTES // len(chunk) + 5):
        ring.append("p", chunk)
    assert ring.size_bytes <= replicated.WAKEUP_RING_MAX_BYTES
    assert ring.first_seq() == ring.last_seq - len(ring.ring) + 1 > 1


async def test_the_raft_port_is_bound_to_the_given_address_only(tmp_path: Path) -> None:
    import socket

    cluster = InProcessCluster(tmp_path)
    await cluster.start_all()
    try:
        port = int(cluster.raft_addrs[0].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the given address answers
        # 127.0.0.2 is loopback too: a 0.0.0.0 bind (pysyncobj's default) would answer it.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
            pass
        await cluster.assert_converged()
    finally:
        await cluster.stop_all()


def test_the_leader_applies_the_commands_it_checked_without_decoding_them_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader decodes each command once, to refuse bad input before proposing it; its own
    apply of the entry takes those commands from memory. A follower decodes the same bytes
    and must reach the same outcome."""
    from cluster import replicated
    from statemachine.machine import MachineConfig

    decodes = []
    real_decode = codec.decode_command
    monkeypatch.setattr(
        replicated.codec, "decode_command", lambda data: decodes.append(data) or real_decode(data)
    )
    put = c.Put("memo", 1, 0, 60_000, b"x")
    requests = [envelope.Request(envelope.COMMAND, "m-1", codec.encode_command(put), put)]
    entry = envelope.encode_batch(requests)

    leader = replicated.MachineConsumer(MachineConfig())
    leader.remember_decoded(entry, requests)
    on_leader = leader.apply_batch(entry, 1_000, _doApply=True)
    assert decodes == []

    follower = replicated.MachineConsumer(MachineConfig())
    assert follower.apply_batch(entry, 1_000, _doApply=True) == on_leader
    assert len(decodes) == 1
    assert on_leader[0][1] == r.Inserted(1)
    assert leader.state.to_bytes() == follower.state.to_bytes()


def test_entries_remembered_but_never_applied_are_forgotten_within_a_bound() -> None:
    """A leader that loses office keeps the decoded commands of entries that never commit:
    the memory they hold is bounded."""
    from cluster import replicated
    from statemachine.machine import MachineConfig

    consumer = replicated.MachineConsumer(MachineConfig())
    for i in range(3 * replicated.DECODED_MEMO_MAX):
        put = c.Put("memo", 1, 0, 60_000, str(i).encode())
        requests = [envelope.Request(envelope.COMMAND, "", codec.encode_command(put), put)]
        consumer.remember_decoded(envelope.encode_batch(requests), requests)
    assert len(consumer._decoded) <= replicated.DECODED_MEMO_MAX
    consumer.forget_decoded()  # what a leader stepping down does
    assert consumer._decoded == {}
