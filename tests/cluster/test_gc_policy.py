"""The node's garbage-collector policy: survivors of a full collection are frozen, and the state
machine leaves no reference cycles behind, so freezing them leaks nothing."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from cluster import gc_policy
from statemachine import commands as c
from statemachine import replies as r
from statemachine.machine import JobStateMachine, MachineConfig


@pytest.fixture
def policy() -> Iterator[None]:
    gc_policy.install()
    try:
        yield
    finally:
        gc_policy.uninstall()


def test_a_full_collection_freezes_what_survived_it(policy: None) -> None:
    keep = [[i] for i in range(1000)]  # tracked objects that stay reachable
    gc.collect()
    frozen = gc.get_freeze_count()
    assert frozen >= len(keep)
    young = [[i] for i in range(10)]
    gc.collect(1)  # a young collection freezes nothing
    assert gc.get_freeze_count() == frozen
    gc.collect()
    assert gc.get_freeze_count() >= frozen + len(young)


def test_uninstall_returns_frozen_objects_to_the_collector(policy: None) -> None:
    gc.collect()
    assert gc.get_freeze_count() > 0
    gc_policy.uninstall()
    assert gc.get_freeze_count() == 0


def test_the_machine_drops_jobs_clients_and_tubes_without_leaving_reference_cycles() -> None:
    """Every way a job, a client or a tube leaves the machine, then a full collection: it must
    find none of the machine's objects in a reference cycle, because the machine unlinks what
    it drops and reference counting frees it. (Other threads of the test process may leave
    garbage of their own meanwhile, so the check looks at the machine's types only.)"""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what a collection finds, to look at it
    try:
        machine = JobStateMachine(MachineConfig())
        now_ms = 1_000
        machine.apply(c.Connect("a", "p1", 10_000), now_ms)
        machine.apply(c.Connect("b", "p1", 10_000), now_ms)
        machine.apply(c.Use("a", "t1"), now_ms)
        machine.apply(c.Watch("b", "t1"), now_ms)
        for i in range(20):
            machine.apply(c.Put("t1", i, 0, 60_000, b"j%d" % i, client_id="a"), now_ms)
        machine.apply(c.Put("t1", 1, 5_000, 60_000, b"delayed", client_id="a"), now_ms)
        reserved = [machine.apply(c.Reserve("b", 0), now_ms).reply for _ in range(6)]
        ids = [reply.job_id for reply in reserved if isinstance(reply, r.Reserved)]
        machine.apply(c.Delete("b", ids[0]), now_ms)
        machine.apply(c.Release("b", ids[1], 1, 0), now_ms)
        machine.apply(c.Bury("b", ids[2], 1), now_ms)
        machine.apply(c.Kick("t1", 1), now_ms)
        machine.apply(c.PauseTube("t1", 1_000), now_ms)
        machine.apply(c.Tick(), now_ms + 70_000)  # TTRs run out, the delay ends
        machine.apply(c.Reserve("b", 0), now_ms + 70_000)
        machine.apply(c.Disconnect("b"), now_ms + 70_000)  # its reserved job goes back
        machine.apply(c.Watch("a", "t2"), now_ms + 70_000)
        machine.apply(c.Ignore("a", "t2"), now_ms + 70_000)  # t2 is freed
        for _ in range(25):
            reply = machine.apply(c.PeekReady("t1"), now_ms + 70_000).reply
            if not isinstance(reply, r.Found):
                break
            machine.apply(c.Delete("a", reply.job_id), now_ms + 70_000)
        machine.apply(c.Disconnect("a"), now_ms + 70_000)  # t1 is freed with its last user
        stats = machine.apply(c.Stats(), now_ms + 70_000).reply
        assert isinstance(stats, r.ServerStats) and stats.current_connections == 0
        gc.collect()
        cycles = [o for o in gc.garbage if type(o).__module__.startswith("statemachine")]
        assert cycles == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
