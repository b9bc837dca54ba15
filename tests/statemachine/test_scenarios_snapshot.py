"""Scenarios: snapshot and restore keep everything, byte for byte.

coolbeans lost the next job id and the delayed schedule on restore and dropped watch lists;
each of those has a scenario here that restores in the
middle and checks that the restored machine carries on exactly as the original.
"""

from __future__ import annotations

import struct

import pytest
from scenarios.driver import Driver, wakeup

from statemachine import commands as c
from statemachine import replies as r
from statemachine.machine import JobStateMachine, MachineConfig
from statemachine.snapshot import SnapshotError


def _restored(q: Driver) -> Driver:
    restored = Driver(JobStateMachine.restore(q.machine.snapshot()))
    restored.now_ms = q.now_ms
    return restored


def _busy(q: Driver) -> None:
    q.connect("c1", "c2", "w1", proxy="p1")
    q.connect("x", proxy="p2")
    q.do(c.Watch("w1", "t"))
    q.do(c.Use("c2", "u"))
    q.put(body=b"ready", pri=3, request_id="req-1")
    q.put(tube="t", delay_ms=5_000, body=b"delayed")
    q.put(body=b"to-reserve")
    q.put(body=b"to-bury")
    q.reserve("c1")
    q.do(c.Bury("c2", q.reserved_id("c2"), 9))
    q.do(c.PauseTube("u", 8_000))
    q.reserve("x")
    q.reserve("w1", 30_000, request_id="wait-1")
    q.do(c.RenewLease("p2", 20_000))
    q.delete("", 1)
    q.at(1_000)


def test_restore_then_snapshot_gives_the_same_bytes(q: Driver) -> None:
    _busy(q)
    data = q.machine.snapshot()
    assert JobStateMachine.restore(data).snapshot() == data


def test_the_same_state_reached_twice_gives_the_same_bytes() -> None:
    a, b = Driver(), Driver()
    _busy(a)
    _busy(b)
    assert a.machine.snapshot() == b.machine.snapshot()


def test_restore_keeps_the_next_job_id_after_the_highest_jobs_were_deleted(q: Driver) -> None:
    q.put_ids(3)
    q.delete("", 3)
    q.delete("", 2)
    assert _restored(q).put() == r.Inserted(4)


def test_restore_keeps_the_delayed_schedule(q: Driver) -> None:
    _busy(q)
    restored = _restored(q)
    assert restored.machine.next_deadline_ms() == q.machine.next_deadline_ms() == 5_000
    assert (
        restored.tick(5_000)
        == q.tick(5_000)
        == (wakeup("w1", r.Reserved(2, b"delayed"), request_id="wait-1"),)
    )


def test_restore_keeps_waits_pauses_leases_and_counters(q: Driver) -> None:
    _busy(q)
    restored = _restored(q)
    for later in (c.Stats(), c.StatsTube("u"), c.CheckClients("p1", ("c1", "w1"))):
        assert restored.do(later) == q.do(later)
    # The lease runs out at 20000: x's wait ends and its job-less connection goes.
    assert restored.tick(20_000) == q.tick(20_000)
    assert restored.machine.snapshot() == q.machine.snapshot()


def test_a_version_2_snapshot_restores_without_its_old_request_window(q: Driver) -> None:
    # Version 2 kept the machine's own request window between jobs and records; retries are
    # the cluster's now, so a restore reads past it and the state is otherwise the same.
    _busy(q)
    data = q.machine.snapshot()
    records = 8 + 8 + 4 + 4  # no records: max_finished, max_age_ms, n = 0, k = 0
    assert struct.unpack("<QqII", data[-records:])[2:] == (0, 0)

    def text(value: bytes) -> bytes:
        return struct.pack("<I", len(value)) + value

    window = [
        text(b"req-1") + struct.pack("<qBQ", 5, 0, 1),  # Inserted(1)
        text(b"req-2") + struct.pack("<qBQ", 6, 1, 3) + text(b"to-reserve"),  # Reserved
        text(b"req-3") + struct.pack("<qBQ", 7, 2, 0),  # Waiting
        text(b"req-4") + struct.pack("<qBQ", 8, 7, 0) + text(b"c9"),  # UnknownClient
    ]
    old = (
        struct.pack("<4sH", b"BRSM", 2)
        + data[6:-records]
        + struct.pack("<I", len(window))
        + b"".join(window)
        + data[-records:]
    )
    assert JobStateMachine.restore(old).snapshot() == data
    broken = old.replace(struct.pack("<qBQ", 7, 2, 0), struct.pack("<qBQ", 7, 99, 0))
    with pytest.raises(SnapshotError, match="unknown reply tag 99"):
        JobStateMachine.restore(broken)


def test_restore_keeps_watch_lists_and_the_list_tubes_order(q: Driver) -> None:
    q.connect("c1")
    for tube in ("a", "b", "c"):
        q.do(c.Watch("c1", tube))
    q.do(c.Ignore("c1", "a"))
    restored = _restored(q)
    assert restored.watched("c1") == ("default", "c", "b")
    assert restored.tubes() == ("default", "c", "b")


def test_restore_keeps_reservations_with_their_deadlines(q: Driver) -> None:
    q.connect("c1")
    q.put(ttr_ms=4_000)
    q.reserve("c1")
    restored = _restored(q)
    assert restored.job_stats(1).state == "reserved"
    assert restored.do(c.Touch("c1", 1)) == r.Touched()  # still held by c1
    restored.tick(3_999)
    assert restored.state_of(1) == "reserved"
    restored.tick(4_000)
    assert restored.job_stats(1).timeouts == 1


def test_restore_keeps_the_configuration() -> None:
    machine = JobStateMachine(MachineConfig(max_job_size=3))
    restored = JobStateMachine.restore(machine.snapshot())
    assert restored.config == MachineConfig(max_job_size=3)
    assert restored.apply(c.Put("default", 0, 0, 1000, b"four"), 0).reply == r.JobTooBig()


def test_a_snapshot_of_another_version_is_refused_with_a_clear_error() -> None:
    data = bytearray(JobStateMachine().snapshot())
    data[4] = 99
    with pytest.raises(SnapshotError, match="version"):
        JobStateMachine.restore(bytes(data))


def test_a_truncated_snapshot_is_refused_with_a_clear_error() -> None:
    data = JobStateMachine().snapshot()
    with pytest.raises(SnapshotError, match="truncated"):
        JobStateMachine.restore(data[:-3])


def test_a_snapshot_with_trailing_bytes_is_refused() -> None:
    with pytest.raises(SnapshotError, match="left after"):
        JobStateMachine.restore(JobStateMachine().snapshot() + b"\0")


def test_a_bad_max_job_size_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="max_job_size"):
        MachineConfig(max_job_size=-1)
