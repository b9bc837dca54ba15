"""The worker pool: N slots, each a beanstalkd connection that reserves a job, runs it isolated
and reports the outcome. It speaks only the beanstalkd protocol (greenstalk), so any beanstalkd
endpoint works: a beanraft proxy in front of a cluster, or a plain beanstalkd.

Lifecycle of one job (one slot):
- reserve; `stats-job` gives its TTR, priority, reserve and release counts;
- a body that is not a valid spec (or asks for root on a worker that does not allow it) is
  buried, the reason written to the job's results and stderr log, and the slot goes on;
- run it (executor.runner), touching it every third of its TTR so it stays reserved;
- exit 0: delete. Stopped by `beanraft stop`: bury. Otherwise release with exponential
  back-off (backoff_s * 2**releases) while retries remain, then bury;
- every attempt leaves a result record in the log dir, and in `result_tube` when set.

Shutdown (SIGTERM): stop reserving, let running jobs finish within the grace period, then stop
what is left and release it (delay 0, so another worker takes it at once). A worker killed with
-9 loses nothing: its job processes die with it (PR_SET_PDEATHSIG), beanstalkd gives its jobs
back after their TTR, and the next worker on this host sweeps the cgroups it left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import greenstalk
import structlog

from cluster.job_records import summary_of
from cluster.jobspec import JobSpec, SpecError, parse_spec
from executor import runner, seccomp, uids
from executor.cgroup_backends import CgroupBackend, open_backend
from executor.cgroups import CGROUP_MOUNT, CgroupError
from executor.jobfiles import JobFiles, clear_stale_states, sweep
from executor.metrics import WorkerMetrics
from executor.plan import HostLayout, Plan, PlanError, WorkerPolicy, make_plan
from executor.reporter import JobReporter
from statemachine.records import AttemptResult

log = structlog.get_logger("executor.worker")

Client = greenstalk.Client[bytes]
Job = greenstalk.Job[bytes]

RESERVE_TIMEOUT_S = 1  # how quickly an idle slot notices a shutdown
TICK_MS = 250
RECONNECT_DELAY_MAX_S = 5.0
RELEASE_AFTER_ERROR_S = 5
LOG_SWEEP_INTERVAL_S = 3600.0  # how often a running worker applies its log retention
HOST_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ssl",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/resolv.conf",
)


@dataclass(frozen=True)
class WorkerConfig:
    """A worker pool's settings (the `beanraft worker` flags)."""

    # Where to reserve: one beanstalkd endpoint, or a cluster's node listeners, tried in turn.
    addresses: tuple[tuple[str, int], ...]
    tubes: tuple[str, ...] = ("default",)
    concurrency: int = 1
    log_dir: str = "/var/log/beanraft"
    cgroup_root: str = "beanraft"
    cgroup_mount: str = CGROUP_MOUNT
    allow_root: bool = False
    grace_ms: int = runner.DEFAULT_GRACE_MS
    shutdown_grace_ms: int = 10_000
    policy: WorkerPolicy = dataclasses.field(default_factory=WorkerPolicy)
    uid_range: tuple[int, int] = uids.DEFAULT_UID_RANGE
    uid_lock_dir: str = uids.DEFAULT_LOCK_DIR
    # The job API: report attempts to these cluster nodes (gRPC), with the certificate
    # "worker" in tls_dir (None: plaintext, for a cluster started with --insecure).
    cluster: tuple[str, ...] = ()
    tls_dir: Path | None = None
    log_listen: str = "127.0.0.1:0"  # the log service nodes read job output from
    metrics_addr: str = ""  # Prometheus metrics (HOST:PORT), off when empty
    # Finished jobs' files in log_dir: removed this long after their last write, and oldest
    # first while the directory holds more than this (jobfiles.sweep).
    log_retention_s: float = 7 * 86400
    log_retention_bytes: int = 10 << 30


def host_layout() -> HostLayout:
    """Which of the paths the plan may bind exist on this host, and which are symlinks."""
    entries: dict[str, str | None] = {}
    for path in HOST_PATHS:
        if os.path.islink(path):
            entries[path] = os.readlink(path)
        elif os.path.exists(path):
            entries[path] = None
    return HostLayout(entries)


