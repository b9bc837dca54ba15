"""Scenarios: a job's life (put, reserve, delete, release, bury, touch, kick, peek).

Each test is one beanstalkd session told with the driver in conftest.py; the driver checks the
invariants and a snapshot round trip after every step.
"""

from __future__ import annotations

from scenarios.driver import Driver

from statemachine import commands as c
from statemachine import replies as r


def test_put_then_reserve_then_delete(q: Driver) -> None:
    q.connect("c1")
    assert q.put(body=b"hello") == r.Inserted(1)
    assert q.reserve("c1") == r.Reserved(1, b"hello")
    assert q.delete("c1", 1) == r.Deleted()
    assert q.do(c.Peek(1)) == r.NotFound()


def test_job_ids_come_from_one_counter_across_tubes(q: Driver) -> None:
    assert q.put(tube="a") == r.Inserted(1)
    assert q.put(tube="b") == r.Inserted(2)
    q.delete("", 2)
    assert q.put(tube="a") == r.Inserted(3)


def test_put_with_delay_is_delayed_until_its_time(q: Driver) -> None:
    q.connect("c1")
    q.put(delay_ms=5_000)
    assert q.state_of(1) == "delayed"
    assert q.reserve("c1", 0) == r.TimedOut()
    q.tick(5_000)
    assert q.state_of(1) == "ready"
    assert q.reserve("c1", 0) == r.Reserved(1, b"x")


def test_ttr_below_one_second_is_raised_to_one_second(q: Driver) -> None:
    q.put(ttr_ms=0)
    q.put(ttr_ms=999)
    assert q.job_stats(1).ttr_ms == 1000
    assert q.job_stats(2).ttr_ms == 1000


def test_body_of_max_job_size_is_accepted_and_one_more_byte_is_job_too_big(
    small_q: Driver,
) -> None:
    assert small_q.put(body=b"x" * 10) == r.Inserted(1)
    assert small_q.put(body=b"x" * 11) == r.JobTooBig()
    assert small_q.stats().cmd_put == 2
    assert small_q.stats().total_jobs == 1


def test_empty_body_is_a_job(q: Driver) -> None:
    assert q.put(body=b"") == r.Inserted(1)
    assert q.do(c.Peek(1)) == r.Found(1, b"")


def test_binary_body_survives_unchanged(q: Driver) -> None:
    body = bytes(range(256)) + b"\r\n\x00"
    q.put(body=body)
    assert q.do(c.Peek(1)) == r.Found(1, body)


def test_delete_of_ready_delayed_and_buried_jobs_by_anyone(q: Driver) -> None:
    q.connect("c1", "c2")
    q.put(body=b"ready")
    q.put(delay_ms=10_000, body=b"delayed")
    q.put(pri=5, body=b"to-bury")
    assert q.reserve("c1") == r.Reserved(1, b"ready")
    q.do(c.Release("c1", 1, 0, 0))
    job = q.reserved_id("c1")
    assert q.do(c.Bury("c1", job, 0)) == r.Buried()
    assert q.delete("c2", 1) == r.Deleted()
    assert q.delete("c2", 2) == r.Deleted()
    assert q.delete("c2", 3) == r.Deleted()
    assert q.stats().current_jobs_buried == 0


def test_delete_of_a_job_reserved_by_another_client_is_not_found(q: Driver) -> None:
    q.connect("c1", "c2")
    q.put()
    q.reserve("c1")
    assert q.delete("c2", 1) == r.NotFound()
    assert q.state_of(1) == "reserved"
    assert q.delete("c1", 1) == r.Deleted()


def test_admin_delete_removes_a_reserved_job(q: Driver) -> None:
    q.connect("c1")
    q.put()
    q.reserve("c1")
    assert q.delete("", 1) == r.Deleted()
    assert q.tube_stats().current_jobs_reserved == 0


def test_delete_of_an_unknown_job_is_not_found_and_counted(q: Driver) -> None:
    assert q.delete("", 42) == r.NotFound()
    assert q.stats().cmd_delete == 1


def test_release_puts_the_job_back_with_its_new_priority(q: Driver) -> None:
    q.connect("c1")
    q.put(pri=10)
    q.reserve("c1")
    assert q.do(c.Release("c1", 1, 3, 0)) == r.Released()
    stats = q.job_stats(1)
    assert (stats.state, stats.priority, stats.releases) == ("ready", 3, 1)


