"""Pure planning: a validated job spec in, a frozen description of the sandbox out.

Rule: nothing here does I/O. What the host looks like (which system directories exist, which are
symlinks) is passed in as `HostLayout`, so the plan is a function of its arguments and is tested
anywhere. The runner (`executor.runner`, `executor.sandbox`) carries a plan out with syscalls.

The sandbox a plan describes:
- namespaces: pid, mount, ipc, uts always; net too for network "none" (only loopback inside);
- a tmpfs root with read-only, nosuid, nodev binds of the system directories, a generated
  minimal /etc, private tmpfs /tmp and working directory, a fresh /proc and a small /dev;
- a cgroup with every requested limit and always a pids limit;
- /proc with the host-wide parts masked or read-only (as runc and Docker do), and no /sys;
- argv and an environment built from the spec alone, and the uid/gid the command runs as: the
  worker slot's own uid from the worker's range, so no two running jobs share per-uid state;
- rlimits (open files, file size, no core dumps) and a cap on the output kept, from the spec
  within the worker's bounds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cluster.jobspec import JobSpec
from jobqueue.errors import BeanraftError

CPU_PERIOD_US = 100_000
NOBODY_UID = 65534
NOBODY_GID = 65534
TMP_SIZE_MB = 64
ROOT_SIZE_MB = 4
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# System directories bound read-only into the job when the host has them.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Host files and directories under /etc a command commonly needs; bound read-only when present.
ETC_BINDS = ("/etc/ld.so.cache", "/etc/ssl", "/etc/alternatives", "/etc/localtime")
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)


@dataclass(frozen=True)
class HostLayout:
    """What the planner needs to know about the host: path -> symlink target, or None for a
    directory or file. Paths absent from the mapping do not exist on the host."""

    entries: Mapping[str, str | None]


# runc's and Docker's defaults: files and directories of /proc that describe or change the
# whole host. Masked: hidden behind /dev/null or an empty read-only tmpfs. Read-only: visible,
# but a job (even uid 0 in it) cannot write a host-wide sysctl such as kernel.core_pattern.
PROC_MASKED = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/cmdline",
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
)
PROC_READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class WorkerPolicy:
    """The worker's configuration that bounds what a spec may ask for: a default for every
    limit a spec leaves out, and a maximum a spec may not exceed."""

    allow_root: bool = False
    default_memory_mb: int = 1024
    max_memory_mb: int = 16384
    default_open_files: int = 1024
    max_open_files: int = 65536
    default_file_size_mb: int = 1024
    max_file_size_mb: int = 65536
    default_log_mb: int = 64
    max_log_mb: int = 1024
    seccomp: bool = True

    def describe(self) -> dict[str, object]:
        """The policy as flat key=value pairs for the worker's start-up log line."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Mount:
    """One step in building the job's root, in order. Targets are paths inside the job.

    kind: "bind_ro" (source -> target, read-only, nosuid, nodev), "tmpfs" (options as
    mount data), "proc", "dev_bind" (a host device node), "symlink" (source is the link text),
    "file" (source is the file's content).
    """

    kind: str
    target: str
    source: str = ""
    options: str = ""


@dataclass(frozen=True)
class CgroupLimits:
    """Limits for the job's cgroup, in the kernel's units. None: not limited."""

    cpu_quota_us: int | None
    cpu_period_us: int
    memory_bytes: int | None
    io_bps: int | None
    pids_max: int
    cpuset_cpus: str | None


@dataclass(frozen=True)
class Plan:
    """Everything the runner needs to start one job attempt, decided up front."""

    job_name: str  # cgroup directory name and hostname: unique per worker and attempt
    hostname: str
    namespaces: tuple[str, ...]
    mounts: tuple[Mount, ...]
    limits: CgroupLimits
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    uid: int  # as the job sees it
    gid: int
    host_uid: int  # the uid (and gid) every process of the job has on the host
    workdir: str
    timeout_ms: int
    network: str
    rlimits: tuple[tuple[str, int], ...]  # (RLIMIT_ name without prefix, soft = hard limit)
    log_bytes: int  # per stream and attempt; output beyond it is read and dropped
    seccomp: bool


