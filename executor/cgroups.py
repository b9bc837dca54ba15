"""Job cgroups on cgroup v1 and v2: create with limits, join, account, kill, remove, sweep.

Layout: ``<hierarchy>/<root>/worker-<pid>-<starttime>/job-<id>-<attempt>`` where ``<root>`` is the
worker's --cgroup-root (default ``beanraft``). v1 has one such tree per mounted controller
(cpu, cpuacct, memory, pids, blkio, cpuset, freezer); v2 has one tree. The version is detected
once at start: ``/sys/fs/cgroup`` being cgroup2fs means v2.

Rules:
- Fail closed: a limit that cannot be written raises CgroupError and the job does not run.
- pids.max is always written (joblet never did: a fork bomb had no bound).
- I/O limits go to every real block device (joblet hard-coded 8:0, §10.3).
- A worker directory whose worker is gone is swept at start: its processes are killed, then
  the directories are removed leaf first.

`v1_writes` and `v2_writes` are pure (limits in, file writes out) and unit-tested anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import time
from dataclasses import dataclass

from executor.plan import CgroupLimits
from jobqueue.errors import BeanraftError

CGROUP_MOUNT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "cpuset", "freezer")
_IGNORED_BLOCK_PREFIXES = ("loop", "ram", "zram", "nbd", "sr", "fd")
_CGROUP2_MAGIC_NAME = "cgroup2"


class CgroupError(BeanraftError, RuntimeError):
    """A cgroup could not be created, limited or joined; the message says which file."""


@dataclass(frozen=True)
class Stats:
    """Accounting read from a job's cgroup after it ran."""

    cpu_time_ms: int
    peak_memory_bytes: int
    oom_kills: int
    pids_limit_hits: int = 0  # forks refused by pids.max (pids.events "max")


def v1_writes(
    limits: CgroupLimits, devices: tuple[str, ...], parent_cpus: str, parent_mems: str
) -> list[tuple[str, str, str]]:
    """(controller, file, value) writes that apply `limits` to a fresh v1 job cgroup, in order.

    cpuset.cpus and cpuset.mems must be set before a v1 cpuset cgroup accepts a task, so they
    are always written (from the parent when the job asks for no cpuset).
    """
    writes = [
        ("cpuset", "cpuset.mems", parent_mems),
        ("cpuset", "cpuset.cpus", limits.cpuset_cpus or parent_cpus),
        ("pids", "pids.max", str(limits.pids_max)),
    ]
    if limits.cpu_quota_us is not None:
        writes.append(("cpu", "cpu.cfs_period_us", str(limits.cpu_period_us)))
        writes.append(("cpu", "cpu.cfs_quota_us", str(limits.cpu_quota_us)))
    if limits.memory_bytes is not None:
        writes.append(("memory", "memory.limit_in_bytes", str(limits.memory_bytes)))
        # memsw = memory + swap; equal to the memory limit means no swap at all.
        writes.append(("memory", "memory.memsw.limit_in_bytes", str(limits.memory_bytes)))
    if limits.io_bps is not None:
        for dev in devices:
            writes.append(("blkio", "blkio.throttle.read_bps_device", f"{dev} {limits.io_bps}"))
            writes.append(("blkio", "blkio.throttle.write_bps_device", f"{dev} {limits.io_bps}"))
    return writes


def v2_writes(
    limits: CgroupLimits, devices: tuple[str, ...], parent_mems: str
) -> list[tuple[str, str]]:
    """(file, value) writes that apply `limits` to a fresh v2 job cgroup, in order."""
    writes = [("pids.max", str(limits.pids_max))]
    if limits.cpu_quota_us is not None:
        writes.append(("cpu.max", f"{limits.cpu_quota_us} {limits.cpu_period_us}"))
    if limits.memory_bytes is not None:
        writes.append(("memory.max", str(limits.memory_bytes)))
        writes.append(("memory.swap.max", "0"))
    if limits.io_bps is not None:
        for dev in devices:
            writes.append(("io.max", f"{dev} rbps={limits.io_bps} wbps={limits.io_bps}"))
    if limits.cpuset_cpus is not None:
        writes.append(("cpuset.mems", parent_mems))
        writes.append(("cpuset.cpus", limits.cpuset_cpus))
    return writes


