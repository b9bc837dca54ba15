"""Log compaction that leaves the commit path its CPU.

pysyncobj compacts the log by forking a child that pickles the whole state and writes it as a
gzip file (the dump), then cuts the journal. Every node does so at the same log index, so on a
small machine three children at once compete with the nodes themselves. Two measures:

- The dump is written at gzip level 1, not level 9 (``GzipFile``'s default). With 100,000 jobs
  (a 26.6 MB state) level 9 took 2.03 s for a 3.07 MB file and level 1 took 0.09 s for
  3.21 MB: the data is repetitive, so the slow levels buy almost nothing. Reading is the same
  for every level, so dumps written before this change still load.
- The child runs at the lowest CPU priority (nice 19): it takes what the node leaves idle.

bench/compaction_bench.py (100,000 jobs queued, one connection putting through the proxy for
20 s across compactions, 2-cpu VM), together with cluster/gc_policy.py: puts over 10 ms went
from 127 to 6, p99 from 10.4 to 4.0 ms, the slowest from 102 to 12 ms (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import gzip
import os
import types
from typing import Any

import structlog
from pysyncobj import serializer as serializer_module

log = structlog.get_logger(__name__)

DUMP_GZIP_LEVEL = 1
CHILD_NICE = 19

_FastGzip = types.SimpleNamespace(
    GzipFile=functools.partial(gzip.GzipFile, compresslevel=DUMP_GZIP_LEVEL)
)


def install() -> None:
    """Write dumps at ``DUMP_GZIP_LEVEL`` in every SyncObj of this process (idempotent)."""
    if getattr(serializer_module, "gzip", None) not in (gzip, _FastGzip):
        raise RuntimeError("pysyncobj's serializer changed: review cluster/compaction.py")
    serializer_module.gzip = _FastGzip


class ChildPriority:
    """Lowers the priority of each compaction child once, from the tick thread."""

    def __init__(self, syncobj: Any) -> None:
        self._serializer = syncobj._SyncObj__serializer
        self._lowered = 0

    def tend(self) -> None:
        pid = self._serializer._Serializer__pid  # > 0 while a forked child serialises
        if pid > 0 and pid != self._lowered:
            self._lowered = pid
            try:
                os.setpriority(os.PRIO_PROCESS, pid, CHILD_NICE)
            except OSError as exc:  # it may have finished already
                log.debug("could not lower the compaction child's priority", error=str(exc))
