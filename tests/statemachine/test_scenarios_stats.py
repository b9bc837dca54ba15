"""Scenarios: stats, stats-tube and stats-job report true values (as beanstalkd 1.12)."""

from __future__ import annotations

import pytest
from scenarios.driver import Driver

from statemachine import commands as c
from statemachine import replies as r


def test_stats_counts_jobs_by_state_and_urgency(q: Driver) -> None:
    q.connect("c1")
    q.put(pri=1023)  # urgent
    q.put(pri=1024)  # not urgent
    q.put(pri=0, delay_ms=9_000)
    q.put(pri=0)
    q.put(pri=0)
    q.do(c.Bury("c1", q.reserved_id("c1"), 0))  # job 4
    q.reserve("c1")  # job 5
    stats = q.stats()
    assert (
        stats.current_jobs_urgent,
        stats.current_jobs_ready,
        stats.current_jobs_reserved,
        stats.current_jobs_delayed,
        stats.current_jobs_buried,
        stats.total_jobs,
    ) == (1, 2, 1, 1, 1, 5)


def test_stats_reports_connections_tubes_waiting_and_max_job_size(small_q: Driver) -> None:
    small_q.connect("c1", "c2")
    small_q.do(c.Use("c2", "t"))
    small_q.reserve("c1")
    stats = small_q.stats()
    assert (
        stats.current_connections,
        stats.total_connections,
        stats.current_tubes,
        stats.current_waiting,
        stats.max_job_size,
    ) == (2, 2, 2, 1, 10)


# Each command and the stats field it must increase by one.
COUNTED = [
    (c.Put("default", 0, 0, 1000, b""), "cmd_put"),
    (c.Peek(1), "cmd_peek"),
    (c.PeekReady("default"), "cmd_peek_ready"),
    (c.PeekDelayed("default"), "cmd_peek_delayed"),
    (c.PeekBuried("default"), "cmd_peek_buried"),
    (c.Reserve("c1", 0), "cmd_reserve"),
    (c.Reserve("c1", 0, "", True), "cmd_reserve_with_timeout"),
    (c.Delete("c1", 99), "cmd_delete"),
    (c.Release("c1", 99, 0, 0), "cmd_release"),
    (c.Use("c1", "default"), "cmd_use"),
    (c.Watch("c1", "default"), "cmd_watch"),
    (c.Ignore("c1", "default"), "cmd_ignore"),
    (c.Bury("c1", 99, 0), "cmd_bury"),
    (c.Kick("default", 1), "cmd_kick"),
    (c.Touch("c1", 99), "cmd_touch"),
    (c.StatsJob(99), "cmd_stats_job"),
    (c.StatsTube("default"), "cmd_stats_tube"),
    (c.ListTubes(), "cmd_list_tubes"),
    (c.ListTubeUsed("c1"), "cmd_list_tube_used"),
    (c.ListTubesWatched("c1"), "cmd_list_tubes_watched"),
    (c.PauseTube("default", 0), "cmd_pause_tube"),
]


@pytest.mark.parametrize(("command", "field"), COUNTED, ids=[f for _, f in COUNTED])
def test_each_command_counts_in_its_cmd_counter_whatever_its_reply(
    q: Driver, command: c.Command, field: str
) -> None:
    q.connect("c1")
    before = getattr(q.stats(), field)
    q.do(command)
    after = getattr(q.stats(), field)
    assert after == before + 1


def test_stats_counts_itself(q: Driver) -> None:
    assert q.stats().cmd_stats == 1
    assert q.stats().cmd_stats == 2


def test_kick_job_and_reserve_job_have_no_printed_counter(q: Driver) -> None:
    q.connect("c1")
    q.put(delay_ms=5_000)
    before = q.stats()
    q.do(c.KickJob(1))
    q.do(c.ReserveJob("c1", 1))
    after = q.stats()
    assert after.cmd_kick == before.cmd_kick
    assert after.cmd_reserve == before.cmd_reserve
    assert after.cmd_stats == before.cmd_stats + 1


def test_stats_tube_reports_every_key(q: Driver) -> None:
    q.connect("c1", "c2", "c3")
    q.do(c.Use("c1", "t"))
    q.do(c.Watch("c2", "t"))
    q.do(c.Watch("c3", "t"))
    q.put(tube="t", pri=5)
    q.put(tube="t", pri=5000)
    q.put(tube="t", delay_ms=10_000)
    q.put(tube="t")
    q.put(tube="t")
    q.do(c.Bury("c2", q.reserved_id("c2"), 0))  # job 4
    assert q.reserve("c2") == r.Reserved(5, b"x")
    q.do(c.Delete("", 1))
    q.do(c.Ignore("c3", "default"))
    assert q.reserve("c3") == r.Reserved(2, b"x")
    assert q.reserve("c3") == r.Waiting()
    q.do(c.PauseTube("t", 8_000))
    q.at(3_000)
    assert q.tube_stats("t") == r.TubeStats(
        name="t",
        current_jobs_urgent=0,
        current_jobs_ready=0,
        current_jobs_reserved=2,
        current_jobs_delayed=1,
        current_jobs_buried=1,
        total_jobs=5,
        current_using=1,
        current_watching=2,
        current_waiting=1,
        cmd_delete=1,
        cmd_pause_tube=1,
        pause_ms=8_000,
        pause_time_left_ms=5_000,
    )


def test_stats_job_reports_every_key(q: Driver) -> None:
    q.connect("c1")
    q.at(1_000)
    q.put(tube="t", pri=7, ttr_ms=30_000, body=b"a", delay_ms=2_000)
    q.do(c.Watch("c1", "t"))
    q.tick(3_000)
    q.reserve("c1")
    q.do(c.Release("c1", 1, 9, 4_000))
    q.do(c.KickJob(1))
    q.reserve("c1")
    q.do(c.Bury("c1", 1, 11))
    q.do(c.Kick("t", 1))
    q.at(5_500)
    q.reserve("c1")
    q.at(6_000)
    assert q.job_stats(1) == r.JobStats(
        job_id=1,
        tube="t",
        state="reserved",
        priority=11,
        age_ms=5_000,
        delay_ms=4_000,
        ttr_ms=30_000,
        time_left_ms=29_500,
        reserves=3,
        timeouts=0,
        releases=1,
        buries=1,
        kicks=2,
    )


def test_stats_job_time_left_is_the_delay_left_for_a_delayed_job_and_zero_otherwise(
    q: Driver,
) -> None:
    q.put(delay_ms=10_000)
    q.put()
    q.at(2_500)
    assert q.job_stats(1).time_left_ms == 7_500
    assert q.job_stats(2).time_left_ms == 0
    assert q.job_stats(2).age_ms == 2_500


def test_stats_job_of_an_unknown_job_is_not_found(q: Driver) -> None:
    assert q.do(c.StatsJob(5)) == r.NotFound()


def test_a_stats_job_read_the_cluster_makes_on_its_own_behalf_is_not_counted(q: Driver) -> None:
    q.put()
    q.do(c.StatsJob(1, False))
    assert q.stats().cmd_stats_job == 0
    q.do(c.StatsJob(1))
    assert q.stats().cmd_stats_job == 1