def v2_controllers_needed(limits: CgroupLimits) -> list[str]:
    """The controllers a parent must enable in cgroup.subtree_control for these limits."""
    needed = ["cpu", "memory", "pids"]
    if limits.io_bps is not None:
        needed.append("io")
    if limits.cpuset_cpus is not None:
        needed.append("cpuset")
    return needed


def block_devices(sys_block: str = "/sys/block") -> tuple[str, ...]:
    """MAJ:MIN of every real block device (not loop, ram, zram, ...)."""
    found = []
    for name in sorted(os.listdir(sys_block)):
        if name.startswith(_IGNORED_BLOCK_PREFIXES):
            continue
        try:
            found.append(_read(os.path.join(sys_block, name, "dev")))
        except OSError:
            continue
    return tuple(found)


def detect_version(mount: str = CGROUP_MOUNT) -> int:
    """2 when `mount` is a cgroup2 filesystem, else 1 (from /proc/self/mountinfo)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[4] == mount:
                return 2 if right.split()[0] == _CGROUP2_MAGIC_NAME else 1
    return 1


def v1_hierarchies() -> dict[str, str]:
    """controller -> mount point of its v1 hierarchy, for the controllers we use."""
    found: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if not fields or fields[0] != "cgroup":
                continue
            options = set(fields[2].split(","))
            for controller in V1_CONTROLLERS:
                if controller in options:
                    found.setdefault(controller, left.split()[4])
    return found


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def write_file(path: str, value: str) -> None:
    """Write one cgroup control file; a failure names the file and the value."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def process_start_time(pid: int) -> str | None:
    """The start time of `pid` in clock ticks (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def worker_dir_name(pid: int) -> str:
    """This worker's directory name: pid plus start time, so a reused pid is not mistaken."""
    return f"worker-{pid}-{process_start_time(pid)}"


def worker_alive(dir_name: str) -> bool:
    """Whether the worker that created `dir_name` still runs."""
    parts = dir_name.split("-")
    if len(parts) != 3 or parts[0] != "worker" or not parts[1].isdigit():
        return True  # not ours to judge
    return process_start_time(int(parts[1])) == parts[2]


def cgroup_pids(directory: str) -> list[int]:
    """PIDs in one cgroup directory (empty when it is gone)."""
    try:
        text = _read(os.path.join(directory, "cgroup.procs"))
    except OSError:
        return []
    return [int(p) for p in text.split()]


def kill_processes(directories: list[str], freezer_dir: str | None) -> None:
    """SIGKILL every process in the cgroup until it is empty.

    On v1 the freezer stops a fork bomb from outrunning the loop: freeze, kill, thaw (a killed,
    frozen task dies as soon as it is thawed).
    """
    if freezer_dir is not None:
        _set_freezer(freezer_dir, "FROZEN")
    try:
        for _ in range(1000):
            pids = [pid for d in directories for pid in cgroup_pids(d)]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if freezer_dir is not None:
                _set_freezer(freezer_dir, "THAWED")
                _set_freezer(freezer_dir, "FROZEN")
            else:
                time.sleep(0.001)
    finally:
        if freezer_dir is not None:
            _set_freezer(freezer_dir, "THAWED")


def _set_freezer(directory: str, state: str) -> None:
    path = os.path.join(directory, "freezer.state")
    try:
        write_file(path, state)
        # FREEZING becomes FROZEN once every task stopped; the kernel needs a few ms at most.
        for attempt in range(200):
            if state == "THAWED" or _read(path) == state:
                return
            time.sleep(0.0005 * (attempt + 1))
    except (CgroupError, OSError):
        if os.path.isdir(directory):
            raise
        # The cgroup is gone (its owner removed it after the job ended): nothing to freeze.


