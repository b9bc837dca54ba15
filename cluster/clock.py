"""Clocks: where the state machine's time comes from (the machine itself never reads one).

The leader stamps ``now_ms`` from its ``LeaderTime`` on every command it proposes; the machine
clamps it so that time never runs backwards across leaders. Tests inject ``FakeClock``.

``LeaderTime`` prefers late expiry to early expiry after a failover, because pysyncobj hands a new
leader nothing of the old leader's clock: a new leader continues the previous leader's timeline (the
last applied stamp) plus the time it has itself measured since taking over, instead of jumping to
its own wall clock. A clock that is ahead by up to ``grace_ms`` (skew, or the seconds an election
took) therefore expires no reservation early; the election's own duration is simply not counted.
After a long outage the wall clock wins again (minus the grace), so delays still count the cluster's
downtime.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock milliseconds since the Unix epoch."""
        ...

    def monotonic_ms(self) -> int:
        """Milliseconds from an arbitrary origin that never jump (NTP steps do not move it)."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


class FakeClock:
    """A clock that moves only when told to (thread-safe: tests move it from their own threads)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = start_ms
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return self._now_ms

    def monotonic_ms(self) -> int:
        return self.now_ms()

    def advance(self, delta_ms: int) -> None:
        with self._lock:
            self._now_ms += delta_ms


class LeaderTime:
    """The time a leader stamps: continuous across leaders (see the module docstring)."""

    def __init__(self, clock: Clock, grace_ms: int = 5_000) -> None:
        self._clock = clock
        self._grace_ms = grace_ms
        self._term = -1
        self._base_ms = 0
        self._base_monotonic_ms = 0

    def start_term(self, term: int, last_stamp_ms: int) -> None:
        """Called when this node leads ``term``; ``last_stamp_ms`` is the latest applied stamp."""
        if term == self._term:
            return
        self._term = term
        now_ms = self._clock.now_ms()
        # A new cluster (nothing stamped yet) starts at the wall clock, not behind it: every
        # millisecond of lag would use up the grace that later failovers need.
        self._base_ms = max(last_stamp_ms, now_ms - self._grace_ms) if last_stamp_ms else now_ms
        self._base_monotonic_ms = self._clock.monotonic_ms()

    def now_ms(self) -> int:
        if self._term < 0:
            return self._clock.now_ms()
        return self._base_ms + self._clock.monotonic_ms() - self._base_monotonic_ms
