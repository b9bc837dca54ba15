"""Thin ctypes wrappers for the Linux syscalls Python 3.11's os module lacks.

unshare(2), mount(2), umount2(2), pivot_root(2) (through syscall(2): glibc has no wrapper),
sethostname(2), prctl(2) and capset(2). Each raises OSError with errno and the call's arguments,
so a failure inside the sandbox says exactly what could not be set up. libc is loaded at import,
before any fork, so the forked child never takes the dynamic loader's locks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = {
    "user": CLONE_NEWUSER,
    "mount": CLONE_NEWNS,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "pid": CLONE_NEWPID,
    "net": CLONE_NEWNET,
    "cgroup": CLONE_NEWCGROUP,
}

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_LAST_CAP_MAX = 63

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine(), 155)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    """unshare(2): move the calling process into new namespaces."""
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    """mount(2)."""
    src = source.encode() if source is not None else None
    fst = fstype.encode() if fstype is not None else None
    dat = data.encode() if data else None
    rc = _libc.mount(src, target.encode(), fst, ctypes.c_ulong(flags), dat)
    _check(rc, f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})")


def umount2(target: str, flags: int) -> None:
    """umount2(2)."""
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount2({target!r})")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) through syscall(2)."""
    rc = _libc.syscall(ctypes.c_long(_SYS_PIVOT_ROOT), new_root.encode(), put_old.encode())
    _check(rc, f"pivot_root({new_root!r}, {put_old!r})")


def sethostname(name: str) -> None:
    """sethostname(2), in the caller's UTS namespace."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname({name!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> None:
    """prctl(2)."""
    args = (ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5))
    _check(_libc.prctl(ctypes.c_int(option), *args), f"prctl({option}, {arg2})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return min(int(f.read()), CAP_LAST_CAP_MAX)
    except OSError:
        return 40


# Read once at import: the sandbox child runs after pivot_root, where /proc/sys may differ.
LAST_CAP = _last_cap()


def drop_bounding_and_ambient() -> None:
    """Empty the bounding and ambient capability sets.

    Needs CAP_SETPCAP, so it runs before setuid; afterwards not even a setuid-root binary could
    regain a capability (and no_new_privs closes that door as well).
    """
    for cap in range(LAST_CAP + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def clear_capability_sets() -> None:
    """capset(2) the effective, permitted and inheritable sets to empty (after setuid)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset(empty)")


_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(platform.machine(), 250)
_KEYCTL_JOIN_SESSION_KEYRING = 1


def join_new_session_keyring() -> int:
    """keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL): give the caller a fresh anonymous session
    keyring, so nothing of the worker's session keyring (or the keyrings linked to it) stays
    reachable. Returns the new keyring's serial."""
    serial = int(
        _libc.syscall(ctypes.c_long(_SYS_KEYCTL), ctypes.c_int(_KEYCTL_JOIN_SESSION_KEYRING), None)
    )
    if serial < 0:
        _check(-1, "keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)")
    return serial


_KEYCTL_CLEAR = 7
_KEY_SPEC_USER_KEYRING = -4
_KEY_SPEC_USER_SESSION_KEYRING = -5


def clear_user_keyrings() -> None:
    """keyctl(KEYCTL_CLEAR) on the caller's user and user-session keyrings. They belong to the
    uid, not to a process, and outlive it: a job in the same worker slot (same uid) must not
    find keys an earlier job left there (possible only where seccomp is off)."""
    for keyring in (_KEY_SPEC_USER_KEYRING, _KEY_SPEC_USER_SESSION_KEYRING):
        clear = ctypes.c_int(_KEYCTL_CLEAR)
        rc = int(_libc.syscall(ctypes.c_long(_SYS_KEYCTL), clear, ctypes.c_int(keyring)))
        if rc < 0:
            _check(-1, f"keyctl(KEYCTL_CLEAR, {keyring})")


IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000


def inotify_watch(directory: str, mask: int) -> int:
    """An inotify fd (non-blocking, close-on-exec) watching `directory` for `mask` events."""
    fd = int(_libc.inotify_init1(ctypes.c_int(IN_NONBLOCK | IN_CLOEXEC)))
    if fd < 0:
        _check(-1, "inotify_init1")
    if _libc.inotify_add_watch(ctypes.c_int(fd), directory.encode(), ctypes.c_uint32(mask)) < 0:
        os.close(fd)
        _check(-1, f"inotify_add_watch({directory!r})")
    return fd


MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added in Linux 5.12)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr_recursive(target: str, attr_set: int) -> bool:
    """mount_setattr(2) with AT_RECURSIVE: set `attr_set` on `target` and every mount below it.
    Returns False when the kernel lacks the call (ENOSYS), so the caller can fall back."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    rc = _libc.syscall(
        ctypes.c_long(_SYS_MOUNT_SETATTR),
        ctypes.c_int(_AT_FDCWD),
        target.encode(),
        ctypes.c_uint(_AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if rc != 0 and ctypes.get_errno() == 38:  # ENOSYS
        return False
    _check(rc, f"mount_setattr({target!r}, recursive, {attr_set:#x})")
    return True
