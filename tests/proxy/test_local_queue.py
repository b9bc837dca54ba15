"""LocalQueue: the machine in-process, woken by one timer exactly when a deadline is due."""

from __future__ import annotations

import asyncio
import time

from harness import async_wait_until

from jobqueue.local import LocalQueue
from statemachine import commands as sm
from statemachine import replies as r


def test_a_waiting_reserve_is_woken_when_a_delayed_job_ripens_not_on_a_poll():
    async def scenario() -> list[tuple[float, r.Wakeup]]:
        queue = LocalQueue()
        woken: list[tuple[float, r.Wakeup]] = []
        queue.subscribe("p", lambda w: woken.append((time.monotonic(), w)))
        await queue.apply(sm.Connect("p-1", "p"))
        await queue.apply(sm.Put("default", 0, 300, 60_000, b"x", "p-1", "put-1"))
        started = time.monotonic()
        assert await queue.apply(sm.Reserve("p-1", None, "res-1")) == r.Waiting()
        await async_wait_until(lambda: woken, 5, "the wake-up", poll_s=0.005)
        await queue.close()
        return [(at - started, w) for at, w in woken]

    woken = asyncio.run(scenario())
    assert [w for _, w in woken] == [r.Wakeup("p-1", "p", "res-1", r.Reserved(1, b"x"))]
    assert 0.29 <= woken[0][0] < 2


async def test_an_idle_queue_arms_no_timer() -> None:
    queue = LocalQueue()
    await queue.apply(sm.Connect("p-1", "p"))
    assert queue.machine.next_deadline_ms() is None
    assert queue._timer is None
    await queue.apply(sm.Put("default", 0, 60_000, 60_000, b"x", "p-1", "put-1"))
    assert queue._timer is not None
    await queue.apply(sm.Delete("p-1", 1))
    assert queue._timer is None
    await queue.close()


def test_a_reserve_with_timeout_times_out_through_the_timer():
    async def scenario() -> list[r.Wakeup]:
        queue = LocalQueue()
        woken: list[r.Wakeup] = []
        queue.subscribe("p", woken.append)
        await queue.apply(sm.Connect("p-1", "p"))
        assert await queue.apply(sm.Reserve("p-1", 200, "res-1", True)) == r.Waiting()
        await asyncio.sleep(0.5)  # the scenario: the 200 ms reserve timeout elapses
        await queue.close()
        return woken

    assert asyncio.run(scenario()) == [r.Wakeup("p-1", "p", "res-1", r.TimedOut())]
