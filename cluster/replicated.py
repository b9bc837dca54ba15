"""The pysyncobj adapter: one replicated entry point around the job state machine.

Theory of operation. Everything replicated lives in one ``ClusterState``, pure as the machine
is (``ClusterState.apply`` reads no clock, does no I/O and logs nothing), held by a
``MachineConsumer``, the thin pysyncobj adapter: the job state machine, the recent request ids with
their outcomes (so a retry after an ambiguous outcome is answered, not applied twice), a bounded
ring of recent wake-ups numbered by a replicated sequence (so a proxy's wake-up stream can resume
on any node after a leader change), and the member directory (Raft address -> node id and gRPC
address, for leader hints).

Rules:
- ``apply_batch(entry, now_ms)`` is the only ``@replicated`` method, so adding commands never
  renumbers pysyncobj's method ids (it numbers ``@replicated`` methods by their sorted names,
  and a log written under other numbers would apply the wrong method). ``entry`` is an
  ``cluster.envelope`` batch of ``statemachine.codec`` bytes; ``now_ms`` is stamped by the leader.
- The apply is deterministic: it reads no clock and no randomness; it evicts old request ids by
  the machine's time and the ring by count, so every replica evicts the same ones.
- One window, one clamp: this is the only place a retry is answered (the machine keeps no
  request window of its own), and the machine's time is the only clamped time (``now_ms``
  here is the machine's: it never runs backwards, and a new leader continues from it).
- A state machine exception is a bug: the process exits rather than apply a half-done entry;
  the other replicas carry on or fail the same way.
- A dump (``cluster.dumpfile``) holds ``ClusterState.to_bytes()``: the machine's own
  versioned snapshot bytes plus plain data; no live object, lock or thread is ever pickled.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from pysyncobj import SyncObjConsumer, replicated

from cluster import envelope
from statemachine import codec
from statemachine.machine import JobStateMachine, MachineConfig
from statemachine.replies import Ok, Outcome, Reply

log = structlog.get_logger(__name__)

# How long a request id is remembered, in machine time. A client retries for 20 s at most
# (api/client.py); every remembered outcome is in every dump, and at thousands of puts a second
# ten minutes of them made dumps of tens of MB.
REQUEST_WINDOW_MS = 120_000
# Bounds, so memory stays bounded under load (outcomes and wake-ups may carry job bodies).
# Evicting by count and bytes in apply order keeps every replica's tables identical.
REQUEST_WINDOW_MAX = 200_000
REQUEST_WINDOW_MAX_BYTES = 64 << 20
WAKEUP_RING_MAX = 100_000  # recent wake-ups kept for streams that resume after a reconnect
WAKEUP_RING_MAX_BYTES = 32 << 20
# The leader's entries proposed and not yet applied (remember_decoded): the proposer keeps at
# most 8 in flight, and entries are up to 1 MiB, so this bounds the memo at 64 MiB.
DECODED_MEMO_MAX = 64

# What a remembered reply is counted as toward REQUEST_WINDOW_MAX_BYTES, besides its body.
# Replies are kept as the machine made them (frozen values) and encoded only for a dump or a
# caller over gRPC: a follower encoded every reply for nobody (its CPU per put went from 33 to
# 31 us without). Their size is thus an allowance: a deterministic function of the reply, as
# eviction must be the same on every replica.
REPLY_ALLOWANCE_BYTES = 96

# Per-request results of apply_batch: (OK, the reply) or (REFUSED, why as bytes).
OK = 0
REFUSED = 1


@dataclass(slots=True)
class Wakeups:
    """Recent wake-ups: (seq, proxy_id, encoded Wakeup), oldest first."""

    ring: deque[tuple[int, str, bytes]]
    last_seq: int
    size_bytes: int = 0

    def first_seq(self) -> int:
        return self.ring[0][0] if self.ring else self.last_seq + 1

    def append(self, proxy_id: str, data: bytes) -> None:
        self.last_seq += 1
        self.ring.append((self.last_seq, proxy_id, data))
        self.size_bytes += len(data)
        while len(self.ring) > WAKEUP_RING_MAX or self.size_bytes > WAKEUP_RING_MAX_BYTES:
            self.size_bytes -= len(self.ring.popleft()[2])


class ClusterState:
    """Everything the Raft log builds, and nothing else."""

    def __init__(
        self,
        machine: JobStateMachine,
        requests: OrderedDict[str, tuple[int, Reply]] | None = None,
        wakeups: Wakeups | None = None,
        members: dict[str, tuple[str, str]] | None = None,
        incarnations: dict[str, str] | None = None,
    ) -> None:
        self.machine = machine
        self.requests = requests if requests is not None else OrderedDict()
        self.wakeups = wakeups or Wakeups(deque(), 0)
        self.requests_bytes = sum(_reply_bytes(reply) for _, reply in self.requests.values())
        self.members = members if members is not None else {}
        # Raft address -> the incarnation (a random id made with the data dir) last seen there
        self.incarnations = incarnations if incarnations is not None else {}
        self.next_deadline_ms = machine.next_deadline_ms()

    def to_bytes(self) -> bytes:
        plain = {
            "version": 1,
            "machine": self.machine.snapshot(),
            "requests": [
                (request_id, (seen_ms, codec.encode_outcome(Outcome(reply))))
                for request_id, (seen_ms, reply) in self.requests.items()
            ],
            "wakeups": list(self.wakeups.ring),
            "last_seq": self.wakeups.last_seq,
            "members": self.members,
            "incarnations": self.incarnations,
        }
        return pickle.dumps(plain, protocol=5)

    @classmethod
    def from_bytes(cls, data: bytes) -> ClusterState:
        plain = pickle.loads(data)  # our own dump file or a snapshot from an authenticated peer
        if plain.get("version") != 1:
            raise ValueError(f"unknown replicated state version {plain.get('version')}")
        return cls(
            JobStateMachine.restore(plain["machine"]),
            OrderedDict(
                (request_id, (seen_ms, codec.decode_outcome(encoded).reply))
                for request_id, (seen_ms, encoded) in plain["requests"]
            ),
            _wakeups(plain["wakeups"], plain["last_seq"]),
            plain["members"],
            plain.get("incarnations", {}),
        )

    # --- applying: pure (no clock, no I/O, no logging), the same on every replica ---------------

    @property
    def now_ms(self) -> int:
        """The replicated time: the machine's, which never runs backwards."""
        return self.machine.now_ms

    def apply(self, requests: list[envelope.Request], now_ms: int) -> Applied:
        """Apply one log entry's requests, in order, at the leader's ``now_ms`` (the machine
        clamps it). Raises only on a bug in the machine."""
        applied = Applied([])
        for request in requests:
            applied.results.append(self._apply_one(request, now_ms, applied))
        self._forget_old_requests()
        self.next_deadline_ms = self.machine.next_deadline_ms()
        return applied

    def _apply_one(self, request: envelope.Request, now_ms: int, applied: Applied) -> Result:
        if request.kind == envelope.MEMBER:
            node_id, grpc_addr, raft_addr, incarnation = envelope.decode_member(request.payload)
            self.members[raft_addr] = (node_id, grpc_addr)
            if incarnation:
                self.incarnations[raft_addr] = incarnation
            return (OK, _OK)
        if request.kind == envelope.FORGET:
            raft_addr, removed = envelope.decode_forget(request.payload)
            self.members.pop(raft_addr, None)
            self.incarnations.pop(raft_addr, None)
            applied.forgotten.append((raft_addr, removed))
            return (OK, _OK)
        remembered = self.requests.get(request.request_id) if request.request_id else None
        if remembered is not None:
            return (OK, remembered[1])  # a retry: the first outcome, nothing applied again
        command = request.decoded
        if command is None:
            try:
                command = codec.decode_command(request.payload)
            except codec.CodecError as exc:
                return (REFUSED, str(exc).encode())
        # The outcome's two parts have one consumer each: the reply goes back to the caller
        # (and into the request window, for its retries); the wake-ups go only to the ring,
        # from which each proxy's stream delivers its own. A caller never gets wake-ups in its
        # reply (it would have to discard them: jobqueue.interface's rule).
        outcome = self.machine.apply(command, now_ms)
        for wakeup in outcome.wakeups:
            self.wakeups.append(wakeup.proxy_id, codec.encode_wakeup(wakeup))
        reply = outcome.reply
        if request.request_id:
            self.requests[request.request_id] = (self.machine.now_ms, reply)
            self.requests_bytes += _reply_bytes(reply)
        return (OK, reply)

    def _forget_old_requests(self) -> None:
        """Evict request ids past the window, oldest first, and beyond the count and byte
        bounds: by the machine's time and in apply order, so every replica evicts the same
        ones."""
        requests = self.requests
        horizon_ms = self.machine.now_ms - REQUEST_WINDOW_MS
        while requests:
            first_id, (seen_ms, reply) = next(iter(requests.items()))
            if (
                seen_ms >= horizon_ms
                and len(requests) <= REQUEST_WINDOW_MAX
                and self.requests_bytes <= REQUEST_WINDOW_MAX_BYTES
            ):
                break
            del requests[first_id]
            self.requests_bytes -= _reply_bytes(reply)


