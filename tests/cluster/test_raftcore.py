"""cluster/raftcore.py runs only on the pysyncobj it was written for: every function it replaces
or relies on is checked by the sha256 of its source, and the version exactly."""

from __future__ import annotations

import pysyncobj
import pytest
from pysyncobj import SyncObj

from cluster import raftcore


def test_the_installed_pysyncobj_is_the_release_the_raft_changes_were_written_for() -> None:
    raftcore.verify()
    assert pysyncobj.version.VERSION == raftcore.PYSYNCOBJ_VERSION


def test_a_changed_pysyncobj_function_is_refused_and_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def _on_tick(self: SyncObj, time_to_wait: float = 0.0) -> None:
        """A release that changed how a tick works."""

    monkeypatch.setattr(SyncObj, "_onTick", _on_tick)
    with pytest.raises(raftcore.UnsupportedPysyncobj, match=r"syncobj\.SyncObj\._onTick"):
        raftcore.verify()


def test_another_pysyncobj_version_is_refused_with_the_one_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pysyncobj.version, "VERSION", "0.3.18")
    with pytest.raises(raftcore.UnsupportedPysyncobj, match=r"pip install pysyncobj==0\.3\.17"):
        raftcore.verify()


def test_every_overridden_pysyncobj_method_is_among_the_verified() -> None:
    overridden = {
        f"syncobj.SyncObj.{name}"
        for name in vars(raftcore.RaftCore)
        if name.startswith("_SyncObj__") or name == "_onTick"
    }
    assert overridden <= set(raftcore._VERIFIED), overridden - set(raftcore._VERIFIED)
