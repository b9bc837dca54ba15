"""Due events: what happens when time passes, in the order machine.py's step 2 states.

Theory of operation: ``advance(state, now_ms)`` processes every event whose instant is at or
before ``now_ms`` as if time stepped through each distinct instant ``t`` in ascending order, so
that one late Tick leaves the same state as many timely ones. At each instant (machine time set
to ``t``, never back), in this fixed kind order:

1. proxy lease expiries: every client of the proxy disconnects (proxies by id, clients in
   connect order);
2. TTR expiries: reserved -> ready, timeouts and job-timeouts grow (by job id);
3. delay expiries: delayed -> ready (by job id);
4. pause ends: the tube unpauses (by name);
5. matching;
6. reserve timeouts: Wakeup(TimedOut), in wait-arrival order;
7. deadline soon: a waiting client whose held job is in its last second gets
   Wakeup(DeadlineSoon), in wait-arrival order.

``next_event_ms`` is the earliest instant of any pending event (it may lie in the past for a
deadline-soon instant that had passed when its client started waiting; such an instant is
processed at machine time). Heaps use lazy deletion, so each top is validated first:
- TTR entry (deadline, id): the job is reserved with that deadline;
- delay entry (ready time, id): the job is delayed with that ready time;
- wait entry (deadline, seq): that wait is still going on;
- soon entry (instant, seq): that wait is going on and its client's soon instant is that one.
"""

from __future__ import annotations

from heapq import heappop

from statemachine.heaps import (
    JobRule,
    WaitRule,
    delayed_valid,
    soon_valid,
    ttr_valid,
    wait_valid,
)
from statemachine.jobs import ID_MASK, KEY_SHIFT
from statemachine.replies import DeadlineSoon, TimedOut
from statemachine.state import State


def _job_heap_top(state: State, heap: list[int], valid: JobRule) -> int | None:
    jobs = state.jobs
    while heap:
        key = heap[0]
        if valid(jobs, key):
            return key
        heappop(heap)
    return None


def _wait_heap_top(state: State, heap: list[int], valid: WaitRule) -> int | None:
    waiting = state.waiting
    while heap:
        key = heap[0]
        if valid(waiting, key):
            return key
        heappop(heap)
    return None


def next_event_ms(state: State) -> int | None:
    """The earliest instant at which any pending event happens, or None."""
    earliest: int | None = None
    if state.ttr_heap and (key := _job_heap_top(state, state.ttr_heap, ttr_valid)) is not None:
        earliest = key >> KEY_SHIFT
    if state.delay_heap:
        earliest = _earlier(earliest, _job_heap_top(state, state.delay_heap, delayed_valid))
    if state.waiting:
        earliest = _earlier(earliest, _wait_heap_top(state, state.wait_heap, wait_valid))
        earliest = _earlier(earliest, _wait_heap_top(state, state.soon_heap, soon_valid))
    if state.leases:
        lease_ms = min(state.leases.values())
        if earliest is None or lease_ms < earliest:
            earliest = lease_ms
    for tube in state.paused.values():
        assert tube.pause_until_ms is not None
        if earliest is None or tube.pause_until_ms < earliest:
            earliest = tube.pause_until_ms
    if state.records.finished:
        expiry_ms = state.records.next_expiry_ms()
        if expiry_ms is not None and (earliest is None or expiry_ms < earliest):
            earliest = expiry_ms
    return earliest


def _earlier(earliest: int | None, key: int | None) -> int | None:
    if key is None:
        return earliest
    instant = key >> KEY_SHIFT
    return instant if earliest is None or instant < earliest else earliest


def advance(state: State, now_ms: int) -> None:
    """Process every event due at or before ``now_ms`` (clamped), then set machine time."""
    now_ms = max(now_ms, state.now_ms)
    while True:
        instant = next_event_ms(state)
        if instant is None or instant > now_ms:
            break
        instant = max(instant, state.now_ms)
        state.now_ms = instant
        _process_instant(state, instant)
    state.now_ms = now_ms


def _process_instant(state: State, t: int) -> None:
    _expire_leases(state, t)
    _expire_ttrs(state, t)
    _expire_delays(state, t)
    _end_pauses(state, t)
    state.match()
    _time_out_waits(state, t)
    _wake_deadline_soon(state, t)
    if state.records.finished:
        state.records.expire(t)


def _expire_leases(state: State, t: int) -> None:
    expired = sorted(proxy for proxy, expiry in state.leases.items() if expiry <= t)
    for proxy_id in expired:
        del state.leases[proxy_id]
        state.disconnect_proxy(proxy_id)


def _expire_ttrs(state: State, t: int) -> None:
    """beanstalkd 8.2: back to ready with its priority, whatever state it came from."""
    counters = state.counters
    while True:
        key = _job_heap_top(state, state.ttr_heap, ttr_valid)
        if key is None or key >> KEY_SHIFT > t:
            return
        heappop(state.ttr_heap)
        job = state.jobs[key & ID_MASK]
        state.leave_place(job)
        job.timeouts += 1
        counters.job_timeouts += 1
        state.enter_ready(job)


def _expire_delays(state: State, t: int) -> None:
    while True:
        key = _job_heap_top(state, state.delay_heap, delayed_valid)
        if key is None or key >> KEY_SHIFT > t:
            return
        heappop(state.delay_heap)
        job = state.jobs[key & ID_MASK]
        state.leave_place(job)
        state.enter_ready(job)


def _end_pauses(state: State, t: int) -> None:
    for name in sorted(state.paused):
        tube = state.paused[name]
        assert tube.pause_until_ms is not None
        if tube.pause_until_ms <= t:
            state.unpause(tube)


def _time_out_waits(state: State, t: int) -> None:
    while True:
        key = _wait_heap_top(state, state.wait_heap, wait_valid)
        if key is None or key >> KEY_SHIFT > t:
            return
        heappop(state.wait_heap)
        state.wake(state.waiting[key & ID_MASK], TimedOut())


def _wake_deadline_soon(state: State, t: int) -> None:
    """Instants before ``t`` may still be here (clamped ones), so collect every due entry
    first and wake the clients in arrival order, as beanstalkd does."""
    due: list[int] = []
    while True:
        key = _wait_heap_top(state, state.soon_heap, soon_valid)
        if key is None or key >> KEY_SHIFT > t:
            break
        heappop(state.soon_heap)
        due.append(key & ID_MASK)
    for seq in sorted(set(due)):
        client = state.waiting.get(seq)
        if client is not None:
            state.wake(client, DeadlineSoon())
