"""Scenarios: time comes in with each command; the machine clamps it and steps through events.

- A clock that goes backwards (a new leader behind the old one) is clamped.
- One late Tick leaves the same state as many timely ones, with the same wake-ups in order.
- ``next_deadline_ms`` is exact: None when idle, and a tick at it changes something.
"""

from __future__ import annotations

from scenarios.driver import Driver, wakeup

from statemachine import commands as c
from statemachine import replies as r
from statemachine.machine import JobStateMachine


def test_a_clock_going_backwards_is_clamped(q: Driver) -> None:
    q.connect("c1")
    q.at(10_000)
    q.put(delay_ms=5_000)
    q.at(3_000)
    q.put()
    assert q.machine.now_ms == 10_000
    assert q.job_stats(2).age_ms == 0
    assert q.job_stats(1).time_left_ms == 5_000
    q.tick(14_999)
    assert q.state_of(1) == "delayed"


def test_a_late_tick_does_not_unripen_anything_when_time_then_goes_back(q: Driver) -> None:
    q.put(delay_ms=1_000)
    q.tick(2_000)
    q.tick(500)
    assert q.state_of(1) == "ready"


def _busy_machine() -> Driver:
    q = Driver()
    q.connect("c1", "c2", "c3", "w1", "w2")
    q.do(c.Watch("w2", "t"))
    q.put(ttr_ms=3_000, body=b"a")
    q.put(tube="t", delay_ms=2_000, body=b"b")
    q.put(delay_ms=4_000, body=b"c")
    q.reserve("c1")
    q.reserve("c1", 10_000)  # deadline soon at 2000
    q.reserve("w1", 5_000)
    q.reserve("w2")
    q.do(c.PauseTube("t", 1_500))
    q.do(c.RenewLease("p1", 60_000))
    return q


def test_one_late_tick_equals_many_timely_ticks() -> None:
    late = _busy_machine()
    late_wakeups = late.tick(20_000)
    timely = _busy_machine()
    timely_wakeups: list[r.Wakeup] = []
    while (deadline := timely.machine.next_deadline_ms()) is not None and deadline <= 20_000:
        timely_wakeups += timely.tick(deadline)
    timely.tick(20_000)
    assert late_wakeups == tuple(timely_wakeups)
    assert late.machine.snapshot() == timely.machine.snapshot()
    # 1500 t unpauses; 2000 job 2 ripens for w2, then c1's job 1 enters its last second;
    # 3000 job 1's TTR runs out and w1 gets it; 4000 job 3 ripens with nobody waiting.
    assert late_wakeups == (
        wakeup("w2", r.Reserved(2, b"b")),
        wakeup("c1", r.DeadlineSoon()),
        wakeup("w1", r.Reserved(1, b"a")),
    )
    assert late.state_of(3) == "ready"


def test_events_at_one_instant_run_in_the_fixed_kind_order(q: Driver) -> None:
    # At 5000: c1's job 1 TTR expires and delayed job 2 ripens; both become ready, then
    # matching serves w1 the best of them (job 2 has priority 0), then w2 (job 1), and the
    # wait of w3 (deadline 5000) times out after matching: it had no job to get.
    q.connect("c1", "w1", "w2", "w3")
    q.put(pri=5, ttr_ms=5_000, body=b"one")
    q.reserve("c1")
    q.put(pri=0, delay_ms=5_000, body=b"two")
    q.reserve("w1")
    q.reserve("w2")
    q.reserve("w3", 5_000)
    assert q.tick(5_000) == (
        wakeup("w1", r.Reserved(2, b"two")),
        wakeup("w2", r.Reserved(1, b"one")),
        wakeup("w3", r.TimedOut()),
    )


def test_a_wait_that_would_time_out_at_the_instant_a_job_ripens_is_matched(q: Driver) -> None:
    q.connect("w1")
    q.put(delay_ms=2_000)
    q.reserve("w1", 2_000)
    assert q.tick(2_000) == (wakeup("w1", r.Reserved(1, b"x")),)


def test_next_deadline_is_none_when_idle(q: Driver) -> None:
    assert q.machine.next_deadline_ms() is None
    q.connect("c1")
    q.put()
    q.put(client="c1")
    q.reserve("c1")
    q.do(c.Delete("c1", 1))
    assert q.machine.next_deadline_ms() is None


