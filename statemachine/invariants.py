"""check_state: the machine's structures agree with each other (an AssertionError if not).

Theory of operation: a slow, independent recount of everything the transitions keep
incrementally. Tests call it after every step; it is O(jobs + clients + heap entries).
What it asserts:
- every job is in exactly one place, the one its state names, and no job is in two;
- each tube's counts equal the sizes of what they count; every ready/delayed job has a valid
  heap entry; a tube exists iff something refers to it (default always);
- list-tubes slots are consistent; clients' used/watched tubes exist; watch lists have no
  duplicates; using/watching counts equal the clients' references;
- waits: the waiting index, each tube's waiters (in arrival order) and the clients agree; no
  waiting client has a ready job in a watched, unpaused tube (matching is never late);
- every deadline that exists has an entry in its heap (so no event is forgotten).
"""

from __future__ import annotations

from statemachine.jobs import BURIED, DELAYED, ID_MASK, KEY_SHIFT, READY, RESERVED, STATE_NAMES, Job
from statemachine.limits import DEFAULT_TUBE, URGENT_PRIORITY_LIMIT
from statemachine.state import State
from statemachine.tubes import Tube


def check_state(state: State) -> None:
    _check_tubes_registry(state)
    _check_jobs(state)
    _check_clients(state)
    _check_waits(state)
    _check_heaps(state)
    _check_records(state)
    assert all(j < state.next_job_id for j in state.jobs), "a job id is not below next_job_id"


def _check_records(state: State) -> None:
    records = state.records
    assert len(records.finished) <= records.max_finished, "more finished records than kept"
    previous_ms = -1
    for job_id, ended_ms in records.finished.items():
        record = records.by_id.get(job_id)
        assert record is not None, f"finished record {job_id} is not stored"
        assert record.final_status, f"record {job_id} is listed as finished without a status"
        assert ended_ms == record.ended_ms >= previous_ms, f"finished order at {job_id}"
        assert ended_ms + records.max_age_ms >= state.now_ms, f"record {job_id} outlived its age"
        previous_ms = ended_ms
    for job_id, record in records.by_id.items():
        assert record.job_id == job_id, f"record {job_id} is stored as {record.job_id}"
        assert job_id < state.next_job_id, f"record {job_id} is not below next_job_id"
        assert bool(record.final_status) == (job_id in records.finished), (
            f"record {job_id}: final status and the finished list disagree"
        )
        assert record.ended_attempt <= record.attempt, f"record {job_id} ended a future attempt"


def _check_tubes_registry(state: State) -> None:
    assert DEFAULT_TUBE in state.tubes, "the default tube is gone"
    assert len(state.tubes) == len(state.tube_order), "tube map and list-tubes order differ"
    for slot, tube in enumerate(state.tube_order):
        assert tube.slot == slot, f"tube {tube.name} has slot {tube.slot}, is at {slot}"
        assert state.tubes[tube.name] is tube, f"tube {tube.name} is not the registered one"
        assert tube.is_referenced(), f"tube {tube.name} is unreferenced but not freed"
        paused = tube.pause_until_ms is not None
        assert paused == (tube.name in state.paused), f"tube {tube.name} pause index"
        assert paused or tube.pause_ms == 0, f"tube {tube.name} unpaused with pause_ms"


def _count_jobs(state: State) -> dict[str, list[int]]:
    counts = {tube.name: [0, 0, 0, 0, 0] for tube in state.tube_order}  # r, d, res, b, urgent
    for job_id, job in state.jobs.items():
        assert job.id == job_id, f"job {job_id} is stored as {job.id}"
        assert state.tubes.get(job.tube.name) is job.tube, f"job {job_id}'s tube is freed"
        counts[job.tube.name][job.state] += 1
        if job.state == READY and job.priority < URGENT_PRIORITY_LIMIT:
            counts[job.tube.name][4] += 1
        _check_job_place(job)
    return counts


def _check_job_place(job: Job) -> None:
    assert 0 <= job.state < len(STATE_NAMES), f"job {job.id} is between places ({job.state})"
    in_buried = job.id in job.tube.buried
    assert in_buried == (job.state == BURIED), f"job {job.id} buried FIFO vs state"
    if job.state == RESERVED:
        assert job.holder is not None, f"reserved job {job.id} has no holder"
        assert job.holder.reserved.get(job.id) is job, f"job {job.id} not in holder's set"
        assert job.deadline_ms > 0, f"reserved job {job.id} has no deadline"
    else:
        assert job.holder is None, f"job {job.id} is {job.state} but has a holder"
    if job.state in (READY, BURIED):
        assert job.deadline_ms == 0, f"job {job.id} keeps a stale deadline"


def _check_jobs(state: State) -> None:
    counts = _count_jobs(state)
    for tube in state.tube_order:
        ready, delayed, reserved, buried, urgent = counts[tube.name]
        got = (tube.ready_count, tube.delayed_count, tube.reserved_count, len(tube.buried))
        assert got == (ready, delayed, reserved, buried), f"tube {tube.name} counts {got}"
        assert tube.urgent_count == urgent, f"tube {tube.name} urgent count"
        _check_tube_heaps(state, tube)


