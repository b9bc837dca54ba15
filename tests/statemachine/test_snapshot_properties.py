"""Snapshot properties: a restored machine is the same machine, byte for byte and in behaviour.

coolbeans lost the next job id and the delayed schedule on restore (among its known defects). These
tests restore after random histories (hypothesis) and after histories built to leave one kind of
state behind each (a waiting reserve, a paused tube, a lease, a record, ...), then
require that the restored machine answers the next commands exactly as the original does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine import commands as c
from statemachine import replies as r
from statemachine.machine import JobStateMachine, MachineConfig

CLIENTS = ("c1", "c2", "c3")
TUBES = ("default", "t1", "t2")
Step = tuple[int, c.Command]

client_ids = st.sampled_from(CLIENTS)
tube_names = st.sampled_from(TUBES)
job_ids = st.integers(1, 12)
small_ms = st.sampled_from((0, 1, 999, 1000, 1500, 5000))

command_strategy: st.SearchStrategy[c.Command] = st.one_of(
    st.builds(c.Connect, client_ids, st.sampled_from(("p1", "p2"))),
    st.builds(c.Disconnect, client_ids),
    st.builds(c.RenewLease, st.sampled_from(("p1", "p2")), st.sampled_from((1000, 60_000))),
    st.builds(c.Use, client_ids, tube_names),
    st.builds(c.Watch, client_ids, tube_names),
    st.builds(c.Ignore, client_ids, tube_names),
    st.builds(
        c.Put,
        tube_names,
        st.integers(0, 3),
        small_ms,
        small_ms,
        st.binary(max_size=3),
        st.sampled_from(("", *CLIENTS)),
        st.sampled_from(("", "q1", "q2", "q3")),
    ),
    st.builds(
        c.Reserve,
        client_ids,
        st.sampled_from((None, 0, 1000)),
        st.sampled_from(("", "w1", "w2")),
        st.booleans(),
    ),
    st.builds(c.ReserveJob, client_ids, job_ids),
    st.builds(c.Delete, st.sampled_from(("", *CLIENTS)), job_ids),
    st.builds(c.Release, client_ids, job_ids, st.integers(0, 3), small_ms),
    st.builds(c.Bury, client_ids, job_ids, st.integers(0, 3)),
    st.builds(c.Touch, client_ids, job_ids),
    st.builds(c.Kick, tube_names, st.integers(0, 3)),
    st.builds(c.KickJob, job_ids),
    st.builds(c.PauseTube, tube_names, small_ms),
    st.builds(c.Stats),
    st.just(c.Tick()),
)
histories = st.lists(
    st.tuples(st.sampled_from((0, 1, 100, 1000, 2500, -2000)), command_strategy), max_size=60
)
# HYPOTHESIS_PROFILE=long digs deeper (docs/testing.md); the default keeps CI fast.
if os.environ.get("HYPOTHESIS_PROFILE") == "long":
    pytestmark = pytest.mark.timeout(3600)
PROPERTY_SETTINGS = settings(
    max_examples=2000 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 150,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def machine_after(
    history: Sequence[Step], start_ms: int = 1_000_000
) -> tuple[JobStateMachine, int]:
    """A machine that applied ``history`` (time steps, commands); returns it and the clock."""
    machine = JobStateMachine(MachineConfig(max_job_size=1024))
    now_ms = start_ms
    for step_ms, command in history:
        now_ms += step_ms
        machine.apply(command, now_ms)
    return machine, now_ms


def assert_same_future(
    original: JobStateMachine, restored: JobStateMachine, steps: Sequence[Step], now_ms: int
) -> None:
    for step_ms, command in steps:
        now_ms += step_ms
        assert restored.apply(command, now_ms) == original.apply(command, now_ms), command
        assert restored.next_deadline_ms() == original.next_deadline_ms()
    assert restored.snapshot() == original.snapshot()


def round_trip(machine: JobStateMachine) -> JobStateMachine:
    data = machine.snapshot()
    restored = JobStateMachine.restore(data)
    assert restored.snapshot() == data
    restored.check_invariants()
    return restored


# --- properties over random histories ------------------------------------------------------


@PROPERTY_SETTINGS
@given(history=histories)
def test_restoring_a_snapshot_gives_back_the_same_bytes(history: list[Step]) -> None:
    machine, _ = machine_after(history)
    data = machine.snapshot()
    assert JobStateMachine.restore(data).snapshot() == data
    assert machine.snapshot() == data, "taking a snapshot changed the machine"


@PROPERTY_SETTINGS
@given(history=histories, future=histories)
def test_a_restored_machine_continues_exactly_like_the_original(
    history: list[Step], future: list[Step]
) -> None:
    machine, now_ms = machine_after(history)
    assert_same_future(machine, round_trip(machine), future, now_ms)


@PROPERTY_SETTINGS
@given(history=histories)
def test_equal_histories_give_equal_bytes(history: list[Step]) -> None:
    first, _ = machine_after(history)
    second, _ = machine_after(history)
    assert first.snapshot() == second.snapshot()


# --- each kind of state survives a restore --------------------------------------------------

T0 = 1_000_000


def apply_all(machine: JobStateMachine, commands: Sequence[c.Command], now_ms: int = T0) -> None:
    for command in commands:
        machine.apply(command, now_ms)


def fresh() -> JobStateMachine:
    return JobStateMachine(MachineConfig(max_job_size=1024))


def test_restored_machine_keeps_the_next_job_id() -> None:
    machine = fresh()
    apply_all(machine, [c.Put("default", 0, 0, 1000, b"a"), c.Put("default", 0, 0, 1000, b"b")])
    apply_all(machine, [c.Delete("", 2)])
    restored = round_trip(machine)
    assert restored.apply(c.Put("default", 0, 0, 1000, b"c"), T0).reply == r.Inserted(3)


def test_restored_machine_keeps_the_delayed_schedule() -> None:
    machine = fresh()
    apply_all(machine, [c.Put("default", 0, 5000, 1000, b"late"), c.Put("t1", 0, 2000, 1000, b"s")])
    restored = round_trip(machine)
    assert restored.next_deadline_ms() == T0 + 2000
    assert restored.apply(c.PeekReady("default"), T0 + 4999).reply == r.NotFound()
    assert restored.apply(c.PeekReady("default"), T0 + 5000).reply == r.Found(1, b"late")


def test_restored_machine_keeps_waiting_reserves_in_arrival_order() -> None:
    machine = fresh()
    apply_all(machine, [c.Connect("c1", "p1"), c.Connect("c2", "p1"), c.Connect("c3", "p2")])
    apply_all(machine, [c.Reserve("c2", None, "w2"), c.Reserve("c1", 30_000, "w1")])
    restored = round_trip(machine)
    outcome = restored.apply(c.Put("default", 0, 0, 120_000, b"x"), T0 + 10)
    assert outcome.wakeups == (r.Wakeup("c2", "p1", "w2", r.Reserved(1, b"x")),)
    outcome = restored.apply(c.Tick(), T0 + 30_000)
    assert outcome.wakeups == (r.Wakeup("c1", "p1", "w1", r.TimedOut()),)


def test_restored_machine_keeps_a_paused_tube_paused() -> None:
    machine = fresh()
    apply_all(machine, [c.Connect("c1", "p1"), c.Put("default", 0, 0, 1000, b"x")])
    apply_all(machine, [c.PauseTube("default", 10_000), c.Reserve("c1", None)])
    restored = round_trip(machine)
    assert restored.apply(c.Tick(), T0 + 9_999).wakeups == ()
    woken = restored.apply(c.Tick(), T0 + 10_000).wakeups
    assert woken == (r.Wakeup("c1", "p1", "", r.Reserved(1, b"x")),)


def test_restored_machine_keeps_leases_and_reservations() -> None:
    machine = fresh()
    apply_all(machine, [c.Connect("c1", "p1"), c.RenewLease("p1", 3000)])
    apply_all(machine, [c.Put("default", 0, 0, 60_000, b"x"), c.Reserve("c1", 0)])
    restored = round_trip(machine)
    assert restored.apply(c.Touch("c1", 1), T0 + 1).reply == r.Touched()
    restored.apply(c.Tick(), T0 + 3000)  # the lease runs out: c1 is disconnected
    assert restored.apply(c.Touch("c1", 1), T0 + 3001).reply == r.UnknownClient("c1")
    stats = restored.apply(c.StatsJob(1), T0 + 3001).reply
    assert isinstance(stats, r.JobStats) and stats.state == "ready"


def test_restored_machine_keeps_counters_orders_and_time() -> None:
    machine = fresh()
    apply_all(machine, [c.Connect("c1", "p1"), c.Watch("c1", "t2"), c.Watch("c1", "t1")])
    apply_all(machine, [c.Put("t1", 0, 0, 1000, b"1"), c.Put("t1", 0, 0, 1000, b"2")])
    apply_all(machine, [c.ReserveJob("c1", 2), c.Bury("c1", 2, 7)])
    apply_all(machine, [c.ReserveJob("c1", 1), c.Bury("c1", 1, 7), c.Ignore("c1", "default")])
    machine.apply(c.Tick(), T0 + 50_000)
    restored = round_trip(machine)
    for command in (c.Stats(), c.ListTubes(), c.ListTubesWatched("c1"), c.StatsTube("t1")):
        assert restored.apply(command, 0) == machine.apply(command, 0)
    # Time never runs back across a restore: age is measured from the restored now.
    age = restored.apply(c.StatsJob(1), T0).reply
    assert isinstance(age, r.JobStats) and age.age_ms == 50_000
    assert restored.apply(c.PeekBuried("t1"), 0).reply == r.Found(2, b"2")


def test_restored_machine_keeps_its_configuration() -> None:
    machine = JobStateMachine(MachineConfig(max_job_size=10))
    restored = round_trip(machine)
    assert restored.apply(c.Put("default", 0, 0, 1000, b"x" * 11), 0).reply == r.JobTooBig()
    assert restored.apply(c.Put("default", 0, 0, 1000, b"x" * 10), 0).reply == r.Inserted(1)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_restoring_damaged_bytes_fails_loudly(damage: str) -> None:
    machine = fresh()
    apply_all(machine, [c.Connect("c1", "p1"), c.Put("default", 0, 0, 1000, b"x")])
    data = machine.snapshot()
    broken = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\xff" * 40}[damage]
    with pytest.raises(ValueError):
        JobStateMachine.restore(broken)
