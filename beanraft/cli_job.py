"""``beanraft job run|status|list|stop|log``: the job API from the command line, shaped like
joblet's ``rnx`` (its API document's examples), with ``--json`` on every action.

The cluster and the admin certificate come from flags, the environment or the client file that
``beanraft up`` writes (``cluster.client_config``), so after ``beanraft up`` no flag is needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from api.jobs import JobApiError, JobClient, JobInfo
from cluster.client_config import ClientConfigError, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="run a command as a job: beanraft job run [flags] -- CMD ARGS")
    run.add_argument("--max-cpu", type=int, default=0, help="CPU limit, percent of one core")
    run.add_argument("--max-memory", type=int, default=0, help="memory limit, MB")
    run.add_argument("--max-iobps", type=int, default=0, help="I/O limit, bytes per second")
    run.add_argument("--cpu-cores", default="", help="cpuset, e.g. 0-1")
    run.add_argument(
        "--network",
        choices=("none", "host"),
        default=None,
        help="none (its own empty network namespace) or host (the worker's network)",
    )
    run.add_argument("--env", "-e", action="append", default=[], help="NAME=VALUE")
    run.add_argument("--timeout", type=int, default=0, help="seconds before the job is stopped")
    run.add_argument("--tube", default="", help="the tube to queue it on (default: default)")
    run.add_argument("--retries", type=int, default=0, help="attempts after a failure")
    run.add_argument("--follow", "-f", action="store_true", help="then follow its output")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    status = sub.add_parser("status", help="a job's status, from any node")
    status.add_argument("id", type=int, help="the job's id")
    listing = sub.add_parser("list", help="every job's status")
    listing.add_argument("--status", action="append", default=[], help="only this status")
    stop = sub.add_parser("stop", help="stop a job, queued or running")
    stop.add_argument("id", type=int, help="the job's id")
    log = sub.add_parser("log", help="a job's output (and -f: live until it ends)")
    log.add_argument("id", type=int, help="the job's id")
    log.add_argument("--follow", "-f", action="store_true", help="follow until the job ends")
    log.add_argument("--offset", type=int, default=0, help="start at this byte of the output")
    retention = sub.add_parser("retention", help="how many finished records, and how long, to keep")
    retention.add_argument("--max-records", type=int, required=True, help="default 100000")
    retention.add_argument("--max-age-days", type=float, required=True, help="default 7")
    for action in (run, status, listing, stop, log, retention):
        action.add_argument("--json", action="store_true", help="machine-readable output")
        action.add_argument("--cluster", default="", help="gRPC addresses of nodes, A,B,C")
        group = action.add_mutually_exclusive_group()
        group.add_argument("--tls-dir", type=Path, help="ca.crt and admin.crt/.key")
        group.add_argument("--insecure", action="store_true", help="plaintext gRPC")


def run(args: argparse.Namespace) -> int:
    try:
        config = resolve(args.cluster, args.tls_dir, args.insecure)
    except ClientConfigError as exc:
        print(f"beanraft job {args.action}: {exc}", file=sys.stderr)
        return 2
    if args.action == "retention":
        return _retention(config.addresses, config.tls_dir, args)
    try:
        with JobClient(config.addresses, config.tls_dir) as client:
            return ACTIONS[args.action](client, args)
    except JobApiError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


def _run(client: JobClient, args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print(
            "beanraft job run: no command given: beanraft job run [flags] -- CMD ARGS",
            file=sys.stderr,
        )
        return 2
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"beanraft job run: --env {item!r} is not NAME=VALUE", file=sys.stderr)
            return 2
        env[name] = value
    job = client.run(
        command[0],
        command[1:],
        max_cpu=args.max_cpu,
        max_memory_mb=args.max_memory,
        max_iobps=args.max_iobps,
        cpu_cores=args.cpu_cores or None,
        network=args.network,
        env=env,
        timeout_s=args.timeout or None,
        tube=args.tube or None,
        max_retries=args.retries or None,
    )
    if args.json:
        _print_json(job.to_json())
    else:
        print("Job started:")
        print(f"ID: {job.id}")
        print(f"Command: {_command_line(job)}")
        print(f"Status: {job.status}")
        print(f"StartTime: {job.start_time}")
        print(f"MaxCPU: {job.max_cpu}")
        print(f"MaxMemory: {job.max_memory_mb}")
        print(f"Network: {job.details.get('network', 'none')}")
    if args.follow:
        return _follow(client, job.id, 0, args.json)
    return 0


def _status(client: JobClient, args: argparse.Namespace) -> int:
    job = client.status(args.id)
    if args.json:
        _print_json(job.to_json())
        return 0
    details = job.details
    print(f"Id: {job.id}")
    print(f"Command: {_command_line(job)}")
    print(f"Status: {job.status}")
    print(f"Started At: {job.start_time}")
    print(f"Ended At: {job.end_time}")
    print(f"MaxCPU: {job.max_cpu}")
    print(f"MaxMemory: {job.max_memory_mb}")
    print(f"MaxIOBPS: {job.max_iobps}")
    print(f"ExitCode: {job.exit_code}")
    for label, key in (
        ("Queue", "queue_state"),
        ("Tube", "tube"),
        ("Attempt", "attempt"),
        ("LostAttempts", "lost_attempts"),
        ("Worker", "worker_id"),
        ("Result", "result"),
        ("Signal", "signal"),
        ("OOMKilled", "oom_killed"),
        ("TimedOut", "timed_out"),
        ("DurationMs", "duration_ms"),
        ("PeakMemoryBytes", "peak_memory_bytes"),
        ("Error", "error"),
    ):
        if details.get(key):
            print(f"{label}: {details[key]}")
    return 0


def _list(client: JobClient, args: argparse.Namespace) -> int:
    jobs = client.list([s.upper() for s in args.status])
    if args.json:
        _print_json([job.to_json() for job in jobs])
        return 0
    for job in jobs:
        print(f"{job.id} {job.status} StartTime: {job.start_time} Command: {_command_line(job)}")
    return 0


def _stop(client: JobClient, args: argparse.Namespace) -> int:
    stopped = client.stop(args.id)
    if args.json:
        _print_json(stopped)
        return 0
    print("Job stopped successfully:")
    print(f"ID: {stopped['id']}")
    print(f"Status: {stopped['status']}")
    print(f"ExitCode: {stopped['exitCode']}")
    print(f"EndTime: {stopped['endTime']}")
    return 0


def _log(client: JobClient, args: argparse.Namespace) -> int:
    if args.follow and not args.json:
        print(f"Logs for job {args.id} (Press Ctrl+C to exit if streaming):", file=sys.stderr)
    return _follow(client, args.id, args.offset, args.json, follow=args.follow)


def _follow(client: JobClient, job_id: int, offset: int, as_json: bool, follow: bool = True) -> int:
    out = sys.stdout.buffer
    for chunk_offset, payload in client.logs(job_id, offset, follow):
        if as_json:
            line = {"offset": chunk_offset, "data": payload.decode(errors="replace")}
            out.write((json.dumps(line) + "\n").encode())
        else:
            out.write(payload)
        out.flush()
    return 0


def _retention(addresses: tuple[str, ...], tls_dir: Path | None, args: argparse.Namespace) -> int:
    """Set the record retention through the log, as an admin (every node applies it)."""
    import asyncio

    from api.client import RemoteQueue
    from jobqueue.interface import QueueUnavailable
    from statemachine import commands as c
    from statemachine import replies as r

    if args.max_records < 0 or args.max_age_days < 0:
        print("beanraft job retention: values must be 0 or more", file=sys.stderr)
        return 2
    command = c.SetRecordRetention(args.max_records, int(args.max_age_days * 86_400_000))

    async def apply() -> r.Reply:
        queue = RemoteQueue(list(addresses), tls_dir, "admin")
        try:
            return await queue.apply(command)
        finally:
            await queue.close()

    try:
        reply = asyncio.run(apply())
    except (QueueUnavailable, PermissionError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if isinstance(reply, r.InvalidArgument):
        print(f"Error: {reply.message}", file=sys.stderr)
        return 1
    print(
        f"Finished records kept: at most {args.max_records}, for {args.max_age_days:g} days "
        "(records of queued and running jobs are always kept)"
    )
    return 0


def _command_line(job: JobInfo) -> str:
    return " ".join([job.command, *job.args])


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


ACTIONS = {"run": _run, "status": _status, "list": _list, "stop": _stop, "log": _log}
