"""Put latency through the proxy while the nodes compact their logs, with a full queue.

    .venv/bin/python -m bench.compaction_bench [--jobs 100000] [--seconds 20]

A three-node cluster behind a proxy (as bench/proxy_bench.py starts them) is filled with
``--jobs`` jobs by 32 connections, so the state each compaction writes is large; then one
connection puts for ``--seconds`` while the log passes its compaction threshold (5,000
entries: at one entry per put, about every 10 s here). Prints the latency percentiles, the
slowest put, and how many puts took over 10 ms: a compaction or a full garbage collection
that holds a node up shows in those last two, not in the median.
"""

from __future__ import annotations

import argparse
import time

import greenstalk

from bench.proxy_bench import _parallel, _puts, cluster, machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(machine())
    with cluster() as port:
        fill_started = time.perf_counter()
        rate = _parallel(port, 32, args.jobs, _puts)
        fill_s = time.perf_counter() - fill_started
        print(f"filled {args.jobs:,} jobs at {rate:,.0f} puts/s in {fill_s:.1f} s")
        client = greenstalk.Client(("127.0.0.1", port), use="compaction-bench")
        latencies = []
        stop_at = time.perf_counter() + args.seconds
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            client.put(b"x" * 100)
            latencies.append(time.perf_counter() - started)
        client.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000

    slow = sum(1 for seconds in latencies if seconds > 0.010)
    print(
        f"one connection, {len(latencies):,} puts in {args.seconds:.0f} s: p50 {pct(0.5):.2f} ms, "
        f"p99 {pct(0.99):.2f} ms, p99.9 {pct(0.999):.2f} ms, max {latencies[-1] * 1000:.1f} ms; "
        f"over 10 ms: {slow}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
