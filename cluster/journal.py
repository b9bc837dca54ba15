"""The Raft log on disk: checksummed records in a preallocated file, and a two-slot meta file.

Theory of operation. pysyncobj keeps its log in memory as a list of ``(command, index, term)``
and calls a journal object to persist it (``add``, ``deleteEntriesFrom``, ``deleteEntriesTo``,
``clear``, the term, vote and commit index). Its own journal writes through an mmap, so a full
disk kills the process with SIGBUS, and it has no checksums, so a torn or flipped record is read
back as a command. ``Journal`` is a drop-in for it:

- Records are ``length | crc32 | index | term | command``, padded to 8 bytes. The CRC covers
  the index, the term and the command, seeded with a random salt written in the file's header,
  so a record left over from an earlier file cannot pass for one of this file.
- The file grows in ``GROW_BYTES`` steps with ``posix_fallocate`` and records are written with
  ``pwrite`` into space that is already allocated: a full disk is an ``OSError(ENOSPC)`` when
  the file grows (raised as ``DiskFull``), never a signal, and the record is not in the log.
- At start the file is read up to the first record that does not check out. If nothing valid
  follows it, it is a torn or damaged tail (the write a crash interrupted, or a damaged last
  record): it is cut off and logged, which is safe because this node never acknowledged a
  record it had not written and synced in full, and the leader sends it again. If a valid
  record follows it, a record inside the log is damaged: ``DamagedJournal`` is raised and the
  node refuses to start rather than serve or spread it.
- Removing the tail (``deleteEntriesFrom``, after a conflict with the leader) zeroes the freed
  bytes, so a restart never reads them back. Compaction (``deleteEntriesTo``) and ``clear``
  write the kept records to a new file with a new salt and rename it over the old one.
- Term, vote and commit index live in ``<log>.meta``: two fixed slots, each with a sequence
  number and a CRC, written alternately in place. A torn slot leaves the other one; writing
  in place needs no new disk space, so the vote can still be recorded on a full disk.

Durability is the caller's: ``sync`` makes everything written so far durable
(``cluster.durability`` decides when). Only pysyncobj's tick writes; ``sync`` may run on another
thread, and ``io_lock`` keeps it off a descriptor that a rewrite is replacing.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from jobqueue.errors import BeanraftError

log = structlog.get_logger(__name__)

MAGIC = b"BRAFTLOG"
FORMAT_VERSION = 1
# magic, version, salt, crc of the three; padded to 32 bytes
_FILE_HEADER = struct.Struct("<8sIII12x")
# command length, crc, index, term
_RECORD = struct.Struct("<IIQQ")
FIRST_RECORD_OFFSET = _FILE_HEADER.size
GROW_BYTES = 1 << 20  # a step of allocation: also the room a full disk must give back
MAX_RECORD_BYTES = 256 << 20  # far above the largest entry the proposer builds (1 MiB)

META_MAGIC = b"BRAFTMET"
META_SLOT_BYTES = 512
# magic, seq, term, commit index, length of the vote; then the vote, then a crc of all that
_META = struct.Struct("<8sQQQH")
_MAX_VOTE_BYTES = META_SLOT_BYTES - _META.size - 4

Entry = tuple[bytes, int, int]  # (command, index, term), as pysyncobj keeps them


class DiskFull(BeanraftError, OSError):
    """The disk has no room for the log to grow: nothing was written."""

    def __init__(self, path: str, needed: int) -> None:
        super().__init__(
            errno.ENOSPC,
            f"no space left to grow the Raft log {path} by {needed} bytes: free space on that "
            "disk; the node stops accepting and voting until there is room, then resumes",
        )


class DamagedJournal(BeanraftError):
    """The log on disk cannot be trusted: a record before the tail, or the meta, is damaged."""


def _crc(salt: int, index: int, term: int, command: bytes) -> int:
    return zlib.crc32(command, zlib.crc32(struct.pack("<QQ", index, term), salt))


def _padded(size: int) -> int:
    return (size + 7) & ~7


def encode_record(salt: int, command: bytes, index: int, term: int) -> bytes:
    head = _RECORD.pack(len(command), _crc(salt, index, term, command), index, term)
    body = head + command
    return body + bytes(_padded(len(body)) - len(body))


@dataclass(frozen=True, slots=True)
class ScanResult:
    entries: list[Entry]
    offsets: list[int]  # where each entry's record starts
    end: int  # the offset after the last valid record
    discarded_bytes: int  # non-zero bytes found after ``end`` (a torn or damaged tail)


def scan(data: bytes, salt: int) -> ScanResult:
    """Read the records of a journal file's bytes (header included) up to the first that does
    not check out; raise DamagedJournal when a valid record follows that one."""
    entries: list[Entry] = []
    offsets: list[int] = []
    pos = FIRST_RECORD_OFFSET
    last_index = 0
    last_term = 0
    while True:
        record = _record_at(data, pos, salt)
        if record is None:
            break
        command, index, term, size = record
        if (entries and index != last_index + 1) or term < last_term:
            break  # not the next record: the log ends before it
        entries.append((command, index, term))
        offsets.append(pos)
        last_index, last_term = index, term
        pos += size
    discarded = len(data) - pos - data.count(0, pos)
    if discarded:
        later = _valid_record_after(data, pos + 8, salt, last_index)
        if later is not None:
            raise DamagedJournal(
                f"a damaged record at byte {pos} (after index {last_index}) is followed by "
                f"valid records (index {later} at least)"
            )
    return ScanResult(entries, offsets, pos, discarded)


def _record_at(data: bytes, pos: int, salt: int) -> tuple[bytes, int, int, int] | None:
    if pos + _RECORD.size > len(data):
        return None
    length, crc, index, term = _RECORD.unpack_from(data, pos)
    if length > MAX_RECORD_BYTES or index == 0:
        return None
    end = pos + _RECORD.size + length
    if end > len(data):
        return None
    command = bytes(data[pos + _RECORD.size : end])
    if _crc(salt, index, term, command) != crc:
        return None
    return command, index, term, _padded(_RECORD.size + length)


_NONZERO = re.compile(rb"[^\x00]")
_PLAUSIBLE_GAP = 1 << 24  # a record after damage has an index close to the last good one


def _valid_record_after(data: bytes, start: int, salt: int, last_index: int) -> int | None:
    """The index of a valid record of this file at any 8-byte boundary from ``start`` on
    (skipping zeroed space, and headers whose index could not follow ``last_index``)."""
    pos = start
    limit = len(data) - _RECORD.size
    while pos <= limit:
        found = _NONZERO.search(data, pos)
        if found is None:
            return None
        pos = found.start() & ~7
        if pos > limit:
            return None
        _, _, index, _ = _RECORD.unpack_from(data, pos)
        if last_index < index <= last_index + _PLAUSIBLE_GAP and _record_at(data, pos, salt):
            return int(index)
        pos += 8
    return None


class MetaFile:
    """Term, vote and commit index: two slots written alternately, each checked by its CRC."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists() or path.stat().st_size < 2 * META_SLOT_BYTES
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.seq = 0
        self.term = 0
        self.commit_index = 1
        self.voted_for: str | None = None
        if new:
            os.posix_fallocate(self._fd, 0, 2 * META_SLOT_BYTES)
            self.store(sync=True)
            fsync_dir(path.parent)
        else:
            self._load()

    def _load(self) -> None:
        slots = [self._read_slot(i) for i in range(2)]
        valid = [slot for slot in slots if slot is not None]
        if not valid:
            raise DamagedJournal(
                f"both slots of {self.path} are damaged: this node's term and vote are lost"
            )
        self.seq, self.term, self.commit_index, self.voted_for = max(valid, key=lambda s: s[0])

    def _read_slot(self, slot: int) -> tuple[int, int, int, str | None] | None:
        raw = os.pread(self._fd, META_SLOT_BYTES, slot * META_SLOT_BYTES)
        if len(raw) < META_SLOT_BYTES:
            return None
        magic, seq, term, commit, vote_len = _META.unpack_from(raw)
        if magic != META_MAGIC or vote_len > _MAX_VOTE_BYTES:
            return None
        end = _META.size + vote_len
        (crc,) = struct.unpack_from("<I", raw, end)
        if zlib.crc32(raw[:end]) != crc:
            return None
        vote = raw[_META.size : end].decode("utf-8") if vote_len else None
        return seq, term, commit, vote

    def store(self, sync: bool) -> None:
        self.seq += 1
        vote = (self.voted_for or "").encode("utf-8")[:_MAX_VOTE_BYTES]
        body = _META.pack(META_MAGIC, self.seq, self.term, self.commit_index, len(vote)) + vote
        slot = body + struct.pack("<I", zlib.crc32(body))
        os.pwrite(self._fd, slot.ljust(META_SLOT_BYTES, b"\0"), (self.seq % 2) * META_SLOT_BYTES)
        if sync:
            os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class Journal:
    """pysyncobj's journal interface over a checksummed file (see the module docstring).

    ``sync_meta``: whether the term and vote are synced as they are written (Raft requires it;
    ``--fsync never`` leaves even that to the OS)."""

    def __init__(self, path: Path, sync_meta: bool = True) -> None:
        self.path = path
        self.sync_meta = sync_meta
        self.io_lock = threading.Lock()  # sync() against a rewrite swapping the descriptor
        self.written_index = 0  # the highest index whose record is in the file
        self.synced_index = 0  # every record up to here is on disk
        self.dirty = False  # written since the last sync began
        self.after_write: Callable[[], None] | None = None  # --fsync always: sync at once
        self.rewrites = 0
        self.meta = MetaFile(path.with_name(path.name + ".meta"))
        self._meta_dirty = False
        self._entries: list[Entry] = []
        self._offsets: list[int] = []
        if path.exists():
            self._open_existing()
        else:
            self._fd, self._salt = _create(path, [])
            self._end = FIRST_RECORD_OFFSET
            self._allocated = os.fstat(self._fd).st_size

    # --- opening -------------------------------------------------------------------------

    def _open_existing(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR)
        data = _read_all(self._fd)
        self._salt = _header_salt(data, self.path)
        result = scan(data, self._salt)
        self._entries, self._offsets, self._end = result.entries, result.offsets, result.end
        self._allocated = len(data)
        if result.discarded_bytes:
            log.warning(
                "cut a torn or damaged tail off the Raft log; the leader sends it again",
                path=str(self.path),
                kept_last_index=self._entries[-1][1] if self._entries else 0,
                discarded_bytes=result.discarded_bytes,
            )
            self._zero(self._end, len(data))
            os.fdatasync(self._fd)
        self.written_index = self.synced_index = self._entries[-1][1] if self._entries else 0

    # --- pysyncobj's interface -------------------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        record = encode_record(self._salt, bytes(command), idx, term)
        self._reserve(self._end + len(record))
        os.pwrite(self._fd, record, self._end)
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)
        self.written_index = idx
        self.dirty = True
        if self.after_write is not None:
            self.after_write()

    def clear(self) -> None:
        self._rewrite([])

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        new_end = self._offsets[entryFrom]
        self._zero(new_end, self._end)
        first_removed = self._entries[entryFrom][1]
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        self._end = new_end
        self.written_index = first_removed - 1
        self.synced_index = min(self.synced_index, first_removed - 1)
        self.dirty = True

    def deleteEntriesTo(self, entryTo: int) -> None:
        self._rewrite(self._entries[entryTo:])

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def _destroy(self) -> None:
        with self.io_lock:
            if self._fd >= 0:
                self._store_meta_if_dirty()
                os.close(self._fd)
                self._fd = -1
                self.meta.close()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if raftCommitIndex != self.meta.commit_index:
            self.meta.commit_index = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        # A cut tail may leave the recorded commit index past the log: clamp it (the entries
        # come back from the leader and are committed again there).
        last = self._entries[-1][1] if self._entries else 1
        return min(self.meta.commit_index, last)

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        # Raft: term and vote are on disk before any message that reflects them is sent.
        self.meta.term = term
        self.meta.voted_for = votedForNodeId
        self.meta.store(sync=self.sync_meta)
        self._meta_dirty = False

    def getCurrentTerm(self) -> int:
        return self.meta.term

    def getVotedForNodeId(self) -> str | None:
        return self.meta.voted_for

    def onOneSecondTimer(self) -> None:
        self._store_meta_if_dirty()

    # --- durability ----------------------------------------------------------------------

    def sync(self) -> int:
        """Make every record written so far durable; return the index that is now synced."""
        with self.io_lock:
            upto = self.written_index
            self.dirty = False  # a write from here on sets it again
            if self._fd >= 0:
                os.fdatasync(self._fd)
            self.synced_index = max(self.synced_index, upto)
            return upto

    @property
    def size_bytes(self) -> int:
        """Bytes of records in the file (the journal's offsets are not limited, but a huge
        log is slow to read at start: the node compacts past a size)."""
        return self._end

    def has_room(self) -> bool:
        """Whether the log could grow by a step now (the disk has room again)."""
        try:
            self._reserve(self._allocated + 1)
        except DiskFull:
            return False
        return True

    # --- internals -----------------------------------------------------------------------

    def _store_meta_if_dirty(self) -> None:
        if self._meta_dirty:
            self.meta.store(sync=self.sync_meta)
            self._meta_dirty = False

    def _reserve(self, size: int) -> None:
        if size <= self._allocated:
            return
        grow = max(GROW_BYTES, size - self._allocated)
        try:
            os.posix_fallocate(self._fd, self._allocated, grow)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(str(self.path), grow) from None
            raise
        self._allocated += grow

    def _zero(self, start: int, end: int) -> None:
        step = 1 << 20
        for pos in range(start, end, step):
            os.pwrite(self._fd, bytes(min(step, end - pos)), pos)

    def _rewrite(self, entries: list[Entry]) -> None:
        """Replace the file by one holding ``entries``, atomically (new file, sync, rename)."""
        fd, salt = _create(self.path.with_name(self.path.name + ".new"), entries)
        with self.io_lock:
            os.replace(self.path.with_name(self.path.name + ".new"), self.path)
            fsync_dir(self.path.parent)
            old, self._fd, self._salt = self._fd, fd, salt
            os.close(old)
        self._entries = list(entries)
        self._offsets = []
        pos = FIRST_RECORD_OFFSET
        for command, _, _ in entries:
            self._offsets.append(pos)
            pos += _padded(_RECORD.size + len(command))
        self._end = pos
        self._allocated = os.fstat(fd).st_size
        last = entries[-1][1] if entries else 0
        self.written_index = self.synced_index = last
        self.dirty = False
        self.rewrites += 1


