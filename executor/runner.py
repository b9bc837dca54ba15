"""The parent side of a job attempt: create the cgroup, fork the launcher, wait on events, stop,
account and clean up. Produces a `RunResult`.

Waiting never sleeps a fixed time: the worker thread polls the launcher's pidfd (readable when it
exits), the status pipe and the job's stdout and stderr pipes (copied to the logs up to the cap,
`executor.output`), with a timeout that is the nearest of the next TTR touch, the job's timeout
and nothing else. Stopping (on timeout, `beanraft stop`, or a worker shutdown) is
`stop_job`: SIGTERM to the job's init (which passes it to every process of the job), a grace
period waited on the init's pidfd, then SIGKILL to every process left in the job's cgroup.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from executor import sandbox, seccomp
from executor.cgroup_backends import CgroupBackend
from executor.cgroups import JobCgroup
from executor.output import OutputPipe
from executor.plan import Plan

DEFAULT_GRACE_MS = 5000
# After the job's init is gone every process of the job is dead or dying; a stream still open
# after this long is given up rather than allowed to hold the worker's slot.
DRAIN_MS = 2000


@dataclass
class RunResult:
    """What happened to one attempt. `status` is one of: exited, signaled, oom, timeout,
    stopped, failed_to_start."""

    status: str
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    timed_out: bool = False
    stopped: bool = False
    error: str | None = None
    duration_ms: int = 0
    peak_memory_bytes: int = 0
    cpu_time_ms: int = 0
    stdout_dropped_bytes: int = 0
    stderr_dropped_bytes: int = 0
    pids_limit_hits: int = 0  # forks the pids limit refused: why a job may have failed

    @property
    def succeeded(self) -> bool:
        return self.status == "exited" and self.exit_code == 0


@dataclass
class RunningJob:
    """A started attempt: the launcher (our child), the job's init (PID 1 inside) and its cgroup."""

    plan: Plan
    cgroup: JobCgroup
    launcher_pid: int
    launcher_fd: int  # pidfd
    status_fd: int
    started_ms: int
    outputs: tuple[OutputPipe, ...] = ()  # stdout, stderr
    init_pid: int | None = None
    maps_fd: int = -1  # with a user namespace: tells the launcher its id maps are written
    merged_fd: int = -1  # stdout and stderr together, or -1
    lines: list[str] = field(default_factory=list)
    _buffer: bytes = b""

    def read_status(self) -> bool:
        """Read what the status pipe has; False at EOF."""
        try:
            chunk = os.read(self.status_fd, 4096)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if line.startswith("init "):
                self.init_pid = int(line.split()[1])
        return True

    def drain_status(self) -> None:
        """Read the status pipe until EOF or until nothing more is buffered."""
        while True:
            before = len(self.lines), len(self._buffer)
            if not self.read_status() or (len(self.lines), len(self._buffer)) == before:
                return


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def start(
    plan: Plan,
    backend: CgroupBackend,
    stdout_path: str,
    stderr_path: str,
    seccomp_filter: seccomp.PreparedFilter | None = None,
    merged_path: str | None = None,
) -> RunningJob:
    """Create the cgroup (all limits applied, or CgroupError) and fork the launcher.
    `seccomp_filter` is the prepared filter (`executor.seccomp.prepare`), required when the
    plan asks for seccomp. `merged_path`, when given, receives stdout and stderr together."""
    if plan.seccomp and seccomp_filter is None:
        raise ValueError("the plan asks for seccomp but no filter was given")
    cgroup = backend.create(plan.job_name, plan.limits)
    procs_files = cgroup.procs_files()
    outputs: list[OutputPipe] = []
    status_r = status_w = maps_r = maps_w = merged_fd = -1
    try:
        rate_bps = plan.limits.io_bps
        if merged_path is not None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            merged_fd = os.open(merged_path, flags, 0o640)
        merged = merged_fd if merged_fd >= 0 else None
        outputs.append(OutputPipe(stdout_path, plan.log_bytes, rate_bps, merged))
        outputs.append(OutputPipe(stderr_path, plan.log_bytes, rate_bps, merged))
        status_r, status_w = os.pipe()
        if "user" in plan.namespaces:
            maps_r, maps_w = os.pipe()
        started_ms = monotonic_ms()
        pid = os.fork()
        if pid == 0:
            out_fd, err_fd = outputs[0].write_fd, outputs[1].write_fd
            filt = seccomp_filter if plan.seccomp else None
            sandbox.launcher_main(plan, procs_files, status_w, out_fd, err_fd, filt, maps_r)
    except BaseException:
        for output in outputs:
            output.close()
        _close_all(status_r, status_w, maps_r, maps_w, merged_fd)
        cgroup.remove()
        raise
    _close_all(status_w, maps_r)
    for output in outputs:
        output.close_write_end()
    os.set_blocking(status_r, False)
    job = RunningJob(plan, cgroup, pid, os.pidfd_open(pid), status_r, started_ms, tuple(outputs))
    job.maps_fd = maps_w
    job.merged_fd = merged_fd
    try:
        _await_init(job)
    finally:
        _close_all(job.maps_fd)
        job.maps_fd = -1
    return job


