"""The cyclic garbage collector in a node process: a full collection walks only what is new.

Why. A node holds the whole queue in memory, and every job is an object the collector tracks.
Each of CPython's full (generation 2) collections walks every tracked object with the GIL
held: with 100,000 jobs on the 2-cpu VM they took 20-330 ms, during which the node answers
nothing, and a leader that stops for longer than the election timeout (0.3 s) can lose its
office. They grow with the queue, and they come more often the faster it grows.

How. After each full collection, everything that survived it is moved to the permanent
generation (``gc.freeze``): it was reachable when last looked at, so the next full collection
walks only the objects created since. Freezing holds no reference: a frozen object is freed as
before when its reference count drops to zero, and the state machine drops what it no longer
needs that way (a deleted job is unlinked from its tube, its client and the id map; tested in
tests/cluster/test_gc_policy.py). What is lost is only the collection of a reference cycle that
forms among frozen objects later; nothing in the machine makes one. The young generations are
collected as before, so short-lived cycles (an exception and its traceback) still are.

A forked log compaction also gains: the child's collections no longer write to every object's
header, so fewer of the parent's pages are copied.
"""

from __future__ import annotations

import gc
from typing import Any

_installed = False


def _freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()


def install() -> None:
    """Freeze the survivors of every full collection, from now on in this process."""
    global _installed
    if not _installed:
        gc.callbacks.append(_freeze_survivors)
        _installed = True


def uninstall() -> None:
    """Undo ``install`` (tests): later full collections walk everything again."""
    global _installed
    if _installed:
        gc.callbacks.remove(_freeze_survivors)
        gc.unfreeze()
        _installed = False
