"""Snapshot format: the whole state as versioned, deterministic bytes, and back.

Theory of operation: the snapshot holds the logical state only (what a reference model would
hold), never an index: heaps are rebuilt on restore from the jobs' states and deadlines, so two
machines in the same state write the same bytes however their heaps happen to be laid out.
Everything is written in a defined order: tubes in list-tubes order, clients in connect order,
leases by proxy id, jobs by id (the jobs dict is in id order because ids only grow), buried jobs
in burial order.

Layout (all integers little-endian), version 3:
  header      b"BRSM", u16 version
  scalars     u64 max_job_size, i64 now_ms, u64 next_job_id, u64 next_wait_seq
  counters    u64 x len(counters.FIELDS), in that order
  tubes       u32 n, then per tube: str name, u64 total_jobs, cmd_delete, cmd_pause_tube,
              pause_ms, i64 pause_until_ms (-1: not paused), u32 k + u64[k] buried ids in order
  clients     u32 n, then per client: str id, str proxy_id, u32 used slot, u32 k + u32[k]
              watched slots in order, u8 producer, u8 worker, u64 wait_seq (0: not waiting),
              i64 wait_deadline_ms (-1: none), str wait_request_id
  leases      u32 n, then per lease: str proxy_id, i64 expiry_ms
  jobs        u64 n, then columns of n values each: u64 id, u32 tube slot, u32 priority,
              u64 delay_ms, u64 ttr_ms, i64 created_ms, u8 state, i64 deadline_ms,
              i32 holder (client index, -1), u32 reserves, timeouts, releases, buries, kicks,
              u32 body size; then the bodies back to back
  records     u64 max_finished, i64 max_age_ms, u32 n, then per record by job id:
              u32 size + the record in statemachine.codec's bytes; u32 k + u64[k] the finished
              records' job ids, oldest first
Versions 1 and 2 are still read. Both have, between jobs and records, the machine's old request
window (u32 n, then per entry: str request_id, i64 recorded_ms, reply as tag u8 + fields), which
is read and dropped: the cluster's request window answers retries now. Version 1 has no records
section: it restores with no records and the default retention.
A str is u32 length + UTF-8 bytes. Columns are packed with ``array`` so a million jobs take a
few list passes instead of a million ``struct.pack`` calls.
"""

from __future__ import annotations

import gc
import struct
import sys
from array import array
from heapq import heapify
from itertools import accumulate, pairwise
from operator import attrgetter

from statemachine import codec
from statemachine.counters import FIELDS
from statemachine.jobs import BURIED, DELAYED, KEY_SHIFT, READY, RESERVED, Job
from statemachine.limits import URGENT_PRIORITY_LIMIT
from statemachine.records import JobRecord, Records
from statemachine.sessions import Client
from statemachine.state import State
from statemachine.tubes import Tube

MAGIC = b"BRSM"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_LITTLE = sys.byteorder == "little"
_HEADER = struct.Struct("<4sH")
_SCALARS = struct.Struct("<QqQQ")
_COUNTERS = struct.Struct(f"<{len(FIELDS)}Q")
_TUBE = struct.Struct("<QQQQq")
_CLIENT = struct.Struct("<BBQq")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_REPLY = struct.Struct("<BQ")

# Job columns: (attribute, array typecode), in snapshot order (after id and tube).
_JOB_INT_COLUMNS = (
    ("priority", "I"),
    ("delay_ms", "Q"),
    ("ttr_ms", "Q"),
    ("created_ms", "q"),
    ("state", "B"),
    ("deadline_ms", "q"),
)
_JOB_COUNTER_COLUMNS = ("reserves", "timeouts", "releases", "buries", "kicks")
for _code, _size in (("B", 1), ("i", 4), ("I", 4), ("q", 8), ("Q", 8)):
    assert array(_code).itemsize == _size, f"array typecode {_code} is not {_size} bytes here"


class SnapshotError(ValueError):
    """The bytes are not a snapshot this version can read."""


# --- encoding --------------------------------------------------------------------------------


def _column(typecode: str, values: list[int]) -> bytes:
    packed = array(typecode, values)
    if not _LITTLE:
        packed.byteswap()
    return packed.tobytes()