class PlanError(BeanraftError, ValueError):
    """The spec asks for something this worker's policy does not allow."""


def make_plan(
    spec: JobSpec,
    job_id: int,
    attempt: int,
    host: HostLayout,
    policy: WorkerPolicy,
    job_uid: int = NOBODY_UID,
) -> Plan:
    """Turn a validated spec into a plan for attempt `attempt` of job `job_id`, run as
    `job_uid` (the worker slot's uid; its gid is the same number)."""
    if spec.run_as_root and not policy.allow_root:
        raise PlanError(
            "run_as_root: this worker does not allow root jobs (start it with --allow-root)"
        )
    uid, gid = (0, 0) if spec.run_as_root else (job_uid, job_uid)
    name = f"job-{job_id}-{attempt}"
    memory_mb = _bounded(
        spec.limits.memory_mb,
        policy.default_memory_mb,
        policy.max_memory_mb,
        "memory_mb",
        "--max-memory-mb",
    )
    # cgroup: unshared after joining, so the job sees its own cgroup as "/" (joblet leaked it).
    # A root job gets a user namespace whose uid 0 is `job_uid` on the host: root to itself
    # (owns its files, may chown in its tmpfs) and nobody special to the host.
    namespaces = ("pid", "mount", "ipc", "uts", "cgroup") + (
        ("net",) if spec.network == "none" else ()
    )
    if spec.run_as_root:
        namespaces += ("user",)
    return Plan(
        job_name=name,
        hostname=name,
        namespaces=namespaces,
        mounts=_mounts(spec, host, name, uid, gid, job_uid),
        limits=cgroup_limits(spec, memory_mb),
        argv=(spec.command, *spec.args),
        env=job_env(spec, job_id),
        uid=uid,
        gid=gid,
        host_uid=job_uid,
        workdir=spec.workdir,
        timeout_ms=spec.timeout_s * 1000,
        network=spec.network,
        rlimits=rlimits(spec, policy),
        log_bytes=_bounded(
            spec.limits.log_mb, policy.default_log_mb, policy.max_log_mb, "log_mb", "--max-log-mb"
        )
        << 20,
        seccomp=policy.seccomp,
    )


def _bounded(asked: int | None, default: int, maximum: int, name: str, flag: str) -> int:
    if asked is None:
        return default
    if asked > maximum:
        raise PlanError(f"limits.{name}: {asked} is above this worker's maximum {maximum} ({flag})")
    return asked


def rlimits(spec: JobSpec, policy: WorkerPolicy) -> tuple[tuple[str, int], ...]:
    """Soft and hard rlimits for the command. Open files is per process, so the worker's own
    (often large) limit is never inherited; file size bounds what one write can claim; no core
    dumps, whose writing a job could otherwise aim at the host through kernel.core_pattern."""
    lim = spec.limits
    open_files = _bounded(
        lim.open_files,
        policy.default_open_files,
        policy.max_open_files,
        "open_files",
        "--max-open-files",
    )
    file_size_mb = _bounded(
        lim.file_size_mb,
        policy.default_file_size_mb,
        policy.max_file_size_mb,
        "file_size_mb",
        "--max-file-size-mb",
    )
    return (("NOFILE", open_files), ("FSIZE", file_size_mb << 20), ("CORE", 0))


def cgroup_limits(spec: JobSpec, memory_mb: int | None = None) -> CgroupLimits:
    """The spec's limits in cgroup units (cpu percent of one core -> CFS quota per period).
    `memory_mb` is the memory limit after the worker's default and maximum."""
    lim = spec.limits
    quota = None if lim.cpu_percent is None else lim.cpu_percent * CPU_PERIOD_US // 100
    memory_mb = lim.memory_mb if memory_mb is None else memory_mb
    memory = None if memory_mb is None else memory_mb * 1024 * 1024
    return CgroupLimits(quota, CPU_PERIOD_US, memory, lim.io_bps, lim.pids, lim.cpu_cores)


