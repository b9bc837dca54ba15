"""The leader's time: continuous across leaders, so a failover never expires anything early."""

from __future__ import annotations

from cluster.clock import FakeClock, LeaderTime


def test_a_new_leader_whose_clock_is_ahead_continues_the_previous_timeline() -> None:
    clock = FakeClock(start_ms=1_000 + 4_000)  # 4 s ahead of the last stamp in the log
    leader_time = LeaderTime(clock, grace_ms=5_000)
    leader_time.start_term(term=7, last_stamp_ms=1_000)
    assert leader_time.now_ms() == 1_000
    clock.advance(250)
    assert leader_time.now_ms() == 1_250


def test_after_a_long_outage_the_wall_clock_wins_minus_the_grace() -> None:
    clock = FakeClock(start_ms=3_600_000)
    leader_time = LeaderTime(clock, grace_ms=5_000)
    leader_time.start_term(term=2, last_stamp_ms=1_000)
    assert leader_time.now_ms() == 3_595_000


def test_the_base_is_taken_once_per_term() -> None:
    clock = FakeClock(start_ms=10_000)
    leader_time = LeaderTime(clock, grace_ms=0)
    leader_time.start_term(term=3, last_stamp_ms=0)
    clock.advance(100)
    leader_time.start_term(term=3, last_stamp_ms=50_000)  # same term: no new base
    assert leader_time.now_ms() == 10_100
    leader_time.start_term(term=4, last_stamp_ms=50_000)
    assert leader_time.now_ms() == 50_000


def test_before_leading_the_time_is_the_wall_clock() -> None:
    clock = FakeClock(start_ms=42)
    assert LeaderTime(clock).now_ms() == 42