def _str(out: list[bytes], text: str) -> None:
    data = text.encode()
    out.append(_U32.pack(len(data)))
    out.append(data)


def encode_state(state: State) -> bytes:
    out: list[bytes] = [_HEADER.pack(MAGIC, VERSION)]
    out.append(
        _SCALARS.pack(state.max_job_size, state.now_ms, state.next_job_id, state.next_wait_seq)
    )
    out.append(_COUNTERS.pack(*state.counters.values()))
    _encode_tubes(out, state)
    client_index = _encode_clients(out, state)
    out.append(_U32.pack(len(state.leases)))
    for proxy_id in sorted(state.leases):
        _str(out, proxy_id)
        out.append(_I64.pack(state.leases[proxy_id]))
    _encode_jobs(out, state, client_index)
    _encode_records(out, state.records)
    return b"".join(out)


def _encode_records(out: list[bytes], records: Records) -> None:
    out.append(_U64.pack(records.max_finished))
    out.append(_I64.pack(records.max_age_ms))
    out.append(_U32.pack(len(records.by_id)))
    for job_id in sorted(records.by_id):
        data = codec.encode_value(records.by_id[job_id])
        out.append(_U32.pack(len(data)))
        out.append(data)
    out.append(_U32.pack(len(records.finished)))
    out.append(_column("Q", list(records.finished)))


def _decode_records(reader: _Reader, state: State) -> None:
    records = state.records
    records.max_finished = reader.unpack(_U64)[0]
    records.max_age_ms = reader.unpack(_I64)[0]
    for _ in range(reader.u32()):
        size = reader.u32()
        try:
            record = codec.decode_value(bytes(reader.take(size)))
        except codec.CodecError as exc:
            raise SnapshotError(f"a job record does not decode: {exc}") from None
        if not isinstance(record, JobRecord):
            raise SnapshotError(f"a job record was expected, got a {type(record).__name__}")
        records.by_id[record.job_id] = record
    for job_id in reader.column("Q", reader.u32()):
        record = records.by_id.get(job_id)
        if record is None or not record.final_status:
            raise SnapshotError(f"finished record {job_id} is missing or not final")
        records.finished[job_id] = record.ended_ms


def _encode_tubes(out: list[bytes], state: State) -> None:
    out.append(_U32.pack(len(state.tube_order)))
    for tube in state.tube_order:
        _str(out, tube.name)
        until = -1 if tube.pause_until_ms is None else tube.pause_until_ms
        out.append(
            _TUBE.pack(tube.total_jobs, tube.cmd_delete, tube.cmd_pause_tube, tube.pause_ms, until)
        )
        out.append(_U32.pack(len(tube.buried)))
        out.append(_column("Q", list(tube.buried)))


def _encode_clients(out: list[bytes], state: State) -> dict[str, int]:
    out.append(_U32.pack(len(state.clients)))
    index: dict[str, int] = {}
    for position, client in enumerate(state.clients.values()):
        index[client.id] = position
        _str(out, client.id)
        _str(out, client.proxy_id)
        out.append(_U32.pack(client.used.slot))
        out.append(_U32.pack(len(client.watched)))
        out.append(_column("I", [tube.slot for tube in client.watched]))
        deadline = -1 if client.wait_deadline_ms is None else client.wait_deadline_ms
        out.append(_CLIENT.pack(client.producer, client.worker, client.wait_seq, deadline))
        _str(out, client.wait_request_id)
    return index


def _encode_jobs(out: list[bytes], state: State, client_index: dict[str, int]) -> None:
    jobs = list(state.jobs.values())
    out.append(_U64.pack(len(jobs)))
    out.append(_column("Q", list(map(attrgetter("id"), jobs))))
    out.append(_column("I", [job.tube.slot for job in jobs]))
    for name, typecode in _JOB_INT_COLUMNS:
        out.append(_column(typecode, list(map(attrgetter(name), jobs))))
    holders = [-1 if job.holder is None else client_index[job.holder.id] for job in jobs]
    out.append(_column("i", holders))
    for name in _JOB_COUNTER_COLUMNS:
        out.append(_column("I", list(map(attrgetter(name), jobs))))
    bodies = list(map(attrgetter("body"), jobs))
    out.append(_column("I", list(map(len, bodies))))
    out.append(b"".join(bodies))


