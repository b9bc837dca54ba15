"""The job seccomp filter, for real: each test builds the filter here, and a child Python
process sets no_new_privs, loads it and makes raw syscalls with ctypes, printing their errnos.
Most scenarios also run once without the filter, to show the call would otherwise not fail
with EPERM (the children run as root, so only the filter can refuse)."""

from __future__ import annotations

import errno
import json
import os
import platform
import random
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyseccomp
import pytest

from executor import seccomp

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]

# The child: prepare the filter before anything else (as the worker does before fork), set
# no_new_privs, optionally become an unprivileged user, load, then run the calls.
CHILD = r"""
import ctypes, json, os, sys
from executor import linux, seccomp

config = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
buffer = ctypes.create_string_buffer(4096)
_, tty = os.openpty()
me = os.getpid()


def argument(value):
    if value == "@buf":
        return ctypes.c_void_p(ctypes.addressof(buffer))
    if value == "@tty":
        return ctypes.c_ulong(tty)
    if isinstance(value, str):
        return ctypes.c_char_p(value.encode())
    return ctypes.c_ulong(value & 0xFFFFFFFFFFFFFFFF)


def call(number, *args):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *map(argument, args))
    if os.getpid() != me:  # a clone that was not refused: the copy leaves at once
        os._exit(0)
    return ctypes.get_errno() if result == -1 else 0


path = config.get("filter")
prepared = seccomp.prepare(open(path, "rb").read()) if path else None
if not config.get("skip_no_new_privs"):
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
if "uid" in config:
    os.setgroups([])
    os.setgid(config["uid"])
    os.setuid(config["uid"])
if prepared is not None:
    try:
        seccomp.load(prepared)
    except OSError as exc:
        print(json.dumps({"load_error": [exc.errno, str(exc)]}), flush=True)
        sys.exit(3)
if "exec" in config:
    os.execv(config["exec"][0], config["exec"])
print(json.dumps([call(*c) for c in config.get("calls", [])]), flush=True)
exec(config.get("then", ""))
"""


@pytest.fixture(scope="module")
def filter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seccomp") / "job.bpf"
    path.write_bytes(seccomp.build_filter())
    return path


def nr(name: str) -> int:
    number = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
    assert number >= 0, f"{name} is not a syscall here"
    return number


