"""Scenarios: the cluster's request window, the one place a retry is answered.

A caller that lost an answer (its leader changed after the entry was appended, a stream broke)
sends the same request again under the same request id. ``ClusterState`` answers it with the
first outcome and applies nothing, for ``REQUEST_WINDOW_MS`` of machine time; the machine itself
keeps no window and applies whatever reaches it. Stamps and the window's horizon are the
machine's time: the one clamp.
"""

from __future__ import annotations

from cluster import envelope
from cluster.replicated import OK, REQUEST_WINDOW_MS, ClusterState
from statemachine import codec
from statemachine import commands as c
from statemachine import replies as r
from statemachine.machine import JobStateMachine
from statemachine.records import JobSummary

T0_MS = 1_700_000_000_000
SUMMARY = JobSummary("echo", ("hi",))


class Cluster:
    """One ``ClusterState``, applied an entry at a time at the leader's stamp ``now_ms``."""

    def __init__(self) -> None:
        self.state = ClusterState(JobStateMachine())
        self.now_ms = T0_MS

    def apply(self, command: c.Command, request_id: str = "") -> r.Reply:
        request = envelope.Request(envelope.COMMAND, request_id, codec.encode_command(command))
        [(status, reply)] = self.state.apply([request], self.now_ms).results
        assert status == OK and not isinstance(reply, bytes), reply
        return reply

    def put(self, body: bytes = b"x", request_id: str = "") -> r.Reply:
        return self.apply(c.Put("default", 0, 0, 60_000, body), request_id)

    def stats(self) -> r.ServerStats:
        stats = self.apply(c.Stats())
        assert isinstance(stats, r.ServerStats)
        return stats


def test_a_repeated_put_request_returns_the_first_reply_and_adds_no_job() -> None:
    q = Cluster()
    assert q.put(b"a", "Put:r1") == r.Inserted(1)
    before = q.stats()
    assert q.put(b"a", "Put:r1") == r.Inserted(1)
    after = q.stats()
    assert after.total_jobs == 1 and after.cmd_put == before.cmd_put
    assert q.put(b"b", "Put:r2") == r.Inserted(2)


def test_a_request_id_is_forgotten_once_machine_time_passes_the_window() -> None:
    q = Cluster()
    q.put(request_id="Put:r1")
    q.now_ms = T0_MS + REQUEST_WINDOW_MS
    assert q.put(request_id="Put:r1") == r.Inserted(1)
    q.now_ms = T0_MS + REQUEST_WINDOW_MS + 1
    q.put(request_id="Put:other")  # moves machine time; the entry's end evicts r1
    assert q.put(request_id="Put:r1") == r.Inserted(3)


def test_a_stamp_behind_the_machine_neither_stamps_nor_evicts_by_its_own_time() -> None:
    # A new leader's clock may be behind: the machine clamps, and the window follows the
    # machine's time, never the entry's stamp.
    q = Cluster()
    q.now_ms = T0_MS + 10_000
    q.put(request_id="Put:r1")
    q.now_ms = T0_MS  # behind
    q.put(request_id="Put:r2")
    assert [stamp for stamp, _ in q.state.requests.values()] == [T0_MS + 10_000] * 2
    q.now_ms = T0_MS + 10_000 + REQUEST_WINDOW_MS - 1
    q.put(request_id="Put:r3")
    assert list(q.state.requests) == ["Put:r1", "Put:r2", "Put:r3"]


def test_a_repeated_reserve_request_returns_the_same_job_and_reserves_nothing_more() -> None:
    q = Cluster()
    q.apply(c.Connect("c1", "p1"))
    q.put(b"one")
    q.put(b"two")
    assert q.apply(c.Reserve("c1", 0, "q1"), "Reserve:q1") == r.Reserved(1, b"one")
    assert q.apply(c.Reserve("c1", 0, "q1"), "Reserve:q1") == r.Reserved(1, b"one")
    assert q.stats().cmd_reserve == 1 and q.stats().current_jobs_ready == 1


def test_a_repeated_waiting_reserve_is_waiting_again_not_already_waiting() -> None:
    q = Cluster()
    q.apply(c.Connect("c1", "p1"))
    assert q.apply(c.Reserve("c1", None, "q1"), "Reserve:q1") == r.Waiting()
    assert q.apply(c.Reserve("c1", None, "q1"), "Reserve:q1") == r.Waiting()
    assert q.stats().current_waiting == 1


def test_a_refusal_is_remembered_and_a_renumbered_retry_after_connecting_is_served() -> None:
    # The session's rule (proxy/session.py, _renumbered): an UnknownClient reply proves the
    # request changed nothing, so after connecting again it retries under a new id.
    q = Cluster()
    q.put()
    refused = q.apply(c.Reserve("c1", 0, "q1"), "Reserve:q1")
    assert refused == r.UnknownClient("c1")
    q.apply(c.Connect("c1", "p1"))
    assert q.apply(c.Reserve("c1", 0, "q1"), "Reserve:q1") == refused
    assert q.apply(c.Reserve("c1", 0, "q2"), "Reserve:q2") == r.Reserved(1, b"x")


def test_a_run_job_retried_with_its_request_id_makes_one_job_and_one_record() -> None:
    q = Cluster()
    run = c.RunJob(c.Put("default", 1024, 0, 60_000, b"{}"), SUMMARY, "run-1")
    first = q.apply(run, "RunJob:run-1")
    assert isinstance(first, r.Inserted)
    assert q.apply(run, "RunJob:run-1") == first
    assert q.state.machine.record_count() == 1


def test_the_window_survives_a_dump_and_restore() -> None:
    q = Cluster()
    q.put(request_id="Put:r1")
    q.state = ClusterState.from_bytes(q.state.to_bytes())
    assert q.put(request_id="Put:r1") == r.Inserted(1)
    assert q.stats().total_jobs == 1
