"""Scenarios: connections, disconnects, proxy leases, DropProxy and CheckClients."""

from __future__ import annotations

from scenarios.driver import Driver, wakeup

from statemachine import commands as c
from statemachine import replies as r


def test_connect_is_idempotent(q: Driver) -> None:
    q.connect("c1")
    q.do(c.Use("c1", "a"))
    q.connect("c1")
    assert q.do(c.ListTubeUsed("c1")) == r.Using("a")
    stats = q.stats()
    assert (stats.total_connections, stats.current_connections) == (1, 1)


def test_commands_of_an_unknown_client_are_unknown_client_and_not_counted(q: Driver) -> None:
    q.put()
    for command in (
        c.Reserve("ghost", None),
        c.ReserveJob("ghost", 1),
        c.Release("ghost", 1, 0, 0),
        c.Bury("ghost", 1, 0),
        c.Touch("ghost", 1),
        c.Delete("ghost", 1),
        c.Use("ghost", "a"),
        c.Watch("ghost", "a"),
        c.Ignore("ghost", "a"),
        c.ListTubeUsed("ghost"),
        c.ListTubesWatched("ghost"),
        c.RejectedPut("ghost"),
        c.Put("default", 0, 0, 1000, b"", "ghost"),
    ):
        assert q.assert_unchanged_except_counters(command) == r.UnknownClient("ghost")
    assert q.stats().cmd_put == 1


def test_disconnect_returns_held_jobs_to_ready_without_counting(q: Driver) -> None:
    q.connect("c1")
    q.put_ids(2)
    q.reserve("c1")
    q.reserve("c1")
    q.do(c.Disconnect("c1"))
    assert q.state_of(1) == q.state_of(2) == "ready"
    assert q.stats().job_timeouts == 0
    assert q.stats().current_connections == 0


def test_disconnect_cancels_a_wait_without_a_wakeup(q: Driver) -> None:
    q.connect("c1")
    q.reserve("c1", 5_000)
    assert q.apply(c.Disconnect("c1")).wakeups == ()
    assert q.machine.next_deadline_ms() is None
    q.put()
    assert q.last_wakeups == ()


def test_disconnect_of_an_unknown_client_is_ok(q: Driver) -> None:
    assert q.do(c.Disconnect("nobody")) == r.Ok()


def test_an_expired_lease_disconnects_the_proxys_clients(q: Driver) -> None:
    q.connect("c1", "c2", proxy="p1")
    q.connect("other", proxy="p2")
    q.put()
    q.reserve("c1")
    q.reserve("c2", None, request_id="rq")
    q.reserve("other")
    q.do(c.RenewLease("p1", 3_000))
    assert q.machine.next_deadline_ms() == 3_000
    # Each client disconnects as by Disconnect, in connect order, matching as it goes: c1's
    # job goes to the earliest waiter (c2, about to go too), then from c2 to "other".
    assert q.tick(3_000) == (
        wakeup("c2", r.Reserved(1, b"x"), request_id="rq"),
        wakeup("other", r.Reserved(1, b"x"), proxy="p2"),
    )
    assert q.do(c.CheckClients("p1", ("c1", "c2"))) == r.ClientStates((), (), ("c1", "c2"))
    assert q.stats().current_connections == 1


def test_renewing_a_lease_postpones_its_expiry(q: Driver) -> None:
    q.connect("c1")
    q.do(c.RenewLease("p1", 3_000))
    q.at(2_000)
    q.do(c.RenewLease("p1", 3_000))
    q.tick(4_000)
    assert q.stats().current_connections == 1
    q.tick(5_000)
    assert q.stats().current_connections == 0
    assert q.machine.next_deadline_ms() is None


def test_a_new_leader_after_an_outage_extends_leases_before_the_outage_counts(
    q: Driver,
) -> None:
    q.connect("c1", proxy="p1")
    q.do(c.RenewLease("p1", 3_000))
    q.at(9_000)  # the cluster was down from 1 s to 9 s: the lease would have run out at 3 s
    assert q.do(c.ExtendLeases(until_ms=19_000)) == r.Ok()
    assert q.machine.now_ms == 0  # it acted before the outage's time passed
    q.tick(18_999)
    assert q.stats().current_connections == 1
    q.tick(19_000)
    assert q.stats().current_connections == 0