class Worker:
    """A pool of `concurrency` slots sharing one cgroup backend and one log directory."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.draining = threading.Event()  # stop reserving
        self.abandon = threading.Event()  # stop running jobs and release them
        self._layout = host_layout()
        self._policy = dataclasses.replace(config.policy, allow_root=config.allow_root)
        self._backend: CgroupBackend | None = None
        self._filter: seccomp.PreparedFilter | None = None
        self._reporter: JobReporter | None = None
        self.metrics: WorkerMetrics | None = None
        if config.metrics_addr:
            self.metrics = WorkerMetrics()
            self.metrics.serve(config.metrics_addr)
        self._stop_sweeping = threading.Event()

    def run(self) -> int:
        """Sweep stale cgroups and expired job logs, run the slots until shutdown (sweeping the
        logs hourly), clean up. Returns an exit code.
        Raises CgroupError, seccomp.SeccompError or uids.UidRangeExhausted when the isolation
        it is configured for cannot be had: it never runs jobs with less."""
        os.makedirs(self.config.log_dir, exist_ok=True)
        stale = clear_stale_states(self.config.log_dir)
        if stale:
            log.info("cleared the state of jobs whose worker died", jobs=stale)
        self._sweep_logs()
        if self._policy.seccomp:
            self._filter = seccomp.prepare(seccomp.build_filter())
        first, last = self.config.uid_range
        leases: list[uids.UidLease] = []
        try:
            self._start_sweeping(LOG_SWEEP_INTERVAL_S)
            for _ in range(self.config.concurrency):
                leases.append(uids.lease(first, last, self.config.uid_lock_dir))
            self._backend = open_backend(self.config.cgroup_root, self.config.cgroup_mount)
            if self.config.cluster:
                self._reporter = JobReporter(
                    list(self.config.cluster),
                    self.config.tls_dir,
                    self.worker_id,
                    self.config.log_dir,
                    self.config.log_listen,
                )
            self._run_slots(leases)
        finally:
            self._stop_sweeping.set()
            if self._reporter is not None:
                self._reporter.close()
            for held in leases:
                held.release()
        log.info("worker stopped", worker_id=self.worker_id)
        return 0

    def _run_slots(self, leases: list[uids.UidLease]) -> None:
        assert self._backend is not None
        swept = self._backend.sweep()
        log.info(
            "worker started",
            worker_id=self.worker_id,
            cgroup_version=self._backend.version,
            swept_jobs=swept,
            tubes=",".join(self.config.tubes),
            concurrency=self.config.concurrency,
            job_uids=",".join(str(held.uid) for held in leases),
            reports_to=",".join(self.config.cluster) or "none",
            log_service=self._reporter.log_address if self._reporter else "off",
            log_retention_days=f"{self.config.log_retention_s / 86400:g}",
            log_retention_gb=f"{self.config.log_retention_bytes / (1 << 30):g}",
            **self._policy.describe(),
        )
        threads = [
            threading.Thread(target=self._slot, args=(i, held.uid), name=f"slot-{i}", daemon=True)
            for i, held in enumerate(leases)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._backend.close()

    def _start_sweeping(self, interval_s: float) -> None:
        """Sweep the log dir every interval_s until the worker stops: a worker that runs for
        months must hold the retention bounds too, not only at its restarts."""

        def loop() -> None:
            while not self._stop_sweeping.wait(interval_s):
                self._sweep_logs()

        threading.Thread(target=loop, name="log-sweeper", daemon=True).start()

    def _sweep_logs(self) -> None:
        """Apply the log retention. A failure is logged and retried at the next sweep, never
        fatal: output left behind costs disk later, stopping the worker costs jobs now."""
        try:
            swept = sweep(
                self.config.log_dir,
                self.config.log_retention_s,
                self.config.log_retention_bytes,
                time.time(),
            )
        except OSError as exc:
            log.warning("cannot sweep job logs", log_dir=self.config.log_dir, error=str(exc))
            return
        if swept.jobs_removed:
            log.info("swept job logs", log_dir=self.config.log_dir, **asdict(swept))

    def shutdown(self) -> None:
        """Begin a graceful stop: no more reserves; after the grace period, abandon jobs."""
        if self.draining.is_set():
            return
        self.draining.set()
        timer = threading.Timer(self.config.shutdown_grace_ms / 1000, self.abandon.set)
        timer.daemon = True
        timer.start()

    def _connect(self, turn: list[int]) -> Client:
        """A connection to the first address that answers, starting from ``turn[0]`` (the one
        this slot used last) and going round; back off only once every address has failed."""
        addresses = self.config.addresses
        delay_s = 0.1
        while True:
            for _ in addresses:
                address = addresses[turn[0] % len(addresses)]
                try:
                    return greenstalk.Client(address, encoding=None, watch=list(self.config.tubes))
                except OSError as exc:
                    if self.draining.is_set():
                        raise
                    log.warning(
                        "cannot reach beanstalkd",
                        address=f"{address[0]}:{address[1]}",
                        error=str(exc),
                    )
                    turn[0] += 1
            log.warning("no beanstalkd address answers; retrying", delay_s=delay_s)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, RECONNECT_DELAY_MAX_S)

    def _slot(self, index: int, job_uid: int) -> None:
        client: Client | None = None
        turn = [0]  # which address this slot dials next; moves on when one fails
        while not self.draining.is_set():
            try:
                client = client or self._connect(turn)
                job = client.reserve(timeout=RESERVE_TIMEOUT_S)
            except greenstalk.TimedOutError:
                continue
            except (OSError, greenstalk.Error) as exc:
                log.warning("connection lost; reconnecting", slot=index, error=repr(exc))
                if client is not None:
                    client.close()
                client = None
                continue
            try:
                self._handle(client, job, job_uid)
            except (OSError, greenstalk.Error) as exc:
                log.warning("lost the job's connection", job_id=job.id, error=repr(exc))
                client.close()
                client = None
            except Exception:
                # A bug must not shrink the pool or strand the job: give it back and go on.
                log.exception("unexpected error while handling a job; releasing it", job_id=job.id)
                with contextlib.suppress(OSError, greenstalk.Error):
                    client.release(job, delay=RELEASE_AFTER_ERROR_S)
        if client is not None:
            client.close()

    def _handle(self, client: Client, job: Job, job_uid: int) -> None:
        files = JobFiles(self.config.log_dir, job.id)
        stats = client.stats_job(job)
        attempt = int(stats["reserves"])
        spec: JobSpec | None = None
        try:
            spec = parse_spec(job.body)
            plan = make_plan(spec, job.id, attempt, self._layout, self._policy, job_uid)
        except Exception as exc:
            # SpecError and PlanError say what is wrong. Anything else is our bug, but the body
            # caused it, so it would cause it again: bury, never release forever.
            if not isinstance(exc, SpecError | PlanError):
                log.exception("unexpected error while reading a job spec", job_id=job.id)
            self._bury_invalid(client, job, files, stats, attempt, spec, f"invalid job spec: {exc}")
            return
        if self._report_start(job, spec, stats, attempt, plan):
            self._drop_stopped(client, job, files, attempt, spec)
            return
        output_start = files.note_attempt_start(attempt)
        result = self._run_measured(client, job, files, plan, stats)
        stopped_by_cluster = self._reporter is not None and self._reporter.stop_requested(job.id)
        action = self._decide(
            result, spec.retry.max_retries, int(stats["releases"]), stopped_by_cluster
        )
        record = {**asdict(result), "action": action, "seccomp": plan.seccomp, "uid": job_uid}
        tail = files.output_tail(output_start, OUTPUT_TAIL_BYTES) if spec.result_tube else None
        self._record(client, files, record, spec.result_tube, attempt, tail)
        self._report_end(job.id, attempt, result, action)
        self._act(client, job, action, int(stats["pri"]), spec.retry.backoff_s, stats)

    def _bury_invalid(
        self,
        client: Client,
        job: Job,
        files: JobFiles,
        stats: Any,
        attempt: int,
        spec: JobSpec | None,
        reason: str,
    ) -> None:
        files.note(reason + "; job buried")
        fields = {"status": "invalid_spec", "error": reason, "action": "bury"}
        self._record(client, files, fields, None, attempt)
        if spec is not None and not self._report_start(job, spec, stats, attempt):
            # A valid spec this worker may not run (root, a limit above its maximum): its
            # record must say why it failed.
            failed = runner.RunResult(status="invalid_spec", error=reason)
            self._report_end(job.id, attempt, failed, "bury")
        client.bury(job, int(stats["pri"]))
        log.warning("buried invalid job", job_id=job.id, reason=reason)

    def _report_start(
        self, job: Job, spec: JobSpec, stats: Any, attempt: int, plan: Plan | None = None
    ) -> bool:
        """Tell the cluster the attempt starts, with the limits it runs under (this worker's
        defaults filled in); True when it must not run (stopped)."""
        if self._reporter is None:
            return False
        summary = summary_of(spec)
        if plan is not None and plan.limits.memory_bytes is not None:
            summary = dataclasses.replace(summary, max_memory_mb=plan.limits.memory_bytes >> 20)
        return self._reporter.start_attempt(
            job.id, attempt, summary, str(stats["tube"]), int(stats["pri"])
        )

    def _report_end(self, job_id: int, attempt: int, result: runner.RunResult, action: str) -> None:
        if self._reporter is None:
            return
        ended = AttemptResult(
            result=result.status,
            exit_code=result.exit_code,
            signal=result.signal or 0,
            oom_killed=result.oom_killed,
            timed_out=result.timed_out,
            duration_ms=result.duration_ms,
            peak_memory_bytes=result.peak_memory_bytes,
            cpu_time_ms=result.cpu_time_ms,
            error=result.error or "",
        )
        self._reporter.end_attempt(job_id, attempt, ended, final=action in ("delete", "bury"))

    def _drop_stopped(
        self, client: Client, job: Job, files: JobFiles, attempt: int, spec: JobSpec
    ) -> None:
        """A job stopped (or already settled) before this attempt started: never run it."""
        files.note("stopped through the cluster before it started; job deleted")
        self._report_end(
            job.id, attempt, runner.RunResult(status="stopped", stopped=True), "delete"
        )
        with contextlib.suppress(greenstalk.NotFoundError):
            client.delete(job)
        log.info("dropped a job stopped before it started", job_id=job.id)

    def _run(
        self, client: Client, job: Job, files: JobFiles, plan: Plan, ttr_s: int
    ) -> runner.RunResult:
        assert self._backend is not None
        files.clear_stop()
        try:
            running = runner.start(
                plan,
                self._backend,
                files.stdout_path,
                files.stderr_path,
                self._filter,
                files.output_path,
            )
        except (CgroupError, OSError) as exc:
            files.note(f"cannot start the job: {exc}")
            return runner.RunResult(status="failed_to_start", error=str(exc))
        files.write_state(self._state(running))
        touch = _Toucher(client, job, ttr_s)
        try:
            result = runner.wait(
                running,
                on_tick=touch,
                tick_ms=TICK_MS,
                should_stop=lambda: self._should_stop(job.id, touch, files),
                grace_ms=self.config.grace_ms,
            )
        finally:
            files.clear_state()
        for stream, dropped in (
            ("stdout", result.stdout_dropped_bytes),
            ("stderr", result.stderr_dropped_bytes),
        ):
            if dropped:
                files.note(
                    f"{stream}: kept the first {plan.log_bytes} bytes and dropped {dropped} "
                    "(limits.log_mb)"
                )
        if result.pids_limit_hits:
            files.note(
                f"the job reached its process limit (limits.pids={plan.limits.pids_max}): "
                f"{result.pids_limit_hits} fork(s) refused; raise limits.pids if it needs more"
            )
        if touch.lost:
            result.status = "lost_reservation"
        elif self._stopped_on_request(job.id, files) and result.status in (
            "signaled",
            "exited",
            "stopped",
        ):
            result.status, result.stopped = "stopped", True
        files.clear_stop()
        return result

    def _run_measured(
        self, client: Client, job: Job, files: JobFiles, plan: Plan, stats: Any
    ) -> runner.RunResult:
        metrics = self.metrics
        if metrics is None:
            return self._run(client, job, files, plan, int(stats["ttr"]))
        metrics.started.inc()
        metrics.queue_wait.observe(float(stats["age"]))
        metrics.running.inc()
        try:
            result = self._run(client, job, files, plan, int(stats["ttr"]))
        finally:
            metrics.running.dec()
        metrics.finished.labels(status=result.status).inc()
        metrics.duration.observe(result.duration_ms / 1000)
        return result

    def _should_stop(self, job_id: int, touch: _Toucher, files: JobFiles) -> bool:
        return self.abandon.is_set() or touch.lost or self._stopped_on_request(job_id, files)

    def _state(self, running: runner.RunningJob) -> dict[str, Any]:
        return {
            "worker_pid": os.getpid(),
            "worker_id": self.worker_id,
            "launcher_pid": running.launcher_pid,
            "init_pid": running.init_pid,
            "cgroup": running.cgroup.to_json(),
            "job_name": running.plan.job_name,
        }

    def _stopped_on_request(self, job_id: int, files: JobFiles) -> bool:
        """`beanraft stop` on this host, or StopJob through the cluster."""
        if files.stop_requested():
            return True
        return self._reporter is not None and self._reporter.stop_requested(job_id)

    def _decide(
        self,
        result: runner.RunResult,
        max_retries: int,
        releases: int,
        stopped_by_cluster: bool = False,
    ) -> str:
        if result.status == "lost_reservation":
            return "none"  # the job is no longer ours to delete, release or bury
        if stopped_by_cluster:
            return "delete"  # never to run again; its record keeps the history
        if self.abandon.is_set() and result.stopped:
            return "release_on_shutdown"
        if result.succeeded:
            return "delete"
        if result.status == "stopped":
            return "bury"
        return "release" if releases < max_retries else "bury"

    def _act(
        self,
        client: Client,
        job: Job,
        action: str,
        pri: int,
        backoff_s: int,
        stats: Any,
    ) -> None:
        if action == "delete":
            client.delete(job)
        elif action == "bury":
            client.bury(job, pri)
        elif action == "none":
            return
        elif action == "release_on_shutdown":
            client.release(job, pri, 0)
        else:
            client.release(job, pri, backoff_s * 2 ** int(stats["releases"]))

    def _record(
        self,
        client: Client,
        files: JobFiles,
        fields: dict[str, Any],
        result_tube: str | None,
        attempt: int,
        output_tail: tuple[str, bool] | None = None,
    ) -> None:
        """Keep the attempt's result record in the log dir and put it in ``result_tube``;
        there it also carries the tail of the attempt's output, so a client that waits for
        the result (``beanraft submit --wait``) can show what the job printed."""
        record = {"job_id": files.job_id, "attempt": attempt, "worker_id": self.worker_id}
        record.update(fields)
        record["finished_at_ms"] = int(time.time() * 1000)
        files.append_result(record)
        log.info("job attempt finished", **{k: v for k, v in record.items() if v is not None})
        if result_tube is not None:
            if output_tail is not None:
                record["output_tail"], record["output_truncated"] = output_tail
            client.use(result_tube)
            client.put(json.dumps(record, sort_keys=True).encode())


# The result record in a result tube carries at most this much of the attempt's output (its
# end): enough for a command's answer or its error, small next to beanstalkd's 64 KiB job.
OUTPUT_TAIL_BYTES = 8192


class _Toucher:
    """Touches the reserved job every third of its TTR; remembers if the job was lost."""

    def __init__(self, client: Client, job: Job, ttr_s: int) -> None:
        self._client = client
        self._job = job
        self._interval_ms = max(200, ttr_s * 1000 // 3)
        self._last_ms = runner.monotonic_ms()
        self.lost = False

    def __call__(self) -> None:
        now_ms = runner.monotonic_ms()
        if self.lost or now_ms - self._last_ms < self._interval_ms:
            return
        try:
            self._client.touch(self._job)
            self._last_ms = now_ms
        except (OSError, greenstalk.Error) as exc:
            # NOT_FOUND: our reservation is gone (TTR passed anyway). A broken connection: the
            # server gives the job back. Either way someone else may run it now, so this run
            # stops (and its cgroup is cleaned up) rather than run twice.
            log.warning(
                "lost the reservation; stopping the job", job_id=self._job.id, error=repr(exc)
            )
            self.lost = True
