"""Native builds of the hot pure modules, with mypyc, and the check that they are current.

    .venv/bin/python -m beanraft.native build | clean | status

Why. A put crosses the state machine and its codec on every node and in the proxy, and at
32 connections on two cores the five processes run out of CPU before the disk sets the pace.
mypyc (part of mypy, which type-checks these modules strictly already) compiles the same
typed source to C extensions: a replica's apply of a put and the proxy's CPU per put each
took about a third less, and the proxy and a 3-node cluster did about 20% more puts a second
(bench/proxy_cost.py; docs/benchmarks.md, "Native builds").

What. ``MODULES``: the state machine but its contract (``commands.py``, ``replies.py``: the
codec reads their type hints at run time, and mypyc keeps ``int | None`` only as ``type``),
the Raft entry envelope and the proxy's protocol codec. Modules that subclass pysyncobj's
classes or serve gRPC stay interpreted: mypyc cannot compile the one, and grpc tells
coroutine handlers apart with ``inspect``, which does not recognise compiled ones.

How. Built in place, as ``setup.py build_ext --inplace`` does: each module's ``.so`` beside
its ``.py``, which Python imports first, and mypyc's runtime in ``beanraft/``.
``make test`` and ``make run`` build first and the build is skipped when current; without a C
compiler it says so and everything runs interpreted (the same code, slower). A ``.py`` edited
after the build would be shadowed by the old ``.so``: ``stale()`` finds that, and the test
session refuses to start on a stale build. ``BEANRAFT_PURE=1`` makes a test session import
the sources instead (``prefer_sources``), which is how the interpreted path stays tested.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "statemachine.codec",
    "statemachine.counters",
    "statemachine.events",
    "statemachine.heaps",
    "statemachine.invariants",
    "statemachine.jobs",
    "statemachine.limits",
    "statemachine.machine",
    "statemachine.ops_jobs",
    "statemachine.ops_reads",
    "statemachine.ops_sessions",
    "statemachine.sessions",
    "statemachine.snapshot",
    "statemachine.state",
    "statemachine.tubes",
    "cluster.envelope",
    "proxy.events",
    "proxy.protocol",
    "proxy.render",
)
# Interpreted modules the compiled ones read types from: an edit there may change the build.
_INPUTS = ("statemachine/commands.py", "statemachine/replies.py", "pyproject.toml")
_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def source(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def extension(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + _SUFFIX)


# mypyc's runtime for the group, shared by every module: inside our package, where the editable
# install finds it (by default mypyc puts it at the top level, which is not on sys.path).
_GROUP = "beanraft.native_lib"
_SETUP = """\
from setuptools import setup
from mypyc.build import mypycify

setup(name="beanraft-native", ext_modules=mypycify({files!r}, group_name={group!r}))
"""


def _shared_libraries() -> list[Path]:
    return sorted(ROOT.glob(_GROUP.replace(".", "/") + f"__mypyc*{_SUFFIX}"))


def built() -> list[str]:
    """The modules that have a native build beside their source."""
    return [m for m in MODULES if extension(m).exists()]


def stale() -> list[str]:
    """Why the native build cannot be used as it is: partial, or older than a source."""
    present = built()
    if not present:
        return []
    if len(present) < len(MODULES):
        missing = sorted(set(MODULES) - set(present))
        return [f"built partly: {', '.join(missing)} missing"]
    if not _shared_libraries():
        return ["mypyc's runtime library is missing from beanraft/"]
    oldest_s = min(extension(m).stat().st_mtime for m in MODULES)
    inputs = [source(m) for m in MODULES] + [ROOT / p for p in _INPUTS]
    return [
        f"{p.relative_to(ROOT)} changed after the build"
        for p in inputs
        if p.stat().st_mtime > oldest_s
    ]


def status() -> str:
    problems = stale()
    if problems:
        return "stale: " + "; ".join(problems) + " (run `make native`, or `make pure`)"
    return "native" if built() else "interpreted"


def clean() -> None:
    for path in [extension(m) for m in MODULES] + _shared_libraries():
        path.unlink(missing_ok=True)


def build() -> int:
    """Compile ``MODULES`` in place, unless the build is current. Without a compiler, or if
    mypyc fails, remove any partial build and carry on interpreted: exit status 0 either
    way, so that ``make run`` works on a machine without gcc."""
    if built() and not stale():
        print("native build is current", flush=True)
        return 0
    clean()
    files = [str(source(m).relative_to(ROOT)) for m in MODULES]
    print(f"compiling {len(files)} modules with mypyc (30 s to a few minutes) ...", flush=True)
    setup = ROOT / "build" / "native_setup.py"
    setup.parent.mkdir(exist_ok=True)
    setup.write_text(_SETUP.format(files=files, group=_GROUP))
    result = subprocess.run(
        [sys.executable, str(setup), "build_ext", "--inplace"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    # setuptools copies an unchanged build's files with their old times; the build is now.
    for path in [extension(m) for m in built()] + _shared_libraries():
        path.touch()
    if result.returncode != 0:
        problems = [f"mypyc's build exited {result.returncode}"]
    else:  # a build that made nothing is not stale, only absent
        problems = stale() or ([] if built() else ["it made no modules"])
    if problems:
        clean()
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        print(
            f"native build failed ({'; '.join(problems)}); running "
            "interpreted (the same code, about 20% slower). Install gcc and the Python "
            f"headers, then run `make native`.\n{tail}",
            file=sys.stderr,
            flush=True,
        )
        return 0
    print(f"native build done: {len(MODULES)} modules", flush=True)
    return 0


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds ``MODULES`` as their ``.py`` sources, ahead of the ``.so`` beside them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname))


def prefer_sources() -> None:
    """Import ``MODULES`` from their sources in this process (before they are imported)."""
    if not prefer_sources_active():
        sys.meta_path.insert(0, _SourceFinder())


def prefer_sources_active() -> bool:
    return any(isinstance(f, _SourceFinder) for f in sys.meta_path)


def load_source(module: str) -> ModuleType:
    """A separate, interpreted copy of ``module``, for tests that patch its internals (a
    compiled module calls its own functions directly, so patching it changes nothing)."""
    name = f"{module}__source"
    spec = importlib.util.spec_from_file_location(name, source(module))
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    sys.modules[name] = copy  # dataclasses and pickle look a module up by name
    spec.loader.exec_module(copy)
    return copy


def main(argv: Sequence[str] | None = None) -> int:
    command = (list(sys.argv[1:] if argv is None else argv) or ["status"])[0]
    if command == "build":
        return build()
    if command == "clean":
        clean()
        return 0
    if command == "status":
        print(status())
        return 0
    print("usage: python -m beanraft.native build | clean | status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