def test_release_with_delay_makes_the_job_delayed(q: Driver) -> None:
    q.connect("c1")
    q.put()
    q.reserve("c1")
    q.at(1_000)
    assert q.do(c.Release("c1", 1, 0, 4_000)) == r.Released()
    stats = q.job_stats(1)
    assert (stats.state, stats.delay_ms, stats.time_left_ms) == ("delayed", 4_000, 4_000)
    q.tick(4_999)
    assert q.state_of(1) == "delayed"
    q.tick(5_000)
    assert q.state_of(1) == "ready"


def test_release_of_a_job_not_reserved_by_the_client_is_not_found(q: Driver) -> None:
    q.connect("c1", "c2")
    q.put()
    assert q.do(c.Release("c1", 1, 0, 0)) == r.NotFound()
    q.reserve("c1")
    assert q.do(c.Release("c2", 1, 0, 0)) == r.NotFound()
    assert q.do(c.Release("c1", 99, 0, 0)) == r.NotFound()


def test_bury_sets_priority_and_appends_to_the_buried_fifo(q: Driver) -> None:
    q.connect("c1")
    q.put_ids(2)
    assert q.do(c.Bury("c1", q.reserved_id("c1"), 7)) == r.Buried()
    assert q.do(c.Bury("c1", q.reserved_id("c1"), 8)) == r.Buried()
    assert q.do(c.PeekBuried("default")) == r.Found(1, b"x")
    stats = q.job_stats(1)
    assert (stats.state, stats.priority, stats.buries) == ("buried", 7, 1)


def test_bury_of_a_job_not_reserved_by_the_client_is_not_found(q: Driver) -> None:
    q.connect("c1", "c2")
    q.put()
    assert q.do(c.Bury("c1", 1, 0)) == r.NotFound()
    q.reserve("c1")
    assert q.do(c.Bury("c2", 1, 0)) == r.NotFound()


def test_touch_restarts_the_ttr(q: Driver) -> None:
    q.connect("c1")
    q.put(ttr_ms=10_000)
    q.reserve("c1")
    q.at(8_000)
    assert q.do(c.Touch("c1", 1)) == r.Touched()
    assert q.job_stats(1).time_left_ms == 10_000
    q.tick(10_000)
    assert q.state_of(1) == "reserved"
    q.tick(18_000)
    assert q.state_of(1) == "ready"
    assert q.job_stats(1).timeouts == 1


def test_touch_of_a_job_not_reserved_by_the_client_is_not_found(q: Driver) -> None:
    q.connect("c1", "c2")
    q.put()
    assert q.do(c.Touch("c1", 1)) == r.NotFound()
    q.reserve("c1")
    assert q.do(c.Touch("c2", 1)) == r.NotFound()
    assert q.stats().cmd_touch == 2


def test_kick_kicks_buried_jobs_oldest_first_and_leaves_delayed_ones(q: Driver) -> None:
    q.connect("c1")
    q.put_ids(3)
    q.put(delay_ms=50_000)
    for _ in range(3):
        q.do(c.Bury("c1", q.reserved_id("c1"), 0))
    assert q.do(c.Kick("default", 2)) == r.Kicked(2)
    assert [q.state_of(i) for i in (1, 2, 3, 4)] == ["ready", "ready", "buried", "delayed"]
    assert q.job_stats(1).kicks == 1


def test_kick_kicks_delayed_jobs_soonest_first_when_none_is_buried(q: Driver) -> None:
    q.put(delay_ms=30_000)
    q.put(delay_ms=10_000)
    q.put(delay_ms=20_000)
    assert q.do(c.Kick("default", 2)) == r.Kicked(2)
    assert [q.state_of(i) for i in (1, 2, 3)] == ["delayed", "ready", "ready"]


def test_kick_of_a_missing_or_empty_tube_kicks_nothing(q: Driver) -> None:
    assert q.do(c.Kick("nowhere", 5)) == r.Kicked(0)
    assert q.do(c.Kick("default", 5)) == r.Kicked(0)
    assert "nowhere" not in q.tubes()
    assert q.stats().cmd_kick == 2


def test_kick_job_kicks_a_buried_or_a_delayed_job(q: Driver) -> None:
    q.connect("c1")
    q.put()
    q.put(delay_ms=10_000)
    q.do(c.Bury("c1", q.reserved_id("c1"), 0))
    assert q.do(c.KickJob(1)) == r.Kicked(1)
    assert q.do(c.KickJob(2)) == r.Kicked(1)
    assert q.state_of(1) == q.state_of(2) == "ready"


def test_kick_job_of_a_ready_reserved_or_unknown_job_is_not_found(q: Driver) -> None:
    q.connect("c1")
    q.put_ids(2)
    q.reserve("c1")
    assert q.do(c.KickJob(1)) == r.NotFound()
    assert q.do(c.KickJob(2)) == r.NotFound()
    assert q.do(c.KickJob(3)) == r.NotFound()