Result = tuple[int, Reply | bytes]  # (OK, the reply) or (REFUSED, why as bytes)
_OK = Ok()  # a membership change's reply


def _reply_bytes(reply: Reply) -> int:
    """What ``reply`` counts toward the window's byte bound: its body, if it has one, plus an
    allowance (REPLY_ALLOWANCE_BYTES)."""
    body = getattr(reply, "body", None)
    return REPLY_ALLOWANCE_BYTES + (len(body) if isinstance(body, bytes) else 0)


@dataclass(slots=True)
class Applied:
    """What one entry did: each request's result, and the members it removed (Raft address,
    the incarnation removed or None for any), which the node checks against itself."""

    results: list[Result]
    forgotten: list[tuple[str, str | None]] = field(default_factory=list)


def _wakeups(ring: list[tuple[int, str, bytes]], last_seq: int) -> Wakeups:
    return Wakeups(deque(ring), last_seq, sum(len(data) for _, _, data in ring))


class MachineConsumer(SyncObjConsumer):  # type: ignore[misc]
    """The replicated half of a node. ``on_applied()`` runs in pysyncobj's tick after every
    applied entry (and after a snapshot is installed) so the node can wake streams.
    ``removed`` becomes True when the log says this node (``self_raft_addr``) leaves."""

    def __init__(
        self,
        config: MachineConfig,
        seed_snapshot: bytes | None = None,
        on_applied: Callable[[], None] | None = None,
        self_raft_addr: str = "",
        incarnation: str = "",
    ) -> None:
        # Attributes set before SyncObjConsumer.__init__ are local, never snapshotted.
        self.on_applied = on_applied or (lambda: None)
        self.self_raft_addr = self_raft_addr
        self.incarnation = incarnation
        self.removed = False
        self._decoded: dict[bytes, list[envelope.Request]] = {}  # see remember_decoded
        super().__init__()
        machine = (
            JobStateMachine.restore(seed_snapshot) if seed_snapshot else JobStateMachine(config)
        )
        self.state = ClusterState(machine)

    def restore(self, state_bytes: bytes) -> None:
        """Replace the state with a dump's (in a tick, between two applies)."""
        self.state = ClusterState.from_bytes(state_bytes)
        log.info("snapshot loaded", wakeup_seq=self.state.wakeups.last_seq)
        _quietly(self.on_applied)

    def remember_decoded(self, entry: bytes, requests: list[envelope.Request]) -> None:
        """The leader built ``entry`` from ``requests`` (with their commands decoded): its own
        apply of the entry takes them from here instead of decoding it again. A memo of a pure
        function of the entry's bytes, so an entry that never commits (leadership lost) only
        costs memory: bounded, and dropped when this node stops leading."""
        if len(self._decoded) >= DECODED_MEMO_MAX:
            self._decoded.clear()
        self._decoded[entry] = requests

    def forget_decoded(self) -> None:
        """This node stopped leading: entries it proposed and that are still to come will be
        decoded like any other (the memo only saves work, it is never needed)."""
        self._decoded.clear()

    @replicated  # type: ignore[untyped-decorator]
    def apply_batch(self, entry: bytes, now_ms: int) -> list[Result]:
        """Apply one log entry (pysyncobj's one replicated method): ``ClusterState.apply``,
        plus what is this node's own business (the memo, leaving, waking streams)."""
        try:
            requests = self._decoded.pop(entry, None) or _requests(entry)
            applied = self.state.apply(requests, now_ms)
        except Exception:
            log.critical("state machine failed applying an entry: exiting", exc_info=True)
            os._exit(70)  # a bug: do not go on with a half-applied entry
        for raft_addr, incarnation in applied.forgotten:
            if raft_addr == self.self_raft_addr and incarnation in (None, self.incarnation):
                self.removed = True  # local: this very node stops its Raft (cluster.node)
        _quietly(self.on_applied)
        return applied.results


def _requests(entry: bytes) -> list[envelope.Request]:
    try:
        return envelope.decode_batch(entry)
    except (ValueError, UnicodeDecodeError) as exc:
        # Only the leader proposes and it builds entries itself: this is a bug, but not one
        # worth crashing every replica for. Every replica skips the entry the same way.
        log.error("skipping a malformed log entry", error=str(exc))
        return []


def _quietly(hook: Callable[[], None]) -> None:
    """Run a local hook from pysyncobj's tick. An exception escaping into pysyncobj's apply loop
    would leave the entry counted as not applied, and pysyncobj would apply it AGAIN on the next
    tick; so nothing may escape (a hook failing, e.g. on a closed event loop, is only logged)."""
    try:
        hook()
    except Exception:
        log.warning("a local apply hook failed", exc_info=True)
