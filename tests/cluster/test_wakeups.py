"""Wake-up streams resume by sequence number and say so when what was missed is gone."""

from __future__ import annotations

import asyncio
from collections import deque

from cluster.replicated import Wakeups
from cluster.wakeups import StreamEvent, WakeupHub


async def _take(hub: WakeupHub, proxy_id: str, after_seq: int, count: int) -> list[StreamEvent]:
    events = []
    async for event in hub.stream(proxy_id, after_seq):
        events.append(event)
        if len(events) == count:
            break
    return events


async def test_a_resumed_stream_gets_exactly_the_missed_wakeups_of_its_proxy() -> None:
    ring = Wakeups(deque(), 0)
    for proxy, body in [("a", b"1"), ("b", b"2"), ("a", b"3"), ("a", b"4")]:
        ring.append(proxy, body)
    hub = WakeupHub(asyncio.get_running_loop(), lambda: ring)
    events = await _take(hub, "a", 1, 3)
    assert events[0] == StreamEvent(1, b"")  # attached, resuming after 1
    assert [(e.seq, e.wakeup) for e in events[1:]] == [(3, b"3"), (4, b"4")]


async def test_a_stream_resuming_before_the_ring_start_gets_a_gap_then_what_is_left() -> None:
    ring = Wakeups(deque(), 0)
    for body in (b"1", b"2", b"3"):
        ring.append("a", body)
    for _ in range(2):  # wake-ups 1 and 2 were evicted (the ring is bounded)
        ring.size_bytes -= len(ring.ring.popleft()[2])
    hub = WakeupHub(asyncio.get_running_loop(), lambda: ring)
    attached, gap, third = await _take(hub, "a", 1, 3)
    assert attached == StreamEvent(1, b"")
    assert gap == StreamEvent(2, b"", gap=True)  # wake-up 2 is gone: recover clients
    assert third == StreamEvent(3, b"3")


async def test_new_wakeups_reach_a_waiting_stream_when_the_apply_thread_notifies() -> None:
    ring = Wakeups(deque(), 0)
    hub = WakeupHub(asyncio.get_running_loop(), lambda: ring)
    task = asyncio.create_task(_take(hub, "a", 0, 2))
    await asyncio.sleep(0.05)  # the scenario: the stream is already waiting when this comes
    ring.append("a", b"late")
    await asyncio.to_thread(hub.notify)  # as pysyncobj's tick thread does
    events = await asyncio.wait_for(task, 2)
    assert events[1] == StreamEvent(1, b"late")


async def test_a_stream_sends_heartbeats_while_only_other_proxies_get_wakeups(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A busy cluster notifies streams constantly with wake-ups for other proxies; the
    # heartbeat must still go out, or the idle proxy decides its stream is dead.
    monkeypatch.setattr("cluster.wakeups.HEARTBEAT_S", 0.3)

    ring = Wakeups(deque(), 0)
    hub = WakeupHub(asyncio.get_running_loop(), lambda: ring)

    async def busy_other_proxy() -> None:
        while True:
            await asyncio.sleep(0.05)  # pacing: a steady stream of other proxies' wake-ups
            ring.append("other", b"x")
            hub.notify()

    noise = asyncio.create_task(busy_other_proxy())
    try:
        events = await asyncio.wait_for(_take(hub, "quiet", 0, 3), 3)
    finally:
        noise.cancel()
    assert all(e.wakeup == b"" and not e.gap for e in events)  # attached, then heartbeats
    assert events[2].seq > events[1].seq >= events[0].seq  # each carries the cursor


def test_an_apply_that_adds_no_wakeup_does_not_wake_the_loop() -> None:
    """The tick thread calls notify after every entry; most entries add no wake-up, and
    waking every node's loop for each of them costs CPU the commit path needs."""

    class CountingLoop:
        def __init__(self) -> None:
            self.wakes = 0

        def call_soon_threadsafe(self, callback: object, *args: object) -> None:
            self.wakes += 1

    loop = CountingLoop()
    ring = Wakeups(deque(), 0)
    current = ring
    hub = WakeupHub(loop, lambda: current)  # type: ignore[arg-type]
    hub.notify()
    hub.notify()
    assert loop.wakes == 1  # the first look at the ring, then nothing new
    ring.append("a", b"1")
    hub.notify()
    hub.notify()
    assert loop.wakes == 2
    current = Wakeups(deque(), ring.last_seq)  # a snapshot installed: a new ring, same number
    hub.notify()
    assert loop.wakes == 3
