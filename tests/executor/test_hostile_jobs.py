"""Hostile jobs, for real: each test is an attacker's job run through the real runner (or a real
worker), and asserts that the attack is contained. The attacks are the ones found when the
isolation was tried as an attacker would (issue 14), plus the layers that held then, kept."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import greenstalk
import pytest

from cluster.jobspec import spec_from_dict
from executor import runner
from executor.plan import PROC_MASKED, WorkerPolicy, make_plan
from executor.worker import host_layout

pytestmark = pytest.mark.root

PY = "/usr/bin/python3"
REPO = Path(__file__).resolve().parents[2]


def sh(script: str, **extra: object) -> dict[str, object]:
    return {"command": "/bin/sh", "args": ["-c", script], **extra}


def py(code: str, **extra: object) -> dict[str, object]:
    return {"command": PY, "args": ["-c", code], **extra}


# A job's view of a syscall: "ok" or the errno name, one per line.
SYSCALL = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, number, *args):
    rc = libc.syscall(ctypes.c_long(number), *args)
    print(name, "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()])
"""

CORE_PATTERN = "/proc/sys/kernel/core_pattern"


@pytest.fixture
def root_jobs(backend: Any, job_runner_for: Any) -> Any:
    return job_runner_for(backend, allow_root=True)


@pytest.fixture
def host_core_pattern() -> Any:
    """The host's core_pattern, restored afterwards if an attack changed it."""
    with open(CORE_PATTERN) as f:
        before = f.read()
    yield before
    with open(CORE_PATTERN) as f:
        if f.read() != before:
            with open(CORE_PATTERN, "w") as out:
                out.write(before)


SYSCTL_WRITES = """
import sys
for path, value in [("/proc/sys/kernel/core_pattern", sys.argv[1]),
                    ("/proc/sys/vm/drop_caches", "3"),
                    ("/proc/sys/kernel/panic", "1"),
                    ("/proc/sys/fs/file-max", "100"),
                    ("/proc/sysrq-trigger", "h")]:
    try:
        with open(path, "w") as f:
            f.write(value)
        print("wrote", path)
    except OSError as e:
        print("refused", path, e.errno)
"""


@pytest.mark.parametrize("as_root", [False, True], ids=["job-uid", "run_as_root"])
def test_core_pattern_escape_cannot_write_host_sysctls(
    jobs: Any, root_jobs: Any, host_core_pattern: str, tmp_path: Path, as_root: bool
) -> None:
    canary = tmp_path / "canary"
    payload = f"|/bin/sh -c 'touch {canary}'"
    spec = {"command": PY, "args": ["-c", SYSCTL_WRITES, payload], "run_as_root": as_root}
    run = (root_jobs if as_root else jobs).run(spec)
    assert "wrote" not in run.stdout, run.stdout
    assert run.stdout.count("refused") == 5
    with open(CORE_PATTERN) as f:
        assert f.read() == host_core_pattern
    # And a crash after the attempt runs nothing on the host.
    crash = (root_jobs if as_root else jobs).run(sh("kill -SEGV $$", run_as_root=as_root))
    assert crash.result.signal == 11
    assert not canary.exists()


def test_run_as_root_is_root_only_inside_its_user_namespace(root_jobs: Any) -> None:
    run = root_jobs.run(
        sh(
            "id -u; cat /proc/self/uid_map /proc/self/gid_map; echo x > /work/f && ls -n /work/f",
            run_as_root=True,
        )
    )
    lines = run.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(root_jobs.uid), "1"]
    assert lines[2].split() == ["0", str(root_jobs.uid), "1"]
    assert lines[3].split()[2:4] == ["0", "0"]  # owns its files, as root would
    assert run.result.exit_code == 0


def test_run_as_root_processes_have_the_job_uid_on_the_host(
    root_jobs: Any, wait_until: Any
) -> None:
    job = root_jobs.start(sh("echo ready; sleep 300", run_as_root=True))
    try:
        wait_until(lambda: len(job.cgroup.pids()) >= 3, 20, "the job's processes")
        for pid in job.cgroup.pids():
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/status") as f:
                uid_line = next(line for line in f if line.startswith("Uid:"))
                assert uid_line.split()[1:] == [str(root_jobs.uid)] * 4, (pid, uid_line)
    finally:
        root_jobs.finish(job, should_stop=lambda: True)


