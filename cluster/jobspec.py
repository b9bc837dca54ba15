"""The job spec: the JSON body of a beanraft job, and its validation (shared by the job API,
which builds one from a RunJob request, and the workers, which run it).

A job body is a JSON object. Only ``command`` is required; everything else has a default that is
safe (no network, a pids limit, an unprivileged user). Validation is strict: an unknown key, a wrong
type or an out-of-range value is an error that names the field, so a producer's typo never turns
into a job that silently runs without the limit it asked for.

Example::

    {"command": "/usr/bin/python3", "args": ["-c", "print(1)"],
     "env": {"GREETING": "hi"}, "workdir": "/work",
     "limits": {"cpu_percent": 50, "memory_mb": 256, "io_bps": 1048576,
                "pids": 64, "cpu_cores": "0"},
     "timeout_s": 60, "network": "none",
     "retry": {"max_retries": 2, "backoff_s": 5},
     "result_tube": "results", "run_as_root": false}
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobqueue.errors import BeanraftError

DEFAULT_PIDS_MAX = 256  # joblet never wrote pids.max, so a fork bomb had no bound; we always do.
DEFAULT_TIMEOUT_S = 3600
DEFAULT_WORKDIR = "/work"
NETWORK_MODES = ("none", "host")
# Directories that make up the job's read-only system view; a workdir there would shadow them.
RESERVED_DIRS = ("/", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc", "/dev", "/tmp")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_TUBE = re.compile(r"^[A-Za-z0-9+/;.$_()][A-Za-z0-9+/;.$_()-]{0,199}$")

_TOP_KEYS = {
    "command",
    "args",
    "env",
    "workdir",
    "limits",
    "timeout_s",
    "network",
    "retry",
    "result_tube",
    "run_as_root",
}
_LIMIT_KEYS = {
    "cpu_percent",
    "memory_mb",
    "io_bps",
    "pids",
    "cpu_cores",
    "open_files",
    "file_size_mb",
    "log_mb",
}
# A spec is a few kilobytes; anything far bigger is a mistake or an attack on the parser.
MAX_BODY_BYTES = 1 << 20
_RETRY_KEYS = {"max_retries", "backoff_s"}


class SpecError(BeanraftError, ValueError):
    """The body is not a valid job spec; the message says which field and why."""


@dataclass(frozen=True)
class Limits:
    """Resource limits. For cpu_percent, io_bps and cpu_cores None means "not limited"; for
    memory_mb, open_files, file_size_mb and log_mb it means "the worker's default" (the worker
    always applies one, within its configured maximum); pids always has a limit."""

    cpu_percent: int | None = None  # percent of one core; 250 = two and a half cores
    memory_mb: int | None = None
    io_bps: int | None = None  # bytes per second, read and write, on every real block device
    pids: int = DEFAULT_PIDS_MAX
    cpu_cores: str | None = None  # a cpuset list such as "0-1,3"
    open_files: int | None = None  # RLIMIT_NOFILE
    file_size_mb: int | None = None  # RLIMIT_FSIZE: the largest file a job may write
    log_mb: int | None = None  # stdout and stderr kept per attempt, each; the rest is dropped


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed job is released again, and the back-off between attempts."""

    max_retries: int = 0
    backoff_s: int = 1


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = DEFAULT_WORKDIR
    limits: Limits = field(default_factory=Limits)
    timeout_s: int = DEFAULT_TIMEOUT_S
    network: str = "none"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    result_tube: str | None = None
    run_as_root: bool = False

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict that parse_spec accepts back."""
        limits = {k: v for k, v in self.limits.__dict__.items() if v is not None}
        out: dict[str, Any] = {
            "command": self.command,
            "args": list(self.args),
            "env": dict(self.env),
            "workdir": self.workdir,
            "limits": limits,
            "timeout_s": self.timeout_s,
            "network": self.network,
            "retry": dict(self.retry.__dict__),
            "run_as_root": self.run_as_root,
        }
        if self.result_tube is not None:
            out["result_tube"] = self.result_tube
        return out


def parse_spec(body: bytes | str) -> JobSpec:
    """Parse and validate a job body. Raises SpecError, and only SpecError, with a message
    naming the bad field: a body the parser chokes on (nesting deep enough to exhaust the
    recursion limit, a number of thousands of digits, ...) is as invalid as a missing field,
    and a worker buries it instead of releasing it forever."""
    if len(body) > MAX_BODY_BYTES:
        raise SpecError(f"job body is {len(body)} bytes; a job spec is at most {MAX_BODY_BYTES}")
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"job body is not JSON ({exc}); expected a job spec object") from None
    except RecursionError:
        raise SpecError("job body is nested too deeply to be a job spec") from None
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise SpecError(f"job body cannot be read as a job spec: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"job body must be a JSON object, got {type(raw).__name__}")
    try:
        return spec_from_dict(raw)
    except SpecError:
        raise
    except Exception as exc:  # any other failure is a bad body, not a bug to crash on
        raise SpecError(f"job body is not a valid job spec: {type(exc).__name__}: {exc}") from None


def spec_from_dict(raw: Mapping[str, Any]) -> JobSpec:
    """Validate an already-decoded spec object."""
    _no_unknown(raw, _TOP_KEYS, "spec")
    command = raw.get("command")
    if not isinstance(command, str) or not command or "\0" in command:
        raise SpecError(
            "command: required, a non-empty string (a path or a name looked up in PATH)"
        )
    return JobSpec(
        command=command,
        args=_string_list(raw.get("args", []), "args"),
        env=_env(raw.get("env", {})),
        workdir=_workdir(raw.get("workdir", DEFAULT_WORKDIR)),
        limits=_limits(raw.get("limits", {})),
        timeout_s=_int(raw.get("timeout_s", DEFAULT_TIMEOUT_S), "timeout_s", 1, 7 * 86400),
        network=_network(raw.get("network", "none")),
        retry=_retry(raw.get("retry", {})),
        result_tube=_tube(raw.get("result_tube")),
        run_as_root=_bool(raw.get("run_as_root", False), "run_as_root"),
    )


def _no_unknown(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _int(value: Any, name: str, low: int, high: int) -> int:
    # bool is an int in Python; a JSON true is not a number of anything.
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"{name}: expected an integer, got {_show(value)}")
    if not low <= value <= high:
        raise SpecError(f"{name}: {value} is out of range [{low}, {high}]")
    return value


def _show(value: Any, limit: int = 60) -> str:
    """A bad value as JSON for an error message, cut short: a hostile body's values can be
    megabytes long or nested thousands deep."""
    try:
        text = json.dumps(value)
    except (ValueError, TypeError, RecursionError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{name}: expected true or false, got {_show(value)}")
    return value


def _string_list(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{name}: expected a list of strings")
    if any("\0" in v for v in value):
        raise SpecError(f"{name}: strings must not contain NUL bytes")
    return tuple(value)


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise SpecError("env: expected an object of NAME: value strings")
    for key, val in value.items():
        if not _ENV_NAME.match(key):
            raise SpecError(f"env: {key!r} is not a valid variable name")
        if not isinstance(val, str) or "\0" in val:
            raise SpecError(f"env.{key}: expected a string without NUL bytes")
    return tuple(sorted(value.items()))


def _workdir(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise SpecError("workdir: expected an absolute path such as /work")
    norm = posixpath.normpath(value)
    if norm in RESERVED_DIRS or any(norm.startswith(d + "/") for d in RESERVED_DIRS[1:]):
        raise SpecError(f"workdir: {value} would shadow a system directory; use e.g. /work")
    return norm


def _limits(value: Any) -> Limits:
    if not isinstance(value, dict):
        raise SpecError("limits: expected an object")
    _no_unknown(value, _LIMIT_KEYS, "limits")
    cores = value.get("cpu_cores")
    if cores is not None and (not isinstance(cores, str) or not _CPUSET.match(cores)):
        raise SpecError(f"limits.cpu_cores: expected a cpuset list like '0-1,3', got {cores!r}")

    def opt(key: str, low: int, high: int) -> int | None:
        return None if value.get(key) is None else _int(value[key], f"limits.{key}", low, high)

    return Limits(
        cpu_percent=opt("cpu_percent", 1, 100 * 1024),
        memory_mb=opt("memory_mb", 4, 1 << 30),
        io_bps=opt("io_bps", 4096, 1 << 50),
        pids=_int(value.get("pids", DEFAULT_PIDS_MAX), "limits.pids", 4, 1 << 22),
        cpu_cores=cores,
        open_files=opt("open_files", 16, 1 << 20),
        file_size_mb=opt("file_size_mb", 1, 1 << 30),
        log_mb=opt("log_mb", 1, 1 << 20),
    )


def _network(value: Any) -> str:
    if value not in NETWORK_MODES:
        raise SpecError(f"network: expected one of {list(NETWORK_MODES)}, got {_show(value)}")
    return str(value)


def _retry(value: Any) -> RetryPolicy:
    if not isinstance(value, dict):
        raise SpecError("retry: expected an object with max_retries and backoff_s")
    _no_unknown(value, _RETRY_KEYS, "retry")
    return RetryPolicy(
        max_retries=_int(value.get("max_retries", 0), "retry.max_retries", 0, 1000),
        backoff_s=_int(value.get("backoff_s", 1), "retry.backoff_s", 0, 86400),
    )


def _tube(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TUBE.match(value):
        raise SpecError(f"result_tube: {_show(value)} is not a valid beanstalkd tube name")
    return value
