"""``python -m nemesis`` (from tests/, as root): run a fault schedule and print the report.

    python -m nemesis --seed 7 --faults 40          # a random schedule of 40 faults
    python -m nemesis --short                       # the schedule CI runs
    python -m nemesis --kinds partition_leader,torn_tail --faults 6 --keep

Exits 1 when a correctness check fails (a lost or twice-deleted job, a hanging reserve,
replicas that differ) and 2 when an availability target is missed.
"""

from __future__ import annotations

import argparse
import sys

from .run import run
from .schedule import KINDS, SHORT, generate, in_order

# Targets (issue 13): the longest gap in acknowledged puts around each kind of fault, and the
# time after the final heal until writes are accepted.
GAP_TARGET_S = {"pause_leader": 5.0, "pause_follower": 5.0}
GAP_TARGET_DEFAULT_S = 3.0
WRITES_AFTER_HEAL_TARGET_S = 2.0
UNTARGETED = ("kill_all", "disk_full_leader")  # the cluster is down or must elect: no target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nemesis", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=int, default=40)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated fault kinds")
    parser.add_argument("--short", action="store_true", help="each kind in SHORT once, in order")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep logs and data afterwards")
    args = parser.parse_args(argv)
    if args.short:
        faults = in_order(SHORT)
    else:
        kinds = tuple(k for k in args.kinds.split(",") if k)
        unknown = set(kinds) - set(KINDS)
        if unknown:
            parser.error(f"unknown kinds {', '.join(sorted(unknown))}: choose from {KINDS}")
        faults = generate(args.seed, args.faults, kinds)
    report, _ = run(faults, args.seed, nodes=args.nodes, keep=args.keep)
    for line in report.lines():
        print(line)
    if not report.correct:
        print("nemesis: FAILED a correctness check")
        return 1
    missed = missed_targets(report)
    for line in missed:
        print(f"nemesis: target missed: {line}")
    return 2 if missed else 0


def missed_targets(report: object) -> list[str]:
    missed = []
    for kind, targets, gap_s, _ in getattr(report, "fault_gaps", []):
        if kind in UNTARGETED:
            continue
        limit = GAP_TARGET_S.get(kind, GAP_TARGET_DEFAULT_S)
        if gap_s >= limit:
            missed.append(f"{kind} on {targets}: a {gap_s:.2f} s gap (target < {limit:.0f} s)")
    writes_s = getattr(report, "writes_after_heal_s", -1.0)
    if not 0 <= writes_s <= WRITES_AFTER_HEAL_TARGET_S:
        target_s = WRITES_AFTER_HEAL_TARGET_S
        missed.append(f"writes {writes_s:.2f} s after the heal (target {target_s} s)")
    return missed


if __name__ == "__main__":
    sys.exit(main())