def test_proc_hides_host_wide_files_and_sys_is_absent(jobs: Any) -> None:
    code = (
        "import os\n"
        f"for p in {list(PROC_MASKED)!r}:\n"
        "    if os.path.isdir(p): print(p, 'dir', len(os.listdir(p)))\n"
        "    elif os.path.exists(p): print(p, 'file', len(open(p, 'rb').read(4096)))\n"
        "print('/sys', os.path.exists('/sys'))\n"
    )
    run = jobs.run(py(code))
    lines = run.stdout.splitlines()
    assert "/sys False" in lines
    shown = [line.split() for line in lines if line.startswith("/proc")]
    assert any(p == "/proc/cmdline" for p, *_ in shown)
    for path, _kind, size in shown:
        assert size == "0", (path, size)  # an empty dir or /dev/null


def test_worker_session_keyring_is_out_of_reach(jobs: Any, job_runner_for: Any) -> None:
    keyctl = 250
    libc = ctypes.CDLL(None, use_errno=True)
    # The worker (this test process) holds a key in its session keyring, as a login session would.
    serial = libc.syscall(
        ctypes.c_long(248),
        b"user",
        b"beanraft-test-secret",
        b"s3cret",
        ctypes.c_size_t(6),
        ctypes.c_int(-3),
    )  # add_key(..., KEY_SPEC_SESSION_KEYRING)
    assert serial > 0, ctypes.get_errno()
    try:
        code = SYSCALL + (
            f"call('read_session', {keyctl}, 11, -3, None, 0)\n"  # KEYCTL_READ
            f"call('read_key', {keyctl}, 11, {serial}, None, 0)\n"
            "call('add_key', 248, b'user', b'leak', b'x', 1, -3)\n"
        )
        run = jobs.run(py(code))
        assert run.stdout.split() == [
            "read_session",
            "EPERM",
            "read_key",
            "EPERM",
            "add_key",
            "EPERM",
        ]
        # Without the filter the job still cannot reach it: its session keyring is a fresh one.
        unfiltered = job_runner_for(jobs.backend, seccomp=False)
        run = unfiltered.run(py(code))
        assert "read_key ok" not in run.stdout
        assert "s3cret" not in run.stdout
    finally:
        libc.syscall(ctypes.c_long(keyctl), ctypes.c_int(3), ctypes.c_long(serial))  # revoke


def test_a_key_left_by_one_job_is_not_readable_by_the_next_in_the_same_slot(
    job_runner_for: Any, backend: Any
) -> None:
    # Without the filter a job can add a key to its uid's user keyring, which outlives it.
    unfiltered = job_runner_for(backend, seccomp=False)
    writer = unfiltered.run(py(SYSCALL + "call('add_key', 248, b'user', b'chan', b'hello', 5, -4)"))
    assert "add_key ok" in writer.stdout
    # The next job of that slot (same uid) starts with its user keyrings cleared...
    find = SYSCALL + "call('request_key', 249, b'user', b'chan', None, 0)"
    reader = unfiltered.run(py(find))
    assert reader.stdout.split() == ["request_key", "ENOKEY"], reader.stdout + reader.stderr
    # ...and with the filter it cannot reach keyrings at all.
    filtered = job_runner_for(backend)
    assert filtered.run(py(find)).stdout.split() == ["request_key", "EPERM"]


def test_log_fallocate_and_truncate_cannot_touch_host_files(jobs: Any, tmp_path: Path) -> None:
    out, err = tmp_path / "attempts.out", tmp_path / "attempts.err"
    out.write_text("earlier attempt\n")  # what an earlier attempt of the job printed
    code = (
        "import os, sys\n"
        "for name, act in [('fallocate', lambda: os.posix_fallocate(1, 0, 3 << 30)),\n"
        "                  ('truncate', lambda: os.ftruncate(1, 0)),\n"
        "                  ('truncate2', lambda: os.ftruncate(2, 0))]:\n"
        "    try:\n        act(); print(name, 'ok', file=sys.stderr)\n"
        "    except OSError as e:\n        print(name, 'refused', e.errno, file=sys.stderr)\n"
        "print(os.readlink('/proc/self/fd/1'))\n"
    )
    spec = spec_from_dict(py(code))
    plan = make_plan(spec, 97, 2, host_layout(), jobs.policy, jobs.uid)
    result = runner.wait(jobs.start_plan(plan, (out, err)), lambda: None, 100, lambda: False)
    assert result.exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "earlier attempt"
    assert lines[1].startswith("pipe:")  # not the host's log file
    assert os.path.getsize(out) < 4096
    assert err.read_text().count("refused") == 3, err.read_text()


def test_output_beyond_log_mb_is_dropped_and_counted_and_the_job_finishes(jobs: Any) -> None:
    code = "import sys\nfor _ in range(48): sys.stdout.write('x' * 65536)\nsys.stdout.flush()"
    run = jobs.run(py(code, limits={"log_mb": 1}, timeout_s=60))
    assert run.result.exit_code == 0
    assert len(run.stdout) == 1 << 20
    assert run.result.stdout_dropped_bytes == 48 * 65536 - (1 << 20)


