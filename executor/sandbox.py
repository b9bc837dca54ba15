"""The child side of a job: launcher, init (PID 1) and the command, in forked processes.

Process tree, all inside the job's cgroup:

    worker thread
      └─ launcher   joins the cgroup, unshares the namespaces, forks init, waits for it
           └─ init   PID 1 of the new pid namespace: builds the root, pivot_root, hostname,
                     forks the command, reaps zombies, forwards SIGTERM/SIGINT, reports status
                └─ command  new session, privileges dropped, exec with the plan's env only

The launcher joins the cgroup before anything else, so every process of the job is accounted
and limited from its first instruction (joblet's issue #100: jobs that ran unlimited).

Everything here runs after fork() in a copy of a possibly multi-threaded worker, so it only
calls os functions and preloaded ctypes functions: no logging, no imports, no locks. Progress
and errors travel to the worker as lines on the status pipe: ``init PID``, ``error MESSAGE``,
``status WAITSTATUS``. Exit codes: 125 launcher setup failed, 126 init setup failed, 127 exec
failed (each after an ``error`` line).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import resource
import signal
import socket
import struct
from typing import NoReturn

from executor import linux, seccomp
from executor.plan import Mount, Plan

REQUIRED_NAMESPACES = frozenset({"pid", "mount", "uts", "ipc"})
INIT_TITLE = b"beanraft-init"
NEW_ROOT = "/tmp"  # mount point of the job's root tmpfs, only inside the job's mount namespace
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_RO_BIND = linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV
_FLAG_OPTIONS = {"nosuid": linux.MS_NOSUID, "nodev": linux.MS_NODEV, "noexec": linux.MS_NOEXEC}


def _send(fd: int, line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (line.replace("\n", " ") + "\n").encode())


def launcher_main(
    plan: Plan,
    procs_files: list[str],
    status_fd: int,
    out_fd: int,
    err_fd: int,
    seccomp_filter: seccomp.PreparedFilter | None = None,
    maps_fd: int = -1,
) -> NoReturn:
    """Entry point of the forked launcher. Never returns. `seccomp_filter`, when given, is
    installed in the command just before exec (`executor.seccomp.prepare`). With a user
    namespace, `maps_fd` is the pipe on which the worker says it has written the id maps."""
    try:
        _reset_signals()
        required = REQUIRED_NAMESPACES | ({"net"} if plan.network == "none" else set())
        missing = required - set(plan.namespaces)
        if missing:
            # Without them, sethostname, mounts and pivot_root would change the host itself.
            raise ValueError(f"plan lacks the {sorted(missing)} namespace(s); refusing to run")
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        # The launcher and init are forks of the worker: its memory and its exec-time
        # environment (/proc/PID/environ) must not be readable from the job, even by uid 0.
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
        _hide_worker_argv_and_environ()
        os.setsid()  # a Ctrl-C at the worker's terminal is not the job's business
        _keep_only_fds({status_fd, out_fd, err_fd, maps_fd})
        for path in procs_files:
            _write(path, str(os.getpid()))
        flags = 0
        for name in plan.namespaces:
            flags |= linux.NAMESPACE_FLAGS[name]
        linux.unshare(flags)
        if "user" in plan.namespaces:
            _become_namespace_root(status_fd, maps_fd)
        init_pid = os.fork()
    except Exception as exc:
        _send(status_fd, f"error launcher: {exc}")
        os._exit(125)
    if init_pid == 0:
        _init_main(plan, status_fd, out_fd, err_fd, seccomp_filter)
    _send(status_fd, f"init {init_pid}")
    while True:
        try:
            _, status = os.waitpid(init_pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        except ChildProcessError:
            os._exit(0)


def _become_namespace_root(status_fd: int, maps_fd: int) -> None:
    """In a fresh user namespace: ask the worker to map the namespace's uid and gid 0 to the
    job's host uid (only a process outside may write a map to another uid), wait for it, then
    take that identity, so that from here on nothing of the job is host root, not even its init.
    The other namespaces were created with this one and belong to it: the capabilities it gives
    are enough to build the root filesystem, and worth nothing on the host."""
    _send(status_fd, "userns")
    if os.read(maps_fd, 1) != b"g":
        raise OSError("the worker did not write the user namespace's id maps")
    os.close(maps_fd)
    os.setgroups([])  # host root's supplementary groups (gid 0) must not stay with the job
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    # A change of credentials clears both: set them again.
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    linux.prctl(linux.PR_SET_DUMPABLE, 0)


def _hide_worker_argv_and_environ() -> None:
    """Overwrite this copy of the worker's command line and environment in place (as
    setproctitle does), so the job's /proc/1/cmdline reads "beanraft-init" and no worker
    variable is left in the memory of the processes a job can see. The worker's own copy is
    untouched: after fork these pages are copy-on-write."""
    fields = _read_text("/proc/self/stat").rpartition(")")[2].split()
    # Fields 48-51 of /proc/PID/stat (1-based, counting pid and comm): arg_start, arg_end,
    # env_start, env_end; after the ")" they are at offsets 45..48.
    arg_start, arg_end, env_start, env_end = (int(v) for v in fields[45:49])
    ctypes.memset(env_start, 0, env_end - env_start)
    title = INIT_TITLE[: max(0, arg_end - arg_start - 1)]
    ctypes.memset(arg_start, 0, arg_end - arg_start)
    ctypes.memmove(arg_start, title, len(title))


def _read_text(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


def _reset_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


def _keep_only_fds(keep: set[int]) -> None:
    # Other jobs' pipes and the worker's sockets must not leak in: a leaked status pipe would
    # keep another job's worker from ever seeing EOF.
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 65536)


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _init_main(
    plan: Plan,
    status_fd: int,
    out_fd: int,
    err_fd: int,
    seccomp_filter: seccomp.PreparedFilter | None,
) -> NoReturn:
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        build_root(plan)
        linux.sethostname(plan.hostname)
        if "net" in plan.namespaces:
            _loopback_up()
        command_pid = os.fork()
    except Exception as exc:
        _send(status_fd, f"error sandbox setup: {exc}")
        os._exit(126)
    if command_pid == 0:
        _command_main(plan, status_fd, out_fd, err_fd, seccomp_filter)
    os.close(out_fd)
    os.close(err_fd)
    _reap_until(command_pid, status_fd)


def _reap_until(command_pid: int, status_fd: int) -> NoReturn:
    """PID 1's loop: forward SIGTERM/SIGINT to every process of the namespace, reap every
    zombie, and when the command itself exits report its wait status and exit (the kernel then
    kills whatever else is left in the namespace)."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signum)  # from a namespace's init: every other process in it

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid == command_pid:
            _send(status_fd, f"status {status}")
            os._exit(0)


