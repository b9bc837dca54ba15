"""What a run must show, and the figures it prints.

Correctness (asserted): no acknowledged put lost (each is DELETED or still in the queue at the
end), no job DELETED by two clients, no put in the queue twice, no reserve left unanswered past
its timeout plus ``RESERVE_BOUND_S``, every replica's snapshot equal after the heal.

Availability (printed, recorded in docs/fault-tolerance.md): the longest spell without an
acknowledged put, in all and around each fault, and after the final heal the time until a put
is acknowledged and until every replica is equal.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from .schedule import Applied
from .workload import RESERVE_BOUND_S, History


@dataclass
class Report:
    acked: int = 0
    lost: list[str] = field(default_factory=list)
    double_deleted: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    duplicated: list[str] = field(default_factory=list)
    hanging: int = 0
    events: list[str] = field(default_factory=list)  # what went wrong, when, near which fault
    reserves: int = 0
    replicas_equal: bool = False
    digests: dict[str, tuple[int, str]] = field(default_factory=dict)
    longest_gap_s: float = 0.0
    fault_gaps: list[tuple[str, str, float, float]] = field(default_factory=list)
    writes_after_heal_s: float = -1.0
    equal_after_heal_s: float = -1.0
    unknown_puts: int = 0
    delete_not_found: int = 0
    delete_unknown: int = 0

    @property
    def correct(self) -> bool:
        return not (
            self.lost
            or self.double_deleted
            or self.duplicated
            or self.hanging
            or not self.replicas_equal
        )

    def lines(self) -> list[str]:
        out = [
            f"acknowledged puts      {self.acked}  (outcome unknown: {self.unknown_puts})",
            f"lost                   {len(self.lost)}",
            f"DELETED twice          {len(self.double_deleted)}",
            f"in the queue twice     {len(self.duplicated)}",
            f"reserves               {self.reserves}, unanswered past timeout + "
            f"{RESERVE_BOUND_S:.0f} s: {self.hanging}",
            f"delete NOT_FOUND       {self.delete_not_found}  (outcome unknown: "
            f"{self.delete_unknown})",
            f"replicas equal         {self.replicas_equal}  {self.digests}",
            f"after the final heal   writes in {self.writes_after_heal_s:.2f} s, "
            f"every replica caught up in {self.equal_after_heal_s:.2f} s",
            f"longest gap in puts    {self.longest_gap_s:.2f} s",
            "fault                  targets        longest gap around it   caught up after heal",
        ]
        out += [f"  {k:<20} {t:<14} {g:5.2f} s {c:22.1f} s" for k, t, g, c in self.fault_gaps]
        out += [f"  ! {event}" for event in self.events]
        return out


def check(history: History, drained: list[str], applied: list[Applied]) -> Report:
    report = Report(acked=len(history.acked), unknown_puts=len(history.unknown))
    report.delete_not_found = len(history.delete_not_found)
    origin = applied[0].started if applied else 0.0

    def near(t: float) -> str:
        before = [f for f in applied if f.started <= t]
        if not before:
            return f"at {t - origin:+.1f} s, before the first fault"
        f = before[-1]
        into = f"{t - f.started:.1f} s into {f.kind} on {','.join(f.targets)}"
        return f"at {t - origin:+.1f} s, {into}"

    for consumer, job_id, t in history.delete_not_found:
        report.events.append(f"{consumer}: delete of job {job_id} NOT_FOUND {near(t)}")
    found = Counter(history.deleted_bodies) + Counter(drained)
    report.delete_unknown = len(history.delete_unknown)
    report.lost = sorted(
        body for body in history.acked if found[body] == 0 and body not in history.delete_unknown
    )
    owners: dict[int, list[str]] = {}
    for body, job_id in history.acked.items():
        owners.setdefault(job_id, []).append(body)
    for job_id, bodies in sorted(owners.items()):
        if len(bodies) > 1:  # the id counter went back: a log entry was lost
            report.events.append(
                f"job id {job_id} was acknowledged for {len(bodies)} puts: {bodies}"
            )
    for body in report.lost[:5]:
        job_id = history.acked[body]
        report.events.append(
            f"put {body} (job {job_id}) lost, acknowledged {near(history.acked_at[body])}"
        )
    report.duplicated = sorted(body for body, n in found.items() if n > 1)
    report.double_deleted = {job_id: who for job_id, who in history.deleted.items() if len(who) > 1}
    report.reserves = len(history.reserves)
    for call in history.reserves:
        took = call.ended - call.started
        if call.outcome == "hang" or took > call.timeout_s + RESERVE_BOUND_S:
            report.hanging += 1
            report.events.append(
                f"{call.consumer}: reserve-with-timeout {call.timeout_s} ended after {took:.1f} s "
                f"({call.outcome}), started {near(call.started)}"
            )
    times = sorted(history.ack_times)
    report.longest_gap_s = _longest_gap(times, times[0] if times else 0, times[-1] if times else 0)
    for i, fault in enumerate(applied):
        # from the fault's start to 10 s after its heal (the outage and the recovery), or to
        # the next fault's start if that is sooner
        end = fault.healed + 10
        if i + 1 < len(applied):
            end = min(end, applied[i + 1].started)
        if times:  # the workload stops a few seconds after the last heal: no gap past its end
            end = min(end, times[-1])
        gap = _longest_gap(times, fault.started, end)
        report.fault_gaps.append((fault.kind, ",".join(fault.targets), gap, fault.caught_up_s))
    return report


def _longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    points = [start, *inside, end]
    return max((b - a for a, b in itertools.pairwise(points)), default=0.0)
