"""The dump file: the replicated state at an applied index, checksummed, written by a child.

Theory of operation. pysyncobj compacts its log by writing the whole state to a "full dump"
file and cutting the journal up to the index the dump holds; it sends the same file, in chunks,
to a follower that is too far behind for the log. ``DumpStore`` takes the place of pysyncobj's
``Serializer`` (same methods, installed by ``cluster.raftcore``) and owns that file:

- Format: ``magic | version | length of the Raft part | Raft part | length of the state |
  state (zlib level 1) | crc32 of everything before``. The Raft part is the last applied entry,
  the one before it and the members, in explicit bytes (no pickle); the state is
  ``ClusterState.to_bytes()``.
- Writing: a forked child (copy-on-write, so the node keeps serving) serialises, writes
  ``<dump>.tmp``, syncs it, renames it over the dump and syncs the directory, then exits; the
  node's tick polls it. gRPC's own fork handlers are what made a quarter of the children abort
  (``next_worker->state == KICKED``): the node process turns them off before gRPC loads
  (``GRPC_ENABLE_FORK_SUPPORT=false``, set in ``beanraft/__init__.py``), and the child touches
  nothing but its own state and files, collects no garbage and leaves with ``os._exit``. A
  child that fails (a full disk: exit 2) is logged with the reason, and the next attempt waits
  ``RETRY_AFTER_S``.
- Reading: ``read_dump`` checks the CRC and the format before anything is used. A dump that
  fails at start means this node's state cannot be trusted (the log before it is gone): the
  node refuses to start (``DamagedDump``). A dump received from the leader that fails is
  dropped, never installed; the leader sends it again.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import signal
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from cluster.journal import fsync_dir
from jobqueue.errors import BeanraftError

log = structlog.get_logger(__name__)

MAGIC = b"BRAFTDMP"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<8sII")  # magic, version, length of the Raft part
_STATE_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_ENTRY = struct.Struct("<QQI")  # index, term, length of the command
_COUNT = struct.Struct("<I")
RETRY_AFTER_S = 5.0
CHILD_NICE = 19
EXIT_DISK_FULL = 2

# pysyncobj's SERIALIZER_STATE values
NOT_SERIALIZING, SERIALIZING, SUCCESS, FAILED = 0, 1, 2, 3

Entry = tuple[bytes, int, int]


class DamagedDump(BeanraftError):
    """A dump file that fails its checksum or format: its state must not be used."""


@dataclass(frozen=True, slots=True)
class Dump:
    last: Entry  # the last entry the state includes
    prev: Entry  # the entry before it (pysyncobj keeps both at the head of the log)
    members: list[str]  # the Raft addresses of every member, this node's included
    state: bytes  # ClusterState.to_bytes()


def encode_dump(dump: Dump) -> bytes:
    raft = b"".join(
        [
            _encode_entry(dump.last),
            _encode_entry(dump.prev),
            _COUNT.pack(len(dump.members)),
            *(_encode_str(m) for m in dump.members),
        ]
    )
    state = zlib.compress(dump.state, 1)
    body = _HEAD.pack(MAGIC, FORMAT_VERSION, len(raft)) + raft + _STATE_LEN.pack(len(state)) + state
    return body + _CRC.pack(zlib.crc32(body))


def decode_dump(data: bytes, origin: str) -> Dump:
    """Check and decode a dump's bytes; raise DamagedDump naming ``origin`` when they fail."""
    if len(data) < _HEAD.size + _CRC.size:
        raise DamagedDump(f"{origin}: {len(data)} bytes is too short for a dump")
    body, (crc,) = data[: -_CRC.size], _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(body) != crc:
        raise DamagedDump(f"{origin}: the checksum does not match (damaged or cut short)")
    magic, version, raft_len = _HEAD.unpack_from(body)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise DamagedDump(f"{origin}: not a beanraft dump of format {FORMAT_VERSION}")
    try:
        pos = _HEAD.size
        last, pos = _decode_entry(body, pos)
        prev, pos = _decode_entry(body, pos)
        (count,), pos = _COUNT.unpack_from(body, pos), pos + _COUNT.size
        members = []
        for _ in range(count):
            member, pos = _decode_str(body, pos)
            members.append(member)
        if pos != _HEAD.size + raft_len:
            raise ValueError("the Raft part has trailing bytes")
        (state_len,) = _STATE_LEN.unpack_from(body, pos)
        pos += _STATE_LEN.size
        if pos + state_len != len(body):
            raise ValueError("the state's length does not match the file")
        state = zlib.decompress(body[pos:])
    except (struct.error, ValueError, zlib.error, UnicodeDecodeError) as exc:
        raise DamagedDump(f"{origin}: malformed despite its checksum: {exc}") from None
    return Dump(last, prev, members, state)