def _command_main(
    plan: Plan,
    status_fd: int,
    out_fd: int,
    err_fd: int,
    seccomp_filter: seccomp.PreparedFilter | None,
) -> NoReturn:
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in {null, out_fd, err_fd} - {0, 1, 2}:
            os.close(fd)
        # The launcher and init (forks of the worker, bigger than a small command) are the
        # job's plumbing: make the command and its children the OOM killer's first choice.
        # Raising the score needs no privilege, unlike lowering the plumbing's. The command is
        # made dumpable first: in a user namespace a non-dumpable process's /proc files belong
        # to the host's root, not to it. Nothing of the job runs yet, and exec decides anew.
        linux.prctl(linux.PR_SET_DUMPABLE, 1)
        _write("/proc/self/oom_score_adj", "1000")
        _set_rlimits(plan.rlimits)  # as root: a hard limit above the worker's may be raised
        drop_privileges(plan.uid, plan.gid)
        # The worker's session keyring (and the user keyring linked to it) must be out of
        # reach: a job could read its keys or leave some for the next job.
        linux.join_new_session_keyring()
        linux.clear_user_keyrings()
        if seccomp_filter is not None:
            # Last: the filter denies keyctl and what else the steps above need.
            seccomp.load(seccomp_filter)
        os.chdir(plan.workdir)
        env = dict(plan.env)
        os.set_inheritable(status_fd, False)
        try:
            os.execvpe(plan.argv[0], list(plan.argv), env)
        except OSError as exc:
            _send(status_fd, f"error {_start_failure(plan, exc)}")
            os._exit(127)
    except Exception as exc:
        _send(status_fd, f"error cannot start {plan.argv[0]!r}: {exc}")
    os._exit(127)