def test_peek_finds_a_job_in_any_state(q: Driver) -> None:
    q.connect("c1")
    q.put(body=b"a")
    q.reserve("c1")
    assert q.do(c.Peek(1)) == r.Found(1, b"a")
    assert q.do(c.Peek(2)) == r.NotFound()
    assert q.stats().cmd_peek == 2


def test_peek_ready_shows_the_best_job_even_in_a_paused_tube(q: Driver) -> None:
    q.put(pri=5, body=b"a")
    q.put(pri=1, body=b"b")
    q.put(pri=1, body=b"c")
    q.do(c.PauseTube("default", 10_000))
    assert q.do(c.PeekReady("default")) == r.Found(2, b"b")


def test_peek_delayed_shows_the_soonest_ready_time_then_lowest_id(q: Driver) -> None:
    q.put(delay_ms=5_000, body=b"a")
    q.put(delay_ms=3_000, body=b"b")
    q.put(delay_ms=3_000, body=b"c")
    assert q.do(c.PeekDelayed("default")) == r.Found(2, b"b")


def test_peeks_of_a_missing_tube_or_an_empty_state_are_not_found(q: Driver) -> None:
    for peek in (c.PeekReady, c.PeekDelayed, c.PeekBuried):
        assert q.do(peek("default")) == r.NotFound()
        assert q.do(peek("missing")) == r.NotFound()
    stats = q.stats()
    assert (stats.cmd_peek_ready, stats.cmd_peek_delayed, stats.cmd_peek_buried) == (2, 2, 2)


def test_reserve_job_takes_a_ready_delayed_or_buried_job_ignoring_watch_and_pause(
    q: Driver,
) -> None:
    q.connect("c1", "c2")
    q.put(tube="elsewhere", body=b"a")
    q.put(tube="elsewhere", delay_ms=9_000, body=b"b")
    q.put(body=b"c")
    q.do(c.Bury("c2", q.reserved_id("c2"), 0))
    q.do(c.PauseTube("elsewhere", 60_000))
    assert q.do(c.ReserveJob("c1", 1)) == r.Reserved(1, b"a")
    assert q.do(c.ReserveJob("c1", 2)) == r.Reserved(2, b"b")
    assert q.do(c.ReserveJob("c1", 3)) == r.Reserved(3, b"c")
    assert [q.job_stats(i).reserves for i in (1, 2, 3)] == [1, 1, 2]


def test_reserve_job_of_a_reserved_or_unknown_job_is_not_found(q: Driver) -> None:
    q.connect("c1", "c2")
    q.put()
    q.reserve("c1")
    assert q.do(c.ReserveJob("c1", 1)) == r.NotFound()
    assert q.do(c.ReserveJob("c2", 1)) == r.NotFound()
    assert q.do(c.ReserveJob("c2", 7)) == r.NotFound()


def test_a_reserve_job_whose_ttr_passes_goes_to_ready_not_back_to_buried(q: Driver) -> None:
    q.connect("c1")
    q.put(ttr_ms=2_000)
    q.do(c.Bury("c1", q.reserved_id("c1"), 0))
    q.do(c.ReserveJob("c1", 1))
    q.tick(2_000)
    assert q.state_of(1) == "ready"
    assert q.job_stats(1).timeouts == 1


def test_a_long_reserve_and_delete_loop_keeps_the_deadline_index_small() -> None:
    # Each reserved-then-deleted job leaves a stale TTR entry (lazy deletion); compaction must
    # keep the index proportional to the live reservations, not to the history.
    from statemachine.machine import JobStateMachine

    machine = JobStateMachine()
    machine.apply(c.Connect("c1", "p1"), 0)
    machine.apply(c.Connect("w", "p1"), 0)
    for n in range(5_000):
        machine.apply(c.Put("default", 0, 0, 60_000, b"x"), n)
        reply = machine.apply(c.Reserve("c1", 0), n).reply
        assert isinstance(reply, r.Reserved)
        machine.apply(c.Delete("c1", reply.job_id), n)
        assert machine.apply(c.Reserve("w", 10_000, "", True), n).reply == r.Waiting()
        wakeups = machine.apply(c.Put("default", 0, 0, 60_000, b"y"), n).wakeups
        assert isinstance(wakeups[0].result, r.Reserved)
        machine.apply(c.Delete("w", wakeups[0].result.job_id), n)
    machine.check_invariants()
    state = machine._state
    assert len(state.ttr_heap) + len(state.wait_heap) < 4_000
