"""LocalQueue: the JobQueue with the state machine in-process (no Raft).

For ``beanraft proxy --standalone`` and for tests. It does what a cluster's leader does, on
one event loop: stamps each command with its clock, applies it, hands the outcome's wake-ups to
the subscribers of each proxy, and keeps one asyncio timer armed for the machine's
``next_deadline_ms()``, applying ``Tick`` when it is due. So a delayed job ripens, a TTR runs
out or a reserve times out within a millisecond or two of its deadline, never on a periodic
poll, and an idle queue does nothing at all.

Rule: every apply (commands and ticks) runs on the loop thread, one at a time; the machine is
never touched from anywhere else.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import structlog

from jobqueue.interface import WakeupHandler
from statemachine.commands import Command, Tick
from statemachine.machine import JobStateMachine, MachineConfig
from statemachine.replies import Reply

log = structlog.get_logger(__name__)


class Clock(Protocol):
    """What LocalQueue reads time from (``cluster.clock``'s clocks are such; tests pass a
    fake one)."""

    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class LocalQueue:
    """The machine in-process. ``apply`` is a coroutine only to satisfy ``JobQueue``; it never
    waits for anything."""

    def __init__(
        self,
        config: MachineConfig | None = None,
        clock: Clock | None = None,
        machine: JobStateMachine | None = None,
    ) -> None:
        self.machine = machine or JobStateMachine(config or MachineConfig())
        self._clock = clock or SystemClock()
        self._handlers: dict[str, list[WakeupHandler]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due_ms: int | None = None
        self._closed = False

    async def apply(self, command: Command) -> Reply:
        return self.apply_now(command)

    def apply_now(self, command: Command) -> Reply:
        """Apply at the clock's time, deliver wake-ups, re-arm the timer; return the reply."""
        outcome = self.machine.apply(command, self._clock.now_ms())
        for wakeup in outcome.wakeups:
            for handler in self._handlers.get(wakeup.proxy_id, ()):
                handler(wakeup)
        self._arm_timer()
        return outcome.reply

    def subscribe(self, proxy_id: str, handler: WakeupHandler) -> None:
        self._handlers.setdefault(proxy_id, []).append(handler)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm_timer(self) -> None:
        due_ms = self.machine.next_deadline_ms()
        if self._closed or due_ms == self._timer_due_ms:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_due_ms = due_ms
        if due_ms is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # applied outside a loop (a synchronous test): no timer
            self._timer_due_ms = None
            return
        delay_s = max(0.0, (due_ms - self._clock.now_ms()) / 1000)
        self._timer = loop.call_later(delay_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due_ms = None
        if self._closed:
            return
        due_ms = self.machine.next_deadline_ms()
        if due_ms is not None and due_ms > self._clock.now_ms():
            # The loop's timer fired a hair early on the wall clock: wait the rest.
            self._arm_timer()
            return
        try:
            self.apply_now(Tick())
        except Exception:
            log.exception("tick_failed")
            raise