def _close_all(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def write_id_maps(pid: int, host_uid: int) -> None:
    """Map uid and gid 0 of `pid`'s new user namespace to `host_uid`, and nothing else."""
    for name in ("uid_map", "gid_map"):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY)
        try:
            os.write(fd, f"0 {host_uid} 1\n".encode())
        finally:
            os.close(fd)


def _await_init(job: RunningJob) -> None:
    """Wait (on the pipe and the launcher's pidfd, no sleep) for the launcher to report its
    init's pid, so that whoever stops the job can signal the init from the first moment."""
    poller = select.poll()
    poller.register(job.status_fd, select.POLLIN)
    poller.register(job.launcher_fd, select.POLLIN)
    while job.init_pid is None:
        events = poller.poll()
        if any(fd == job.launcher_fd for fd, _ in events):
            return  # it failed before forking init; wait() reads why
        if not job.read_status():
            return
        if job.maps_fd >= 0 and "userns" in job.lines:
            try:
                write_id_maps(job.launcher_pid, job.plan.host_uid)
                os.write(job.maps_fd, b"g")
            except OSError as exc:
                # The launcher sees EOF, fails, and this error explains why.
                job.lines.append(f"error cannot map the job's user namespace: {exc}")
            _close_all(job.maps_fd)
            job.maps_fd = -1


def wait(
    job: RunningJob,
    on_tick: Callable[[], None],
    tick_ms: int,
    should_stop: Callable[[], bool],
    grace_ms: int = DEFAULT_GRACE_MS,
) -> RunResult:
    """Wait for the attempt to end, calling `on_tick` every `tick_ms` (the TTR touch), stopping
    it at its timeout or when `should_stop()` turns true (checked on each tick)."""
    deadline_ms = job.started_ms + job.plan.timeout_ms
    next_tick_ms = monotonic_ms() + tick_ms
    poller = select.poll()
    poller.register(job.launcher_fd, select.POLLIN)
    poller.register(job.status_fd, select.POLLIN)
    streams = _register_outputs(poller, job.outputs)
    paused: dict[int, OutputPipe] = {}  # throttled streams, polled again from the next tick
    timed_out = stopped = exited = False
    while not exited:
        now_ms = monotonic_ms()
        if not (timed_out or stopped) and now_ms >= deadline_ms:
            timed_out = True
            stop_job(job.init_pid, job.cgroup, grace_ms, on_tick, job.outputs)
        if now_ms >= next_tick_ms:
            on_tick()
            next_tick_ms = now_ms + tick_ms
            _resume(poller, streams, paused)
            if not (timed_out or stopped) and should_stop():
                stopped = True
                stop_job(job.init_pid, job.cgroup, grace_ms, on_tick, job.outputs)
        wake_ms = next_tick_ms if timed_out or stopped else min(next_tick_ms, deadline_ms)
        for fd, _ in poller.poll(max(0, wake_ms - monotonic_ms())):
            if fd == job.launcher_fd:
                exited = True
            elif fd in streams:
                _pump(poller, streams, fd, paused)
            elif not job.read_status():
                poller.unregister(job.status_fd)
    # The launcher exits after init, and init's exit killed the rest: drain what was written.
    job.drain_status()
    drain_outputs(job.outputs, DRAIN_MS)
    return finish(job, timed_out=timed_out, stopped=stopped)


def _register_outputs(
    poller: select.poll, outputs: tuple[OutputPipe, ...]
) -> dict[int, OutputPipe]:
    streams = {o.read_fd: o for o in outputs if not o.closed}
    for fd in streams:
        poller.register(fd, select.POLLIN)
    return streams


def _pump(
    poller: select.poll,
    streams: dict[int, OutputPipe],
    fd: int,
    paused: dict[int, OutputPipe] | None = None,
) -> None:
    """Copy from one readable stream; stop polling it at EOF, or (with `paused`) while it is
    over its rate."""
    output = streams[fd]
    throttle = paused is not None
    if not output.pump(throttle):
        poller.unregister(fd)
        del streams[fd]
    elif paused is not None and output.throttled:
        poller.unregister(fd)
        paused[fd] = streams.pop(fd)


