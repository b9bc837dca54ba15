"""The short fault schedule CI runs: every kind of fault the issue names, once, in order, under
the workload; then the correctness checks. Its figures are printed (``-s``) and recorded by
hand in docs/fault-tolerance.md; ``make nemesis`` runs a long random schedule."""

from __future__ import annotations

import shutil

import pytest

from .conftest import _require_root_and_iptables
from .run import run
from .schedule import SHORT, in_order

pytestmark = [pytest.mark.slow, pytest.mark.root]


def test_the_short_schedule_loses_nothing_deletes_nothing_twice_and_leaves_no_reserve_hanging(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _require_root_and_iptables()
    lines: list[str] = []
    report, applied = run(in_order(SHORT), seed=1, say=lines.append, keep=True)
    with capsys.disabled():
        print("\n" + "\n".join([*lines, *report.lines()]))
    if report.correct:  # the logs and data are kept only for a failure
        shutil.rmtree(lines[0].rsplit(" in ", 1)[1], ignore_errors=True)
    assert [fault.kind for fault in applied] == list(SHORT)
    assert report.acked > 1000, "the workload hardly ran"
    assert not report.lost, f"acknowledged puts lost: {report.lost[:10]}"
    assert not report.double_deleted, f"jobs DELETED twice: {report.double_deleted}"
    assert not report.duplicated, f"puts in the queue twice: {report.duplicated[:10]}"
    assert report.hanging == 0, "\n".join(report.events)
    assert report.replicas_equal, report.digests