def run_child(config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def errnos(filter_path: Path | None, *calls: list[Any], **config: Any) -> list[int]:
    """Each call's errno (0 when it succeeded), with the filter loaded or not."""
    if filter_path is not None:
        config["filter"] = str(filter_path)
    done = run_child({**config, "calls": [list(c) for c in calls]})
    assert done.returncode == 0, done.stderr + done.stdout
    result: list[int] = json.loads(done.stdout.splitlines()[0])
    return result


def eperm_with_filter_only(filter_path: Path, *calls: list[Any]) -> None:
    without = errnos(None, *calls)
    assert errno.EPERM not in without, f"the kernel itself refused with EPERM: {without}"
    assert errnos(filter_path, *calls) == [errno.EPERM] * len(calls)


CLONE_NEWUSER = 0x10000000
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_READ = 11
KEY_SPEC_SESSION_KEYRING = -3
KEY_SPEC_PROCESS_KEYRING = -2
SIGCHLD = 17


def test_build_filter_returns_whole_bpf_instructions(filter_path: Path) -> None:
    program = seccomp.build_filter()
    assert isinstance(program, bytes)
    assert len(program) % 8 == 0
    assert 0 < len(program) // 8 <= seccomp.BPF_MAXINSNS
    assert program == filter_path.read_bytes()  # deterministic
    code, _, _, offset = struct.unpack_from("=HBBI", program, 0)
    assert (code, offset) == (0x20, 4)  # BPF_LD|BPF_W|BPF_ABS of seccomp_data.arch first
    code, _, _, _ = struct.unpack_from("=HBBI", program, len(program) - 8)
    assert code == 0x06  # BPF_RET last
    assert seccomp.prepare(program).instruction_count == len(program) // 8


REQUIRED_DENIALS = """
    acct add_key bpf clock_adjtime clock_settime settimeofday create_module delete_module
    finit_module init_module get_kernel_syms get_mempolicy set_mempolicy mbind move_pages ioperm
    iopl kcmp kexec_file_load kexec_load keyctl request_key lookup_dcookie mount umount2
    pivot_root fsopen fsconfig fsmount fspick move_mount open_tree mount_setattr
    name_to_handle_at open_by_handle_at nfsservctl perf_event_open quotactl quotactl_fd reboot
    setns unshare swapon swapoff sysfs _sysctl uselib userfaultfd ustat vm86 vm86old
    io_uring_setup io_uring_enter io_uring_register syslog
"""

# What Docker's default profile (moby/profiles seccomp v0.2.3) does not allow an amd64
# container without capabilities, worked out from its rules; clone3 gets ENOSYS there too.
DOCKER_DENIALS_AMD64 = """
    syslog uselib ustat sysfs vhangup pivot_root _sysctl chroot acct settimeofday mount umount2
    swapon swapoff reboot sethostname setdomainname iopl ioperm create_module init_module
    delete_module get_kernel_syms query_module quotactl nfsservctl getpmsg putpmsg afs_syscall
    tuxcall security lookup_dcookie clock_settime vserver mbind set_mempolicy get_mempolicy
    kexec_load add_key request_key keyctl migrate_pages unshare move_pages perf_event_open
    fanotify_init open_by_handle_at setns kcmp finit_module kexec_file_load bpf userfaultfd
    io_uring_setup io_uring_enter io_uring_register open_tree move_mount fsopen fsconfig fsmount
    fspick clone3 pidfd_getfd process_madvise mount_setattr quotactl_fd set_mempolicy_home_node
    lsm_get_self_attr lsm_set_self_attr lsm_list_modules
"""


def test_every_syscall_docker_denies_is_denied() -> None:
    ours = set(seccomp.DENIED_SYSCALLS) | set(seccomp.ENOSYS_SYSCALLS)
    assert set(DOCKER_DENIALS_AMD64.split()) - ours == set()


def test_denied_list_covers_the_required_syscalls() -> None:
    required = REQUIRED_DENIALS.split()
    assert set(required) <= set(seccomp.DENIED_SYSCALLS)
    assert len(set(seccomp.DENIED_SYSCALLS)) == len(seccomp.DENIED_SYSCALLS)
    native = [n for n in required if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, n) >= 0]
    if platform.machine() == "x86_64":  # all but vm86 and vm86old (i386 only)
        assert set(required) - set(native) == {"vm86", "vm86old"}


def test_personality_rules_deny_every_value_but_the_safe_ones() -> None:
    rules = seccomp.personality_rules()

    def denied(value: int) -> bool:
        return any(value & r.mask == r.value for r in rules)

    for allowed in (0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert not denied(allowed), hex(allowed)
    samples = [1 << b for b in range(32)] + [0xFFFFFFFF ^ (1 << b) for b in range(32)]
    samples += [0x0040000, 0x0400000, 0x0100000, 0xFFFFFFF7, 0xFFFDFFFF, 0xFFFDFFF7]
    rng = random.Random(1)
    samples += [rng.getrandbits(32) for _ in range(100_000)]
    for value in samples:
        if value not in (0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF):
            assert denied(value), hex(value)


def test_unshare_newuser_succeeds_without_the_filter_and_gets_eperm_with_it(
    filter_path: Path,
) -> None:
    assert errnos(None, [nr("unshare"), CLONE_NEWUSER]) == [0]
    assert errnos(filter_path, [nr("unshare"), CLONE_NEWUSER]) == [errno.EPERM]


def test_keyctl_join_and_read_and_add_key_get_eperm(filter_path: Path) -> None:
    eperm_with_filter_only(
        filter_path,
        [nr("keyctl"), KEYCTL_JOIN_SESSION_KEYRING, 0],
        [nr("keyctl"), KEYCTL_READ, KEY_SPEC_SESSION_KEYRING, "@buf", 4096],
        [nr("add_key"), "user", "beanraft-test", "secret", 6, KEY_SPEC_PROCESS_KEYRING],
    )


def test_io_uring_setup_gets_eperm(filter_path: Path) -> None:
    call = [nr("io_uring_setup"), 4, "@buf"]  # a zeroed struct io_uring_params
    if Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() == "0":
        assert errnos(None, call) == [0]
    assert errnos(filter_path, call) == [errno.EPERM]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(["bpf", -1, 0, 0], id="bpf"),
        pytest.param(["perf_event_open", 0, 0, -1, -1, 0], id="perf_event_open"),
        pytest.param(["mount", 0, 0, 0, 0, 0], id="mount"),
        pytest.param(["setns", -1, 0], id="setns"),
    ],
)
def test_kernel_attack_surface_calls_get_eperm(filter_path: Path, call: list[Any]) -> None:
    eperm_with_filter_only(filter_path, [nr(call[0]), *call[1:]])


