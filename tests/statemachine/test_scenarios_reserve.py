"""Scenarios: reserving, waiting, matching, TTR and DEADLINE_SOON (as beanstalkd 1.12)."""

from __future__ import annotations

from scenarios.driver import Driver, wakeup

from statemachine import commands as c
from statemachine import replies as r


def _watch(q: Driver, client: str, *tubes: str) -> None:
    for tube in tubes:
        q.do(c.Watch(client, tube))


def test_reserve_takes_the_lowest_priority_then_the_lowest_id(q: Driver) -> None:
    q.connect("c1")
    q.put(pri=5, body=b"a")
    q.put(pri=2, body=b"b")
    q.put(pri=2, body=b"c")
    assert q.reserve("c1") == r.Reserved(2, b"b")
    assert q.reserve("c1") == r.Reserved(3, b"c")
    assert q.reserve("c1") == r.Reserved(1, b"a")


def test_reserve_across_tubes_takes_the_global_best_not_the_first_tube(q: Driver) -> None:
    q.connect("c1")
    _watch(q, "c1", "a", "b")
    q.put(tube="a", pri=9, body=b"a9")
    q.put(tube="default", pri=5, body=b"d5")
    q.put(tube="b", pri=1, body=b"b1")
    assert q.reserve("c1") == r.Reserved(3, b"b1")
    assert q.reserve("c1") == r.Reserved(2, b"d5")
    assert q.reserve("c1") == r.Reserved(1, b"a9")


def test_reserve_skips_paused_tubes(q: Driver) -> None:
    q.connect("c1")
    _watch(q, "c1", "a")
    q.put(tube="a", pri=0, body=b"paused")
    q.put(pri=9, body=b"open")
    q.do(c.PauseTube("a", 10_000))
    assert q.reserve("c1") == r.Reserved(2, b"open")


def test_reserve_with_timeout_zero_answers_timed_out_at_once(q: Driver) -> None:
    q.connect("c1")
    assert q.reserve("c1", 0) == r.TimedOut()
    assert q.stats().current_waiting == 0
    assert q.stats().cmd_reserve_with_timeout == 1


def test_reserve_with_timeout_waits_then_times_out(q: Driver) -> None:
    q.connect("c1")
    assert q.reserve("c1", 3_000) == r.Waiting()
    assert q.machine.next_deadline_ms() == 3_000
    assert q.tick(2_999) == ()
    assert q.tick(3_000) == (wakeup("c1", r.TimedOut()),)
    assert q.stats().current_waiting == 0


def test_plain_reserve_waits_forever(q: Driver) -> None:
    q.connect("c1")
    assert q.reserve("c1") == r.Waiting()
    assert q.machine.next_deadline_ms() is None
    assert q.tick(10**9) == ()
    assert q.do(c.CheckClients("p1", ("c1",))) == r.ClientStates(("c1",), (), ())


def test_a_second_reserve_while_waiting_is_already_waiting_and_not_counted(q: Driver) -> None:
    q.connect("c1")
    q.reserve("c1")
    assert q.assert_unchanged_except_counters(c.Reserve("c1", None)) == r.AlreadyWaiting()
    assert q.stats().cmd_reserve == 1


def test_put_hands_the_job_to_a_waiting_reserver_in_the_same_command(q: Driver) -> None:
    q.connect("c1")
    q.reserve("c1", 10_000, request_id="r-1")
    outcome = q.apply(c.Put("default", 0, 0, 60_000, b"a"))
    assert outcome.reply == r.Inserted(1)
    assert outcome.wakeups == (wakeup("c1", r.Reserved(1, b"a"), request_id="r-1"),)
    assert q.state_of(1) == "reserved"


def test_waiting_reservers_are_served_in_arrival_order(q: Driver) -> None:
    q.connect("c1", "c2", "c3")
    for client in ("c2", "c3", "c1"):
        q.reserve(client)
    q.put(body=b"a")
    assert q.last_wakeups == (wakeup("c2", r.Reserved(1, b"a")),)
    q.put(body=b"b")
    assert q.last_wakeups == (wakeup("c3", r.Reserved(2, b"b")),)
    q.put(body=b"c")
    assert q.last_wakeups == (wakeup("c1", r.Reserved(3, b"c")),)


