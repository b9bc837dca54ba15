"""``beanraft stop JOB_ID``: stop a job running on this worker host.

The worker publishes each running attempt in ``<log dir>/job-<id>.state.json`` (its init's pid
and its cgroup). This command writes the stop intent (so the worker records "stopped", not
"killed by a signal"), sends SIGTERM to the job's init, which passes it to every process of the
job, waits up to the grace period on the init's pidfd, then kills every process left in the
job's cgroup.
"""

from __future__ import annotations

import argparse
import os
import sys

from executor.cgroups import JobCgroup
from executor.jobfiles import JobFiles, default_log_dir
from executor.runner import stop_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", type=int, help="the job's id")
    parser.add_argument("--log-dir", default=default_log_dir(), help="the worker's --log-dir")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds before SIGKILL")


def _in_cgroup(pid: int, job_name: str) -> bool:
    # Guards against a reused pid: the init must still be a process of this job's cgroup.
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return job_name in f.read()
    except OSError:
        return False


def _worker_alive(state: dict[str, object]) -> bool:
    pid = state.get("worker_pid")
    return isinstance(pid, int) and os.path.exists(f"/proc/{pid}")


def run(args: argparse.Namespace) -> int:
    files = JobFiles(args.log_dir, args.job_id)
    state = files.read_state()
    if state is None:
        print(
            f"beanraft stop: job {args.job_id} is not running on this host "
            f"(no {files.state_path}); run this on the worker's host with its --log-dir",
            file=sys.stderr,
        )
        return 1
    if not _worker_alive(state):
        files.clear_state()
        print(
            f"beanraft stop: job {args.job_id} is not running: its worker "
            f"(pid {state.get('worker_pid')}) is gone; the queue gives the job back after its TTR",
            file=sys.stderr,
        )
        return 1
    files.request_stop()
    cgroup = JobCgroup.from_json(state["cgroup"])
    init_pid = state.get("init_pid")
    if init_pid is not None and not _in_cgroup(int(init_pid), str(state["job_name"])):
        init_pid = None
    stop_job(init_pid, cgroup, int(args.grace * 1000))
    print(f"stopped job {args.job_id}")
    return 0
