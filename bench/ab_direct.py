"""Two versions of the direct path, side by side: which one costs the servers less per command.

    .venv/bin/python -m bench.ab_direct BASE_TREE CANDIDATE_TREE [--workload put|cycle]
                                        [--rounds 10] [--count 8000]

Why. A change worth 2-5% of the servers' CPU per put is smaller than what this shared 2-core
machine drifts between two runs of ``bench.proxy_cost`` a minute apart (beanstalkd's own CPU per
put moved between 44 and 57 us in one afternoon). So this starts a 3-node cluster from each
tree (a git worktree with its own native build: ``git worktree add /tmp/base REV`` and
``python -m beanraft.native build`` there), both at once, and measures them in alternating short
rounds (ABBA order), so both see the same drift. Each round prints the rate and the three
servers' summed CPU per command (user + system, from /proc); the end prints both trees' medians
and the candidate's ratio to the base, per pair of rounds.

A tree may carry one environment setting for its nodes, ``TREE:NAME=VALUE`` (an experiment
switched on by the environment, against the same tree without it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import ModuleType

from bench.proxy_bench import _cycles, _parallel, _puts, machine
from bench.proxy_cost import _cpu_s

WORKLOADS: dict[str, Callable[..., None]] = {"put": _puts, "cycle": _cycles}
CONNECTIONS = 32


def _bench_module(tree: str) -> ModuleType:
    """``bench/proxy_bench.py`` of ``tree``: its nodes start from that tree's code."""
    spec = importlib.util.spec_from_file_location(
        f"proxy_bench_{abs(hash(tree))}", f"{tree}/bench/proxy_bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def _environment(setting: str) -> Iterator[None]:
    saved = dict(os.environ)
    if setting:
        name, _, value = setting.partition("=")
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("candidate")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="put")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--count", type=int, default=8000, help="commands per round")
    args = parser.parse_args()
    print(machine(), flush=True)
    trees = [args.base, args.candidate]
    work = WORKLOADS[args.workload]
    figures: dict[str, list[tuple[float, float]]] = {tree: [] for tree in trees}
    with ExitStack() as stack:
        clusters = {}
        for tree in trees:
            path, _, setting = tree.partition(":")
            with _environment(setting):
                port, _, pids = stack.enter_context(_bench_module(path).direct_processes("batch"))
            _parallel(port, CONNECTIONS, 3000, _puts)  # warm up; a leader is settled
            clusters[tree] = (port, list(pids.values()))
        for n in range(args.rounds):
            for tree in trees if n % 2 == 0 else reversed(trees):
                port, pids = clusters[tree]
                before_s = sum(_cpu_s(pid) for pid in pids)
                rate = _parallel(port, CONNECTIONS, args.count, work)
                us = (sum(_cpu_s(pid) for pid in pids) - before_s) / args.count * 1e6
                figures[tree].append((rate, us))
                unit = args.workload
                line = f"{rate:7,.0f} {unit}s/s, servers {us:5.1f} us per {unit}"
                print(f"round {n + 1} {tree}: {line}", flush=True)
    for tree in trees:
        rates = [rate for rate, _ in figures[tree]]
        costs = [us for _, us in figures[tree]]
        rate_median, cost_median = statistics.median(rates), statistics.median(costs)
        unit = args.workload
        print(f"{tree}: median {rate_median:7,.0f} {unit}s/s, servers {cost_median:5.1f} us/{unit}")
    base, candidate = figures[args.base], figures[args.candidate]
    cpu = [c[1] / b[1] for b, c in zip(base, candidate, strict=True)]
    speed = [c[0] / b[0] for b, c in zip(base, candidate, strict=True)]
    print(
        f"candidate / base, per pair of rounds: servers' CPU per {args.workload} median "
        f"{statistics.median(cpu):.3f} (range {min(cpu):.3f}-{max(cpu):.3f}); rate median "
        f"{statistics.median(speed):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