def test_next_deadline_is_the_earliest_of_every_kind(q: Driver) -> None:
    q.connect("c1", "w1")
    q.put(delay_ms=9_000)
    assert q.machine.next_deadline_ms() == 9_000
    q.put(ttr_ms=8_000)
    q.reserve("c1")
    assert q.machine.next_deadline_ms() == 8_000
    q.reserve("c1")  # waiting while holding a job: deadline soon at 7000
    assert q.machine.next_deadline_ms() == 7_000
    q.reserve("w1", 6_000)
    assert q.machine.next_deadline_ms() == 6_000
    q.do(c.PauseTube("default", 5_000))
    assert q.machine.next_deadline_ms() == 5_000
    q.do(c.RenewLease("p9", 4_000))
    assert q.machine.next_deadline_ms() == 4_000


def test_ticking_at_the_next_deadline_changes_the_state_and_just_before_does_not(
    q: Driver,
) -> None:
    q.connect("c1", "w1")
    q.put(delay_ms=3_000)
    q.put(ttr_ms=2_000)
    q.reserve("c1")
    q.reserve("w1", 7_000)
    seen = []
    while (deadline := q.machine.next_deadline_ms()) is not None:
        before = _without_time(q.machine)
        q.tick(deadline - 1)
        assert _without_time(q.machine) == before, f"a tick before {deadline} changed state"
        q.tick(deadline)
        assert _without_time(q.machine) != before, f"a tick at {deadline} changed nothing"
        seen.append(deadline)
    # 2000: job 2's TTR runs out and w1 gets it (new deadline 4000); 3000: job 1 ripens;
    # 4000: job 2's TTR runs out again. Nothing is pending after that.
    assert seen == [2_000, 3_000, 4_000]


def _without_time(machine: JobStateMachine) -> bytes:
    """The snapshot without machine time (snapshot layout: bytes 14..22 hold now_ms)."""
    data = machine.snapshot()
    return data[:14] + data[22:]


def test_a_deadline_soon_instant_already_past_when_the_wait_starts_fires_on_the_next_tick(
    q: Driver,
) -> None:
    # c1 holds a job in its last second, but a ready job in a paused watched tube keeps
    # reserve from answering DEADLINE_SOON at once; the next tick does.
    q.connect("c1")
    q.put(ttr_ms=1_000)
    q.reserve("c1")
    q.put()
    q.do(c.PauseTube("default", 60_000))
    q.at(100)
    assert q.reserve("c1") == r.Waiting()
    assert q.machine.next_deadline_ms() == 0
    assert q.tick(100) == (wakeup("c1", r.DeadlineSoon()),)


def test_proxies_whose_leases_end_together_disconnect_in_proxy_id_order(q: Driver) -> None:
    # Sorted by id, "pa" goes before "pb" although "pb" renewed first; each client's job
    # returns to ready and goes to the earliest waiter still connected.
    q.connect("b1", proxy="pb")
    q.connect("a1", proxy="pa")
    q.connect("w1", "w2", proxy="keep")
    q.put(body=b"1")
    q.put(body=b"2")
    assert q.reserve("b1") == r.Reserved(1, b"1")
    assert q.reserve("a1") == r.Reserved(2, b"2")
    q.reserve("w1")
    q.reserve("w2")
    q.do(c.RenewLease("pb", 1_000))
    q.do(c.RenewLease("pa", 1_000))
    assert q.tick(1_000) == (
        wakeup("w1", r.Reserved(2, b"2"), proxy="keep"),
        wakeup("w2", r.Reserved(1, b"1"), proxy="keep"),
    )


def test_waits_that_time_out_together_wake_in_arrival_order(q: Driver) -> None:
    q.connect("late", "early")
    q.reserve("early", 5_000)
    q.at(1_000)
    q.reserve("late", 4_000)
    assert q.tick(5_000) == (wakeup("early", r.TimedOut()), wakeup("late", r.TimedOut()))


def test_deadline_soon_wakes_together_in_arrival_order(q: Driver) -> None:
    q.connect("a", "b")
    q.put_ids(2, ttr_ms=3_000)
    q.reserve("b")
    q.reserve("a")
    q.reserve("a")  # a waits first
    q.reserve("b")
    assert q.tick(2_000) == (wakeup("a", r.DeadlineSoon()), wakeup("b", r.DeadlineSoon()))