def test_release_hands_the_job_to_a_waiting_reserver(q: Driver) -> None:
    q.connect("c1", "c2")
    q.put()
    q.reserve("c1")
    q.reserve("c2")
    outcome = q.apply(c.Release("c1", 1, 0, 0))
    assert outcome.wakeups == (wakeup("c2", r.Reserved(1, b"x")),)


def test_kick_hands_kicked_jobs_to_waiting_reservers_best_first(q: Driver) -> None:
    q.connect("c1", "w1", "w2")
    q.put_ids(2)
    q.do(c.Bury("c1", q.reserved_id("c1"), 9))
    q.do(c.Bury("c1", q.reserved_id("c1"), 3))
    q.reserve("w1")
    q.reserve("w2")
    outcome = q.apply(c.Kick("default", 10))
    assert outcome.reply == r.Kicked(2)
    assert outcome.wakeups == (
        wakeup("w1", r.Reserved(2, b"x")),
        wakeup("w2", r.Reserved(1, b"x")),
    )


def test_kick_job_hands_the_job_to_a_waiting_reserver(q: Driver) -> None:
    q.connect("w1")
    q.put(delay_ms=60_000)
    q.reserve("w1")
    assert q.apply(c.KickJob(1)).wakeups == (wakeup("w1", r.Reserved(1, b"x")),)


def test_delay_expiry_hands_the_job_to_a_waiting_reserver(q: Driver) -> None:
    q.connect("w1")
    q.put(delay_ms=2_000)
    q.reserve("w1")
    assert q.machine.next_deadline_ms() == 2_000
    assert q.tick(2_000) == (wakeup("w1", r.Reserved(1, b"x")),)


def test_ttr_expiry_returns_the_job_and_hands_it_to_a_waiting_reserver(q: Driver) -> None:
    q.connect("c1", "w1")
    q.put(ttr_ms=5_000)
    q.reserve("c1")
    q.reserve("w1")
    assert q.tick(5_000) == (wakeup("w1", r.Reserved(1, b"x")),)
    stats = q.job_stats(1)
    assert (stats.timeouts, stats.reserves) == (1, 2)
    assert q.stats().job_timeouts == 1


def test_unpause_by_time_hands_jobs_to_waiting_reservers(q: Driver) -> None:
    q.connect("w1")
    q.do(c.PauseTube("default", 4_000))
    q.put()
    assert q.reserve("w1") == r.Waiting()
    assert q.machine.next_deadline_ms() == 4_000
    assert q.tick(4_000) == (wakeup("w1", r.Reserved(1, b"x")),)


def test_pause_tube_zero_unpauses_at_once_and_serves_waiters(q: Driver) -> None:
    q.connect("w1")
    q.do(c.PauseTube("default", 60_000))
    q.put()
    q.reserve("w1")
    outcome = q.apply(c.PauseTube("default", 0))
    assert outcome.reply == r.Paused()
    assert outcome.wakeups == (wakeup("w1", r.Reserved(1, b"x")),)
    assert q.tube_stats().pause_ms == 0


def test_disconnect_hands_released_jobs_to_waiting_reservers(q: Driver) -> None:
    q.connect("c1", "w1")
    q.put()
    q.reserve("c1")
    q.reserve("w1")
    assert q.apply(c.Disconnect("c1")).wakeups == (wakeup("w1", r.Reserved(1, b"x")),)
    stats = q.job_stats(1)
    assert (stats.timeouts, stats.releases) == (0, 0)


def test_matching_gives_the_global_best_job_to_the_earliest_waiter_watching_it(
    q: Driver,
) -> None:
    q.connect("w1", "w2", "c1")
    _watch(q, "w2", "a")
    q.do(c.Ignore("w2", "default"))
    q.reserve("w1")  # watches default only
    q.reserve("w2")  # watches a only
    q.do(c.PauseTube("a", 1_000))
    q.do(c.PauseTube("default", 1_000))
    q.put(tube="default", pri=5, body=b"d")
    q.put(tube="a", pri=1, body=b"a")
    assert q.tick(1_000) == (
        wakeup("w2", r.Reserved(2, b"a")),
        wakeup("w1", r.Reserved(1, b"d")),
    )