# --- decoding --------------------------------------------------------------------------------


class _Reader:
    """Reads the snapshot front to back; running off the end is a SnapshotError."""

    __slots__ = ("data", "offset", "raw")

    def __init__(self, data: bytes) -> None:
        self.raw = bytes(data)
        self.data = memoryview(self.raw)
        self.offset = 0

    def take(self, size: int) -> memoryview:
        start = self.offset
        end = start + size
        if end > len(self.data):
            raise SnapshotError(f"snapshot truncated at byte {start} (wanted {size} more)")
        self.offset = end
        return self.data[start:end]

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        values: tuple[int, ...] = layout.unpack(self.take(layout.size))
        return values

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def text(self) -> str:
        return bytes(self.take(self.u32())).decode()

    def column(self, typecode: str, count: int) -> list[int]:
        values = array(typecode)
        values.frombytes(self.take(values.itemsize * count))
        if not _LITTLE:
            values.byteswap()
        return values.tolist()


def decode_state(data: bytes) -> State:
    """Rebuild the state. The cyclic garbage collector is paused meanwhile: a million new Job
    objects would otherwise trigger collections that scan them again and again (3x slower),
    and none of them can be garbage yet."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _decode_state(data)
    finally:
        if was_enabled:
            gc.enable()


def _decode_state(data: bytes) -> State:
    reader = _Reader(data)
    magic, version = _HEADER.unpack(reader.take(_HEADER.size))
    if magic != MAGIC or version not in READABLE_VERSIONS:
        raise SnapshotError(
            f"not a version {READABLE_VERSIONS} beanraft state-machine snapshot "
            f"(magic {magic!r}, version {version}); restore it with the release that wrote it"
        )
    max_job_size, now_ms, next_job_id, next_wait_seq = reader.unpack(_SCALARS)
    state = State(max_job_size)
    state.now_ms, state.next_job_id, state.next_wait_seq = now_ms, next_job_id, next_wait_seq
    state.counters.set_values(reader.unpack(_COUNTERS))
    buried_ids = _decode_tubes(reader, state)
    clients = _decode_clients(reader, state)
    for _ in range(reader.u32()):
        proxy_id = reader.text()
        state.leases[proxy_id] = reader.unpack(_I64)[0]
    _decode_jobs(reader, state, clients)
    for tube, ids in zip(state.tube_order, buried_ids, strict=True):
        for job_id in ids:
            tube.buried[job_id] = state.jobs[job_id]
    _rebuild_waits(state, clients)
    if version < 3:
        _skip_old_window(reader)
    if version >= 2:
        _decode_records(reader, state)
    if reader.offset != len(data):
        raise SnapshotError(f"{len(data) - reader.offset} bytes left after the snapshot's end")
    return state


def _decode_tubes(reader: _Reader, state: State) -> list[list[int]]:
    state.tubes.clear()
    state.tube_order.clear()
    buried_ids: list[list[int]] = []
    for slot in range(reader.u32()):
        tube = Tube(reader.text(), slot)
        tube.total_jobs, tube.cmd_delete, tube.cmd_pause_tube, tube.pause_ms, until = reader.unpack(
            _TUBE
        )
        if until >= 0:
            tube.pause_until_ms = until
            state.paused[tube.name] = tube
        state.tubes[tube.name] = tube
        state.tube_order.append(tube)
        buried_ids.append(reader.column("Q", reader.u32()))
    return buried_ids


def _decode_clients(reader: _Reader, state: State) -> list[Client]:
    clients: list[Client] = []
    tubes = state.tube_order
    for _ in range(reader.u32()):
        client_id = reader.text()
        client = Client(client_id, reader.text(), tubes[reader.u32()])
        client.used.using_count += 1
        client.watched = [tubes[slot] for slot in reader.column("I", reader.u32())]
        client.watch_set = set(client.watched)
        for tube in client.watched:
            tube.watching_count += 1
        producer, worker, client.wait_seq, deadline = reader.unpack(_CLIENT)
        client.producer, client.worker = bool(producer), bool(worker)
        client.wait_deadline_ms = None if deadline < 0 else deadline
        client.wait_request_id = reader.text()
        state.clients[client_id] = client
        clients.append(client)
    return clients


def _decode_jobs(reader: _Reader, state: State, clients: list[Client]) -> None:
    count = reader.unpack(_U64)[0]
    ids = reader.column("Q", count)
    tubes = state.tube_order
    job_tubes = [tubes[slot] for slot in reader.column("I", count)]
    ints = [reader.column(typecode, count) for _, typecode in _JOB_INT_COLUMNS]
    holders = [None if h < 0 else clients[h] for h in reader.column("i", count)]
    counters = [reader.column("I", count) for _ in _JOB_COUNTER_COLUMNS]
    sizes = reader.column("I", count)
    start = reader.offset
    reader.take(sum(sizes))
    ends = list(accumulate(sizes, initial=start))
    data = reader.raw
    bodies = [data[a:b] for a, b in pairwise(ends)]
    priority, delay, ttr, created, job_state, deadline = ints
    jobs = list(
        map(Job, ids, job_tubes, priority, delay, ttr, bodies, created, job_state, deadline,
            holders, *counters)
    )  # fmt: skip
    state.jobs = dict(zip(ids, jobs, strict=True))
    _place_jobs(state, jobs)


def _place_jobs(state: State, jobs: list[Job]) -> None:
    """Rebuild counts and heaps from the jobs' states (buried FIFOs come from the tubes)."""
    for job in jobs:
        tube = job.tube
        job_state = job.state
        if job_state == READY:
            tube.ready.append(job.priority << KEY_SHIFT | job.id)
            tube.ready_count += 1
            if job.priority < URGENT_PRIORITY_LIMIT:
                tube.urgent_count += 1
        elif job_state == DELAYED:
            key = job.deadline_ms << KEY_SHIFT | job.id
            tube.delayed.append(key)
            state.delay_heap.append(key)
            tube.delayed_count += 1
            state.delayed_total += 1
        elif job_state == RESERVED:
            assert job.holder is not None, f"snapshot: reserved job {job.id} has no holder"
            job.holder.reserved[job.id] = job
            tube.reserved_count += 1
            state.reserved_total += 1
            state.ttr_heap.append(job.deadline_ms << KEY_SHIFT | job.id)
        elif job_state != BURIED:
            raise SnapshotError(f"job {job.id} has unknown state {job_state}")
    for tube in state.tube_order:
        heapify(tube.ready)
        heapify(tube.delayed)
        state.publish_top(tube)
    heapify(state.delay_heap)
    heapify(state.ttr_heap)