def _resume(
    poller: select.poll, streams: dict[int, OutputPipe], paused: dict[int, OutputPipe]
) -> None:
    for fd, output in paused.items():
        poller.register(fd, select.POLLIN)
        streams[fd] = output
    paused.clear()


def drain_outputs(outputs: tuple[OutputPipe, ...], timeout_ms: int) -> None:
    """Copy what is left in the job's output pipes (unthrottled: the job is gone, and at most
    a pipe's buffer is left) until EOF on each, or `timeout_ms`."""
    poller = select.poll()
    streams = _register_outputs(poller, outputs)
    deadline_ms = monotonic_ms() + timeout_ms
    while streams and monotonic_ms() < deadline_ms:
        for fd, _ in poller.poll(max(0, deadline_ms - monotonic_ms())):
            _pump(poller, streams, fd)


def finish(job: RunningJob, timed_out: bool, stopped: bool) -> RunResult:
    """Reap the launcher, read the accounting, remove the cgroup and classify the outcome."""
    _, launcher_status = os.waitpid(job.launcher_pid, 0)
    duration_ms = monotonic_ms() - job.started_ms
    os.close(job.launcher_fd)
    os.close(job.status_fd)
    for output in job.outputs:
        output.close()
    _close_all(job.merged_fd)
    job.merged_fd = -1
    stats = job.cgroup.stats()
    job.cgroup.remove()
    result = classify(job.lines, launcher_status, stats.oom_kills > 0, timed_out, stopped)
    result.duration_ms = duration_ms
    result.peak_memory_bytes = stats.peak_memory_bytes
    result.cpu_time_ms = stats.cpu_time_ms
    result.pids_limit_hits = stats.pids_limit_hits
    if job.outputs:
        result.stdout_dropped_bytes = job.outputs[0].dropped_bytes
        result.stderr_dropped_bytes = job.outputs[1].dropped_bytes
    return result


def classify(
    lines: list[str], launcher_status: int, oom: bool, timed_out: bool, stopped: bool
) -> RunResult:
    """Pure: the status lines and flags in, the outcome out. A recorded stop or timeout wins
    over "killed by SIGKILL" (joblet reported a stopped job as killed by SIGKILL: a race); an OOM
    kill is told apart."""
    errors = [line[6:] for line in lines if line.startswith("error ")]
    statuses = [int(line.split()[1]) for line in lines if line.startswith("status ")]
    exit_code: int | None = None
    sig: int | None = None
    if statuses:
        if os.WIFSIGNALED(statuses[-1]):
            sig = os.WTERMSIG(statuses[-1])
        else:
            exit_code = os.WEXITSTATUS(statuses[-1])
    elif os.WIFSIGNALED(launcher_status):
        sig = os.WTERMSIG(launcher_status)
    elif oom and not errors:
        # The OOM killer may pick the job's init rather than the process that grew (it
        # weighs every process in the cgroup); then no status is written. It kills with
        # SIGKILL either way (seen once in CI: the suite's test reported no signal).
        sig = signal.SIGKILL
    elif not errors and not timed_out and not stopped and not oom:
        errors.append(f"job ended without a status (launcher status {launcher_status})")
    base = RunResult(status="exited", exit_code=exit_code, signal=sig, oom_killed=oom)
    base.timed_out, base.stopped = timed_out, stopped
    if errors:
        base.status, base.error = "failed_to_start", "; ".join(errors)
    elif timed_out:
        base.status = "timeout"
    elif stopped:
        base.status = "stopped"
    elif oom:
        base.status = "oom"
    elif sig is not None:
        base.status = "signaled"
    return base


def stop_job(
    init_pid: int | None,
    cgroup: JobCgroup,
    grace_ms: int,
    on_tick: Callable[[], None] | None = None,
    outputs: tuple[OutputPipe, ...] = (),
) -> None:
    """SIGTERM the job's init, wait up to `grace_ms` for it to exit (on its pidfd), copying its
    output meanwhile (a job that writes while it shuts down must not block on a full pipe),
    then kill every process still in the job's cgroup."""
    pidfd = _open_pidfd(init_pid)
    if pidfd is not None:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            streams = _register_outputs(poller, outputs)
            deadline_ms = monotonic_ms() + grace_ms
            exited = False
            while not exited and monotonic_ms() < deadline_ms:
                events = poller.poll(min(1000, max(0, deadline_ms - monotonic_ms())))
                for fd, _ in events:
                    if fd == pidfd:
                        exited = True
                    else:
                        _pump(poller, streams, fd)
                if on_tick is not None:
                    on_tick()
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
    cgroup.kill_all()


def _open_pidfd(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None
