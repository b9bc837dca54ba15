"""A deliberately simple reference model of the job state machine: the rules its module
docstrings state, which are beanstalkd 1.12's.

Theory of operation: this is the executable form of the semantics, written to be obviously
right rather than fast. Jobs live in one flat list and carry their state as a field; tubes,
and clients are lists too; every query is a linear scan and every
"best" is a ``min`` over a list comprehension. There are no heaps, no indexes and no caches,
so there is nothing to keep in step: a job cannot be in two places because it has exactly one
``state`` field.

The hypothesis test (``test_model.py``) runs the same commands against this model and the real
``JobStateMachine`` and requires equal outcomes after every step. When they disagree the
semantics document decides, and beanstalkd 1.12 decides what it leaves open. Where this model
follows beanstalkd on a point those rules do not spell out, a comment says so.

It has the machine's API: ``apply(command, now_ms) -> Outcome``, ``next_deadline_ms()`` and a
``check_invariants()`` of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from statemachine import commands as c
from statemachine import replies as r

PRIORITY_MAX = 2**32 - 1
DELAY_MS_MAX = (2**32 - 1) * 1000
TTR_MS_MIN = 1000
RESERVE_TIMEOUT_MS_MAX = (2**31 - 1) * 1000
URGENT_PRIORITY = 1024
SAFETY_MARGIN_MS = 1000
TUBE_NAME_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-+/;.$_()"
)
DEFAULT_TUBE = "default"

# The cmd-* counters of ServerStats, each named by its field.
COUNTER_FIELDS = (
    "cmd_put",
    "cmd_peek",
    "cmd_peek_ready",
    "cmd_peek_delayed",
    "cmd_peek_buried",
    "cmd_reserve",
    "cmd_reserve_with_timeout",
    "cmd_delete",
    "cmd_release",
    "cmd_use",
    "cmd_watch",
    "cmd_ignore",
    "cmd_bury",
    "cmd_kick",
    "cmd_touch",
    "cmd_stats",
    "cmd_stats_job",
    "cmd_stats_tube",
    "cmd_list_tubes",
    "cmd_list_tube_used",
    "cmd_list_tubes_watched",
    "cmd_pause_tube",
)


@dataclass
class Job:
    id: int
    tube: str
    priority: int
    delay_ms: int
    ttr_ms: int
    body: bytes
    created_ms: int
    state: str  # "ready" | "delayed" | "reserved" | "buried"
    ready_at_ms: int = 0  # when delayed
    deadline_ms: int = 0  # when reserved
    holder: str = ""  # client id when reserved
    buried_seq: int = 0  # position in the tube's buried FIFO when buried
    reserves: int = 0
    timeouts: int = 0
    releases: int = 0
    buries: int = 0
    kicks: int = 0


JobKey = Callable[[Job], "int | tuple[int, int]"]


@dataclass
class Tube:
    name: str
    total_jobs: int = 0
    cmd_delete: int = 0
    cmd_pause_tube: int = 0
    paused_until_ms: int | None = None
    pause_ms: int = 0


@dataclass
class Client:
    id: str
    proxy: str
    used: str = DEFAULT_TUBE
    watched: list[str] = field(default_factory=lambda: [DEFAULT_TUBE])
    waiting: bool = False
    wait_deadline_ms: int | None = None
    wait_seq: int = 0
    wait_request_id: str = ""
    producer: bool = False
    worker: bool = False


def remove_moving_last(items: list[str], item: str) -> None:
    """beanstalkd's ms.c removal: the last entry moves into the freed slot."""
    i = items.index(item)
    items[i] = items[-1]
    items.pop()


def tube_name_error(name: str) -> str | None:
    if not 1 <= len(name.encode()) <= 200:
        return f"tube name must be 1 to 200 bytes, got {len(name.encode())}"
    if any(ch not in TUBE_NAME_CHARS for ch in name):
        return f"tube name {name!r} has a character outside A-Za-z0-9 and -+/;.$_()"
    if name.startswith("-"):
        return f"tube name {name!r} must not start with '-'"
    return None