def _create(path: Path, entries: list[Entry]) -> tuple[int, int]:
    """Write a new journal file holding ``entries``, synced; return its descriptor and salt."""
    salt = int.from_bytes(os.urandom(4), "little")
    header = _FILE_HEADER.pack(MAGIC, FORMAT_VERSION, salt, _header_crc(salt))
    body = b"".join(encode_record(salt, bytes(c), i, t) for c, i, t in entries)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = len(header) + len(body)
        try:
            os.posix_fallocate(fd, 0, max(GROW_BYTES, _padded(size)))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(str(path), size) from None
            raise
        os.pwrite(fd, header + body, 0)
        os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd, salt


def _header_crc(salt: int) -> int:
    return zlib.crc32(MAGIC + struct.pack("<II", FORMAT_VERSION, salt))


def _header_salt(data: bytes, path: Path) -> int:
    if len(data) < _FILE_HEADER.size:
        raise DamagedJournal(f"{path} is shorter than its header")
    magic, version, salt, crc = _FILE_HEADER.unpack_from(data)
    if magic != MAGIC or crc != _header_crc(salt):
        raise DamagedJournal(f"{path} does not start with a beanraft journal header")
    if version != FORMAT_VERSION:
        raise DamagedJournal(f"{path} has journal format {version}; this beanraft reads 1")
    return int(salt)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    pos = 0
    while pos < size:
        chunk = os.pread(fd, min(size - pos, 16 << 20), pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
