"""The cgroup v1 and v2 backends a worker uses, chosen once at start by `open_backend`.

Each backend owns ``<root>/worker-<pid>-<starttime>`` in its hierarchy (or hierarchies), creates
one job cgroup per attempt under it with every limit applied (fail closed), and at start sweeps
the directories that workers which are no longer alive left behind (a worker killed with -9
cannot clean up after itself). See `executor.cgroups` for the files and the pure write lists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import structlog

from executor.cgroups import (
    CGROUP_MOUNT,
    CgroupError,
    JobCgroup,
    block_devices,
    detect_version,
    kill_processes,
    remove_dirs,
    v1_hierarchies,
    v1_writes,
    v2_controllers_needed,
    v2_writes,
    worker_alive,
    worker_dir_name,
    write_file,
)
from executor.plan import CgroupLimits, is_job_cgroup_name

log = structlog.get_logger("executor.cgroups")

REQUIRED_V1 = ("cpu", "cpuacct", "memory", "pids", "blkio", "cpuset", "freezer")


class CgroupBackend(Protocol):
    """What the runner needs from a cgroup hierarchy."""

    version: int

    def create(self, name: str, limits: CgroupLimits) -> JobCgroup: ...

    def sweep(self) -> int: ...

    def close(self) -> None: ...


def open_backend(root: str, mount: str = CGROUP_MOUNT, pid: int | None = None) -> CgroupBackend:
    """Detect the cgroup version at `mount` and return a prepared backend for this worker."""
    worker = worker_dir_name(os.getpid() if pid is None else pid)
    if detect_version(mount) == 2:
        return CgroupV2(mount, root, worker)
    return CgroupV1(root, worker)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _sweep_tree(root_dirs: list[str], own_worker: str) -> int:
    """Kill and remove job cgroups of dead workers under each root dir; return how many."""
    removed = 0
    for root in root_dirs:
        if not os.path.isdir(root):
            continue
        for worker in sorted(os.listdir(root)):
            path = os.path.join(root, worker)
            if not os.path.isdir(path) or worker == own_worker or worker_alive(worker):
                continue
            jobs = [os.path.join(path, j) for j in os.listdir(path) if is_job_cgroup_name(j)]
            for job in jobs:
                freezer = job if os.path.exists(os.path.join(job, "freezer.state")) else None
                kill_processes([job], freezer)
            remove_dirs([*sorted(jobs), path])
            removed += len(jobs)
            log.info("swept stale worker cgroups", worker=worker, jobs=len(jobs), root=root)
    return removed


class CgroupV1:
    """cgroup v1: one directory per controller hierarchy."""

    version = 1

    def __init__(self, root: str, worker: str) -> None:
        self._hier = v1_hierarchies()
        missing = [c for c in REQUIRED_V1 if c not in self._hier]
        if missing:
            raise CgroupError(
                f"cgroup v1 controllers not mounted: {missing}; mount them under /sys/fs/cgroup"
            )
        self._root = root
        self._worker = worker
        self._devices = block_devices()
        for controller in REQUIRED_V1:
            self._mkdir_chain(controller)

    def _dir(self, controller: str, *parts: str) -> str:
        return os.path.join(self._hier[controller], self._root, *parts)

    def _mkdir_chain(self, controller: str) -> None:
        for parts in ((), (self._worker,)):
            path = self._dir(controller, *parts)
            os.makedirs(path, exist_ok=True)
            if controller == "cpuset":
                _inherit_cpuset(path)

    def create(self, name: str, limits: CgroupLimits) -> JobCgroup:
        """Create the job's directories and write every limit; on any failure remove them."""
        if limits.io_bps is not None and not self._devices:
            raise CgroupError("io_bps: no real block device found in /sys/block to limit")
        dirs = {c: self._dir(c, self._worker, name) for c in REQUIRED_V1}
        cgroup = JobCgroup(version=1, dirs=dirs)
        try:
            for path in cgroup.unique_dirs():
                os.makedirs(path, exist_ok=True)
            parent = self._dir("cpuset", self._worker)
            cpus, mems = _read(f"{parent}/cpuset.cpus"), _read(f"{parent}/cpuset.mems")
            for controller, filename, value in v1_writes(limits, self._devices, cpus, mems):
                path = os.path.join(dirs[controller], filename)
                if filename.startswith("memory.memsw") and not os.path.exists(path):
                    _require_no_swap(path)
                    continue
                write_file(path, value)
        except BaseException:
            remove_dirs(cgroup.unique_dirs())
            raise
        return cgroup

    def sweep(self) -> int:
        roots = sorted({self._dir(c) for c in REQUIRED_V1})
        return _sweep_tree(roots, self._worker)

    def close(self) -> None:
        """Remove this worker's (empty) directories."""
        remove_dirs(sorted({self._dir(c, self._worker) for c in REQUIRED_V1}))


