"""Native builds (beanraft/native.py): what the tests run is what was built from the current
sources, a build older than a source is found, and the interpreted path can be chosen."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beanraft import native


def test_each_compiled_module_is_imported_from_its_build_or_else_from_its_source() -> None:
    # By file name only: a module that another compiled module imports first is set up from
    # mypyc's runtime library, and its __file__ then names a directory beside that library.
    pure = os.environ.get("BEANRAFT_PURE") == "1"
    expected = ".py" if pure or not native.built() else native._SUFFIX
    for name in native.MODULES:
        assert (importlib.import_module(name).__file__ or "").endswith(expected), name


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with the sources and inputs of ``native.MODULES``, not yet built."""
    monkeypatch.setattr(native, "ROOT", tmp_path)
    for path in [native.source(m) for m in native.MODULES]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    for name in native._INPUTS:
        (tmp_path / name).write_text("")
    return tmp_path


def _build_all(root: Path, mtime_s: float) -> None:
    for path in [native.extension(m) for m in native.MODULES]:
        path.write_bytes(b"")
        os.utime(path, (mtime_s, mtime_s))
    (root / "beanraft").mkdir(exist_ok=True)
    (root / f"beanraft/native_lib__mypyc{native._SUFFIX}").write_bytes(b"")


def _set_mtime(path: Path, mtime_s: float) -> None:
    os.utime(path, (mtime_s, mtime_s))


def test_no_build_is_interpreted_and_not_stale(fake_root: Path) -> None:
    assert native.built() == [] and native.stale() == []
    assert native.status() == "interpreted"


def test_a_complete_build_newer_than_every_source_is_current(fake_root: Path) -> None:
    for path in [*fake_root.rglob("*.py"), fake_root / "pyproject.toml"]:
        _set_mtime(path, 1_000)
    _build_all(fake_root, 2_000)
    assert native.stale() == [] and native.status() == "native"


def test_a_source_edited_after_the_build_makes_it_stale(fake_root: Path) -> None:
    for path in [*fake_root.rglob("*.py"), fake_root / "pyproject.toml"]:
        _set_mtime(path, 1_000)
    _build_all(fake_root, 2_000)
    _set_mtime(native.source("statemachine.machine"), 3_000)
    _set_mtime(fake_root / "statemachine/commands.py", 3_000)  # read by the compiled modules
    assert native.stale() == [
        "statemachine/machine.py changed after the build",
        "statemachine/commands.py changed after the build",
    ]
    assert native.status().startswith("stale:") and "make native" in native.status()


def test_a_partial_build_is_stale_and_says_what_is_missing(fake_root: Path) -> None:
    _build_all(fake_root, 2_000)
    native.extension("proxy.render").unlink()
    assert native.stale() == ["built partly: proxy.render missing"]


def test_clean_removes_every_module_build_and_the_shared_library(fake_root: Path) -> None:
    _build_all(fake_root, 2_000)
    native.clean()
    assert native.built() == [] and list(fake_root.rglob("*__mypyc*")) == []


def test_beanraft_pure_imports_the_sources_even_beside_a_build() -> None:
    code = (
        "from beanraft import native; native.prefer_sources();"
        "import statemachine.codec as c, proxy.protocol as p;"
        "print(c.__file__); print(p.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=native.ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(native.source("statemachine.codec")), str(native.source("proxy.protocol"))]
