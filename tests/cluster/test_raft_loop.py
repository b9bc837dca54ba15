"""pysyncobj on the node's loop (cluster/raft_loop.py): its poller and its ticks."""

from __future__ import annotations

import asyncio
import socket

import pytest
from harness import async_wait_until

from cluster import raft_loop
from cluster.raft_loop import READ, WRITE, LoopPoller, RaftDriver


async def test_a_ready_socket_runs_its_handler_and_asks_for_a_tick() -> None:
    loop = asyncio.get_running_loop()
    driver = RaftDriver(loop)
    ticks: list[int] = []
    poller = LoopPoller(loop, driver.wake)
    seen: list[tuple[int, int]] = []
    ours, theirs = socket.socketpair()

    def handler(fd: int, event: int) -> None:
        seen.append((fd, event))
        ours.recv(64)

    def tick() -> bool:
        ticks.append(1)
        return False

    try:
        ours.setblocking(False)
        poller.subscribe(ours.fileno(), handler, READ)
        driver.start(tick)
        await async_wait_until(lambda: ticks, 1, "the first (timer) tick")
        before = len(ticks)
        theirs.send(b"x")
        await async_wait_until(lambda: seen, 1, "the handler to run")
        await async_wait_until(lambda: len(ticks) > before, 1, "a tick after the event")
        assert seen[0] == (ours.fileno(), READ)
    finally:
        driver.stop()
        poller.unsubscribe(ours.fileno())
        ours.close()
        theirs.close()


async def test_events_in_one_loop_iteration_make_one_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_loop, "TICK_PERIOD_S", 60.0)  # no timer tick meanwhile
    driver = RaftDriver(asyncio.get_running_loop())
    ticks: list[int] = []

    def tick() -> bool:
        ticks.append(1)
        return False

    driver.start(tick)  # asks for the first tick
    for _ in range(5):
        driver.wake()  # five sockets ready in the same iteration
    await asyncio.sleep(0.05)
    assert len(ticks) == 1
    driver.stop()


async def test_the_driver_ticks_again_at_once_while_entries_are_left_to_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(raft_loop, "TICK_PERIOD_S", 60.0)  # only the re-ticks can make them
    driver = RaftDriver(asyncio.get_running_loop())
    left = [True, True, True]
    calls: list[int] = []

    def tick() -> bool:
        calls.append(1)
        return left.pop() if left else False

    driver.start(tick)
    await async_wait_until(lambda: len(calls) >= 4, 5, "three more ticks, one per slice left")
    await asyncio.sleep(0.05)
    assert len(calls) == 4  # and none once nothing is left
    driver.stop()


async def test_a_failing_tick_is_logged_and_the_next_one_still_runs() -> None:
    loop = asyncio.get_running_loop()
    driver = RaftDriver(loop)
    calls: list[int] = []

    def tick() -> bool:
        calls.append(1)
        raise RuntimeError("a bug in a tick")

    driver.start(tick)
    await async_wait_until(lambda: len(calls) >= 2, 1, "a second (timer) tick")
    driver.stop()


async def test_a_socket_closed_before_it_is_unsubscribed_is_forgotten_and_its_fd_reusable() -> None:
    loop = asyncio.get_running_loop()
    poller = LoopPoller(loop, lambda: None)
    first, peer = socket.socketpair()
    fd = first.fileno()
    poller.subscribe(fd, lambda fd, event: None, READ | WRITE)
    first.close()  # pysyncobj sometimes closes before it unsubscribes
    poller.unsubscribe(fd)  # must not raise (EBADF from the selector's modify)
    again, peer2 = socket.socketpair()
    try:
        seen: list[int] = []
        poller.subscribe(again.fileno(), lambda fd, event: seen.append(event), WRITE)
        await async_wait_until(lambda: seen, 1, "the new socket to be writable")
        assert seen[0] == WRITE
    finally:
        poller.unsubscribe(again.fileno())
        for s in (peer, again, peer2):
            s.close()
