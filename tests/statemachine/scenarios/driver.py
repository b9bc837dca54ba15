"""The scenario driver: a machine, a clock that tests move by hand, and checks after each step.

``Driver`` applies commands to a real ``JobStateMachine`` at a time the test sets (``at``,
``advance``), and after every step it
- calls ``check_invariants()``;
- checks that ``restore(snapshot())`` gives back the same bytes (the snapshot is whole);
- keeps the outcome's wake-ups in ``last_wakeups`` for the test to assert.

Helpers give beanstalkd-shaped defaults so a scenario reads like a beanstalkd session:
``q.put(body=b"a")``, ``q.reserve("c1")``, ``q.delete("c1", 1)``. Times are milliseconds.
"""

from __future__ import annotations

from statemachine import commands as c
from statemachine import replies as r
from statemachine.machine import JobStateMachine

TTR_MS = 60_000


class Driver:
    """A machine driven one command at a time; see the module docstring."""

    def __init__(self, machine: JobStateMachine | None = None) -> None:
        self.machine = machine if machine is not None else JobStateMachine()
        self.now_ms = 0
        self.last_wakeups: tuple[r.Wakeup, ...] = ()

    # --- time and raw commands ---------------------------------------------------------------

    def at(self, now_ms: int) -> Driver:
        self.now_ms = now_ms
        return self

    def advance(self, delta_ms: int) -> Driver:
        self.now_ms += delta_ms
        return self

    def apply(self, command: c.Command) -> r.Outcome:
        outcome = self.machine.apply(command, self.now_ms)
        self.machine.check_invariants()
        data = self.machine.snapshot()
        assert JobStateMachine.restore(data).snapshot() == data, "snapshot round trip differs"
        self.last_wakeups = outcome.wakeups
        return outcome

    def do(self, command: c.Command) -> r.Reply:
        return self.apply(command).reply

    def tick(self, now_ms: int | None = None) -> tuple[r.Wakeup, ...]:
        if now_ms is not None:
            self.now_ms = now_ms
        outcome = self.apply(c.Tick())
        assert outcome.reply == r.Ok()
        return outcome.wakeups

    # --- beanstalkd-shaped helpers -----------------------------------------------------------

    def connect(self, *client_ids: str, proxy: str = "p1") -> None:
        for client_id in client_ids:
            assert self.do(c.Connect(client_id, proxy)) == r.Ok()

    def put(
        self,
        tube: str = "default",
        pri: int = 0,
        delay_ms: int = 0,
        ttr_ms: int = TTR_MS,
        body: bytes = b"x",
        client: str = "",
        request_id: str = "",
    ) -> r.Reply:
        return self.do(c.Put(tube, pri, delay_ms, ttr_ms, body, client, request_id))

    def put_ids(self, count: int, **kwargs: object) -> list[int]:
        ids = []
        for _ in range(count):
            reply = self.put(**kwargs)  # type: ignore[arg-type]
            assert isinstance(reply, r.Inserted), reply
            ids.append(reply.job_id)
        return ids

    def reserve(self, client: str, timeout_ms: int | None = None, request_id: str = "") -> r.Reply:
        with_timeout = timeout_ms is not None
        return self.do(c.Reserve(client, timeout_ms, request_id, with_timeout))

    def reserved_id(self, client: str) -> int:
        reply = self.reserve(client, 0)
        assert isinstance(reply, r.Reserved), reply
        return reply.job_id

    def delete(self, client: str, job_id: int) -> r.Reply:
        return self.do(c.Delete(client, job_id))

    def stats(self) -> r.ServerStats:
        reply = self.do(c.Stats())
        assert isinstance(reply, r.ServerStats)
        return reply

    def tube_stats(self, tube: str = "default") -> r.TubeStats:
        reply = self.do(c.StatsTube(tube))
        assert isinstance(reply, r.TubeStats), reply
        return reply

    def job_stats(self, job_id: int) -> r.JobStats:
        reply = self.do(c.StatsJob(job_id))
        assert isinstance(reply, r.JobStats), reply
        return reply

    def state_of(self, job_id: int) -> str:
        return self.job_stats(job_id).state

    def tubes(self) -> tuple[str, ...]:
        reply = self.do(c.ListTubes())
        assert isinstance(reply, r.TubeList)
        return reply.tubes

    def watched(self, client: str) -> tuple[str, ...]:
        reply = self.do(c.ListTubesWatched(client))
        assert isinstance(reply, r.TubeList)
        return reply.tubes

    def assert_unchanged_except_counters(self, command: c.Command) -> r.Reply:
        """Apply an illegal command and check it changed nothing but cmd-* counters."""
        before = _without_counters(self.machine)
        reply = self.do(command)
        assert _without_counters(self.machine) == before, f"{command} changed the state"
        assert self.last_wakeups == ()
        return reply


def _without_counters(machine: JobStateMachine) -> bytes:
    copy = JobStateMachine.restore(machine.snapshot())
    counters = copy._state.counters
    counters.set_values([0] * len(counters.values()))
    return copy.snapshot()


def wakeup(client: str, result: r.WaitResult, proxy: str = "p1", request_id: str = "") -> r.Wakeup:
    return r.Wakeup(client, proxy, request_id, result)
