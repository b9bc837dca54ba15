"""Scenarios: illegal commands get a typed reply and change nothing.

Retries under a request id are answered by the cluster's request window, not here
(tests/cluster/test_request_window.py).

Every value beanstalkd's parser would refuse with BAD_FORMAT is refused here too, with an
InvalidArgument whose message names the value, because the machine is also reached by gRPC.
Such commands are not counted (beanstalkd counts only commands that parsed).
"""

from __future__ import annotations

import pytest
from scenarios.driver import Driver

from statemachine import commands as c
from statemachine import replies as r

BAD_NAMES = [
    ("", "1 to 200 bytes"),
    ("x" * 201, "1 to 200 bytes"),
    ("-leading-dash", "must not start with '-'"),
    ("sp ace", "character outside"),
    ("tab\t", "character outside"),
    ("ünïcode", "character outside"),
]


def test_a_name_of_200_bytes_with_every_allowed_character_is_valid(q: Driver) -> None:
    name = ("AZaz09-+/;.$_()" * 20)[:200]
    assert q.put(tube=name) == r.Inserted(1)


@pytest.mark.parametrize(("name", "why"), BAD_NAMES)
def test_every_command_naming_a_tube_refuses_a_bad_name(q: Driver, name: str, why: str) -> None:
    q.connect("c1")
    for command in (
        c.Put(name, 0, 0, 1000, b""),
        c.Use("c1", name),
        c.Watch("c1", name),
        c.Ignore("c1", name),
        c.Kick(name, 1),
        c.PauseTube(name, 0),
        c.PeekReady(name),
        c.PeekDelayed(name),
        c.PeekBuried(name),
        c.StatsTube(name),
    ):
        reply = q.assert_unchanged_except_counters(command)
        assert isinstance(reply, r.InvalidArgument), (command, reply)
        assert why in reply.message
    assert q.stats().cmd_put == q.stats().cmd_use == q.stats().cmd_stats_tube == 0


PUT_VALUES = [
    ({"priority": 2**32}, "priority 4294967296 outside 0..4294967295"),
    ({"priority": -1}, "priority -1 outside"),
    ({"delay_ms": -1}, "delay_ms -1 outside"),
    ({"delay_ms": (2**32) * 1000}, "delay_ms"),
    ({"ttr_ms": -5}, "ttr_ms -5 outside"),
    ({"ttr_ms": (2**32) * 1000}, "ttr_ms"),
]


@pytest.mark.parametrize(("fields", "message"), PUT_VALUES)
def test_put_refuses_values_out_of_range(q: Driver, fields: dict[str, int], message: str) -> None:
    values = {"priority": 0, "delay_ms": 0, "ttr_ms": 1000} | fields
    command = c.Put("default", values["priority"], values["delay_ms"], values["ttr_ms"], b"")
    reply = q.assert_unchanged_except_counters(command)
    assert isinstance(reply, r.InvalidArgument)
    assert message in reply.message
    assert q.stats().cmd_put == 0


def test_put_accepts_the_largest_values(q: Driver) -> None:
    largest = (2**32 - 1) * 1000
    assert q.do(c.Put("default", 2**32 - 1, largest, largest, b"")) == r.Inserted(1)


def test_release_bury_reserve_pause_and_lease_refuse_values_out_of_range(q: Driver) -> None:
    q.connect("c1")
    q.put()
    q.reserve("c1")
    for command, message in (
        (c.Release("c1", 1, 2**32, 0), "priority"),
        (c.Release("c1", 1, 0, -1), "delay_ms"),
        (c.Bury("c1", 1, -1), "priority"),
        (c.Reserve("c1", -1, "", True), "timeout_ms"),
        (c.PauseTube("default", -1), "delay_ms"),
        (c.RenewLease("p1", -1), "lease_ms"),
        (c.Connect("", "p1"), "client_id"),
    ):
        reply = q.assert_unchanged_except_counters(command)
        assert isinstance(reply, r.InvalidArgument), (command, reply)
        assert message in reply.message
    assert q.state_of(1) == "reserved"


@pytest.mark.parametrize(
    "command",
    [
        c.Delete("c2", 1),
        c.Release("c2", 1, 0, 0),
        c.Bury("c2", 1, 0),
        c.Touch("c2", 1),
        c.ReserveJob("c2", 1),
        c.KickJob(1),
        c.Peek(99),
        c.StatsJob(99),
        c.StatsTube("missing"),
        c.PauseTube("missing", 1000),
        c.Ignore("c2", "default"),
        c.Kick("missing", 3),
    ],
    ids=lambda command: type(command).__name__,
)
def test_a_refused_command_changes_nothing_but_its_counter(q: Driver, command: c.Command) -> None:
    q.connect("c1", "c2")
    q.put()
    q.reserve("c1")
    reply = q.assert_unchanged_except_counters(command)
    assert isinstance(reply, r.NotFound | r.NotIgnored | r.Kicked), reply


def test_an_object_that_is_not_a_command_is_a_type_error(q: Driver) -> None:
    with pytest.raises(TypeError, match="not a state-machine command"):
        q.machine.apply("put", 0)  # type: ignore[arg-type]
