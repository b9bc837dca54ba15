"""Pure planning: a validated job spec in, a frozen description of the sandbox out.

Rule: nothing here does I/O. What the host looks like (which system directories exist, which are
symlinks) is passed in as `HostLayout`, so the plan is a function of its arguments and is tested
anywhere. The runner (`executor.runner`, `executor.sandbox`) carries a plan out with syscalls.

The sandbox a plan describes:
- namespaces: pid, mount, ipc, uts always; net too for network "none" (only loopback inside);
- a tmpfs root with read-only, nosuid, nodev binds of the system directories, a generated
  minimal /etc, private tmpfs /tmp and working directory, a fresh /proc and a small /dev;
- a cgroup with every requested limit and always a pids limit;
- argv and an environment built from the spec alone, and the uid/gid the command runs as.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from executor.spec import JobSpec

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


@dataclass(frozen=True)
class WorkerPolicy:
    """The worker's configuration that bounds what a spec may ask for."""

    allow_root: bool = False


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
    uid: int
    gid: int
    workdir: str
    timeout_ms: int
    network: str


class PlanError(ValueError):
    """The spec asks for something this worker's policy does not allow."""


def make_plan(
    spec: JobSpec, job_id: int, attempt: int, host: HostLayout, policy: WorkerPolicy
) -> Plan:
    """Turn a validated spec into a plan for attempt `attempt` of job `job_id`."""
    if spec.run_as_root and not policy.allow_root:
        raise PlanError(
            "run_as_root: this worker does not allow root jobs (start it with --allow-root)"
        )
    uid, gid = (0, 0) if spec.run_as_root else (NOBODY_UID, NOBODY_GID)
    name = f"job-{job_id}-{attempt}"
    # cgroup: unshared after joining, so the job sees its own cgroup as "/" (joblet leaked it).
    namespaces = ("pid", "mount", "ipc", "uts", "cgroup") + (
        ("net",) if spec.network == "none" else ()
    )
    return Plan(
        job_name=name,
        hostname=name,
        namespaces=namespaces,
        mounts=_mounts(spec, host, name, uid, gid),
        limits=cgroup_limits(spec),
        argv=(spec.command, *spec.args),
        env=job_env(spec, job_id),
        uid=uid,
        gid=gid,
        workdir=spec.workdir,
        timeout_ms=spec.timeout_s * 1000,
        network=spec.network,
    )


def cgroup_limits(spec: JobSpec) -> CgroupLimits:
    """The spec's limits in cgroup units (cpu percent of one core -> CFS quota per period)."""
    lim = spec.limits
    quota = None if lim.cpu_percent is None else lim.cpu_percent * CPU_PERIOD_US // 100
    memory = None if lim.memory_mb is None else lim.memory_mb * 1024 * 1024
    return CgroupLimits(quota, CPU_PERIOD_US, memory, lim.io_bps, lim.pids, lim.cpu_cores)


def job_env(spec: JobSpec, job_id: int) -> tuple[tuple[str, str], ...]:
    """The job's environment: a fixed base, then the spec's variables. Nothing of the worker's
    environment is consulted (joblet leaked the server's whole environment, reference §10.1)."""
    env = {
        "PATH": BASE_PATH,
        "HOME": spec.workdir,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "BEANRAFT_JOB_ID": str(job_id),
    }
    env.update(dict(spec.env))
    return tuple(sorted(env.items()))


def _mounts(spec: JobSpec, host: HostLayout, name: str, uid: int, gid: int) -> tuple[Mount, ...]:
    steps: list[Mount] = []
    for path in SYSTEM_DIRS:
        if path not in host.entries:
            continue
        link = host.entries[path]
        steps.append(
            Mount("symlink", path, link) if link is not None else Mount("bind_ro", path, path)
        )
    steps.append(Mount("tmpfs", "/etc", options="mode=0755,size=1m"))
    steps.extend(_etc_files(spec, host, name))
    steps.append(Mount("tmpfs", "/tmp", options=f"mode=1777,size={TMP_SIZE_MB}m"))
    steps.append(
        Mount("tmpfs", spec.workdir, options=f"mode=0755,uid={uid},gid={gid},size={TMP_SIZE_MB}m")
    )
    steps.append(Mount("proc", "/proc"))
    steps.extend(_dev())
    return tuple(steps)


def _etc_files(spec: JobSpec, host: HostLayout, name: str) -> list[Mount]:
    files = [
        Mount("file", "/etc/passwd", _passwd(spec.workdir)),
        Mount("file", "/etc/group", "root:x:0:\nnogroup:x:65534:\n"),
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


def _passwd(workdir: str) -> str:
    return (
        "root:x:0:0:root:/root:/bin/sh\n"
        f"nobody:x:{NOBODY_UID}:{NOBODY_GID}:nobody:{workdir}:/usr/sbin/nologin\n"
    )


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
