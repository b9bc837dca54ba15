"""Data dirs written before beanraft had its own journal, moved once to the checksummed files.

Until then a node kept pysyncobj's files: ``raft.journal`` (records ``size | index | term |
command | size`` after a 40-byte header, no checksums), its ``.meta`` (a pickled dict with the
term, the vote and the commit index) and ``raft.dump`` (a gzip pickle of pysyncobj's
``(data, last entry, entry before, members)``, the state pickled as
``cluster.replicated._state_from_bytes(bytes)``). ``migrate`` reads them, writes ``raft.log``,
its meta and ``state.dump`` in the current formats, and renames the old files with
``.migrated`` appended, so a node started on an old data dir comes back with its jobs instead of
an empty log. Only our own files are read here: the pickles come from this data dir.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path
from typing import Any

import structlog

from cluster.dumpfile import Dump, encode_dump, write_dump_file
from cluster.journal import Journal

log = structlog.get_logger(__name__)

OLD_JOURNAL = "raft.journal"
OLD_DUMP = "raft.dump"
_OLD_FIRST_RECORD = 40
_OLD_LAST_RECORD_AT = 36

Entry = tuple[bytes, int, int]


def migrate(data_dir: Path, journal_path: Path, dump_path: Path) -> bool:
    """Convert an old data dir in place; True when there was one to convert."""
    old_journal = data_dir / OLD_JOURNAL
    if not old_journal.exists() or journal_path.exists():
        return False
    entries = read_old_journal(old_journal)
    meta = read_old_meta(old_journal.with_name(old_journal.name + ".meta"))
    old_dump = data_dir / OLD_DUMP
    dump = read_old_dump(old_dump) if old_dump.exists() else None
    if dump is not None:
        write_dump_file(dump_path, encode_dump(dump))
    journal = Journal(journal_path)
    for entry in entries:
        journal.add(*entry)
    journal.setRaftCommitIndex(int(meta.get("raftCommitIndex", 1)))
    journal.setCurrentTerm(int(meta.get("currentTerm", 0)), meta.get("votedForNodeId"))
    journal.sync()
    journal._destroy()
    for old in (old_journal, old_journal.with_name(old_journal.name + ".meta"), old_dump):
        if old.exists():
            old.rename(old.with_name(old.name + ".migrated"))
    log.warning(
        "moved this data dir to the checksummed journal and dump; the old files are kept with "
        "a .migrated suffix and can be removed",
        data_dir=str(data_dir),
        entries=len(entries),
        dump_index=dump.last[1] if dump is not None else 0,
    )
    return True


def read_old_journal(path: Path) -> list[Entry]:
    data = path.read_bytes()
    (end,) = struct.unpack_from("<I", data, _OLD_LAST_RECORD_AT)
    entries: list[Entry] = []
    pos = _OLD_FIRST_RECORD
    while pos < end:
        (size,) = struct.unpack_from("<I", data, pos)
        record = data[pos + 4 : pos + 4 + size]
        index, term = struct.unpack_from("<QQ", record)
        entries.append((record[16:], index, term))
        pos += size + 8
    return entries


def read_old_meta(path: Path) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = _OldPickles(io.BytesIO(path.read_bytes())).load()
    except FileNotFoundError:
        return {}
    return meta


def read_old_dump(path: Path) -> Dump:
    with gzip.open(path, "rb") as f:
        data, last, prev, cluster = _OldPickles(f).load()
    consumer = data[-1] if isinstance(data, list) else data
    members = sorted(getattr(node, "address", str(node)) for node in cluster)
    return Dump(_entry(last), _entry(prev), members, consumer["state"])


def _entry(entry: Any) -> Entry:
    command, index, term = entry
    return bytes(command), int(index), int(term)


class _OldPickles(pickle.Unpickler):
    """Reads the old state as its bytes (the function that rebuilt it is gone)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("cluster.replicated", "_state_from_bytes"):
            return bytes
        return super().find_class(module, name)