class ReferenceModel:
    """The machine's rules with lists and linear scans. Same API as JobStateMachine."""

    def __init__(self, max_job_size: int = 65535) -> None:
        self.max_job_size = max_job_size
        self.now_ms = 0
        self.next_id = 1
        self.jobs: list[Job] = []
        self.tubes: list[Tube] = [Tube(DEFAULT_TUBE)]
        self.clients: list[Client] = []  # in connect order
        self.leases: dict[str, int] = {}  # proxy id -> lease expiry
        self.counters = dict.fromkeys(COUNTER_FIELDS, 0)
        self.job_timeouts = 0
        self.total_jobs = 0
        self.total_connections = 0
        self.wait_seq = 0
        self.buried_seq = 0
        self.wakeups: list[r.Wakeup] = []

    # --- lookups ---------------------------------------------------------------------------

    def job(self, job_id: int) -> Job | None:
        found = [j for j in self.jobs if j.id == job_id]
        return found[0] if found else None

    def tube(self, name: str) -> Tube | None:
        found = [t for t in self.tubes if t.name == name]
        return found[0] if found else None

    def client(self, client_id: str) -> Client | None:
        found = [cl for cl in self.clients if cl.id == client_id]
        return found[0] if found else None

    def paused(self, name: str) -> bool:
        t = self.tube(name)
        return t is not None and t.paused_until_ms is not None

    def jobs_in(self, tube: str, state: str) -> list[Job]:
        return [j for j in self.jobs if j.tube == tube and j.state == state]

    def held_by(self, client_id: str) -> list[Job]:
        return [j for j in self.jobs if j.state == "reserved" and j.holder == client_id]

    def ensure_tube(self, name: str) -> Tube:
        t = self.tube(name)
        if t is None:
            t = Tube(name)
            self.tubes.append(t)
        return t

    def referenced(self, name: str) -> bool:
        return (
            name == DEFAULT_TUBE
            or any(j.tube == name for j in self.jobs)
            or any(cl.used == name or name in cl.watched for cl in self.clients)
        )

    def free_if_unreferenced(self, name: str) -> None:
        """A tube exists while something refers to it; a freed tube loses pause and counters."""
        t = self.tube(name)
        if t is not None and not self.referenced(name):
            i = self.tubes.index(t)
            self.tubes[i] = self.tubes[-1]
            self.tubes.pop()

    # --- apply -----------------------------------------------------------------------------

    def apply(self, command: c.Command, now_ms: int) -> r.Outcome:
        now = max(self.now_ms, now_ms)
        self.wakeups = []
        if not isinstance(command, c.ExtendLeases):  # it acts before time passes
            self.process_events_until(now)
            self.now_ms = now
        reply = self.dispatch(command)
        wakeups = tuple(self.wakeups)
        self.wakeups = []
        return r.Outcome(reply=reply, wakeups=wakeups)

    def next_deadline_ms(self) -> int | None:
        instants = self.event_instants()
        return min(instants) if instants else None

    def event_instants(self) -> list[int]:
        out: list[int] = list(self.leases.values())
        out += [j.deadline_ms for j in self.jobs if j.state == "reserved"]
        out += [j.ready_at_ms for j in self.jobs if j.state == "delayed"]
        out += [t.paused_until_ms for t in self.tubes if t.paused_until_ms is not None]
        for cl in self.clients:
            if not cl.waiting:
                continue
            if cl.wait_deadline_ms is not None:
                out.append(cl.wait_deadline_ms)
            held = self.held_by(cl.id)
            if held:
                out.append(min(j.deadline_ms for j in held) - SAFETY_MARGIN_MS)
        return out

    def process_events_until(self, now: int) -> None:
        """Step through each distinct event instant <= now in ascending order.

        An instant already behind machine time (a deadline-soon instant that was in the past
        when its client started waiting) is processed at machine time: time never runs back.
        """
        while True:
            instants = [t for t in self.event_instants() if t <= now]
            if not instants:
                return
            t = max(min(instants), self.now_ms)
            self.now_ms = t
            self.process_instant(t)

    def process_instant(self, t: int) -> None:
        for proxy in sorted(p for p, expiry in self.leases.items() if expiry <= t):
            del self.leases[proxy]
            self.disconnect_proxy_clients(proxy)
        for j in sorted(
            (j for j in self.jobs if j.state == "reserved" and j.deadline_ms <= t),
            key=lambda j: j.id,
        ):
            j.state, j.holder = "ready", ""
            j.timeouts += 1
            self.job_timeouts += 1
        for j in sorted(
            (j for j in self.jobs if j.state == "delayed" and j.ready_at_ms <= t),
            key=lambda j: j.id,
        ):
            j.state = "ready"
        for tb in sorted(self.tubes, key=lambda tb: tb.name):
            if tb.paused_until_ms is not None and tb.paused_until_ms <= t:
                tb.paused_until_ms, tb.pause_ms = None, 0
        self.match()
        for cl in sorted((cl for cl in self.clients if cl.waiting), key=lambda cl: cl.wait_seq):
            if cl.wait_deadline_ms is not None and cl.wait_deadline_ms <= t:
                self.wake(cl, r.TimedOut())
        for cl in sorted((cl for cl in self.clients if cl.waiting), key=lambda cl: cl.wait_seq):
            held = self.held_by(cl.id)
            if held and t >= min(j.deadline_ms for j in held) - SAFETY_MARGIN_MS:
                self.wake(cl, r.DeadlineSoon())

    def wake(self, cl: Client, result: r.WaitResult) -> None:
        cl.waiting, cl.wait_deadline_ms = False, None
        self.wakeups.append(r.Wakeup(cl.id, cl.proxy, cl.wait_request_id, result))

    def match(self) -> None:
        """Give the globally best ready job to the earliest waiter watching its tube, repeatedly."""
        while True:
            waiters = [cl for cl in self.clients if cl.waiting]
            candidates = [
                j
                for j in self.jobs
                if j.state == "ready"
                and not self.paused(j.tube)
                and any(j.tube in cl.watched for cl in waiters)
            ]
            if not candidates:
                return
            best = min(candidates, key=lambda j: (j.priority, j.id))
            waiter = min(
                (cl for cl in waiters if best.tube in cl.watched), key=lambda cl: cl.wait_seq
            )
            self.reserve_job(best, waiter)
            self.wake(waiter, r.Reserved(best.id, best.body))

    def reserve_job(self, j: Job, cl: Client) -> None:
        j.state, j.holder = "reserved", cl.id
        j.deadline_ms = self.now_ms + j.ttr_ms
        j.reserves += 1

    # --- sessions ----------------------------------------------------------------------------

    def disconnect(self, cl: Client) -> None:
        """Cancel the wait, return held jobs to ready, match, then drop tube references.

        The order in which tubes are freed follows beanstalkd's connclose: the watch list is
        cleared by removing its first entry repeatedly (ms_clear with ms.c's move-last
        removal), then the used tube is released.
        """
        cl.waiting, cl.wait_deadline_ms = False, None
        for j in self.held_by(cl.id):
            j.state, j.holder = "ready", ""
        self.match()
        while cl.watched:
            name = cl.watched[0]
            remove_moving_last(cl.watched, name)
            self.free_if_unreferenced(name)
        self.clients.remove(cl)
        self.free_if_unreferenced(cl.used)

    def disconnect_proxy_clients(self, proxy: str) -> None:
        for cl in [cl for cl in self.clients if cl.proxy == proxy]:
            self.disconnect(cl)

    # --- dispatch ----------------------------------------------------------------------------

    def dispatch(self, cmd: c.Command) -> r.Reply:
        handler = getattr(self, "do_" + type(cmd).__name__)
        reply: r.Reply = handler(cmd)
        return reply

    def do_Connect(self, cmd: c.Connect) -> r.Reply:
        if not cmd.client_id:
            return r.InvalidArgument('client_id "" is the admin, not a connection')
        if cmd.lease_ms < 0:
            return r.InvalidArgument(f"lease_ms {cmd.lease_ms} is negative")
        if cmd.lease_ms:
            self.leases[cmd.proxy_id] = self.now_ms + cmd.lease_ms
        if self.client(cmd.client_id) is None:
            self.clients.append(Client(cmd.client_id, cmd.proxy_id))
            self.total_connections += 1
        return r.Ok()

    def do_Disconnect(self, cmd: c.Disconnect) -> r.Reply:
        cl = self.client(cmd.client_id)
        if cl is not None:
            self.disconnect(cl)
        return r.Ok()

    def do_ExtendLeases(self, cmd: c.ExtendLeases) -> r.Reply:
        if cmd.until_ms < 0:
            return r.InvalidArgument(f"until_ms {cmd.until_ms} is negative")
        for proxy in self.leases:
            self.leases[proxy] = max(self.leases[proxy], cmd.until_ms)
        return r.Ok()

    def do_RenewLease(self, cmd: c.RenewLease) -> r.Reply:
        if cmd.lease_ms < 0:
            return r.InvalidArgument(f"lease_ms {cmd.lease_ms} is negative")
        self.leases[cmd.proxy_id] = self.now_ms + cmd.lease_ms
        return r.Ok()

    def do_DropProxy(self, cmd: c.DropProxy) -> r.Reply:
        self.leases.pop(cmd.proxy_id, None)
        self.disconnect_proxy_clients(cmd.proxy_id)
        return r.Ok()

    def do_Tick(self, cmd: c.Tick) -> r.Reply:
        return r.Ok()

    def do_Use(self, cmd: c.Use) -> r.Reply:
        cl = self.client(cmd.client_id)
        if cl is None:
            return r.UnknownClient(cmd.client_id)
        error = tube_name_error(cmd.tube)
        if error:
            return r.InvalidArgument(error)
        self.counters["cmd_use"] += 1
        self.ensure_tube(cmd.tube)
        old, cl.used = cl.used, cmd.tube
        self.free_if_unreferenced(old)
        return r.Using(cmd.tube)

    def do_Watch(self, cmd: c.Watch) -> r.Reply:
        cl = self.client(cmd.client_id)
        if cl is None:
            return r.UnknownClient(cmd.client_id)
        error = tube_name_error(cmd.tube)
        if error:
            return r.InvalidArgument(error)
        self.counters["cmd_watch"] += 1
        self.ensure_tube(cmd.tube)
        if cmd.tube not in cl.watched:
            cl.watched.append(cmd.tube)
            # A waiting client that now watches a tube with a ready job must get it: the
            # invariant "no waiter has a ready job in a watched unpaused tube" holds always.
            self.match()
        return r.Watching(len(cl.watched))

    def do_Ignore(self, cmd: c.Ignore) -> r.Reply:
        cl = self.client(cmd.client_id)
        if cl is None:
            return r.UnknownClient(cmd.client_id)
        error = tube_name_error(cmd.tube)
        if error:
            return r.InvalidArgument(error)
        self.counters["cmd_ignore"] += 1
        if cmd.tube not in cl.watched:
            return r.Watching(len(cl.watched))
        if len(cl.watched) == 1:
            return r.NotIgnored()
        remove_moving_last(cl.watched, cmd.tube)
        self.free_if_unreferenced(cmd.tube)
        return r.Watching(len(cl.watched))

    def do_ListTubeUsed(self, cmd: c.ListTubeUsed) -> r.Reply:
        cl = self.client(cmd.client_id)
        if cl is None:
            return r.UnknownClient(cmd.client_id)
        self.counters["cmd_list_tube_used"] += 1
        return r.Using(cl.used)

    def do_ListTubesWatched(self, cmd: c.ListTubesWatched) -> r.Reply:
        cl = self.client(cmd.client_id)
        if cl is None:
            return r.UnknownClient(cmd.client_id)
        self.counters["cmd_list_tubes_watched"] += 1
        return r.TubeList(tuple(cl.watched))

    # --- jobs ------------------------------------------------------------------------------

    def do_Put(self, cmd: c.Put) -> r.Reply:
        return self.put(cmd)

    def put(self, cmd: c.Put) -> r.Reply:
        error = tube_name_error(cmd.tube)
        if error is None and not 0 <= cmd.priority <= PRIORITY_MAX:
            error = f"priority {cmd.priority} outside 0..{PRIORITY_MAX}"
        if error is None and not 0 <= cmd.delay_ms <= DELAY_MS_MAX:
            error = f"delay_ms {cmd.delay_ms} outside 0..{DELAY_MS_MAX}"
        if error is None and not 0 <= cmd.ttr_ms <= DELAY_MS_MAX:
            error = f"ttr_ms {cmd.ttr_ms} outside 0..{DELAY_MS_MAX}"
        if error:
            return r.InvalidArgument(error)
        cl = None
        if cmd.client_id:
            cl = self.client(cmd.client_id)
            if cl is None:
                return r.UnknownClient(cmd.client_id)
        self.counters["cmd_put"] += 1
        if len(cmd.body) > self.max_job_size:
            return r.JobTooBig()
        if cl is not None:
            cl.producer = True
        j = Job(
            id=self.next_id,
            tube=cmd.tube,
            priority=cmd.priority,
            delay_ms=cmd.delay_ms,
            ttr_ms=max(cmd.ttr_ms, TTR_MS_MIN),
            body=cmd.body,
            created_ms=self.now_ms,
            state="ready" if cmd.delay_ms == 0 else "delayed",
            ready_at_ms=self.now_ms + cmd.delay_ms,
        )
        self.next_id += 1
        self.ensure_tube(cmd.tube).total_jobs += 1
        self.total_jobs += 1
        self.jobs.append(j)
        self.match()
        return r.Inserted(j.id)

    def do_RejectedPut(self, cmd: c.RejectedPut) -> r.Reply:
        cl = self.client(cmd.client_id)
        if cl is None:
            return r.UnknownClient(cmd.client_id)
        self.counters["cmd_put"] += 1
        if cmd.producer:
            cl.producer = True
        return r.Ok()

    def do_Reserve(self, cmd: c.Reserve) -> r.Reply:
        return self.reserve(cmd)

    def reserve(self, cmd: c.Reserve) -> r.Reply:
        cl = self.client(cmd.client_id)
        if cl is None:
            return r.UnknownClient(cmd.client_id)
        if cl.waiting:
            return r.AlreadyWaiting()
        if cmd.timeout_ms is not None and not 0 <= cmd.timeout_ms <= RESERVE_TIMEOUT_MS_MAX:
            # beanstalkd: reserve-with-timeout takes 0..INT_MAX seconds, else BAD_FORMAT.
            return r.InvalidArgument(f"timeout_ms {cmd.timeout_ms} out of range")
        self.counters["cmd_reserve_with_timeout" if cmd.with_timeout else "cmd_reserve"] += 1
        cl.worker = True
        ready = [
            j
            for j in self.jobs
            if j.state == "ready" and j.tube in cl.watched and not self.paused(j.tube)
        ]
        if ready:
            best = min(ready, key=lambda j: (j.priority, j.id))
            self.reserve_job(best, cl)
            return r.Reserved(best.id, best.body)
        held = self.held_by(cl.id)
        deadline_soon = held and self.now_ms >= min(j.deadline_ms for j in held) - SAFETY_MARGIN_MS
        any_ready = any(j.state == "ready" and j.tube in cl.watched for j in self.jobs)
        if deadline_soon and not any_ready:
            return r.DeadlineSoon()
        if cmd.timeout_ms == 0:
            return r.TimedOut()
        self.wait_seq += 1
        cl.waiting, cl.wait_seq, cl.wait_request_id = True, self.wait_seq, cmd.request_id
        cl.wait_deadline_ms = None if cmd.timeout_ms is None else self.now_ms + cmd.timeout_ms
        return r.Waiting()

    def do_ReserveJob(self, cmd: c.ReserveJob) -> r.Reply:
        cl = self.client(cmd.client_id)
        if cl is None:
            return r.UnknownClient(cmd.client_id)
        j = self.job(cmd.job_id)
        if j is None or j.state == "reserved":
            return r.NotFound()
        cl.worker = True
        self.reserve_job(j, cl)
        return r.Reserved(j.id, j.body)

    def do_Delete(self, cmd: c.Delete) -> r.Reply:
        if cmd.client_id and self.client(cmd.client_id) is None:
            return r.UnknownClient(cmd.client_id)
        self.counters["cmd_delete"] += 1
        j = self.job(cmd.job_id)
        if j is None:
            return r.NotFound()
        if j.state == "reserved" and cmd.client_id and j.holder != cmd.client_id:
            return r.NotFound()
        self.jobs.remove(j)
        tb = self.tube(j.tube)
        assert tb is not None
        tb.cmd_delete += 1
        self.free_if_unreferenced(j.tube)
        return r.Deleted()

    def owned(self, client_id: str, job_id: int) -> Job | None:
        j = self.job(job_id)
        if j is None or j.state != "reserved" or j.holder != client_id:
            return None
        return j

    def do_Release(self, cmd: c.Release) -> r.Reply:
        if self.client(cmd.client_id) is None:
            return r.UnknownClient(cmd.client_id)
        if not 0 <= cmd.priority <= PRIORITY_MAX:
            return r.InvalidArgument(f"priority {cmd.priority} outside 0..{PRIORITY_MAX}")
        if not 0 <= cmd.delay_ms <= DELAY_MS_MAX:
            return r.InvalidArgument(f"delay_ms {cmd.delay_ms} outside 0..{DELAY_MS_MAX}")
        self.counters["cmd_release"] += 1
        j = self.owned(cmd.client_id, cmd.job_id)
        if j is None:
            return r.NotFound()
        j.priority, j.delay_ms, j.holder = cmd.priority, cmd.delay_ms, ""
        j.releases += 1
        if cmd.delay_ms == 0:
            j.state = "ready"
            self.match()
        else:
            j.state, j.ready_at_ms = "delayed", self.now_ms + cmd.delay_ms
        return r.Released()

    def do_Bury(self, cmd: c.Bury) -> r.Reply:
        if self.client(cmd.client_id) is None:
            return r.UnknownClient(cmd.client_id)
        if not 0 <= cmd.priority <= PRIORITY_MAX:
            return r.InvalidArgument(f"priority {cmd.priority} outside 0..{PRIORITY_MAX}")
        self.counters["cmd_bury"] += 1
        j = self.owned(cmd.client_id, cmd.job_id)
        if j is None:
            return r.NotFound()
        self.buried_seq += 1
        j.state, j.holder, j.priority, j.buried_seq = "buried", "", cmd.priority, self.buried_seq
        j.buries += 1
        return r.Buried()

    def do_Touch(self, cmd: c.Touch) -> r.Reply:
        if self.client(cmd.client_id) is None:
            return r.UnknownClient(cmd.client_id)
        self.counters["cmd_touch"] += 1
        j = self.owned(cmd.client_id, cmd.job_id)
        if j is None:
            return r.NotFound()
        j.deadline_ms = self.now_ms + j.ttr_ms
        return r.Touched()

    def do_Kick(self, cmd: c.Kick) -> r.Reply:
        error = tube_name_error(cmd.tube)
        if error:
            return r.InvalidArgument(error)
        self.counters["cmd_kick"] += 1
        buried = sorted(self.jobs_in(cmd.tube, "buried"), key=lambda j: j.buried_seq)
        delayed = sorted(self.jobs_in(cmd.tube, "delayed"), key=lambda j: (j.ready_at_ms, j.id))
        chosen = (buried or delayed)[: max(cmd.bound, 0)]
        for j in chosen:
            j.state = "ready"
            j.kicks += 1
        self.match()
        return r.Kicked(len(chosen))

    def do_KickJob(self, cmd: c.KickJob) -> r.Reply:
        j = self.job(cmd.job_id)
        if j is None or j.state not in ("buried", "delayed"):
            return r.NotFound()
        j.state = "ready"
        j.kicks += 1
        self.match()
        return r.Kicked(1)

    def do_PauseTube(self, cmd: c.PauseTube) -> r.Reply:
        error = tube_name_error(cmd.tube)
        if error is None and not 0 <= cmd.delay_ms <= DELAY_MS_MAX:
            error = f"delay_ms {cmd.delay_ms} outside 0..{DELAY_MS_MAX}"
        if error:
            return r.InvalidArgument(error)
        self.counters["cmd_pause_tube"] += 1
        tb = self.tube(cmd.tube)
        if tb is None:
            return r.NotFound()
        tb.cmd_pause_tube += 1
        if cmd.delay_ms == 0:
            tb.paused_until_ms, tb.pause_ms = None, 0
            self.match()
        else:
            tb.paused_until_ms, tb.pause_ms = self.now_ms + cmd.delay_ms, cmd.delay_ms
        return r.Paused()

    # --- reads -----------------------------------------------------------------------------

    def found(self, candidates: list[Job], key: JobKey) -> r.Reply:
        if not candidates:
            return r.NotFound()
        best = min(candidates, key=key)
        return r.Found(best.id, best.body)

    def do_Peek(self, cmd: c.Peek) -> r.Reply:
        self.counters["cmd_peek"] += 1
        j = self.job(cmd.job_id)
        return r.NotFound() if j is None else r.Found(j.id, j.body)

    def do_PeekReady(self, cmd: c.PeekReady) -> r.Reply:
        return self.peek(cmd.tube, "cmd_peek_ready", "ready", lambda j: (j.priority, j.id))

    def do_PeekDelayed(self, cmd: c.PeekDelayed) -> r.Reply:
        return self.peek(cmd.tube, "cmd_peek_delayed", "delayed", lambda j: (j.ready_at_ms, j.id))

    def do_PeekBuried(self, cmd: c.PeekBuried) -> r.Reply:
        return self.peek(cmd.tube, "cmd_peek_buried", "buried", lambda j: j.buried_seq)

    def peek(self, tube: str, counter: str, state: str, key: JobKey) -> r.Reply:
        error = tube_name_error(tube)
        if error:
            return r.InvalidArgument(error)
        self.counters[counter] += 1
        return self.found(self.jobs_in(tube, state), key)

    def do_StatsJob(self, cmd: c.StatsJob) -> r.Reply:
        if cmd.counted:
            self.counters["cmd_stats_job"] += 1
        j = self.job(cmd.job_id)
        if j is None:
            return r.NotFound()
        time_left_ms = 0
        if j.state == "reserved":
            time_left_ms = j.deadline_ms - self.now_ms
        elif j.state == "delayed":
            time_left_ms = j.ready_at_ms - self.now_ms
        return r.JobStats(
            job_id=j.id,
            tube=j.tube,
            state=j.state,
            priority=j.priority,
            age_ms=self.now_ms - j.created_ms,
            delay_ms=j.delay_ms,
            ttr_ms=j.ttr_ms,
            time_left_ms=time_left_ms,
            reserves=j.reserves,
            timeouts=j.timeouts,
            releases=j.releases,
            buries=j.buries,
            kicks=j.kicks,
        )

    def count(self, state: str, tube: str | None = None) -> int:
        return len([j for j in self.jobs if j.state == state and tube in (None, j.tube)])

    def urgent(self, tube: str | None = None) -> int:
        return len(
            [
                j
                for j in self.jobs
                if j.state == "ready" and j.priority < URGENT_PRIORITY and tube in (None, j.tube)
            ]
        )

    def do_StatsTube(self, cmd: c.StatsTube) -> r.Reply:
        error = tube_name_error(cmd.tube)
        if error:
            return r.InvalidArgument(error)
        self.counters["cmd_stats_tube"] += 1
        tb = self.tube(cmd.tube)
        if tb is None:
            return r.NotFound()
        name = tb.name
        return r.TubeStats(
            name=name,
            current_jobs_urgent=self.urgent(name),
            current_jobs_ready=self.count("ready", name),
            current_jobs_reserved=self.count("reserved", name),
            current_jobs_delayed=self.count("delayed", name),
            current_jobs_buried=self.count("buried", name),
            total_jobs=tb.total_jobs,
            current_using=len([cl for cl in self.clients if cl.used == name]),
            current_watching=len([cl for cl in self.clients if name in cl.watched]),
            current_waiting=len([cl for cl in self.clients if cl.waiting and name in cl.watched]),
            cmd_delete=tb.cmd_delete,
            cmd_pause_tube=tb.cmd_pause_tube,
            pause_ms=tb.pause_ms,
            pause_time_left_ms=(
                0 if tb.paused_until_ms is None else tb.paused_until_ms - self.now_ms
            ),
        )

    def do_Stats(self, cmd: c.Stats) -> r.Reply:
        self.counters["cmd_stats"] += 1
        return r.ServerStats(
            current_jobs_urgent=self.urgent(),
            current_jobs_ready=self.count("ready"),
            current_jobs_reserved=self.count("reserved"),
            current_jobs_delayed=self.count("delayed"),
            current_jobs_buried=self.count("buried"),
            **self.counters,
            job_timeouts=self.job_timeouts,
            total_jobs=self.total_jobs,
            max_job_size=self.max_job_size,
            current_tubes=len(self.tubes),
            current_connections=len(self.clients),
            current_producers=len([cl for cl in self.clients if cl.producer]),
            current_workers=len([cl for cl in self.clients if cl.worker]),
            current_waiting=len([cl for cl in self.clients if cl.waiting]),
            total_connections=self.total_connections,
        )

    def do_ListTubes(self, cmd: c.ListTubes) -> r.Reply:
        self.counters["cmd_list_tubes"] += 1
        return r.TubeList(tuple(t.name for t in self.tubes))

    def do_CheckClients(self, cmd: c.CheckClients) -> r.Reply:
        waiting, not_waiting, missing = [], [], []
        for client_id in cmd.client_ids:
            cl = self.client(client_id)
            if cl is None or cl.proxy != cmd.proxy_id:
                missing.append(client_id)
            elif cl.waiting:
                waiting.append(client_id)
            else:
                not_waiting.append(client_id)
        return r.ClientStates(tuple(waiting), tuple(not_waiting), tuple(missing))

    # --- self-check ------------------------------------------------------------------------

    def pending(self) -> str:
        """Everything a due event can change (jobs, waits, leases, pauses), as text."""
        return repr(
            (
                [(j.id, j.state, j.holder, j.deadline_ms, j.ready_at_ms) for j in self.jobs],
                [(cl.id, cl.waiting, cl.wait_deadline_ms) for cl in self.clients],
                sorted(self.leases.items()),
                [(t.name, t.paused_until_ms) for t in self.tubes],
            )
        )

    def check_invariants(self) -> None:
        """The model's own consistency: cheap to state because it has so little structure."""
        ids = [j.id for j in self.jobs]
        assert len(ids) == len(set(ids)), "a job id appears twice"
        assert all(j.id < self.next_id for j in self.jobs)
        names = [t.name for t in self.tubes]
        assert len(names) == len(set(names)), "a tube appears twice"
        assert all(self.referenced(n) for n in names), "an unreferenced tube was not freed"
        for j in self.jobs:
            assert j.state in ("ready", "delayed", "reserved", "buried")
            assert j.tube in names, f"job {j.id} is in a tube that does not exist"
            holder = self.client(j.holder) if j.state == "reserved" else None
            assert (j.state == "reserved") == (holder is not None), f"job {j.id} holder"
        for cl in self.clients:
            assert cl.used in names and all(w in names for w in cl.watched)
            assert cl.watched and len(cl.watched) == len(set(cl.watched))
            if cl.waiting:
                ready = [
                    j
                    for j in self.jobs
                    if j.state == "ready" and j.tube in cl.watched and not self.paused(j.tube)
                ]
                assert not ready, f"{cl.id} waits while job {ready[0].id} is ready for it"