def test_kexec_load_gets_eperm(filter_path: Path) -> None:
    # No baseline: as root it would unload the kexec kernel, and hosts often forbid it anyway.
    assert errnos(filter_path, [nr("kexec_load"), 0, 0, 0, 0]) == [errno.EPERM]


def test_clone_with_a_namespace_flag_gets_eperm_and_clone3_enosys(filter_path: Path) -> None:
    clone_newuser = [nr("clone"), CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0]
    clone_newnet = [nr("clone"), 0x40000000 | SIGCHLD, 0, 0, 0, 0]
    clone3 = [nr("clone3"), 0, 0]  # size 0: EINVAL if it reached the kernel
    assert errnos(None, clone3) == [errno.EINVAL]
    result = errnos(filter_path, clone_newuser, clone_newnet, clone3)
    assert result == [errno.EPERM, errno.EPERM, errno.ENOSYS]


FORK_AND_THREADS = """
import subprocess, threading
pid = os.fork()
if pid == 0:
    os._exit(7)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(subprocess.run(["/bin/true"]).returncode)
seen = []
thread = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
thread.start()
thread.join()
print(len(seen) == 1 and seen[0] != threading.get_native_id())
"""


def test_fork_subprocess_and_threads_still_work_under_the_filter(filter_path: Path) -> None:
    done = run_child({"filter": str(filter_path), "then": FORK_AND_THREADS})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == ["7", "0", "True"]


def test_ioctl_tiocsti_is_denied_even_with_the_upper_bits_set(filter_path: Path) -> None:
    # The kernel reads ioctl's command as 32 bits, so 0x1_00005412 is TIOCSTI too.
    tiocsti = [nr("ioctl"), "@tty", seccomp.TIOCSTI, "@buf"]
    tiocsti_high = [nr("ioctl"), "@tty", (1 << 32) | seccomp.TIOCSTI, "@buf"]
    assert errnos(None, tiocsti, tiocsti_high) == [0, 0]  # as root: the call works
    assert errnos(filter_path, tiocsti, tiocsti_high) == [errno.EPERM, errno.EPERM]


def test_ioctl_tioclinux_is_denied(filter_path: Path) -> None:
    assert errnos(filter_path, [nr("ioctl"), "@tty", seccomp.TIOCLINUX, "@buf"]) == [errno.EPERM]


def test_personality_allows_the_safe_values_and_denies_no_randomize(filter_path: Path) -> None:
    personality = nr("personality")
    safe = [[personality, value] for value in (0xFFFFFFFF, 0x8, 0x20000, 0x20008, 0)]
    risky = [[personality, value] for value in (0x0040000, 0x0400000, (1 << 32) | 0x0040000)]
    assert errnos(None, *safe, *risky) == [0] * 8
    assert errnos(filter_path, *safe, *risky) == [0] * 5 + [errno.EPERM] * 3


def test_socket_af_vsock_and_af_alg_are_denied_and_others_not(filter_path: Path) -> None:
    socket = nr("socket")
    unix_inet = [[socket, 1, 1, 0], [socket, 2, 1, 0]]  # AF_UNIX, AF_INET stream
    vsock_alg = [[socket, seccomp.AF_VSOCK, 1, 0], [socket, seccomp.AF_ALG, 5, 0]]
    assert errno.EPERM not in errnos(None, *unix_inet, *vsock_alg)
    assert errnos(filter_path, *unix_inet, *vsock_alg) == [0, 0, errno.EPERM, errno.EPERM]


