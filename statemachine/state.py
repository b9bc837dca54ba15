"""The machine's state and the transitions every command and event is built from.

Theory of operation: ``State`` holds everything that is replicated (jobs, tubes, clients,
leases, waits, counters, records) plus indexes derived from it (heaps). Command
handlers (``ops_*``) and the event loop (``events``) change it only through the transitions
here, which keep every count and index in step:

- a job leaves its place with ``leave_place`` and enters one with ``enter_ready``,
  ``enter_delayed``, ``enter_buried`` or ``enter_reserved``;
- a client starts and ends a wait with ``start_wait`` and ``end_wait``; ``wake`` ends it with a
  ``Wakeup`` in the outcome;
- ``match`` hands ready jobs to waiting clients (after every command, never on a later tick);
- tubes come into being with ``tube_for`` and are freed by ``free_if_unreferenced`` with
  beanstalkd's move-last removal from the list-tubes order.

Deadline heaps (global): ``ttr_heap`` (deadline, job id), ``delay_heap`` (ready time, job id),
``wait_heap`` (wait deadline, wait seq), ``soon_heap`` (deadline-soon instant, wait seq). All
use lazy deletion; ``events`` validates their tops.

Matching only looks at "dirty" tubes: tubes that had waiters when a job became ready in them or
when they were unpaused. After every apply no waiting client has a ready job in a watched,
unpaused tube, so no other tube can offer a match.
"""

from __future__ import annotations

from heapq import heappop, heappush

from statemachine.counters import Counters
from statemachine.heaps import (
    compact_jobs,
    compact_waits,
    delayed_valid,
    needs_compaction,
    ready_valid,
    soon_valid,
    ttr_valid,
    wait_valid,
)
from statemachine.jobs import BURIED, DELAYED, ID_MASK, KEY_SHIFT, MOVING, READY, RESERVED, Job
from statemachine.limits import DEFAULT_MAX_JOB_SIZE, DEFAULT_TUBE, URGENT_PRIORITY_LIMIT
from statemachine.records import Records
from statemachine.replies import Reserved, WaitResult, Wakeup
from statemachine.sessions import Client, remove_moving_last
from statemachine.tubes import Tube