def test_output_is_throttled_by_io_bps_like_the_jobs_own_disk_writes(jobs: Any) -> None:
    code = "import sys\nfor _ in range(48): sys.stdout.write('x' * 65536)\nsys.stdout.flush()"
    run = jobs.run(py(code, limits={"io_bps": 1 << 20}, timeout_s=60))
    assert run.result.exit_code == 0
    assert len(run.stdout) == 3 << 20  # nothing lost, only slowed
    # 3 MiB at 1 MiB/s with a one-second burst: at least two seconds (a lower bound only).
    assert run.result.duration_ms >= 1500, run.result.duration_ms


INOTIFY_HOG = """
import ctypes, time, sys
libc = ctypes.CDLL(None, use_errno=True)
n = 0
while libc.inotify_init1(0) >= 0:
    n += 1
print(n, ctypes.get_errno(), flush=True)
time.sleep(float(sys.argv[1]))
"""


def test_inotify_exhaustion_by_one_job_does_not_break_another(
    jobs: Any, job_runner_for: Any, wait_until: Any
) -> None:
    other = job_runner_for(jobs.backend)
    assert other.uid != jobs.uid
    hog = jobs.start({"command": PY, "args": ["-c", INOTIFY_HOG, "30"]})
    try:
        wait_until(lambda: jobs.stdout_now(hog).strip(), 20, "the hog to exhaust inotify")
        count, err = jobs.stdout_now(hog).split()
        with open("/proc/sys/fs/inotify/max_user_instances") as f:
            assert int(count) <= int(f.read())  # stopped by its uid's limit, not by open files
        assert err == "24"  # EMFILE
        victim = other.run(py("import ctypes; print(ctypes.CDLL(None).inotify_init1(0) >= 0)"))
        assert victim.stdout.strip() == "True"
    finally:
        jobs.finish(hog, should_stop=lambda: True)


@pytest.mark.parametrize(
    ("name", "number", "args"),
    [
        ("unshare_user", 272, "0x10000000"),
        ("io_uring_setup", 425, "8, None"),
        ("keyctl", 250, "0, -3"),
        ("bpf", 321, "0, None, 0"),
        ("perf_event_open", 298, "None, 0, -1, -1, 0"),
        ("mount", 165, "b'none', b'/tmp', b'tmpfs', 0, None"),
        ("setns", 308, "0, 0"),
    ],
)
def test_dangerous_syscalls_are_refused(jobs: Any, name: str, number: int, args: str) -> None:
    run = jobs.run(py(SYSCALL + f"call({name!r}, {number}, {args})"))
    assert run.stdout.split() == [name, "EPERM"], run.stdout + run.stderr


def test_unshare_command_cannot_make_a_user_namespace(jobs: Any) -> None:
    run = jobs.run(sh("unshare -U id -u; echo status=$?"))
    assert "status=0" not in run.stdout
    assert "Operation not permitted" in run.stderr


def test_ordinary_programs_still_work_under_the_filter(jobs: Any) -> None:
    code = (
        "import subprocess, threading, socket\n"
        "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
        "print(subprocess.run(['/bin/sh', '-c', 'echo child'], capture_output=True).stdout)\n"
        "a, b = socket.socketpair(); a.send(b'pair'); print(b.recv(4))\n"
    )
    run = jobs.run(py(code))
    assert run.result.exit_code == 0, run.stderr
    assert run.stdout.split() == ["thread", "b'child\\n'", "b'pair'"]


def test_open_files_are_limited_by_default_not_inherited_from_the_worker(jobs: Any) -> None:
    code = (
        "import os\nn = 0\n"
        "try:\n    while True:\n        os.open('/dev/null', os.O_RDONLY); n += 1\n"
        "except OSError as e:\n    print(n, e.errno)\n"
    )
    run = jobs.run(py(code))
    opened, err = (int(v) for v in run.stdout.split())
    assert err == 24 and opened < WorkerPolicy().default_open_files


def test_default_rlimits_and_no_core_dumps(jobs: Any) -> None:
    run = jobs.run(sh("cat /proc/self/limits"))
    limits = {line[:26].strip(): line[26:].split()[:2] for line in run.stdout.splitlines()[1:]}
    policy = WorkerPolicy()
    assert limits["Max open files"] == [str(policy.default_open_files)] * 2
    assert limits["Max core file size"] == ["0", "0"]
    assert limits["Max file size"] == [str(policy.default_file_size_mb << 20)] * 2