def test_extending_leases_never_shortens_one_and_refuses_a_negative_time(q: Driver) -> None:
    q.connect("c1", proxy="p1")
    q.do(c.RenewLease("p1", 30_000))
    q.do(c.ExtendLeases(until_ms=5_000))
    q.tick(29_999)
    assert q.stats().current_connections == 1
    assert isinstance(q.do(c.ExtendLeases(until_ms=-1)), r.InvalidArgument)


def test_a_proxy_that_never_renewed_has_no_expiry(q: Driver) -> None:
    q.connect("c1")
    assert q.machine.next_deadline_ms() is None
    q.tick(10**12)
    assert q.stats().current_connections == 1


def test_drop_proxy_disconnects_its_clients_now(q: Driver) -> None:
    q.connect("c1", "c2", proxy="p1")
    q.connect("c3", proxy="p2")
    q.put()
    q.reserve("c1")
    q.do(c.RenewLease("p1", 60_000))
    assert q.do(c.DropProxy("p1")) == r.Ok()
    assert q.state_of(1) == "ready"
    assert q.do(c.CheckClients("p2", ("c3",))) == r.ClientStates((), ("c3",), ())
    assert q.machine.next_deadline_ms() is None


def test_check_clients_sorts_ids_into_waiting_not_waiting_and_missing(q: Driver) -> None:
    q.connect("w", "idle", proxy="p1")
    q.connect("elsewhere", proxy="p2")
    q.reserve("w")
    reply = q.do(c.CheckClients("p1", ("w", "idle", "gone", "elsewhere")))
    assert reply == r.ClientStates(("w",), ("idle",), ("gone", "elsewhere"))


def test_rejected_put_counts_the_put_and_marks_a_producer(q: Driver) -> None:
    q.connect("c1")
    assert q.do(c.RejectedPut("c1")) == r.Ok()
    stats = q.stats()
    assert (stats.cmd_put, stats.current_producers, stats.total_jobs) == (1, 1, 0)


def test_a_put_refused_before_the_producer_check_counts_but_marks_no_producer(
    q: Driver,
) -> None:
    # beanstalkd 1.12 (prot.c) marks the producer after the size and trailing-garbage checks.
    q.connect("c1")
    assert q.do(c.RejectedPut("c1", producer=False)) == r.Ok()
    stats = q.stats()
    assert (stats.cmd_put, stats.current_producers) == (1, 0)


def test_producers_and_workers_are_connected_clients_that_put_or_reserved(q: Driver) -> None:
    q.connect("p", "w", "rj", "idle")
    q.put(client="p")
    q.put(client="p")
    q.reserve("w", 0)
    q.do(c.ReserveJob("rj", 2))
    stats = q.stats()
    assert (stats.current_producers, stats.current_workers) == (1, 2)
    q.do(c.Disconnect("w"))
    assert q.stats().current_workers == 1


def test_an_expired_lease_ends_the_waits_of_the_proxys_clients(q: Driver) -> None:
    q.connect("w1", proxy="p1")
    q.reserve("w1", 60_000)
    q.do(c.RenewLease("p1", 2_000))
    assert q.tick(2_000) == ()  # a disconnected client gets no answer: it is gone
    stats = q.stats()
    assert (stats.current_waiting, stats.current_connections) == (0, 0)
    assert q.machine.next_deadline_ms() is None
    q.put()
    assert q.last_wakeups == ()


def test_a_connect_with_a_lease_covers_the_new_client_from_the_start(q: Driver) -> None:
    # A proxy renews only while it has connections; its first new one after an idle spell
    # starts the lease in the same command, so a crash right after still frees the client.
    q.do(c.Connect("c1", "p1", lease_ms=5000))
    q.put_ids(1)
    assert q.reserve("c1") == r.Reserved(1, b"x")
    assert q.machine.next_deadline_ms() == 5000
    q.tick(5000)
    assert q.state_of(1) == "ready"
    assert q.do(c.CheckClients("p1", ("c1",))) == r.ClientStates((), (), ("c1",))


def test_a_connect_with_a_negative_lease_is_refused_and_connects_nothing(q: Driver) -> None:
    assert isinstance(q.do(c.Connect("c1", "p1", lease_ms=-1)), r.InvalidArgument)
    assert q.stats().total_connections == 0


def test_a_put_too_big_counts_but_marks_no_producer(small_q: Driver) -> None:
    small_q.connect("c1")
    assert small_q.put(body=b"x" * 11, client="c1") == r.JobTooBig()
    stats = small_q.stats()
    assert (stats.cmd_put, stats.current_producers) == (1, 0)