def _check_tube_heaps(state: State, tube: Tube) -> None:
    valid_ready = {
        k & ID_MASK
        for k in tube.ready
        if (j := state.jobs.get(k & ID_MASK)) is not None
        and j.state == READY
        and j.priority == k >> KEY_SHIFT
    }
    assert len(valid_ready) == tube.ready_count, f"tube {tube.name}: ready heap misses a job"
    if tube.ready_count and tube.top >= 0:
        best = min(state.jobs[i].ready_key() for i in valid_ready)
        assert tube.top == best, f"tube {tube.name}: cached top {tube.top} is not {best}"
    if tube.ready_count and tube.pause_until_ms is None:
        assert tube.top >= 0, f"unpaused tube {tube.name} has ready jobs but no known top"
        assert tube.top in state.ready_tops, f"tube {tube.name}'s top is not in ready_tops"
    valid_delayed = {
        k & ID_MASK
        for k in tube.delayed
        if (j := state.jobs.get(k & ID_MASK)) is not None
        and j.state == DELAYED
        and j.deadline_ms == k >> KEY_SHIFT
    }
    assert len(valid_delayed) == tube.delayed_count, f"tube {tube.name}: delayed heap misses"


def _check_clients(state: State) -> None:
    using = dict.fromkeys(state.tubes, 0)
    watching = dict.fromkeys(state.tubes, 0)
    for client_id, client in state.clients.items():
        assert client.id == client_id, f"client {client_id} stored as {client.id}"
        assert state.tubes.get(client.used.name) is client.used, f"{client_id} uses a freed tube"
        using[client.used.name] += 1
        names = [t.name for t in client.watched]
        assert names, f"client {client_id} watches nothing"
        assert len(names) == len(set(names)), f"client {client_id} watches a tube twice"
        assert client.watch_set == set(client.watched), f"client {client_id} watch set"
        for tube in client.watched:
            assert state.tubes.get(tube.name) is tube, f"{client_id} watches a freed tube"
            watching[tube.name] += 1
        for job_id, job in client.reserved.items():
            assert job.state == RESERVED and job.holder is client, f"{client_id} job {job_id}"
            assert state.jobs.get(job_id) is job, f"{client_id} holds deleted job {job_id}"
    for tube in state.tube_order:
        assert tube.using_count == using[tube.name], f"tube {tube.name} current-using"
        assert tube.watching_count == watching[tube.name], f"tube {tube.name} current-watching"


def _check_waits(state: State) -> None:
    seqs = list(state.waiting)
    assert seqs == sorted(seqs), "waiting clients are not in arrival order"
    assert all(s < state.next_wait_seq for s in seqs), "a wait seq is not below next_wait_seq"
    for seq, client in state.waiting.items():
        assert client.wait_seq == seq, f"client {client.id} waits as {client.wait_seq}"
        assert state.clients.get(client.id) is client, f"waiting client {client.id} is gone"
        for tube in client.watched:
            assert tube.waiters.get(seq) is client, f"{client.id} missing from {tube.name}"
            ready = tube.ready_count and tube.pause_until_ms is None
            assert not ready, f"{client.id} waits while tube {tube.name} has a ready job"
    for client in state.clients.values():
        if not client.wait_seq:
            assert client.wait_deadline_ms is None, f"{client.id} has a stale wait deadline"
    for tube in state.tube_order:
        keys = list(tube.waiters)
        assert keys == sorted(keys), f"tube {tube.name} waiters out of arrival order"
        for seq, client in tube.waiters.items():
            assert state.waiting.get(seq) is client, f"tube {tube.name} has a stale waiter"
            assert client.watches(tube), f"{client.id} waits on unwatched {tube.name}"


def _check_heaps(state: State) -> None:
    delayed = sum(t.delayed_count for t in state.tube_order)
    reserved = sum(t.reserved_count for t in state.tube_order)
    assert state.delayed_total == delayed, f"delayed_total {state.delayed_total} != {delayed}"
    assert state.reserved_total == reserved, f"reserved_total {state.reserved_total} != {reserved}"
    ttr = set(state.ttr_heap)
    delay = set(state.delay_heap)
    for job in state.jobs.values():
        if job.state == RESERVED:
            assert job.deadline_key() in ttr, f"reserved job {job.id} has no TTR entry"
        elif job.state == DELAYED:
            assert job.deadline_key() in delay, f"delayed job {job.id} has no delay entry"
    waits = set(state.wait_heap)
    soons = set(state.soon_heap)
    for seq, client in state.waiting.items():
        if client.wait_deadline_ms is not None:
            assert client.wait_deadline_ms << KEY_SHIFT | seq in waits, f"{client.id} wait"
        soon_ms = client.soon_ms()
        if soon_ms is not None:
            assert soon_ms << KEY_SHIFT | seq in soons, f"{client.id} deadline-soon entry"
