"""Clocks: the only place the cluster reads time (the state machine never does).

The leader stamps ``now_ms`` from its ``Clock`` on every command it proposes; the machine clamps
it so that time never runs backwards across leaders. Tests inject ``FakeClock`` to move time.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock milliseconds since the Unix epoch."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FakeClock:
    """A clock that moves only when told to (thread-safe: the tick thread and tests share it)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = start_ms
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return self._now_ms

    def advance(self, delta_ms: int) -> None:
        with self._lock:
            self._now_ms += delta_ms