def _rebuild_waits(state: State, clients: list[Client]) -> None:
    for client in sorted((cl for cl in clients if cl.wait_seq), key=attrgetter("wait_seq")):
        seq = client.wait_seq
        state.waiting[seq] = client
        for tube in client.watched:
            tube.waiters[seq] = client
        if client.wait_deadline_ms is not None:
            state.wait_heap.append(client.wait_deadline_ms << KEY_SHIFT | seq)
        state.push_soon(client)
    heapify(state.wait_heap)


def _skip_old_window(reader: _Reader) -> None:
    """Read past a version 1 or 2 snapshot's request window (see the layout)."""
    for _ in range(reader.u32()):
        reader.text()  # request id
        reader.unpack(_I64)  # recorded_ms
        tag = reader.unpack(_REPLY)[0]
        if tag in _OLD_TAGS_WITH_BYTES:
            reader.take(reader.u32())  # a reserved body, a message or a client id
        elif tag not in _OLD_PLAIN_TAGS:
            raise SnapshotError(f"unknown reply tag {tag} in an old snapshot's request window")


# The old window's reply tags: 0 Inserted (job id only), 2 Waiting, 3 DeadlineSoon, 4 TimedOut,
# 5 JobTooBig, 8 AlreadyWaiting; 1 Reserved, 6 InvalidArgument, 7 UnknownClient (+ u32 size, bytes).
_OLD_PLAIN_TAGS = frozenset((0, 2, 3, 4, 5, 8))
_OLD_TAGS_WITH_BYTES = frozenset((1, 6, 7))