def test_syscalls_newer_than_the_reviewed_table_get_enosys(filter_path: Path) -> None:
    file_getattr = [468, -1, "", "@buf", 0, 0]  # Linux 6.17, after NEWEST_REVIEWED_NR
    far_future = [seccomp.FUTURE_NR_LIMIT]
    assert seccomp.NEWEST_REVIEWED_NR < 468 <= seccomp.FUTURE_NR_LIMIT
    if os.uname().release.split(".")[:2] >= ["6", "17"]:
        assert errnos(None, file_getattr)[0] != errno.ENOSYS
    assert errnos(filter_path, file_getattr, far_future) == [errno.ENOSYS, errno.ENOSYS]


def test_shell_with_ls_runs_under_the_filter(filter_path: Path) -> None:
    done = run_child(
        {"filter": str(filter_path), "exec": ["/bin/sh", "-c", "echo ok; ls / >/dev/null"]}
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


PYTHON_JOB = """
import asyncio, socket, subprocess, threading
threading.Thread(target=print, args=("thread",)).start()
child = subprocess.run(["/bin/sh", "-c", "echo child"], capture_output=True, text=True)
print(child.stdout.strip())
a, b = socket.socketpair()
a.sendall(b"pair")
print(b.recv(4).decode())
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    s.listen()
asyncio.run(asyncio.sleep(0))
print("ok")
"""


def test_python_with_threads_subprocess_and_sockets_runs_under_the_filter(
    filter_path: Path,
) -> None:
    done = run_child({"filter": str(filter_path), "exec": [sys.executable, "-c", PYTHON_JOB]})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["thread", "child", "pair", "ok"]


def test_production_order_no_new_privs_then_setuid_then_load(filter_path: Path) -> None:
    result = errnos(filter_path, [nr("getpid")], [nr("unshare"), CLONE_NEWUSER], uid=65534)
    assert result == [0, errno.EPERM]


def test_load_without_no_new_privs_as_a_user_raises_eacces_with_a_hint(
    filter_path: Path,
) -> None:
    config = {"filter": str(filter_path), "uid": 65534, "skip_no_new_privs": True}
    done = run_child(config)
    assert done.returncode == 3, done.stderr
    error_number, message = json.loads(done.stdout)["load_error"]
    assert error_number == errno.EACCES
    assert "PR_SET_NO_NEW_PRIVS" in message


def test_load_of_garbage_raises_oserror_with_a_message() -> None:
    garbage = seccomp.prepare(b"\xff" * 64)  # eight instructions of an unknown opcode
    with pytest.raises(OSError) as raised:
        seccomp.load(garbage)  # in this process: the kernel rejects it before installing
    assert raised.value.errno == errno.EINVAL
    assert "seccomp" in str(raised.value) and "8 instructions" in str(raised.value)


def test_prepare_rejects_a_length_that_is_not_whole_instructions() -> None:
    for wrong in (b"", b"\x06\x00\x00\x00", b"\x00" * (8 * seccomp.BPF_MAXINSNS + 8)):
        with pytest.raises(ValueError, match="instructions"):
            seccomp.prepare(wrong)


def test_build_filter_without_pyseccomp_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # the next import raises ImportError
    with pytest.raises(seccomp.SeccompError, match=r"pyseccomp==0\.1\.2.*--no-seccomp"):
        seccomp.build_filter()


INT80_GETPID = """
import mmap
code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])  # mov eax, 20 (i386 getpid); int 0x80; ret
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
function = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
print(function() == os.getpid(), flush=True)
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="i386 ABI through int 0x80")
def test_an_i386_syscall_kills_the_process(filter_path: Path) -> None:
    without = run_child({"then": INT80_GETPID})
    if without.returncode != 0 or without.stdout.split()[-1] != "True":
        pytest.skip("this kernel has no i386 emulation")
    done = run_child({"filter": str(filter_path), "then": INT80_GETPID})
    assert done.returncode == -signal.SIGSYS, (done.returncode, done.stdout, done.stderr)
