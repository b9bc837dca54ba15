"""A seccomp filter for jobs: at least as strict as Docker's default profile for a container
without capabilities.

What it is for. Jobs are hostile, and every syscall a job can reach is kernel attack surface.
Namespaces, dropped capabilities and no_new_privs already make most privileged calls fail, but
the kernel still parses their arguments first, and some calls need no privilege at all while
having a long record of exploitable bugs (io_uring, unprivileged user namespaces, bpf,
userfaultfd, keyrings). The filter answers those with EPERM before the kernel looks at them.

Build once, load after fork. `build_filter()` runs once at worker start, in a normal Python
process: it asks libseccomp (through pyseccomp) to compile the policy into a classic BPF
program and returns the program's raw bytes. `prepare(program)` copies them into the
`struct sock_fprog` the kernel reads, also before any fork. In the job's command process, a fork
of a multi-threaded worker where no library may be called (another thread may have held a
lock in libseccomp or malloc at fork time), `load(prepared)` is one prctl(2) through
`executor.linux.prctl` (libc is loaded at import): no import, no libseccomp, no allocation
beyond the call's few ctypes integers. The kernel copies the program, so one prepared filter
serves every job of the worker. The command process is single-threaded, so the filter needs
no TSYNC. prctl(PR_SET_SECCOMP) needs no_new_privs or CAP_SYS_ADMIN: it runs after
drop_privileges, last before exec, so none of the sandbox's own setup is constrained and the
job's first instruction is.

What is denied (EPERM, the errno Docker gives), and why:
- kernel modules, kexec, reboot, swap: load code into or replace the running kernel, or stop it.
- clock: settimeofday, clock_settime, clock_adjtime, adjtimex set the host's clock. (Stricter
  than Docker, which allows clock_adjtime and adjtimex because the kernel checks CAP_SYS_TIME
  before setting: a job has no business reading the NTP state either.)
- keyrings (add_key, request_key, keyctl): not namespaced; a job could find or plant keys.
- namespaces and mounts (unshare, setns, clone with a CLONE_NEW* flag, mount and the new mount
  API, pivot_root, chroot): unprivileged user namespaces hand a job fresh capabilities over
  code that was written for root and is the source of many local privilege escalations.
- file handles (name_to_handle_at, open_by_handle_at): open_by_handle_at ignores the mount
  namespace and the root ("shocker"). (Docker allows name_to_handle_at; we deny the pair.)
- tracing and eBPF (bpf, perf_event_open, lookup_dcookie, fanotify_init): large, bug-prone
  interfaces that see more than the job.
- cross-process (kcmp, pidfd_getfd, process_madvise): Docker allows them only with
  CAP_SYS_PTRACE.
- NUMA memory policy (mbind, set_mempolicy, get_mempolicy, move_pages, migrate_pages,
  set_mempolicy_home_node): Docker allows them only with CAP_SYS_NICE; they move other memory.
- io_uring (setup, enter, register): a second syscall interface that bypasses this filter's
  view of operations and a leading source of kernel exploits.
- userfaultfd: lets an exploit stall the kernel at a chosen page fault (race widening).
- host administration (acct, quotactl, sethostname, setdomainname, syslog, vhangup, iopl,
  ioperm, nfsservctl, sysfs, _sysctl, ustat, uselib, vm86) and the LSM attribute calls.
- obsolete or unimplemented entry points (afs_syscall, getpmsg, putpmsg, security, tuxcall,
  vserver, create_module, get_kernel_syms, query_module): nothing legitimate calls them.
- personality, except the values Docker allows: any mix of PER_LINUX32 (8) and UNAME26
  (0x20000), and the query 0xffffffff. The others turn off ASLR (ADDR_NO_RANDOMIZE), make data
  executable (READ_IMPLIES_EXEC) or map page zero (MMAP_PAGE_ZERO).
- ioctl TIOCSTI and TIOCLINUX: push keystrokes into, or read, a terminal the job shares.
- socket(AF_ALG) and socket(AF_VSOCK): the kernel crypto API and host-guest sockets, as in
  Docker's current profile.
Arguments the kernel reads as 32-bit ints (ioctl's command, socket's family, personality) are
compared on their low 32 bits only: a job could otherwise set the upper bits, pass a 64-bit
equality test, and still reach TIOCSTI.

clone3 is answered with ENOSYS, as Docker does: its flags are in memory, where seccomp cannot
look, and ENOSYS makes glibc (>= 2.34) fall back to clone, whose flags the filter does see.

ptrace, process_vm_readv and process_vm_writev stay allowed, as in Docker on kernels >= 4.8
(from 4.8 on, a tracer cannot skip the tracee's filter). A job's processes share one uid and
a pid namespace, and the plumbing (init) is root with capabilities the job lacks, so ptrace
reaches only the job's own processes.

Other architectures. The filter is built for the native architecture only, and a syscall made
through another ABI (i386's int 0x80, x32) kills the whole process (SECCOMP_RET_KILL_PROCESS,
SIGSYS) rather than getting EPERM: no 64-bit program makes one, the compat layer is an attack
surface of its own, and a 32-bit binary that received EPERM for every call would fail in
confusing ways where SIGSYS says "bad system call". Docker instead allows i386 and x32 calls
under the same names (and notes that i386's socketcall reaches AF_ALG past its socket rule);
jobs here cannot run 32-bit binaries.

Allow by default, deny by list. Docker's profile lists what is allowed and denies the rest;
this filter allows by default and lists what is denied, which is smaller to read and to check
against the kernel's table (the tests do). The cost is that a syscall added to a future kernel
would be allowed. It is mitigated: every number above NEWEST_REVIEWED_NR (removexattrat, the
newest syscall Docker's profile names, which is also runc's rule) up to FUTURE_NR_LIMIT is
answered with ENOSYS, which libc treats as "old kernel" and falls back from (EPERM would not
be: that is what broke faccessat2 under old Docker profiles). Syscall numbers from 424 on are
the same on every architecture this module supports, so the range is valid on each; a kernel
would need 500 new syscalls to outgrow it.

Names libseccomp does not know on this architecture (vm86 on x86_64, or calls newer than the
installed libseccomp) are skipped, except those with a number in the shared table above 423,
which are added by number. The calls the policy cannot do without must all resolve, or
build_filter fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from executor import linux
from jobqueue.errors import BeanraftError

DENIED_SYSCALLS: tuple[str, ...] = (
    # kernel modules, kexec, reboot, swap
    "create_module",
    "init_module",
    "finit_module",
    "delete_module",
    "get_kernel_syms",
    "query_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    # the host's clock
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_settime64",
    "clock_adjtime",
    "clock_adjtime64",
    "adjtimex",
    # keyrings
    "add_key",
    "request_key",
    "keyctl",
    # namespaces, mounts, the root
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "mount_setattr",
    # file handles
    "name_to_handle_at",
    "open_by_handle_at",
    # tracing, profiling, eBPF
    "bpf",
    "perf_event_open",
    "lookup_dcookie",
    "fanotify_init",
    # other processes (CAP_SYS_PTRACE in Docker)
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    # NUMA memory policy
    "get_mempolicy",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "mbind",
    "move_pages",
    "migrate_pages",
    # io_uring, userfaultfd
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    # host administration, hardware
    "acct",
    "quotactl",
    "quotactl_fd",
    "sethostname",
    "setdomainname",
    "syslog",
    "vhangup",
    "iopl",
    "ioperm",
    "vm86",
    "vm86old",
    "nfsservctl",
    "sysfs",
    "_sysctl",
    "ustat",
    "uselib",
    # LSM attributes (CAP_SYS_ADMIN in Docker)
    "lsm_get_self_attr",
    "lsm_set_self_attr",
    "lsm_list_modules",
    # unimplemented entry points
    "afs_syscall",
    "getpmsg",
    "putpmsg",
    "security",
    "tuxcall",
    "vserver",
)

# Answered with ENOSYS rather than EPERM, so that libc falls back to an older call.
ENOSYS_SYSCALLS: tuple[str, ...] = ("clone3",)

# Every syscall number above this one is answered with ENOSYS (see the module docstring).
NEWEST_REVIEWED_NR = 466  # removexattrat, Linux 6.13
FUTURE_NR_LIMIT = 1023

# Without these the policy is not worth loading: a libseccomp that cannot resolve them fails
# build_filter instead of producing a filter with holes.
_ESSENTIAL_SYSCALLS = frozenset(
    {"unshare", "setns", "mount", "keyctl", "add_key", "bpf", "perf_event_open", "kexec_load"}
    | {"io_uring_setup", "userfaultfd", "clone", "clone3", "ioctl", "personality", "socket"}
)

# From 424 (pidfd_send_signal, Linux 5.1) on, syscall numbers are shared by every architecture
# but alpha and mips; used for the names an older libseccomp cannot resolve.
_SHARED_TABLE_NUMBERS = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "process_madvise": 440,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "set_mempolicy_home_node": 450,
    "lsm_get_self_attr": 459,
    "lsm_set_self_attr": 460,
    "lsm_list_modules": 461,
    "open_tree_attr": 467,
}

_CLONE_NAMESPACE_FLAGS = (
    linux.CLONE_NEWNS,
    linux.CLONE_NEWCGROUP,
    linux.CLONE_NEWUTS,
    linux.CLONE_NEWIPC,
    linux.CLONE_NEWUSER,
    linux.CLONE_NEWPID,
    linux.CLONE_NEWNET,
)
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
AF_ALG = 38
AF_VSOCK = 40
_LOW_32_BITS = 0xFFFFFFFF
# personality values Docker allows: every combination of these bits, and the query 0xffffffff.
_PERSONALITY_SAFE_BITS = (3, 17)  # PER_LINUX32 = 0x8, UNAME26 = 0x20000

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_MAXINSNS = 4096  # the kernel's limit on one classic BPF program
_SOCK_FILTER_BYTES = 8


class SeccompError(BeanraftError, RuntimeError):
    """The filter cannot be built: libseccomp or pyseccomp is missing or failed."""


@dataclass(frozen=True)
class ArgRule:
    """Deny `syscall` with EPERM when (argument `arg_index` & `mask`) == `value`."""

    syscall: str
    arg_index: int
    mask: int
    value: int


def personality_rules() -> tuple[ArgRule, ...]:
    """personality(2) denied unless its (32-bit) argument is a combination of the safe bits or
    the query value.

    libseccomp cannot test one argument twice in a rule, so "not one of these values" is
    built as a union of tests "bit b set and bit c clear" (one MASKED_EQ each). None of them
    matches an allowed value: each needs an unsafe bit b set (which 0, 8, 0x20000 and 0x20008
    lack) and a bit c clear (which 0xffffffff lacks). Every other value matches one: it has an
    unsafe bit set and some bit clear. If all unsafe bits are set, a safe bit is clear, and
    the first unsafe bit is paired with both safe bits. Otherwise some unsafe bit is set and
    the next unsafe bit round the cycle is clear, and each unsafe bit is paired with the next.
    """
    unsafe = [bit for bit in range(32) if bit not in _PERSONALITY_SAFE_BITS]
    pairs = [(bit, unsafe[(i + 1) % len(unsafe)]) for i, bit in enumerate(unsafe)]
    pairs += [(unsafe[0], safe) for safe in _PERSONALITY_SAFE_BITS]
    return tuple(ArgRule("personality", 0, (1 << b) | (1 << c), 1 << b) for b, c in pairs)


def arg_rules(clone_flags_arg: int = 0) -> tuple[ArgRule, ...]:
    """Every conditional denial. `clone_flags_arg` is 1 on s390, where clone's first two
    arguments are swapped."""
    clone = tuple(ArgRule("clone", clone_flags_arg, flag, flag) for flag in _CLONE_NAMESPACE_FLAGS)
    ioctl = tuple(ArgRule("ioctl", 1, _LOW_32_BITS, cmd) for cmd in (TIOCSTI, TIOCLINUX))
    socket = tuple(ArgRule("socket", 0, _LOW_32_BITS, af) for af in (AF_ALG, AF_VSOCK))
    return clone + ioctl + socket + personality_rules()


def build_filter() -> bytes:
    """The policy compiled by libseccomp for this machine's architecture: a classic BPF
    program as raw `struct sock_filter` bytes (8 per instruction). Call it once per worker.
    Raises SeccompError when libseccomp or pyseccomp is missing or fails."""
    lib = _import_pyseccomp()
    try:
        return _compile(lib)
    except (OSError, ValueError) as exc:
        raise SeccompError(f"libseccomp failed to build the job filter: {exc}") from exc


def _import_pyseccomp() -> Any:
    try:
        import pyseccomp  # untyped: ignore_missing_imports in pyproject covers it
    except (ImportError, OSError, RuntimeError) as exc:
        # pyseccomp raises RuntimeError at import when it cannot find libseccomp.so.2.
        raise SeccompError(
            f"seccomp is unavailable ({exc}): install libseccomp (apt-get install libseccomp2)"
            " and pyseccomp==0.1.2, or start the worker with --no-seccomp"
        ) from exc
    return pyseccomp


def _compile(lib: Any) -> bytes:
    native_arch = lib.system_arch()
    shared_table = native_arch in (lib.Arch.X86_64, lib.Arch.AARCH64, lib.Arch.RISCV64)
    syscall_filter = lib.SyscallFilter(lib.ALLOW)
    # i386 (int 0x80) and x32 calls: SIGSYS for the whole process (see the module docstring).
    syscall_filter.set_attr(lib.Attr.ACT_BADARCH, lib.KILL_PROCESS)
    _prefer_binary_tree(lib, syscall_filter)
    ruled: set[int] = set()
    for name in DENIED_SYSCALLS:
        _deny(lib, syscall_filter, name, errno.EPERM, shared_table, ruled)
    for name in ENOSYS_SYSCALLS:
        _deny(lib, syscall_filter, name, errno.ENOSYS, shared_table, ruled)
    clone_flags_arg = 1 if native_arch in (lib.Arch.S390, lib.Arch.S390X) else 0
    for rule in arg_rules(clone_flags_arg):
        condition = lib.Arg(rule.arg_index, lib.MASKED_EQ, rule.mask, rule.value)
        syscall_filter.add_rule(lib.ERRNO(errno.EPERM), _number(lib, rule.syscall), condition)
    if shared_table:
        _deny_future_numbers(lib, syscall_filter, ruled)
    return _export_bpf(syscall_filter)


def _prefer_binary_tree(lib: Any, syscall_filter: Any) -> None:
    # With a default of ALLOW every allowed call walks the whole list; a binary tree over the
    # ~600 numbers (libseccomp >= 2.5) keeps that to a dozen comparisons. An older libseccomp
    # builds a linear filter, correct but slower.
    with contextlib.suppress(OSError):
        syscall_filter.set_attr(lib.Attr.CTL_OPTIMIZE, 2)


def _deny(
    lib: Any, syscall_filter: Any, name: str, errno_value: int, shared_table: bool, ruled: set[int]
) -> None:
    number = lib.resolve_syscall(lib.Arch.NATIVE, name)
    if number < 0 and shared_table:
        number = _SHARED_TABLE_NUMBERS.get(name, -1)
    if number < 0:
        # Not a syscall of this architecture (negative pseudo-numbers such as vm86's on
        # x86_64), or newer than this libseccomp and outside the shared table.
        if name in _ESSENTIAL_SYSCALLS:
            raise SeccompError(f"libseccomp cannot resolve {name!r} on this architecture")
        return
    syscall_filter.add_rule(lib.ERRNO(errno_value), number)
    ruled.add(number)


def _number(lib: Any, name: str) -> int:
    number = int(lib.resolve_syscall(lib.Arch.NATIVE, name))
    if number < 0:
        raise SeccompError(f"libseccomp cannot resolve {name!r} on this architecture")
    return number


def _deny_future_numbers(lib: Any, syscall_filter: Any, ruled: set[int]) -> None:
    for number in range(NEWEST_REVIEWED_NR + 1, FUTURE_NR_LIMIT + 1):
        if number not in ruled:  # e.g. open_tree_attr, denied with EPERM by name
            syscall_filter.add_rule(lib.ERRNO(errno.ENOSYS), number)


def _export_bpf(syscall_filter: Any) -> bytes:
    # libseccomp writes to a file descriptor; a temporary file holds any size without the
    # deadlock a pipe would risk past its buffer.
    with tempfile.TemporaryFile() as exported:
        syscall_filter.export_bpf(exported)
        exported.seek(0)
        return exported.read()


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


class PreparedFilter:
    """A program in the memory layout prctl(PR_SET_SECCOMP) reads: the `struct sock_filter`
    array and the `struct sock_fprog` pointing at it, kept together so the array lives as long
    as the pointer. Immutable once made; the kernel copies it at each load."""

    __slots__ = ("_fprog", "_instructions", "address", "instruction_count")

    def __init__(self, program: bytes) -> None:
        count = len(program) // _SOCK_FILTER_BYTES
        if len(program) % _SOCK_FILTER_BYTES or not 0 < count <= BPF_MAXINSNS:
            raise ValueError(
                f"a seccomp program is 1 to {BPF_MAXINSNS} instructions of"
                f" {_SOCK_FILTER_BYTES} bytes; got {len(program)} bytes"
            )
        self._instructions = (_SockFilter * count).from_buffer_copy(program)
        first = ctypes.cast(self._instructions, ctypes.POINTER(_SockFilter))
        self._fprog = _SockFprog(count, first)
        self.address = ctypes.addressof(self._fprog)
        self.instruction_count = count


def prepare(program: bytes) -> PreparedFilter:
    """Before fork: lay `program` (from build_filter) out for the kernel. Raises ValueError
    when its length cannot be a BPF program."""
    return PreparedFilter(program)


def load(prepared: PreparedFilter) -> None:
    """After fork, in the process about to exec the job: install the filter for this thread
    and everything it forks or execs. Needs no_new_privs (or CAP_SYS_ADMIN). Raises OSError
    with the reason when the kernel refuses."""
    try:
        linux.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prepared.address)
    except OSError as exc:
        raise OSError(exc.errno, _refusal(exc.errno or 0, prepared.instruction_count)) from None


def _refusal(errno_value: int, instruction_count: int) -> str:
    reason = os.strerror(errno_value)
    if errno_value == errno.EACCES:
        reason += " (set PR_SET_NO_NEW_PRIVS first, or hold CAP_SYS_ADMIN)"
    elif errno_value == errno.EINVAL:
        reason += " (not a valid seccomp BPF program, or seccomp is not in this kernel)"
    return (
        f"seccomp: the kernel refused the job filter ({instruction_count} instructions): {reason}"
    )