def _inherit_cpuset(path: str) -> None:
    # A new v1 cpuset cgroup starts with empty cpus and mems and refuses tasks until set.
    parent = os.path.dirname(path)
    for filename in ("cpuset.cpus", "cpuset.mems"):
        if not _read(os.path.join(path, filename)):
            write_file(os.path.join(path, filename), _read(os.path.join(parent, filename)))


def _require_no_swap(memsw_path: str) -> None:
    # Without swap accounting the memory limit could be bypassed through swap: refuse unless
    # the host has no swap at all.
    with open("/proc/swaps") as f:
        if len(f.read().strip().splitlines()) > 1:
            raise CgroupError(
                f"{memsw_path} is missing (no swap accounting) and swap is on: a memory limit "
                "cannot be enforced; boot with swapaccount=1 or turn swap off"
            )


class CgroupV2:
    """cgroup v2: one directory; controllers enabled down the tree via subtree_control."""

    version = 2

    def __init__(self, mount: str, root: str, worker: str) -> None:
        self._mount = mount
        self._root_dir = os.path.join(mount, root)
        self._worker_dir = os.path.join(self._root_dir, worker)
        self._worker = worker
        self._devices = block_devices()
        available = set(_read(os.path.join(mount, "cgroup.controllers")).split())
        for path in (self._root_dir, self._worker_dir):
            os.makedirs(path, exist_ok=True)
        for parent in (mount, self._root_dir, self._worker_dir):
            wanted = [c for c in ("cpu", "memory", "pids", "io", "cpuset") if c in available]
            write_file(os.path.join(parent, "cgroup.subtree_control"), _plus(wanted))

    def create(self, name: str, limits: CgroupLimits) -> JobCgroup:
        """Create the job's directory and write every limit; on any failure remove it."""
        enabled = set(_read(os.path.join(self._worker_dir, "cgroup.subtree_control")).split())
        missing = [c for c in v2_controllers_needed(limits) if c not in enabled]
        if missing:
            raise CgroupError(f"cgroup v2 controllers not available for the job: {missing}")
        if limits.io_bps is not None and not self._devices:
            raise CgroupError("io_bps: no real block device found in /sys/block to limit")
        path = os.path.join(self._worker_dir, name)
        cgroup = JobCgroup(version=2, dirs={"": path})
        os.makedirs(path, exist_ok=True)
        try:
            mems = _read(os.path.join(self._worker_dir, "cpuset.mems.effective"))
        except OSError:
            mems = ""
        try:
            for filename, value in v2_writes(limits, self._devices, mems):
                write_file(os.path.join(path, filename), value)
        except BaseException:
            remove_dirs([path])
            raise
        return cgroup

    def sweep(self) -> int:
        return _sweep_tree([self._root_dir], self._worker)

    def close(self) -> None:
        remove_dirs([self._worker_dir])


def _plus(controllers: Sequence[str]) -> str:
    return " ".join(f"+{c}" for c in controllers)