def test_every_job_has_a_memory_limit_by_default(jobs: Any) -> None:
    run = jobs.run(py("x = b'a' * (256 << 20); print('survived')"))
    assert run.result.exit_code == 0  # 256 MiB is within the default
    small = jobs.__class__(jobs.backend, jobs.log_dir, default_memory_mb=64)
    try:
        run = small.run(py("x = b'a' * (256 << 20); print('survived')"))
        assert run.result.status == "oom"
    finally:
        small.lease.release()


def test_each_running_job_has_its_own_uid(jobs: Any, job_runner_for: Any) -> None:
    other = job_runner_for(jobs.backend)
    first = jobs.run(sh("id -u; id -g"))
    second = other.run(sh("id -u; id -g"))
    assert first.stdout.split() == [str(jobs.uid)] * 2
    assert second.stdout.split() == [str(other.uid)] * 2
    assert jobs.uid != other.uid and 65534 not in (jobs.uid, other.uid)


def test_a_plan_asking_for_seccomp_without_a_filter_is_refused(jobs: Any) -> None:
    plan = make_plan(spec_from_dict({"command": "/bin/true"}), 98, 1, host_layout(), WorkerPolicy())
    out, err = jobs.paths()
    with pytest.raises(ValueError, match="seccomp"):
        runner.start(plan, jobs.backend, str(out), str(err), None)


ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b31m"


def test_beanraft_logs_escapes_terminal_controls_on_a_tty(tmp_path: Path) -> None:
    (tmp_path / "job-5.stdout.log").write_bytes(f"before{ESCAPES}after\n".encode())
    (tmp_path / "job-5.stderr.log").write_bytes(b"")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "beanraft", "logs", "5", "--log-dir", str(tmp_path)],
        cwd=REPO,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    shown = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(master, 4096):
            shown += chunk
    os.close(master)
    assert proc.wait(30) == 0
    assert b"\x1b" not in shown and b"\x07" not in shown and b"\xc2\x9b" not in shown
    assert b"before\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\x9b31mafter" in shown
    piped = subprocess.run(
        [sys.executable, "-m", "beanraft", "logs", "5", "--log-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    assert piped.stdout == f"before{ESCAPES}after\n".encode()  # a pipe gets the bytes as they are


@pytest.mark.parametrize(
    "body",
    [
        b'{"command": "true", "timeout_s": ' + b"9" * 5000 + b"}",
        b'{"command": "true", "env": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=["5000-digit-number", "nested-5000-deep"],
)
def test_bodies_that_broke_the_parser_are_buried_with_a_reason(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any, body: bytes
) -> None:
    worker = start_worker()
    with greenstalk.Client(beanstalkd, encoding=None) as client:
        job_id = client.put(body)
    wait_until(lambda: job_state(beanstalkd, job_id) == "buried", 30, "the job to be buried")
    notes = (worker.log_dir / f"job-{job_id}.worker.log").read_text()
    assert "invalid job spec" in notes


ALL_AT_ONCE = (
    SYSCALL
    + f"""
import os, sys
for path in ["/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger"]:
    try: open(path, "w").write("x"); print("WROTE", path)
    except OSError: pass
call("keyctl", 250, 11, -3, None, 0)
call("unshare", 272, 0x10000000)
call("io_uring_setup", 425, 8, None)
try: os.posix_fallocate(1, 0, 3 << 30); print("FALLOCATED")
except OSError: pass
try: os.ftruncate(2, 0); print("TRUNCATED")
except OSError: pass
sys.stderr.write("beanraft: job deleted by admin\\n")
fds = []
try:
    while True: fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError: pass
sys.stdout.write("{ESCAPES}" * 1000)
sys.stdout.write("x" * (3 << 20))
"""
)


def test_a_job_trying_every_attack_is_contained_and_the_worker_serves_the_next(
    beanstalkd: Any, start_worker: Any, job_state: Any, wait_until: Any
) -> None:
    import json

    worker = start_worker()
    with greenstalk.Client(beanstalkd, encoding=None) as client:
        bad = client.put(json.dumps(py(ALL_AT_ONCE, limits={"log_mb": 1})).encode())
        wait_until(lambda: job_state(beanstalkd, bad) is None, 60, "the attack job to end")
        good = client.put(json.dumps(sh("echo next")).encode())
        wait_until(lambda: job_state(beanstalkd, good) is None, 60, "the next job to run")
    logs = worker.log_dir
    attack_out = (logs / f"job-{bad}.stdout.log").read_bytes()
    assert b"WROTE" not in attack_out and b"FALLOCATED" not in attack_out
    assert b"TRUNCATED" not in attack_out
    assert len(attack_out) <= 1 << 20
    notes = (logs / f"job-{bad}.worker.log").read_text()
    assert "dropped" in notes and "job deleted by admin" not in notes
    assert (logs / f"job-{good}.stdout.log").read_text() == "next\n"
    assert worker.proc.poll() is None