def remove_dirs(directories: list[str], timeout_s: float = 5.0) -> None:
    """rmdir each directory, retrying while exiting tasks still hold it (EBUSY)."""
    deadline = time.monotonic() + timeout_s
    for directory in directories:
        delay_s = 0.001
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise CgroupError(f"cannot remove cgroup {directory}: {exc.strerror}") from None
                _wait_unpopulated(directory, delay_s)
                delay_s = min(delay_s * 2, 0.05)


def _wait_unpopulated(directory: str, timeout_s: float) -> None:
    """On v2, cgroup.events changes (POLLPRI) when the cgroup empties; on v1 just wait."""
    events = os.path.join(directory, "cgroup.events")
    if not os.path.exists(events):
        time.sleep(timeout_s)
        return
    with open(events) as f:
        if "populated 0" in f.read():
            return
        poller = select.poll()
        poller.register(f.fileno(), select.POLLPRI)
        poller.poll(timeout_s * 1000)


@dataclass(frozen=True)
class JobCgroup:
    """One job's cgroup: a directory per v1 hierarchy (keyed by controller), or one on v2."""

    version: int
    dirs: dict[str, str]

    def unique_dirs(self) -> list[str]:
        """Every distinct directory, for joining, killing and removing."""
        return sorted(set(self.dirs.values()))

    def procs_files(self) -> list[str]:
        """The cgroup.procs files a process writes its pid into to join the job's cgroup."""
        return [os.path.join(d, "cgroup.procs") for d in self.unique_dirs()]

    def pids(self) -> list[int]:
        """Every process in the job's cgroup."""
        return sorted({pid for d in self.unique_dirs() for pid in cgroup_pids(d)})

    def stats(self) -> Stats:
        """CPU time, peak memory and OOM kills, from the controllers' accounting files."""
        if self.version == 2:
            return _v2_stats(self.dirs[""])
        return _v1_stats(self.dirs)

    def kill_all(self) -> None:
        """Kill every process in the cgroup (cgroup.kill on v2 when the kernel has it)."""
        if self.version == 2:
            kill_file = os.path.join(self.dirs[""], "cgroup.kill")
            if os.path.exists(kill_file):
                write_file(kill_file, "1")
            kill_processes([self.dirs[""]], None)
            return
        kill_processes(self.unique_dirs(), self.dirs.get("freezer"))

    def remove(self) -> None:
        """Kill what is left, then remove the directories."""
        self.kill_all()
        remove_dirs(self.unique_dirs())

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "dirs": dict(self.dirs)}

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> JobCgroup:
        dirs = raw["dirs"]
        assert isinstance(dirs, dict)
        return cls(version=int(str(raw["version"])), dirs={str(k): str(v) for k, v in dirs.items()})


def _read_int(path: str, default: int = 0) -> int:
    try:
        return int(_read(path))
    except (OSError, ValueError):
        return default


def _key_value(path: str, key: str) -> int:
    try:
        for line in _read(path).splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except OSError:
        pass
    return 0


def _v1_stats(dirs: dict[str, str]) -> Stats:
    cpu_ns = _read_int(os.path.join(dirs["cpuacct"], "cpuacct.usage"))
    peak = _read_int(os.path.join(dirs["memory"], "memory.max_usage_in_bytes"))
    ooms = _key_value(os.path.join(dirs["memory"], "memory.oom_control"), "oom_kill")
    forks = _key_value(os.path.join(dirs["pids"], "pids.events"), "max")
    return Stats(cpu_ns // 1_000_000, peak, ooms, forks)


def _v2_stats(directory: str) -> Stats:
    usage_us = _key_value(os.path.join(directory, "cpu.stat"), "usage_usec")
    peak = _read_int(os.path.join(directory, "memory.peak"))
    ooms = _key_value(os.path.join(directory, "memory.events"), "oom_kill")
    forks = _key_value(os.path.join(directory, "pids.events"), "max")
    return Stats(usage_us // 1000, peak, ooms, forks)