def job_env(spec: JobSpec, job_id: int) -> tuple[tuple[str, str], ...]:
    """The job's environment: a fixed base, then the spec's variables. Nothing of the worker's
    environment is consulted (joblet leaked the server's whole environment into jobs)."""
    env = {
        "PATH": BASE_PATH,
        "HOME": spec.workdir,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "BEANRAFT_JOB_ID": str(job_id),
    }
    env.update(dict(spec.env))
    return tuple(sorted(env.items()))


def _mounts(
    spec: JobSpec, host: HostLayout, name: str, uid: int, gid: int, job_uid: int
) -> tuple[Mount, ...]:
    steps: list[Mount] = []
    for path in SYSTEM_DIRS:
        if path not in host.entries:
            continue
        link = host.entries[path]
        steps.append(
            Mount("symlink", path, link) if link is not None else Mount("bind_ro", path, path)
        )
    steps.append(Mount("tmpfs", "/etc", options="mode=0755,size=1m"))
    steps.extend(_etc_files(spec, host, name, job_uid))
    steps.append(Mount("tmpfs", "/tmp", options=f"mode=1777,size={TMP_SIZE_MB}m"))
    steps.append(
        Mount("tmpfs", spec.workdir, options=f"mode=0755,uid={uid},gid={gid},size={TMP_SIZE_MB}m")
    )
    steps.append(Mount("proc", "/proc"))
    steps.extend(Mount("mask", path) for path in PROC_MASKED)
    steps.extend(Mount("read_only", path) for path in PROC_READ_ONLY)
    steps.extend(_dev())
    return tuple(steps)


def _etc_files(spec: JobSpec, host: HostLayout, name: str, job_uid: int) -> list[Mount]:
    files = [
        Mount("file", "/etc/passwd", _passwd(spec.workdir, job_uid)),
        Mount("file", "/etc/group", _group(job_uid)),
        Mount("file", "/etc/hostname", name + "\n"),
        Mount("file", "/etc/hosts", f"127.0.0.1 localhost {name}\n::1 localhost\n"),
        Mount("file", "/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"),
    ]
    binds = list(ETC_BINDS)
    if spec.network == "host":
        # A job on the host network resolves names as the host does.
        binds.append("/etc/resolv.conf")
    for path in binds:
        if path in host.entries and host.entries[path] is None:
            files.append(Mount("bind_ro", path, path))
    return files


def _passwd(workdir: str, job_uid: int) -> str:
    lines = ["root:x:0:0:root:/root:/bin/sh"]
    if job_uid != NOBODY_UID:
        lines.append(f"job:x:{job_uid}:{job_uid}:beanraft job:{workdir}:/usr/sbin/nologin")
    lines.append(f"nobody:x:{NOBODY_UID}:{NOBODY_GID}:nobody:{workdir}:/usr/sbin/nologin")
    return "\n".join(lines) + "\n"


def _group(job_uid: int) -> str:
    job = f"job:x:{job_uid}:\n" if job_uid != NOBODY_UID else ""
    return f"root:x:0:\n{job}nogroup:x:{NOBODY_GID}:\n"


def _dev() -> list[Mount]:
    steps = [Mount("tmpfs", "/dev", options="mode=0755,size=64k,nosuid,noexec")]
    steps.extend(Mount("dev_bind", f"/dev/{node}", f"/dev/{node}") for node in DEV_NODES)
    steps.extend(Mount("symlink", f"/dev/{link}", target) for link, target in DEV_LINKS)
    steps.append(Mount("tmpfs", "/dev/shm", options="mode=1777,size=64m,nosuid,nodev"))
    return steps


_CGROUP_NAME = re.compile(r"^job-\d+-\d+$")


def is_job_cgroup_name(name: str) -> bool:
    """True for directory names make_plan gives job cgroups (used by the sweep)."""
    return bool(_CGROUP_NAME.match(name))
