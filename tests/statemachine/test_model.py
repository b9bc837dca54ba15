"""The real JobStateMachine against the reference model, on random command sequences.

A hypothesis RuleBasedStateMachine drives both with the same commands: a few clients on two
proxies, three tubes, priorities and delays around beanstalkd's edges, named requests (a
reserve's wake-up carries its request id; retries are the cluster's: test_cluster_state_model),
time passing in small and large steps and clocks going backwards (a new leader's clock
may be behind). After every step the outcomes (reply and wake-ups) must be equal, both sides'
invariants must hold, ``next_deadline_ms()`` must agree, and the queue seen through ``stats`` and
``stats-job`` must be the same. One rule snapshots the real machine and continues on the
restored copy; a twin that is never restored must end with the same snapshot bytes.

The oracle itself is checked too: on random session histories (use, watch, ignore, put, delete,
reserve, close) the model's list-tubes and watch-list orders and its counters must equal a real
beanstalkd 1.12's (``test_reference_model_orders_tubes_and_counts_like_beanstalkd``).

Depth: ``HYPOTHESIS_PROFILE=long`` runs many more and longer sequences (docs/testing.md).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import fields, replace
from typing import Any

import greenstalk
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from reference_model import ReferenceModel

from statemachine import commands as c
from statemachine import replies as r
from statemachine.machine import JobStateMachine, MachineConfig

MAX_JOB_SIZE = 64
CLIENTS = {"c0": "p0", "c1": "p0", "c2": "p1", "c3": "p1"}
PROXIES = ("p0", "p1")
TUBES = ("default", "a", "b")
BAD_TUBES = ("-a", "", "a b", "x" * 201)
MISSING_TUBE = "never-made"  # read, paused and kicked, never created
PRIORITIES = (0, 1, 5, 1023, 1024, 2**32 - 1)
DELAYS_MS = (0, 0, 0, 1, 500, 1000, 3000)
TTRS_MS = (0, 999, 1000, 1001, 2000, 5000, 60_000)
TIMEOUTS_MS = (None, None, 0, 0, 1, 500, 1000, 3000)
READS = (
    "peek",
    "peek-ready",
    "peek-delayed",
    "peek-buried",
    "stats-tube",
    "list-tubes",
    "list-tube-used",
    "list-tubes-watched",
    "check-clients",
)
BAD_INPUTS = (
    "put",
    "rejected-put",
    "use",
    "watch",
    "ignore",
    "connect-admin",
    "negative-lease",
    "reserve-timeout",
    "release",
    "bury",
    "pause",
    "read",
    "kick",
)
SESSION_COMMANDS: dict[str, type[c.Use] | type[c.Watch] | type[c.Ignore]] = {
    "use": c.Use,
    "watch": c.Watch,
    "ignore": c.Ignore,
}
TUBE_READS: dict[str, Any] = {
    "peek-ready": c.PeekReady,
    "peek-delayed": c.PeekDelayed,
    "peek-buried": c.PeekBuried,
    "stats-tube": c.StatsTube,
}

PROFILES = {
    "default": settings(
        max_examples=150,
        stateful_step_count=50,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ),
    "long": settings(
        max_examples=3000,
        stateful_step_count=200,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ),
}
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
if PROFILE == "long":
    # The deep run takes many minutes; the suite's 300 s per-test timeout is for CI.
    pytestmark = pytest.mark.timeout(4 * 3600)

clients = st.sampled_from(sorted(CLIENTS))
tubes = st.sampled_from(TUBES)
priorities = st.sampled_from(PRIORITIES)
delays_ms = st.sampled_from(DELAYS_MS)
bodies = st.sampled_from((b"", b"a", b"\r\n\x00", b"x" * MAX_JOB_SIZE, b"y" * (MAX_JOB_SIZE + 1)))


def normalized(outcome: r.Outcome) -> r.Outcome:
    """InvalidArgument's message is the machine's own wording; only its kind is specified."""
    if isinstance(outcome.reply, r.InvalidArgument):
        return replace(outcome, reply=r.InvalidArgument(""))
    return outcome


class MachineAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        config = MachineConfig(max_job_size=MAX_JOB_SIZE)
        self.machine = JobStateMachine(config)
        self.twin = JobStateMachine(config)  # never snapshotted: restore must not change a thing
        self.model = ReferenceModel(max_job_size=MAX_JOB_SIZE)
        self.clock_ms = 1_000_000
        self.request_seq = 0
        self.log: list[tuple[int, c.Command]] = []

    # --- the step every rule takes ----------------------------------------------------------

    def apply(self, command: c.Command) -> r.Outcome:
        self.log.append((self.clock_ms, command))
        expected = self.model.apply(command, self.clock_ms)
        actual = self.machine.apply(command, self.clock_ms)
        twin = self.twin.apply(command, self.clock_ms)
        assert normalized(actual) == normalized(expected), (
            f"{command} at {self.clock_ms}: machine {actual} != model {expected}"
        )
        assert twin == actual, f"{command}: a restored machine diverged from its twin"
        return expected

    def request_id(self, data: st.DataObject) -> str:
        if not data.draw(st.booleans(), label="named"):
            return c.NO_REQUEST_ID
        self.request_seq += 1
        return f"req-{self.request_seq}"

    def job_id(self, data: st.DataObject) -> int:
        pool = [j.id for j in self.model.jobs] + [self.model.next_id, 1]
        return data.draw(st.sampled_from(pool), label="job_id")

    def owner_and_job(self, data: st.DataObject) -> tuple[str, int]:
        """Mostly a client and a job it holds (to reach release, bury, touch), sometimes any."""
        held = sorted((j.holder, j.id) for j in self.model.jobs if j.state == "reserved")
        if held and data.draw(st.integers(0, 4), label="own job") > 0:
            return data.draw(st.sampled_from(held), label="owner_and_job")
        return self.client(data), self.job_id(data)

    def client(self, data: st.DataObject) -> str:
        """Mostly a connected client (to reach deep states), sometimes any (UnknownClient)."""
        connected = sorted(cl.id for cl in self.model.clients)
        if connected and data.draw(st.integers(0, 9), label="connected") > 0:
            return data.draw(st.sampled_from(connected), label="client")
        return data.draw(clients, label="client")

    # --- time --------------------------------------------------------------------------------

    @rule(step_ms=st.sampled_from((1, 10, 499, 500, 999, 1000, 1001, 2500, 5000)))
    def time_passes_a_little(self, step_ms: int) -> None:
        self.clock_ms += step_ms
        self.apply(c.Tick())

    @rule(step_ms=st.sampled_from((30_000, 119_999, 120_000, 120_001, 600_000, 3_600_000)))
    def time_passes_a_lot(self, step_ms: int) -> None:
        self.clock_ms += step_ms
        self.apply(c.Tick())

    @precondition(lambda self: self.model.next_deadline_ms() is not None)
    @rule()
    def time_jumps_to_the_next_deadline(self) -> None:
        # Events exactly at their instant, and next_deadline_ms() kept honest: a Tick at that
        # time must change something (next_deadline_ms(): "the earliest time at which a Tick
        # would change anything").
        deadline_ms = self.model.next_deadline_ms()
        assert deadline_ms is not None
        self.clock_ms = max(self.clock_ms, deadline_ms)
        before = self.model.pending()
        outcome = self.apply(c.Tick())
        assert outcome.wakeups or self.model.pending() != before, "a due tick changed nothing"

    @precondition(
        lambda self: (
            (self.model.next_deadline_ms() or 0) > max(self.clock_ms, self.model.now_ms) + 1
        )
    )
    @rule()
    def time_stops_just_short_of_the_next_deadline(self) -> None:
        deadline_ms = self.model.next_deadline_ms()
        assert deadline_ms is not None
        self.clock_ms = deadline_ms - 1
        before = self.model.pending()
        outcome = self.apply(c.Tick())
        assert not outcome.wakeups and self.model.pending() == before, "an early tick acted"

    @rule(step_ms=st.sampled_from((1, 1000, 5000, 700_000)))
    def clock_goes_backwards(self, step_ms: int) -> None:
        self.clock_ms -= step_ms

    # --- sessions ----------------------------------------------------------------------------

    @initialize()
    def connect_everyone(self) -> None:
        for client, proxy in CLIENTS.items():
            self.apply(c.Connect(client, proxy))

    @rule(client=clients, lease_ms=st.sampled_from((0, 0, 3000, 10_000)))
    def connect(self, client: str, lease_ms: int) -> None:
        self.apply(c.Connect(client, CLIENTS[client], lease_ms))

    @rule(client=clients)
    def disconnect(self, client: str) -> None:
        self.apply(c.Disconnect(client))

    @rule(
        proxy=st.sampled_from(PROXIES),
        lease_ms=st.sampled_from((0, 1, 1000, 3000, 10_000, 86_400_000, -1)),
    )
    def renew_or_drop_lease(self, proxy: str, lease_ms: int) -> None:
        # -1 stands for DropProxy: a clean shutdown is as rare as a lease that runs out.
        self.apply(c.DropProxy(proxy) if lease_ms < 0 else c.RenewLease(proxy, lease_ms))

    @rule(ahead_ms=st.sampled_from((-1, 0, 2000, 10_000)))
    def a_new_leader_extends_every_lease_after_an_outage(self, ahead_ms: int) -> None:
        self.clock_ms += 7000  # stamped after the outage, yet it acts before that time passes
        until = -1 if ahead_ms < 0 else self.clock_ms + ahead_ms
        self.apply(c.ExtendLeases(until))

    @rule(tube=tubes, data=st.data())
    def use(self, tube: str, data: st.DataObject) -> None:
        self.apply(c.Use(self.client(data), tube))

    @rule(tube=tubes, data=st.data())
    def watch(self, tube: str, data: st.DataObject) -> None:
        self.apply(c.Watch(self.client(data), tube))

    @rule(tube=tubes, data=st.data())
    def ignore(self, tube: str, data: st.DataObject) -> None:
        self.apply(c.Ignore(self.client(data), tube))

    # --- jobs --------------------------------------------------------------------------------

    @rule(
        tube=tubes,
        priority=priorities,
        delay_ms=delays_ms,
        ttr_ms=st.sampled_from(TTRS_MS),
        body=bodies,
        data=st.data(),
    )
    def put(
        self, tube: str, priority: int, delay_ms: int, ttr_ms: int, body: bytes, data: st.DataObject
    ) -> None:
        client = "" if data.draw(st.booleans(), label="anonymous") else self.client(data)
        command = c.Put(tube, priority, delay_ms, ttr_ms, body, client, self.request_id(data))
        self.apply(command)

    @rule(tube=tubes, priority=priorities, ttr_ms=st.sampled_from(TTRS_MS))
    def put_ready_job(self, tube: str, priority: int, ttr_ms: int) -> None:
        self.apply(c.Put(tube, priority, 0, ttr_ms, b"r", ""))

    @rule(tube=tubes, priority=priorities, ttr_ms=st.sampled_from(TTRS_MS))
    def put_another_ready_job(self, tube: str, priority: int, ttr_ms: int) -> None:
        self.apply(c.Put(tube, priority, 0, ttr_ms, b"s", ""))

    @rule(
        tube=tubes,
        delay_ms=st.sampled_from((0, 1000)),
        burst=st.lists(priorities, min_size=2, max_size=4),
    )
    def put_a_burst(self, tube: str, delay_ms: int, burst: list[int]) -> None:
        # Jobs that become ready at the same instant compete in one matching round.
        for priority in burst:
            self.apply(c.Put(tube, priority, delay_ms, 1000, b"b", ""))

    @rule(timeout_ms=st.sampled_from((None, 1000)))
    def everyone_reserves(self, timeout_ms: int | None) -> None:
        # Several waiters at once, so that arrival order decides who gets what.
        for client in sorted(cl.id for cl in self.model.clients if not cl.waiting):
            self.apply(c.Reserve(client, timeout_ms))

    @rule(timeout_ms=st.sampled_from(TIMEOUTS_MS), data=st.data())
    def reserve(self, timeout_ms: int | None, data: st.DataObject) -> None:
        with_timeout = timeout_ms is not None and data.draw(st.booleans(), label="with_timeout")
        command = c.Reserve(self.client(data), timeout_ms, self.request_id(data), with_timeout)
        self.apply(command)

    @rule(timeout_ms=st.sampled_from(TIMEOUTS_MS), data=st.data())
    def reserve_again(self, timeout_ms: int | None, data: st.DataObject) -> None:
        self.reserve(timeout_ms, data)

    @rule(data=st.data())
    def reserve_job(self, data: st.DataObject) -> None:
        self.apply(c.ReserveJob(self.client(data), self.job_id(data)))

    @rule(who=st.sampled_from(("owner", "admin", "other")), data=st.data())
    def delete(self, who: str, data: st.DataObject) -> None:
        client, job_id = self.owner_and_job(data)
        if who == "admin":
            client = ""
        elif who == "other":
            client = data.draw(clients.filter(lambda other: other != client), label="other")
        self.apply(c.Delete(client, job_id))

    @rule(priority=priorities, delay_ms=delays_ms, data=st.data())
    def release(self, priority: int, delay_ms: int, data: st.DataObject) -> None:
        self.apply(c.Release(*self.owner_and_job(data), priority, delay_ms))

    @rule(priority=priorities, data=st.data())
    def bury(self, priority: int, data: st.DataObject) -> None:
        self.apply(c.Bury(*self.owner_and_job(data), priority))

    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        self.apply(c.Touch(*self.owner_and_job(data)))

    @rule(tube=tubes, bound=st.sampled_from((0, 1, 2, 100, -1)), data=st.data())
    def kick(self, tube: str, bound: int, data: st.DataObject) -> None:
        # -1 stands for kick-job.
        self.apply(c.KickJob(self.job_id(data)) if bound < 0 else c.Kick(tube, bound))

    @rule(
        tube=st.sampled_from((*TUBES, MISSING_TUBE)),
        delay_ms=st.sampled_from((0, 0, 1, 500, 2000, 60_000)),
    )
    def pause_tube(self, tube: str, delay_ms: int) -> None:
        self.apply(c.PauseTube(tube, delay_ms))

    # --- reads and bad input -----------------------------------------------------------------

    @rule(tube=st.sampled_from((*TUBES, MISSING_TUBE)), kind=st.sampled_from(READS), data=st.data())
    def read(self, tube: str, kind: str, data: st.DataObject) -> None:
        if kind == "peek":
            self.apply(c.Peek(self.job_id(data)))
        elif kind in ("peek-ready", "peek-delayed", "peek-buried", "stats-tube"):
            self.apply(TUBE_READS[kind](tube))
        elif kind == "list-tubes":
            self.apply(c.ListTubes())
        elif kind == "list-tube-used":
            self.apply(c.ListTubeUsed(self.client(data)))
        elif kind == "list-tubes-watched":
            self.apply(c.ListTubesWatched(self.client(data)))
        else:
            proxy = data.draw(st.sampled_from(PROXIES), label="proxy")
            ids = data.draw(st.lists(clients, unique=True), label="client_ids")
            self.apply(c.CheckClients(proxy, tuple(ids)))

    @rule(
        tube=st.sampled_from((*TUBES, *BAD_TUBES)),
        priority=st.sampled_from((0, 2**32, -1)),
        delay_ms=st.sampled_from((0, -1, (2**32 - 1) * 1000, (2**32 - 1) * 1000 + 1)),
        ttr_ms=st.sampled_from((1000, -1, (2**32 - 1) * 1000 + 1)),
        kind=st.sampled_from(BAD_INPUTS),
        data=st.data(),
    )
    def bad_input(
        self, tube: str, priority: int, delay_ms: int, ttr_ms: int, kind: str, data: st.DataObject
    ) -> None:
        client = self.client(data)
        if kind == "put":
            self.apply(c.Put(tube, priority, delay_ms, ttr_ms, b"bad", ""))
        elif kind == "rejected-put":
            producer = data.draw(st.booleans(), label="producer")
            self.apply(c.RejectedPut(client, producer))
        elif kind in SESSION_COMMANDS:
            self.apply(SESSION_COMMANDS[kind](client, tube))
        elif kind == "connect-admin":
            self.apply(c.Connect("", "p0"))
        elif kind == "negative-lease":
            self.apply(c.RenewLease("p0", -1))
        elif kind == "reserve-timeout":
            timeout_ms = data.draw(st.sampled_from((-1, (2**31 - 1) * 1000, 2**31 * 1000)))
            self.apply(c.Reserve(client, timeout_ms, "", True))
        elif kind == "release":
            self.apply(c.Release(*self.owner_and_job(data), priority, delay_ms))
        elif kind == "bury":
            self.apply(c.Bury(*self.owner_and_job(data), priority))
        elif kind == "pause":
            self.apply(c.PauseTube(tube, delay_ms))
        elif kind == "read":
            read = data.draw(st.sampled_from(sorted(TUBE_READS)), label="read")
            self.apply(TUBE_READS[read](tube))
        else:
            self.apply(c.Kick(tube, -1))

    # --- snapshot ----------------------------------------------------------------------------

    @rule()
    def snapshot_and_restore(self) -> None:
        data = self.machine.snapshot()
        restored = JobStateMachine.restore(data)
        assert restored.snapshot() == data, "restore(snapshot()).snapshot() changed the bytes"
        assert self.twin.snapshot() == data, "two machines fed the same commands differ"
        self.machine = restored

    # --- after every step ----------------------------------------------------------------------

    @invariant()
    def both_sides_hold_their_invariants(self) -> None:
        self.machine.check_invariants()
        self.model.check_invariants()

    @invariant()
    def next_deadlines_agree(self) -> None:
        assert self.machine.next_deadline_ms() == self.model.next_deadline_ms()

    @invariant()
    def stats_and_jobs_agree(self) -> None:
        # Reads go through apply on both sides, so they count in cmd-stats and cmd-stats-job
        # identically; the counts in stats must equal the model's structure sizes.
        stats = self.apply(c.Stats()).reply
        assert isinstance(stats, r.ServerStats)
        assert stats.current_jobs_ready == len([j for j in self.model.jobs if j.state == "ready"])
        assert stats.current_tubes == len(self.model.tubes)
        self.apply(c.ListTubes())
        for job_id in [j.id for j in self.model.jobs] + [self.model.next_id - 1]:
            self.apply(c.StatsJob(job_id))

    def teardown(self) -> None:
        assert self.twin.snapshot() == self.machine.snapshot()


MachineAgainstModel.TestCase.settings = PROFILES[PROFILE]
TestMachineAgainstModel = MachineAgainstModel.TestCase


# --- the oracle itself, checked against beanstalkd 1.12 ------------------------------------

BEANSTALKD = "/usr/bin/beanstalkd"
ORACLE_TUBES = ("default", "t0", "t1", "t2", "t3", "t4")


@pytest.fixture
def beanstalkd_port() -> Iterator[int]:
    """A real beanstalkd 1.12 on a free 127.0.0.1 port, stopped afterwards."""
    if not shutil.which(BEANSTALKD):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{BEANSTALKD} is missing: install beanstalkd 1.12 (.ci/run does)")
        pytest.skip(f"{BEANSTALKD} is missing")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = subprocess.Popen([BEANSTALKD, "-l", "127.0.0.1", "-p", str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "beanstalkd did not start listening"
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


class Oracle:
    """The same session commands on real beanstalkd connections and on the reference model."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.model = ReferenceModel()
        self.conns: dict[str, Any] = {}  # greenstalk.Client
        self.admin = self.connect("admin")

    def connect(self, name: str) -> Any:
        self.conns[name] = greenstalk.Client(("127.0.0.1", self.port))
        self.model.apply(c.Connect(name, "p"), 0)
        return self.conns[name]

    def model_reply(self, command: c.Command) -> r.Reply:
        return self.model.apply(command, 0).reply

    def step(self, rng: random.Random) -> None:
        name = rng.choice(("a", "b", "c"))
        tube = rng.choice(ORACLE_TUBES)
        if name not in self.conns:
            self.connect(name)
            return
        conn = self.conns[name]
        kind = rng.choice(("use", "watch", "ignore", "put", "delete", "reserve", "close"))
        if kind == "use":
            conn.use(tube)
            assert self.model_reply(c.Use(name, tube)) == r.Using(tube)
        elif kind == "watch":
            assert r.Watching(conn.watch(tube)) == self.model_reply(c.Watch(name, tube))
        elif kind == "ignore":
            try:
                theirs: r.Reply = r.Watching(conn.ignore(tube))
            except greenstalk.NotIgnoredError:
                theirs = r.NotIgnored()
            assert theirs == self.model_reply(c.Ignore(name, tube))
        elif kind == "put":
            used = conn.using()
            assert self.model_reply(c.ListTubeUsed(name)) == r.Using(used)
            ours = self.model_reply(c.Put(used, 0, 0, 100_000, b"x", name))
            assert r.Inserted(conn.put(b"x", priority=0, ttr=100)) == ours
        elif kind == "delete":
            ids = [j.id for j in self.model.jobs if j.state != "reserved"]
            if ids:
                job_id = rng.choice(ids)
                self.admin.delete(job_id)
                assert self.model_reply(c.Delete("admin", job_id)) == r.Deleted()
        elif kind == "reserve":
            try:
                theirs = r.Reserved(conn.reserve(timeout=0).id, b"x")
            except greenstalk.TimedOutError:
                theirs = r.TimedOut()
            assert theirs == self.model_reply(c.Reserve(name, 0, "", True))
        else:
            conn.close()
            del self.conns[name]
            self.model_reply(c.Disconnect(name))
            time.sleep(0.02)  # the server handles the close before the next command

    def compare(self) -> None:
        """list-tubes, every watch list, stats and stats-tube of every tube agree."""
        tubes = self.model_reply(c.ListTubes())
        assert isinstance(tubes, r.TubeList)
        assert tuple(self.admin.tubes()) == tubes.tubes
        for name, conn in self.conns.items():
            assert r.TubeList(tuple(conn.watching())) == self.model_reply(c.ListTubesWatched(name))
        # The fixture's readiness probe was a connection too: total-connections is one more.
        assert_same_keys(self.admin.stats(), self.model_reply(c.Stats()), ("total-connections",))
        for tube in tubes.tubes:
            theirs = self.admin.stats_tube(tube)
            ours = self.model_reply(c.StatsTube(tube))
            assert_same_keys(theirs, ours, ("name", "pause", "pause-time-left"))


def assert_same_keys(theirs: Any, ours: r.Reply, skip: tuple[str, ...]) -> None:
    """Every key beanstalkd emits that the reply has (by name, _ for -) has the same value."""
    for field in fields(ours):
        key = field.name.replace("_", "-")
        if key in theirs and key not in skip:
            assert theirs[key] == getattr(ours, field.name), f"{key}: beanstalkd {theirs[key]}"


@pytest.mark.beanstalkd
@pytest.mark.parametrize("seed", range(6))
def test_reference_model_orders_tubes_and_counts_like_beanstalkd(
    beanstalkd_port: int, seed: int
) -> None:
    # The model encodes beanstalkd's list-tubes and watch-list order (ms.c's move-last removal,
    # connclose's order of freeing tubes) and its counters; check that against the binary on
    # random session histories. Time plays no part here (beanstalkd's clock is real).
    oracle = Oracle(beanstalkd_port)
    rng = random.Random(seed)
    for _ in range(80):
        oracle.step(rng)
        oracle.compare()