class State:
    """Everything the machine knows. See the module docstring."""

    def __init__(self, max_job_size: int = DEFAULT_MAX_JOB_SIZE) -> None:
        self.max_job_size = max_job_size
        self.now_ms = 0
        self.next_job_id = 1
        self.next_wait_seq = 1
        self.jobs: dict[int, Job] = {}
        self.tubes: dict[str, Tube] = {}
        self.tube_order: list[Tube] = []
        self.clients: dict[str, Client] = {}  # in connect order
        self.leases: dict[str, int] = {}  # proxy id -> lease expiry
        self.waiting: dict[int, Client] = {}  # wait seq -> client, in arrival order
        self.paused: dict[str, Tube] = {}
        self.ttr_heap: list[int] = []
        self.delay_heap: list[int] = []
        self.wait_heap: list[int] = []
        self.soon_heap: list[int] = []
        # Every unpaused tube's best ready key (stale entries dropped lazily): its valid top
        # is the best ready job of the whole machine, which a client watching many tubes wants.
        self.ready_tops: list[int] = []
        self.delayed_total = 0  # live entries of delay_heap, for compaction
        self.reserved_total = 0  # live entries of ttr_heap, for compaction
        self.counters = Counters()
        self.wakeups: list[Wakeup] = []
        self.dirty: dict[str, Tube] = {}
        self.records = Records()  # the job API's records (statemachine.records)
        self.tube_for(DEFAULT_TUBE)

    # --- tubes -------------------------------------------------------------------------------

    def tube_for(self, name: str) -> Tube:
        """The tube called ``name``, created (at the end of list-tubes) if it does not exist."""
        tube = self.tubes.get(name)
        if tube is None:
            tube = Tube(name, len(self.tube_order))
            self.tubes[name] = tube
            self.tube_order.append(tube)
        return tube

    def free_if_unreferenced(self, tube: Tube) -> None:
        """Free a tube nothing refers to; it loses its pause and counters (beanstalkd 5.2)."""
        if tube.is_referenced() or self.tubes.get(tube.name) is not tube:
            return
        slot = tube.slot
        remove_moving_last(self.tube_order, slot)
        if slot < len(self.tube_order):
            self.tube_order[slot].slot = slot
        del self.tubes[tube.name]
        self.paused.pop(tube.name, None)
        self.dirty.pop(tube.name, None)

    def unpause(self, tube: Tube) -> None:
        tube.pause_until_ms = None
        tube.pause_ms = 0
        self.paused.pop(tube.name, None)
        self.publish_top(tube)
        if tube.waiters:
            self.dirty[tube.name] = tube

    # --- job places --------------------------------------------------------------------------

    def leave_place(self, job: Job) -> None:
        """Take a job out of wherever it is (heap entries go stale and are dropped lazily)."""
        tube = job.tube
        state = job.state
        job.state = MOVING
        if state == READY:
            tube.ready_count -= 1
            if job.priority < URGENT_PRIORITY_LIMIT:
                tube.urgent_count -= 1
            if needs_compaction(tube.ready, tube.ready_count):
                compact_jobs(tube.ready, self.jobs, ready_valid)
            if tube.top == job.priority << KEY_SHIFT | job.id:
                tube.top = -1
                self.publish_top(tube)
        elif state == DELAYED:
            tube.delayed_count -= 1
            self.delayed_total -= 1
            job.deadline_ms = 0
            if needs_compaction(tube.delayed, tube.delayed_count):
                compact_jobs(tube.delayed, self.jobs, delayed_valid)
            if needs_compaction(self.delay_heap, self.delayed_total):
                compact_jobs(self.delay_heap, self.jobs, delayed_valid)
        elif state == BURIED:
            del tube.buried[job.id]
        else:
            self._leave_reserved(job)

    def publish_top(self, tube: Tube) -> None:
        """Index an unpaused tube's (new) best ready key in ``ready_tops``."""
        if tube.ready_count and tube.pause_until_ms is None:
            heappush(self.ready_tops, tube.top_ready_key(self.jobs))
            if needs_compaction(self.ready_tops, len(self.tube_order)):
                compact_jobs(self.ready_tops, self.jobs, self.top_valid)

    def top_valid(self, jobs: dict[int, Job], key: int) -> bool:
        job = jobs.get(key & ID_MASK)
        return (
            job is not None
            and job.state == READY
            and job.tube.top == key
            and job.tube.pause_until_ms is None
        )

    def best_ready_key(self) -> int | None:
        """The key of the best ready job in any unpaused tube, or None."""
        heap = self.ready_tops
        jobs = self.jobs
        while heap:
            key = heap[0]
            job = jobs.get(key & ID_MASK)
            # top_valid, inlined: this runs on every reserve of a many-tube worker.
            if (
                job is not None
                and job.state == READY
                and job.tube.top == key
                and job.tube.pause_until_ms is None
            ):
                return key
            heappop(heap)
        return None

    def _leave_reserved(self, job: Job) -> None:
        holder = job.holder
        assert holder is not None, f"reserved job {job.id} has no holder"
        del holder.reserved[job.id]
        job.tube.reserved_count -= 1
        self.reserved_total -= 1
        job.holder = None
        job.deadline_ms = 0
        if needs_compaction(self.ttr_heap, self.reserved_total):
            compact_jobs(self.ttr_heap, self.jobs, ttr_valid)
        if holder.wait_seq:
            self.push_soon(holder)

    def enter_ready(self, job: Job) -> None:
        job.state = READY
        tube = job.tube
        key = job.priority << KEY_SHIFT | job.id
        heappush(tube.ready, key)
        count = tube.ready_count
        tube.ready_count = count + 1
        if count == 0 or 0 <= key < tube.top:
            tube.top = key
            if tube.pause_until_ms is None:
                heappush(self.ready_tops, key)
        if job.priority < URGENT_PRIORITY_LIMIT:
            tube.urgent_count += 1
        if tube.waiters:
            self.dirty[tube.name] = tube

    def enter_delayed(self, job: Job, ready_at_ms: int) -> None:
        job.state = DELAYED
        job.deadline_ms = ready_at_ms
        job.tube.delayed_count += 1
        self.delayed_total += 1
        key = ready_at_ms << KEY_SHIFT | job.id
        heappush(job.tube.delayed, key)
        heappush(self.delay_heap, key)

    def enter_buried(self, job: Job) -> None:
        job.state = BURIED
        job.tube.buried[job.id] = job

    def enter_reserved(self, job: Job, client: Client) -> None:
        """Reserve a job (out of its place already) for a client: TTR starts now."""
        job.state = RESERVED
        job.holder = client
        deadline_ms = self.now_ms + job.ttr_ms
        job.deadline_ms = deadline_ms
        job.reserves += 1
        job.tube.reserved_count += 1
        self.reserved_total += 1
        client.reserved[job.id] = job
        heappush(self.ttr_heap, deadline_ms << KEY_SHIFT | job.id)
        if client.wait_seq:
            self.push_soon(client)

    def restart_ttr(self, job: Job, client: Client) -> None:
        """touch: the TTR deadline becomes now + ttr (the old TTR entry goes stale)."""
        job.deadline_ms = self.now_ms + job.ttr_ms
        heappush(self.ttr_heap, job.deadline_ms << KEY_SHIFT | job.id)
        if needs_compaction(self.ttr_heap, self.reserved_total):
            compact_jobs(self.ttr_heap, self.jobs, ttr_valid)
        if client.wait_seq:
            self.push_soon(client)

    def take_top_ready(self, tube: Tube, key: int) -> Job:
        """Pop the ready job whose valid top key is ``key`` from its tube."""
        heappop(tube.ready)
        job = self.jobs[key & ID_MASK]
        self.leave_place(job)
        return job

    def remove_job(self, job: Job) -> None:
        """Delete a job from the machine for good."""
        self.leave_place(job)
        del self.jobs[job.id]
        self.free_if_unreferenced(job.tube)

    # --- waits -------------------------------------------------------------------------------

    def start_wait(self, client: Client, deadline_ms: int | None, request_id: str) -> None:
        seq = self.next_wait_seq
        self.next_wait_seq = seq + 1
        client.wait_seq = seq
        client.wait_deadline_ms = deadline_ms
        client.wait_request_id = request_id
        self.waiting[seq] = client
        for tube in client.watched:
            tube.waiters[seq] = client
        if deadline_ms is not None:
            heappush(self.wait_heap, deadline_ms << KEY_SHIFT | seq)
        self.push_soon(client)

    def end_wait(self, client: Client) -> None:
        seq = client.wait_seq
        del self.waiting[seq]
        for tube in client.watched:
            del tube.waiters[seq]
        client.wait_seq = 0
        client.wait_deadline_ms = None
        client.wait_request_id = ""
        live = len(self.waiting)
        if needs_compaction(self.wait_heap, live):
            compact_waits(self.wait_heap, self.waiting, wait_valid)
        if needs_compaction(self.soon_heap, live):
            compact_waits(self.soon_heap, self.waiting, soon_valid)

    def wake(self, client: Client, result: WaitResult) -> None:
        """End a client's wait and tell its proxy the answer (a Wakeup in the outcome)."""
        request_id = client.wait_request_id
        self.end_wait(client)
        self.wakeups.append(Wakeup(client.id, client.proxy_id, request_id, result))

    def push_soon(self, client: Client) -> None:
        """(Re)index when a waiting client's held jobs enter their last second."""
        soon_ms = client.soon_ms()
        if soon_ms is not None:
            heappush(self.soon_heap, soon_ms << KEY_SHIFT | client.wait_seq)

    # --- matching ----------------------------------------------------------------------------

    def match(self) -> None:
        """Hand the globally best ready job to the earliest waiter watching its tube, repeatedly
        (beanstalkd's process_queue, made strictly FIFO and deterministic)."""
        dirty = self.dirty
        if not dirty:
            return
        jobs = self.jobs
        while True:
            best_tube: Tube | None = None
            best_key = 0
            for tube in dirty.values():
                if tube.waiters and tube.ready_count and tube.pause_until_ms is None:
                    key = tube.top if tube.top >= 0 else tube.top_ready_key(jobs)
                    if best_tube is None or key < best_key:
                        best_tube, best_key = tube, key
            if best_tube is None:
                break
            job = self.take_top_ready(best_tube, best_key)
            client = next(iter(best_tube.waiters.values()))
            request_id = client.wait_request_id
            self.end_wait(client)
            self.enter_reserved(job, client)
            self.wakeups.append(
                Wakeup(client.id, client.proxy_id, request_id, Reserved(job.id, job.body))
            )
        dirty.clear()

    # --- sessions ----------------------------------------------------------------------------

    def disconnect(self, client: Client) -> None:
        """beanstalkd's connection close: cancel the wait, return held jobs to ready (no
        counters), match, then drop the watch references (first entry repeatedly, ms.c's
        move-last removal) and finally the used tube, freeing tubes nothing refers to."""
        if client.wait_seq:
            self.end_wait(client)
        for job_id in sorted(client.reserved):
            job = client.reserved[job_id]
            self.leave_place(job)
            self.enter_ready(job)
        self.match()
        watched = client.watched
        while watched:
            tube = watched[0]
            remove_moving_last(watched, 0)
            client.watch_set.discard(tube)
            tube.watching_count -= 1
            self.free_if_unreferenced(tube)
        del self.clients[client.id]
        client.used.using_count -= 1
        self.free_if_unreferenced(client.used)

    def disconnect_proxy(self, proxy_id: str) -> None:
        """Disconnect every client of a proxy, in connect order."""
        for client in [c for c in self.clients.values() if c.proxy_id == proxy_id]:
            self.disconnect(client)
