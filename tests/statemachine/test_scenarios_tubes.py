"""Scenarios: use, watch, ignore, list-tubes order, tube lifetime and pause-tube."""

from __future__ import annotations

from scenarios.driver import Driver

from statemachine import commands as c
from statemachine import replies as r


def test_a_new_client_uses_and_watches_default(q: Driver) -> None:
    q.connect("c1")
    assert q.do(c.ListTubeUsed("c1")) == r.Using("default")
    assert q.watched("c1") == ("default",)
    stats = q.tube_stats()
    assert (stats.current_using, stats.current_watching) == (1, 1)


def test_use_creates_the_tube_and_moves_the_reference(q: Driver) -> None:
    q.connect("c1")
    assert q.do(c.Use("c1", "jobs")) == r.Using("jobs")
    assert q.tubes() == ("default", "jobs")
    assert q.tube_stats("jobs").current_using == 1
    assert q.tube_stats("default").current_using == 0
    assert q.do(c.ListTubeUsed("c1")) == r.Using("jobs")


def test_using_another_tube_frees_the_unreferenced_old_one(q: Driver) -> None:
    q.connect("c1")
    q.do(c.Use("c1", "a"))
    q.do(c.Use("c1", "b"))
    assert q.tubes() == ("default", "b")


def test_watch_adds_to_the_watch_list_once(q: Driver) -> None:
    q.connect("c1")
    assert q.do(c.Watch("c1", "a")) == r.Watching(2)
    assert q.do(c.Watch("c1", "a")) == r.Watching(2)
    assert q.watched("c1") == ("default", "a")
    assert q.stats().cmd_watch == 2


def test_ignore_follows_beanstalkds_move_last_order(q: Driver) -> None:
    q.connect("c1")
    for tube in ("a", "b", "c"):
        q.do(c.Watch("c1", tube))
    assert q.do(c.Ignore("c1", "a")) == r.Watching(3)
    assert q.watched("c1") == ("default", "c", "b")


def test_list_tubes_moves_the_last_tube_into_a_freed_slot(q: Driver) -> None:
    q.connect("c1")
    for tube in ("a", "b", "c"):
        q.do(c.Watch("c1", tube))
    q.do(c.Ignore("c1", "a"))
    assert q.tubes() == ("default", "c", "b")


def test_ignoring_the_only_watched_tube_is_not_ignored(q: Driver) -> None:
    q.connect("c1")
    assert q.assert_unchanged_except_counters(c.Ignore("c1", "default")) == r.NotIgnored()
    assert q.stats().cmd_ignore == 1


def test_ignoring_an_unwatched_or_missing_tube_changes_nothing(q: Driver) -> None:
    q.connect("c1")
    q.do(c.Watch("c1", "a"))
    assert q.do(c.Ignore("c1", "missing")) == r.Watching(2)
    assert "missing" not in q.tubes()


def test_a_tube_lives_while_a_job_is_in_it(q: Driver) -> None:
    q.connect("c1")
    q.put(tube="jobs")
    assert "jobs" in q.tubes()
    q.do(c.Watch("c1", "jobs"))
    q.reserve("c1")
    q.do(c.Ignore("c1", "jobs"))
    assert "jobs" in q.tubes()  # the reserved job keeps it
    q.delete("c1", 1)
    assert q.tubes() == ("default",)


def test_default_is_never_freed(q: Driver) -> None:
    q.connect("c1")
    q.do(c.Use("c1", "a"))
    q.do(c.Watch("c1", "a"))
    q.do(c.Ignore("c1", "default"))
    assert q.tubes() == ("default", "a")


def test_a_freed_tube_loses_its_pause_and_counters(q: Driver) -> None:
    q.put(tube="t")
    q.do(c.PauseTube("t", 60_000))
    q.delete("", 1)
    assert q.do(c.StatsTube("t")) == r.NotFound()
    q.put(tube="t")
    stats = q.tube_stats("t")
    assert (stats.pause_ms, stats.cmd_delete, stats.total_jobs, stats.cmd_pause_tube) == (
        0,
        0,
        1,
        0,
    )


def test_stats_tube_and_pause_tube_do_not_create_tubes(q: Driver) -> None:
    assert q.do(c.StatsTube("nope")) == r.NotFound()
    assert q.do(c.PauseTube("nope", 1_000)) == r.NotFound()
    assert q.tubes() == ("default",)
    assert q.stats().cmd_pause_tube == 1


def test_pause_tube_reports_pause_and_time_left_then_unpauses(q: Driver) -> None:
    q.do(c.PauseTube("default", 10_000))
    q.at(4_000)
    stats = q.tube_stats()
    assert (stats.pause_ms, stats.pause_time_left_ms, stats.cmd_pause_tube) == (10_000, 6_000, 1)
    q.tick(10_000)
    stats = q.tube_stats()
    assert (stats.pause_ms, stats.pause_time_left_ms) == (0, 0)


def test_a_paused_tube_still_takes_puts_kicks_and_peeks(q: Driver) -> None:
    q.connect("c1")
    q.do(c.PauseTube("default", 10_000))
    q.put(delay_ms=5_000)
    assert q.do(c.Kick("default", 1)) == r.Kicked(1)
    assert q.do(c.PeekReady("default")) == r.Found(1, b"x")
    assert q.reserve("c1", 0) == r.TimedOut()


def test_disconnect_frees_tubes_in_beanstalkds_order(q: Driver) -> None:
    q.connect("c1", "c2", "c3", "c4")
    for tube in ("a", "b", "c"):
        q.do(c.Watch("c1", tube))
    for client, tube in (("c2", "x"), ("c3", "y"), ("c4", "z")):
        q.do(c.Use(client, tube))
    assert q.tubes() == ("default", "a", "b", "c", "x", "y", "z")
    q.do(c.Disconnect("c1"))
    # The watch list is cleared by removing its first entry repeatedly (ms.c's ms_clear):
    # default, then c (moved to the front), then b, then a, each freed with list-tubes'
    # move-last rule. Freeing a, b, c in watch order would give default, z, y, x.
    assert q.tubes() == ("default", "x", "y", "z")
