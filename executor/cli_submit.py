"""``beanraft submit [--tube T] [--max-memory MB] [...] -- CMD ARGS...``: put a job spec."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from typing import Any

from cluster.jobspec import SpecError, spec_from_dict
from executor.cli_logs import escape_controls
from executor.client import DEFAULT_PRIORITY, DEFAULT_TTR_S, parse_address, submit, wait_result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env_addr = os.environ.get("BEANRAFT_BEANSTALKD", "127.0.0.1:11300")
    parser.add_argument("--beanstalkd", default=env_addr, help="HOST:PORT of a proxy/beanstalkd")
    parser.add_argument("--tube", default="default", help="the tube the worker pool watches")
    parser.add_argument(
        "--priority", type=int, default=DEFAULT_PRIORITY, help="beanstalkd priority: lower first"
    )
    parser.add_argument("--delay", type=int, default=0, help="seconds before the job is ready")
    parser.add_argument("--ttr", type=int, default=DEFAULT_TTR_S, help="time to run, seconds")
    parser.add_argument("--max-cpu", type=int, help="CPU limit, percent of one core")
    parser.add_argument("--max-memory", type=int, help="memory limit, MB")
    parser.add_argument("--max-iobps", type=int, help="I/O limit, bytes per second")
    parser.add_argument("--max-pids", type=int, help="process limit")
    parser.add_argument("--cpu-cores", help="cpuset, e.g. 0-1")
    parser.add_argument("--timeout", type=int, help="seconds before the job is stopped")
    parser.add_argument(
        "--network",
        choices=("none", "host"),
        default="none",
        help="none (its own empty network namespace) or host (the worker's network)",
    )
    parser.add_argument("--env", "-e", action="append", default=[], help="NAME=VALUE")
    parser.add_argument("--workdir", help="working directory inside the job (default /work)")
    parser.add_argument("--retries", type=int, default=0, help="releases before burying")
    parser.add_argument("--backoff", type=int, default=1, help="first retry delay, seconds")
    parser.add_argument("--result-tube", help="tube that receives the result record")
    parser.add_argument("--root", action="store_true", help="run as root (worker must allow)")
    parser.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="wait this long for the final result (a private result tube unless --result-tube), "
        "print the job's output (its last 8 KiB) and the result record; exit 0 only if the job "
        "succeeded",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec dict the flags describe (validated by submit)."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SpecError("no command given: beanraft submit [options] -- CMD ARGS...")
    limit_flags = {
        "cpu_percent": args.max_cpu,
        "memory_mb": args.max_memory,
        "io_bps": args.max_iobps,
        "pids": args.max_pids,
        "cpu_cores": args.cpu_cores,
    }
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    spec: dict[str, Any] = {
        "command": command[0],
        "args": command[1:],
        "env": env,
        "limits": {k: v for k, v in limit_flags.items() if v is not None},
        "network": args.network,
        "retry": {"max_retries": args.retries, "backoff_s": args.backoff},
        "run_as_root": args.root,
    }
    for key, value in (("timeout_s", args.timeout), ("workdir", args.workdir)):
        if value is not None:
            spec[key] = value
    if args.result_tube or args.wait is not None:
        spec["result_tube"] = args.result_tube or f"results-{uuid.uuid4().hex[:12]}"
    return spec


def run(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_dict(build_spec(args))
        address = parse_address(args.beanstalkd)
    except (SpecError, ValueError) as exc:
        print(f"beanraft submit: {exc}", file=sys.stderr)
        return 2
    try:
        job_id = submit(address, spec, args.tube, args.priority, args.delay, args.ttr)
    except OSError as exc:
        print(f"beanraft submit: cannot reach {args.beanstalkd}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"job_id": job_id, "tube": args.tube}), flush=True)
    if args.wait is None:
        return 0
    assert spec.result_tube is not None
    try:
        record = wait_result(address, spec.result_tube, job_id, args.wait)
    except TimeoutError as exc:
        print(f"beanraft submit: {exc}", file=sys.stderr)
        return 1
    _print_output(record.pop("output_tail", None), record.pop("output_truncated", False))
    print(json.dumps(record, sort_keys=True))
    return 0 if record.get("action") == "delete" else 1


def _print_output(tail: str | None, truncated: bool) -> None:
    """What the job printed (its last 8 KiB, control characters escaped as `beanraft logs`
    does), before its result record."""
    if not tail:
        return
    if truncated:
        print("[... earlier output left out: `beanraft logs JOB_ID` on the worker has it all]")
    text = escape_controls(tail)
    print(text, end="" if text.endswith("\n") else "\n", flush=True)