def _start_failure(plan: Plan, exc: OSError) -> str:
    """Why exec failed, in words (not "b'/bin/x'": exec's error names the path as bytes)."""
    command = plan.argv[0]
    if isinstance(exc, FileNotFoundError):
        where = "" if "/" in command else f" in PATH ({dict(plan.env).get('PATH', '')})"
        return f"cannot start {command!r}: command not found{where}"
    if isinstance(exc, PermissionError):
        return f"cannot start {command!r}: permission denied (not executable, or noexec)"
    return f"cannot start {command!r}: {exc.strerror or exc}"


def _set_rlimits(limits: tuple[tuple[str, int], ...]) -> None:
    for name, value in limits:
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))


def drop_privileges(uid: int, gid: int) -> None:
    """no_new_privs, empty capability sets, no supplementary groups, then uid/gid."""
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    linux.drop_bounding_and_ambient()
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    linux.clear_capability_sets()


def build_root(plan: Plan) -> None:
    """Build the job's root filesystem at NEW_ROOT from the plan's mounts, pivot_root into
    it, detach the old root and make / and /etc read-only."""
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    linux.mount("tmpfs", NEW_ROOT, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755,size=4m")
    for step in plan.mounts:
        _apply(step)
    os.chdir(NEW_ROOT)
    os.mkdir(".oldroot")
    linux.pivot_root(".", ".oldroot")
    os.chdir("/")
    linux.umount2("/.oldroot", linux.MNT_DETACH)
    os.rmdir("/.oldroot")
    linux.mount(None, "/etc", None, _RO_BIND)
    linux.mount(None, "/", None, _RO_BIND)


def _apply(step: Mount) -> None:
    target = NEW_ROOT + step.target
    if step.kind == "symlink":
        os.symlink(step.source, target)
    elif step.kind == "file":
        with open(target, "w") as f:
            f.write(step.source)
    elif step.kind == "tmpfs":
        os.makedirs(target, exist_ok=True)
        flags, data = _split_options(step.options)
        linux.mount("tmpfs", target, "tmpfs", flags, data)
    elif step.kind == "proc":
        os.makedirs(target, exist_ok=True)
        flags = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
        linux.mount("proc", target, "proc", flags)
    elif step.kind == "mask":
        _mask(target)
    elif step.kind == "read_only":
        _read_only(target)
    elif step.kind in ("bind_ro", "dev_bind"):
        _bind(step.source, target, read_only=step.kind == "bind_ro")
    else:
        raise ValueError(f"unknown mount kind {step.kind!r}")


def _bind(source: str, target: str, read_only: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
    if read_only:
        # Recursive: a mount below /usr on the host must not stay writable in the job (joblet's
        # binds were neither recursive nor nosuid/nodev). Kernels before 5.12: top mount only.
        ro = linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
        if not linux.mount_setattr_recursive(target, ro):
            linux.mount(None, target, None, _RO_BIND)
    else:  # a device node: it must stay a device, but nothing on it may be setuid or executed
        flags = linux.MS_BIND | linux.MS_REMOUNT | linux.MS_NOSUID | linux.MS_NOEXEC
        linux.mount(None, target, None, flags)


def _mask(target: str) -> None:
    """Hide a path of the job's /proc: an empty read-only tmpfs over a directory, /dev/null
    over a file. A path this kernel lacks has nothing to hide."""
    if not os.path.lexists(target):
        return
    if os.path.isdir(target):
        flags = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
        linux.mount("tmpfs", target, "tmpfs", flags, "size=4k,mode=0555")
    else:
        linux.mount("/dev/null", target, None, linux.MS_BIND)
        flags = linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID
        linux.mount(None, target, None, flags | linux.MS_NOEXEC)


def _read_only(target: str) -> None:
    """Bind a path of the job's /proc over itself and make it read-only, with what is below."""
    if not os.path.lexists(target):
        return
    linux.mount(target, target, None, linux.MS_BIND | linux.MS_REC)
    flags = _RO_BIND | linux.MS_NOEXEC
    linux.mount(None, target, None, flags)


def _split_options(options: str) -> tuple[int, str]:
    """Split "mode=0755,nosuid,size=1m" into mount flags and filesystem data."""
    flags = linux.MS_NOSUID | linux.MS_NODEV
    data = []
    for option in filter(None, options.split(",")):
        if option in _FLAG_OPTIONS:
            flags |= _FLAG_OPTIONS[option]
        else:
            data.append(option)
    return flags, ",".join(data)


def _loopback_up() -> None:
    """Bring up lo in the new network namespace: a job with network "none" keeps loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | _IFF_UP))