def _encode_entry(entry: Entry) -> bytes:
    command, index, term = entry
    return _ENTRY.pack(index, term, len(command)) + bytes(command)


def _decode_entry(data: bytes, pos: int) -> tuple[Entry, int]:
    index, term, length = _ENTRY.unpack_from(data, pos)
    pos += _ENTRY.size
    if pos + length > len(data):
        raise ValueError("an entry runs past the end")
    return (data[pos : pos + length], index, term), pos + length


def _encode_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _COUNT.pack(len(raw)) + raw


def _decode_str(data: bytes, pos: int) -> tuple[str, int]:
    (length,) = _COUNT.unpack_from(data, pos)
    pos += _COUNT.size
    if pos + length > len(data):
        raise ValueError("a member runs past the end")
    return data[pos : pos + length].decode("utf-8"), pos + length


def read_dump(path: Path) -> Dump | None:
    """The dump at ``path``, checked; None when there is none yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return decode_dump(data, str(path))


def write_dump_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, sync, rename, sync dir)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills this process when its parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


_PR_SET_PDEATHSIG = 1


class DumpStore:
    """pysyncobj's ``Serializer``, for one node: see the module docstring.

    ``state_bytes()`` gives the replicated state's bytes (called in the forked child);
    ``restore(state)`` replaces the live state with a dump's (called in a tick, between two
    applies)."""

    def __init__(
        self,
        path: Path,
        chunk_bytes: int,
        state_bytes: Callable[[], bytes],
        restore: Callable[[bytes], None],
        member: Callable[[str], Any] = str,
    ) -> None:
        self.path = path
        self._chunk_bytes = chunk_bytes
        self._state_bytes = state_bytes
        self.restore = restore
        self._member = member
        self._loaded: Dump | None = None
        self._pid = 0
        self._current_id: int | None = None
        self._retry_at = 0.0
        self._outgoing: dict[Any, BinaryIO] = {}
        self._incoming: BinaryIO | None = None
        self._checked: Dump | None = None  # read and checked at start, used by the first load
        self.written = 0
        self.failed = 0

    def check_at_start(self) -> Dump | None:
        """Read and check the dump before Raft starts (raises DamagedDump)."""
        self._checked = read_dump(self.path)
        return self._checked

    # --- writing (log compaction) ------------------------------------------------------

    def checkSerializing(self) -> tuple[int, int | None]:
        if self._pid == 0:
            return NOT_SERIALIZING, None
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self._pid, -1
        if pid == 0:
            return SERIALIZING, self._current_id
        self._pid = 0
        if status == 0:
            self.written += 1
            log.info("dump written", path=str(self.path), index=self._current_id)
            for f in self._outgoing.values():  # a transmission in progress sent the old file
                f.close()
            self._outgoing.clear()
            return SUCCESS, self._current_id
        self.failed += 1
        self._retry_at = time.monotonic() + RETRY_AFTER_S
        code = os.waitstatus_to_exitcode(status) if status != -1 else None
        reason = "the disk is full" if code == EXIT_DISK_FULL else f"exit status {code}"
        log.error(
            "could not write a dump: the log grows until a later one succeeds",
            path=str(self.path),
            reason=reason,
            retry_in_s=RETRY_AFTER_S,
        )
        return FAILED, self._current_id

    def serialize(self, data: Any, id: int) -> None:
        if self._pid != 0 or time.monotonic() < self._retry_at:
            return
        _, last, prev, cluster = data
        members = sorted(node.address for node in cluster)
        self._current_id = id
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: nothing but this, then _exit
            os._exit(self._write_in_child(Dump(last, prev, members, b""), parent))
        self._pid = pid

    def _write_in_child(self, meta: Dump, parent: int) -> int:
        try:
            gc.disable()
            # A child that outlived a killed node would rename its dump into the data dir of
            # the node restarted there, over the dump that node's journal was cut against.
            _die_with_parent()
            if os.getppid() != parent:
                return 1
            os.nice(CHILD_NICE)
            dump = Dump(meta.last, meta.prev, meta.members, self._state_bytes())
            write_dump_file(self.path, encode_dump(dump))
            return 0
        except OSError as exc:
            return EXIT_DISK_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 1
        except BaseException:
            return 1

    # --- reading -------------------------------------------------------------------------

    def deserialize(self) -> tuple[None, Entry, Entry, list[Any]]:
        """The dump's Raft part, for pysyncobj to reset its log to; its state waits in
        ``take_loaded`` until that reset succeeded (RaftCore installs it then)."""
        dump, self._checked = self._checked, None
        if dump is None:
            dump = read_dump(self.path)
        if dump is None:
            raise DamagedDump(f"{self.path}: pysyncobj asked to load a dump that is not there")
        self._loaded = dump
        return None, dump.last, dump.prev, [self._member(m) for m in dump.members]

    def pending(self) -> Dump | None:
        """The dump the next ``deserialize`` will load (checked already), if known."""
        return self._checked

    def take_loaded(self) -> Dump | None:
        dump, self._loaded = self._loaded, None
        return dump

    # --- sending to a follower far behind, and receiving -----------------------------------

    def getTransmissionData(self, node: Any) -> tuple[bytes, bool, bool] | None:
        if self._pid != 0:
            return None  # a new dump is being written: send that one when it is done
        f = self._outgoing.get(node)
        first = f is None
        if f is None:
            try:
                f = self._outgoing[node] = open(self.path, "rb")  # noqa: SIM115 - kept open
            except OSError:
                return None
        chunk = f.read(self._chunk_bytes)
        last = len(chunk) < self._chunk_bytes
        if last:
            f.close()
            del self._outgoing[node]
        return chunk, first, last

    def setTransmissionData(self, data: Any) -> bool:
        """Collect one chunk; True once a whole dump arrived, checked, and replaced ours."""
        if data is None:
            return False
        chunk, first, last = data
        tmp = self.path.with_name(self.path.name + ".incoming")
        if first:
            if self._incoming is not None:
                self._incoming.close()
            self._incoming = open(tmp, "wb")  # noqa: SIM115 - closed on the last chunk
        if self._incoming is None:
            return False  # a chunk without its start: wait for the next transmission
        try:
            self._incoming.write(chunk)
            if not last:
                return False
            self._incoming.close()
            self._incoming = None
            received = tmp.read_bytes()
            self._checked = decode_dump(received, "a dump received from the leader")
            write_dump_file(self.path, received)
        except DamagedDump as exc:
            log.error("dropped a damaged dump from the leader; it will send it again", error=exc)
            return False
        except OSError as exc:
            log.error("could not store a dump from the leader", error=str(exc))
            self._incoming = None
            return False
        finally:
            if last:
                tmp.unlink(missing_ok=True)
        return True

    def cancelTransmisstion(self, node: Any) -> None:
        f = self._outgoing.pop(node, None)
        if f is not None:
            f.close()

    def __call__(self, *args: Any) -> None:  # pysyncobj's conf wants a callable serializer
        raise AssertionError("DumpStore is installed as pysyncobj's Serializer, not called")