def test_a_waiter_that_watches_a_tube_with_a_ready_job_gets_it_at_once(q: Driver) -> None:
    q.connect("w1")
    q.put(tube="other", body=b"o")
    q.reserve("w1")
    outcome = q.apply(c.Watch("w1", "other"))
    assert outcome.reply == r.Watching(2)
    assert outcome.wakeups == (wakeup("w1", r.Reserved(1, b"o")),)


def test_a_waiter_that_ignores_a_tube_is_not_served_from_it(q: Driver) -> None:
    q.connect("w1")
    _watch(q, "w1", "a")
    q.reserve("w1")
    q.do(c.Ignore("w1", "a"))
    q.put(tube="a")
    assert q.last_wakeups == ()
    assert q.tube_stats("a").current_waiting == 0


def test_reserve_answers_deadline_soon_in_the_last_second_of_a_held_job(q: Driver) -> None:
    q.connect("c1")
    q.put(ttr_ms=5_000)
    q.reserve("c1")
    q.at(3_999)
    assert q.reserve("c1", 0) == r.TimedOut()
    q.at(4_000)
    assert q.reserve("c1", 10_000) == r.DeadlineSoon()
    assert q.state_of(1) == "reserved"


def test_reserve_prefers_a_ready_job_to_deadline_soon(q: Driver) -> None:
    q.connect("c1")
    q.put(ttr_ms=1_000)
    q.reserve("c1")
    q.put(body=b"next")
    assert q.reserve("c1") == r.Reserved(2, b"next")


def test_a_ready_job_in_a_paused_watched_tube_prevents_deadline_soon(q: Driver) -> None:
    q.connect("c1")
    q.put(ttr_ms=1_000)
    q.reserve("c1")
    q.put(body=b"paused")
    q.do(c.PauseTube("default", 60_000))
    assert q.reserve("c1", 0) == r.TimedOut()


def test_a_waiting_reserver_is_woken_with_deadline_soon(q: Driver) -> None:
    q.connect("c1")
    q.put(ttr_ms=10_000)
    q.reserve("c1")
    assert q.reserve("c1") == r.Waiting()
    assert q.machine.next_deadline_ms() == 9_000
    assert q.tick(9_000) == (wakeup("c1", r.DeadlineSoon()),)
    assert q.state_of(1) == "reserved"
    assert q.stats().current_waiting == 0


def test_reserve_job_never_answers_deadline_soon(q: Driver) -> None:
    q.connect("c1")
    q.put(ttr_ms=1_000)
    q.put()
    q.reserve("c1")
    assert q.do(c.ReserveJob("c1", 2)) == r.Reserved(2, b"x")


def test_touch_while_waiting_moves_the_deadline_soon_instant(q: Driver) -> None:
    q.connect("c1")
    q.put(ttr_ms=10_000)
    q.reserve("c1")
    q.reserve("c1")
    q.at(5_000)
    q.do(c.Touch("c1", 1))
    assert q.machine.next_deadline_ms() == 14_000
    assert q.tick(9_000) == ()
    assert q.tick(14_000) == (wakeup("c1", r.DeadlineSoon()),)


def test_ttr_expiry_returns_the_job_with_its_priority_and_counts_a_timeout(q: Driver) -> None:
    q.connect("c1")
    q.put(pri=77, ttr_ms=2_000)
    q.reserve("c1")
    q.tick(2_000)
    stats = q.job_stats(1)
    assert (stats.state, stats.priority, stats.timeouts) == ("ready", 77, 1)
    assert q.stats().job_timeouts == 1


def test_reserve_while_a_timed_out_wait_is_pending_in_the_same_apply(q: Driver) -> None:
    # The wait ends at 1000 in the event step, then the new reserve is a fresh command.
    q.connect("c1")
    q.reserve("c1", 1_000)
    q.at(1_000)
    outcome = q.apply(c.Reserve("c1", 0, "", True))
    assert outcome.wakeups == (wakeup("c1", r.TimedOut()),)
    assert outcome.reply == r.TimedOut()
