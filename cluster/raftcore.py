"""pysyncobj 0.3.17, pinned, and every change beanraft makes to its Raft, in this one module.

pysyncobj gives beanraft elections, log replication, membership changes, the tick loop and the
transport. It has no fsync, no checksums, no PreVote, and its leader and follower disagree with
the Raft paper in ways that cost liveness under real faults. ``RaftCore`` is a ``SyncObj`` that
changes exactly the rules listed here, by overriding pysyncobj's own methods (name-mangled
``_SyncObj__*``) and by handing it collaborators of ours through the seams its constructor
offers. Importing this module checks that the installed pysyncobj is the version these
changes were written and tested against, and that the source of every method they replace or
rely on is unchanged (``verify``): on any difference the node refuses to start and says which.

The rules, and why each is still safe:

1. Storage (``cluster.journal``, ``cluster.dumpfile``). The log and the dump are checksummed
   and written without mmap; a torn tail is cut at start, damage inside refuses to start; a
   full disk is an error, not SIGBUS. The dump is written by a forked child. Raft's storage
   assumptions hold as long as what a node acknowledged survives, which the journal's sync
   before every acknowledgement gives (``cluster.durability``).
2. The follower appends as the paper says (section 5.3, figure 2): it deletes its entries only
   from the first one that conflicts with the leader's, never entries that match, and it
   commits at most up to the last entry the leader's message vouched for. pysyncobj deleted
   everything after the message's previous entry, even entries already acknowledged to the
   leader, and committed up to its own last entry, verified or not (its handling of a dump's
   chunks, kept, still does: the commit index is put back after it). A refusal carries the index
   it refused and a hint: the last entry at or before it whose term is not newer than the
   leader's (etcd's ``findConflictByTerm``), so the leader skips a whole term per round trip.
3. The leader tracks each follower as etcd's raft does: PROBE (one append at a time, from
   ``next``, until one succeeds), REPLICATE (appends pipelined; a success never moves ``next``
   back) and SNAPSHOT (the dump in chunks). A refusal counts only if it answers the probe in
   flight (in PROBE: it refused ``next - 1``) or refuses past what is matched (in REPLICATE);
   pysyncobj let every stale refusal of a pipelined append reset ``next`` to the follower's end,
   undoing the step back of the one that mattered, so a follower with a divergent tail stayed
   stuck until the next compaction. ``next`` never drops to or below ``match``: entries up to
   ``match`` are known to be on the follower. A reconnected follower is probed afresh from the
   leader's end with nothing matched (it may have cut a torn tail). Every answer carries its
   term and the leader drops answers of another term (pysyncobj's carry none). At most
   ``SEND_BACKLOG_BYTES`` wait in a follower's connection before the leader sends it more.
4. PreVote (Raft thesis 9.6): before a node raises its term it asks the others whether they
   would vote for it; they say yes only if its log is at least as up to date as theirs and they
   have not heard from a leader within the minimum election timeout. A node cut off from the
   cluster no longer inflates its term, and one coming back cannot depose a healthy leader. A
   leadership transfer (``timeout_now``) skips it, as in etcd. A refusal that carries a higher
   term is adopted, so a node with a stale term can still win when its log is the freshest.
5. A node whose disk is full stops: a leader steps down, no node with a full disk votes,
   campaigns or appends, and it resumes by itself once its log can grow again. An entry it
   could not write is not in its log and was never acknowledged.
6. The leader sends a message carrying only the new commit index at once only when the
   entries just applied produced news: wake-ups (a proxy's stream on a follower may wait for
   them) or changed job records (a client may read them on any node); otherwise the index
   rides on the next append or heartbeat. Commit itself is unchanged.
7. The wire (``cluster.raft_wire``): frames sealed with AES-256-GCM under the cluster secret,
   not zlib-compressed, pickle protocol 4.
8. CheckQuorum within one election timeout (Raft thesis 6.2, etcd's ``CheckQuorum``): a leader
   that has heard from no majority (itself included) within the maximum election timeout steps
   down, so a leader cut off from the others stops taking commands about when the others elect
   a new one, and its clients move at once (the proposer fails what it had in flight as
   "may have been applied": retried with the same request id, it is applied once). A follower
   that was sent a dump within pysyncobj's ``leaderFallbackTimeout`` still counts: installing
   a dump keeps it silent for a second or two, and a leader that stepped down for that left
   its clients waiting for another election. Stepping down is always safe in Raft; this only
   decides when, and pysyncobj's own check stays as the outer bound.
9. Apply in slices: one tick applies committed entries for at most ``APPLY_SLICE_S``, then
   goes back to the network (and the next tick does not wait for it). pysyncobj applied every
   committed entry in one tick, and a node answers nothing while it applies: a follower with a
   backlog of seconds (back from a partition, or a dump behind) kept a new leader from
   committing that long when it was the only other node of the majority, and a leader stalled
   its own heartbeats. Only how much is applied per tick changes, never what or in which order;
   the commit index is lowered for the duration of a slice and put back after it.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pysyncobj
import pysyncobj.syncobj as syncobj_module
import structlog
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.node import TCPNode
from pysyncobj.transport import TCPTransport

from cluster import raft_wire
from cluster.dumpfile import DumpStore
from cluster.journal import DiskFull, Journal
from jobqueue.errors import BeanraftError

log = structlog.get_logger(__name__)

PYSYNCOBJ_VERSION = "0.3.17"

# The sha256 (first 16 hex digits) of the source of every pysyncobj function that RaftCore
# replaces, wraps or relies on the inner workings of. A different source means the rules above
# were written for other code.
_VERIFIED = {
    "syncobj.SyncObj.__init__": "09df12cd7fd7d727",
    "syncobj.SyncObj._onTick": "cc9eb08232d005ba",
    "syncobj.SyncObj._SyncObj__onMessageReceived": "ddfe34b6c0282179",
    "syncobj.SyncObj._SyncObj__sendAppendEntries": "9cb9073128c392fa",
    "syncobj.SyncObj._SyncObj__applyLogEntries": "073db677773b5a2d",
    "syncobj.SyncObj._SyncObj__onBecomeLeader": "5a3fd97bc17dc1cf",
    "syncobj.SyncObj._SyncObj__sendNextNodeIdx": "68aaeefc267b8896",
    "syncobj.SyncObj._SyncObj__onNodeConnected": "2655afb481b4c69b",
    "syncobj.SyncObj._SyncObj__onNodeDisconnected": "a81c0475ba2218cc",
    "syncobj.SyncObj._SyncObj__setCurrentTerm": "0ad5bf456ac06bd3",
    "syncobj.SyncObj._SyncObj__setState": "2c1f239f7bd79b39",
    "syncobj.SyncObj._SyncObj__onLeaderChanged": "53b7685e1d897887",
    "syncobj.SyncObj._SyncObj__getEntries": "e29c4b33293b2101",
    "syncobj.SyncObj._SyncObj__doChangeCluster": "247d4d4101b8cd3c",
    "syncobj.SyncObj._SyncObj__parseChangeClusterRequest": "b2d5d695b12e592f",
    "syncobj.SyncObj._SyncObj__tryLogCompaction": "c2f8a0ec14cc7312",
    "syncobj.SyncObj._SyncObj__loadDumpFile": "ec66e83905de703b",
    "syncobj.SyncObj._checkCommandsToApply": "a386a8079361d204",
    "transport.TCPTransport.__init__": "4f0eef9cc5c06f5e",
    "tcp_connection.TcpConnection.getSendBufferSize": "1d1fe49fdf161518",
    "transport.TCPTransport.send": "2fd6c84b8621427d",
    "tcp_connection.TcpConnection.send": "cb29077c32990abb",
    "tcp_connection.TcpConnection._TcpConnection__processParseMessage": "4ecbfdad3baa2eac",
    "pickle.dumps": "9d907d0e2ec81365",
    "pickle.dump": "8632a4ffab1a6a8a",
    # cluster.raft_loop stands in for pysyncobj's poller: the factory it replaces, the interface
    # it implements, and the pipe notifier that wakes a tick after a proposal through it.
    "poller.createPoller": "e71b39b232c943a6",
    "poller.PollPoller.subscribe": "b406c6720d160f75",
    "pipe_notifier.PipeNotifier.__init__": "94561a5e00d69832",
}


class UnsupportedPysyncobj(BeanraftError, RuntimeError):
    """The installed pysyncobj is not the one beanraft's Raft changes were made for."""


def _source_hashes() -> dict[str, str]:
    hashes = {}
    for name in _VERIFIED:
        module_name, *path = name.split(".")
        obj: Any = getattr(pysyncobj, module_name)
        for part in path:
            obj = getattr(obj, part)
        hashes[name] = hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
    return hashes


def verify() -> None:
    """Refuse any pysyncobj but the pinned version with the exact sources RaftCore was written
    against (raises UnsupportedPysyncobj naming what differs)."""
    version = getattr(pysyncobj.version, "VERSION", "?")
    if version != PYSYNCOBJ_VERSION:
        raise UnsupportedPysyncobj(
            f"beanraft's Raft layer is written for pysyncobj {PYSYNCOBJ_VERSION} exactly, and "
            f"{version} is installed: pip install pysyncobj=={PYSYNCOBJ_VERSION}"
        )
    try:
        found = _source_hashes()
    except (AttributeError, OSError, TypeError) as exc:
        raise UnsupportedPysyncobj(f"pysyncobj's code is not as expected: {exc}") from None
    changed = sorted(name for name, digest in found.items() if digest != _VERIFIED[name])
    if changed:
        raise UnsupportedPysyncobj(
            f"pysyncobj {version} differs from the release beanraft was tested with in "
            f"{', '.join(changed)}: reinstall pysyncobj=={PYSYNCOBJ_VERSION} from PyPI"
        )


# Raft states and message fields, as pysyncobj names them.
FOLLOWER, CANDIDATE, LEADER = 0, 1, 2
PROBE, REPLICATE, SNAPSHOT = "probe", "replicate", "snapshot"
DISK_PROBE_S = 1.0
# At most this much is queued for one follower before the leader sends it more: pysyncobj's
# connection copies its whole write buffer on every message it adds, so a follower catching
# up that could not drain it (a long log, a dump) made every send slower, until the leader's
# ticks took seconds each and stopped committing (the fault harness: 7 s gaps).
SEND_BACKLOG_BYTES = 2 << 20
# Rule 9: how long one tick may apply (entries carry up to a few hundred commands each) and how
# many entries go between checks of the time.
APPLY_SLICE_S = 0.02
APPLY_STEP_ENTRIES = 8


@dataclass(slots=True)
class Progress:
    """The leader's view of one follower (etcd raft's ``Progress``)."""

    state: str = PROBE
    paused: bool = False  # PROBE: an append is out and unanswered
    dump_sent_at: float = 0.0  # monotonic time the last chunk of a dump went to it (rule 8)


@dataclass(slots=True)
class PreVote:
    term: int  # the term the node would campaign in
    granted: set[Any]
    won: bool = False


class RaftCore(SyncObj):  # type: ignore[misc]
    """pysyncobj's SyncObj with beanraft's rules (see the module docstring).

    ``journal`` and ``dumps`` are the storage; ``news`` gives a value that changes when the
    applied entries made news for other nodes (rule 6); ``ack_gate`` holds back a follower's
    acknowledgements until its journal is synced (``cluster.durability``)."""

    # pysyncobj's own attributes that these methods assign (for the type checker)
    _SyncObj__raftElectionDeadline: float
    _SyncObj__raftCommitIndex: int
    _SyncObj__newAppendEntriesTime: float

    def __init__(
        self,
        self_addr: str,
        peers: list[str],
        conf: SyncObjConf,
        consumers: list[Any],
        journal: Journal,
        dumps: DumpStore,
        news: Callable[[], object],
        ack_gate: Any,
        poller: Any,
    ) -> None:
        self.journal = journal
        self.dumps = dumps
        self.ack_gate = ack_gate
        self.disk_full = False
        self.installs = 0  # dumps installed (from disk at start, or from a leader)
        self.last_leader_contact = 0.0  # monotonic time of the last append from a leader
        self.lost_quorum_at = 0.0  # monotonic time this node last stepped down by rule 8
        self.apply_left = False  # rule 9: the last tick's slice ended with entries to apply
        self._news = news
        self._progress: dict[Any, Progress] = {}
        self._prevote: PreVote | None = None
        self._next_disk_probe = 0.0
        conf.serializer = conf.deserializer = dumps  # pysyncobj then builds no dict to pickle
        with _storage_for(journal, dumps, poller):
            super().__init__(self_addr, peers, conf, consumers, transportClass=_Transport)

    # --- ticks: PreVote, a full disk, acknowledgements -----------------------------------

    def _onTick(self, timeToWait: float = 0.0) -> None:
        self._gate_election()
        try:
            # Entries left to apply (rule 9): look at the network and come straight back.
            super()._onTick(0.0 if self.apply_left else timeToWait)
        except DiskFull as exc:
            self._enter_disk_full(exc)
        self._check_quorum()
        self.ack_gate.flush()
        self._probe_disk()

    def _check_quorum(self) -> None:
        """Step down when no majority answered within one election timeout (rule 8). Runs
        after pysyncobj's tick, so every answer already received has been counted."""
        if self._SyncObj__raftState != LEADER:
            return
        conf = self._SyncObj__conf
        now = time.monotonic()
        heard: dict[Any, float] = self._SyncObj__lastResponseTime
        others = self._SyncObj__otherNodes
        count = 1  # this node
        for node in others:
            if now - heard.get(node, 0.0) <= conf.raftMaxTimeout:
                count += 1
            elif now - self._progress_of(node).dump_sent_at <= conf.leaderFallbackTimeout:
                count += 1  # installing the dump we sent it: silent, not gone
        if count > (len(others) + 1) / 2:
            return
        log.warning(
            "no answer from a majority within the election timeout: stepping down",
            term=self._term(),
            timeout_s=conf.raftMaxTimeout,
        )
        self.lost_quorum_at = now
        self._SyncObj__setState(FOLLOWER)
        self._SyncObj__raftLeader = None

    def _gate_election(self) -> None:
        """Let pysyncobj start an election only after a PreVote round was won (rule 4)."""
        if self._SyncObj__raftState == LEADER or self._SyncObj__selfNode is None:
            return
        now = time.monotonic()
        if self._SyncObj__raftElectionDeadline >= now:
            return
        if self.disk_full:
            self._SyncObj__raftElectionDeadline = now + self._timeout()
            return
        if self._SyncObj__transferInProgress or not self._SyncObj__connectedToAnyone():
            return  # a transfer campaigns at once; alone, pysyncobj waits by itself
        term = self._SyncObj__raftCurrentTerm
        prevote = self._prevote
        if prevote is not None and prevote.won and prevote.term == term + 1:
            self._prevote = None
            return  # won: pysyncobj campaigns on this tick
        self._SyncObj__raftElectionDeadline = now + self._timeout()
        self._prevote = PreVote(term + 1, {self._SyncObj__selfNode})
        message = {
            "type": "pre_vote",
            "term": term + 1,
            "last_log_index": self._last_index(),
            "last_log_term": self._last_term(),
        }
        for node in self._SyncObj__otherNodes:
            self._SyncObj__transport.send(node, message)
        self._count_prevotes()

    def _timeout(self) -> float:
        return float(self._SyncObj__generateRaftTimeout())

    def _count_prevotes(self) -> None:
        prevote = self._prevote
        if prevote is not None and len(prevote.granted) > (len(self._SyncObj__otherNodes) + 1) / 2:
            prevote.won = True
            self._SyncObj__raftElectionDeadline = 0  # campaign on the next tick

    def _enter_disk_full(self, exc: DiskFull) -> None:
        if not self.disk_full:
            log.error("disk full: this node stops accepting and voting", error=exc.strerror)
        self.disk_full = True
        self._next_disk_probe = time.monotonic() + DISK_PROBE_S
        if self._SyncObj__raftState != FOLLOWER:
            self._SyncObj__setState(FOLLOWER)
            self._SyncObj__raftLeader = None
        self._SyncObj__raftElectionDeadline = time.monotonic() + self._timeout()

    def _probe_disk(self) -> None:
        if not self.disk_full or time.monotonic() < self._next_disk_probe:
            return
        self._next_disk_probe = time.monotonic() + DISK_PROBE_S
        if self.journal.has_room():
            self.disk_full = False
            log.warning("disk space is back: this node accepts and votes again")

    # --- messages --------------------------------------------------------------------------

    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "append_entries" and "prevLogIdx" in message and "transmission" not in message:
            self._on_append(node, message)
        elif kind == "next_node_idx" and self._SyncObj__raftState == LEADER:
            self._on_append_reply(node, message)
        elif kind == "pre_vote":
            self._on_pre_vote(node, message)
        elif kind == "pre_vote_response":
            self._on_pre_vote_response(node, message)
        elif kind == "request_vote" and self.disk_full:
            return  # no vote from a node that cannot write what the winner sends
        elif kind == "append_entries":
            self._delegate_append(node, message)
        else:
            SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _delegate_append(self, node: Any, message: dict[str, Any]) -> None:
        """pysyncobj's own handling of a dump's chunks (and of a plain pysyncobj leader's
        chunked entries). It ends by committing up to this node's last entry, verified by
        nothing: a node with an uncommitted tail from an old term would apply it, and then
        vouch for it. So the commit index is put back unless a dump was installed (whose
        entries are all committed)."""
        if message.get("term", -1) >= self._term():
            self.last_leader_contact = time.monotonic()
        commit, installs = self._SyncObj__raftCommitIndex, self.installs
        SyncObj._SyncObj__onMessageReceived(self, node, message)
        if self.installs == installs:
            self._SyncObj__raftCommitIndex = commit
            self.journal.setRaftCommitIndex(commit)

    def _term(self) -> int:
        return int(self._SyncObj__raftCurrentTerm)

    # --- the follower's append (rule 2) ---------------------------------------------------

    def _on_append(self, node: Any, message: dict[str, Any]) -> None:
        term = message["term"]
        if term < self._term():
            return  # a deposed leader (pysyncobj ignores it too)
        self._follow(node, term)
        leader_commit = message["commit_index"]
        self._SyncObj__leaderCommitIndex = leader_commit
        prev, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        entries = message.get("entries") or []
        commit = self._SyncObj__raftCommitIndex
        settled = max(commit, self._SyncObj__raftLastApplied)
        if prev < settled:
            self._reply(node, matched=settled)  # committed entries match the leader's
            return
        if prev_term is None or self._term_at(prev) != prev_term:
            self._refuse(node, prev, prev_term or 0)
            return
        new = self._new_entries(entries)
        if new and not self._append(new):
            return  # the disk is full: nothing acknowledged, the leader sends them again
        last_new = prev + len(entries)
        if leader_commit > commit:
            self._SyncObj__raftCommitIndex = max(commit, min(leader_commit, last_new))
        self.journal.setRaftCommitIndex(self._SyncObj__raftCommitIndex)
        self._reply(node, matched=last_new)

    def _follow(self, node: Any, term: int) -> None:
        """What any append from a current leader does to a follower (as pysyncobj does)."""
        if term > self._term():
            self._SyncObj__transferInProgress = False
        if not self._SyncObj__transferInProgress:
            self._SyncObj__raftElectionDeadline = time.monotonic() + self._timeout()
        if self._SyncObj__raftLeader != node:
            self._SyncObj__onLeaderChanged()
        self._SyncObj__raftLeader = node
        if term > self._term():
            self._SyncObj__setCurrentTerm(term, None)
        self._SyncObj__setState(FOLLOWER)
        self.last_leader_contact = time.monotonic()

    def _new_entries(self, entries: list[tuple[bytes, int, int]]) -> list[tuple[bytes, int, int]]:
        """The entries from the first that this log lacks or holds with another term; when it
        holds one with another term, this log is cut back to just before it first."""
        for i, (_, index, term) in enumerate(entries):
            mine = self._term_at(index)
            if mine == term:
                continue
            if mine is not None:
                self._truncate_from(index)
            return entries[i:]
        return []

    def _truncate_from(self, index: int) -> None:
        if index <= self._SyncObj__raftCommitIndex:
            raise AssertionError(f"the leader contradicts committed entry {index}: a Raft bug")
        first = self._first_index()
        removed = self.journal[index - first :]
        for command, _, _ in reversed(removed):  # undo their membership changes
            change = self._SyncObj__parseChangeClusterRequest(command)
            if change is not None:
                self._SyncObj__doChangeCluster(change, reverse=True)
        self.ack_gate.log_truncated()
        log.warning(
            "dropped uncommitted entries that conflict with the leader's",
            first_index=index,
            count=len(removed),
            terms=sorted({term for _, _, term in removed}),
            commit_index=self._SyncObj__raftCommitIndex,
        )
        self.journal.deleteEntriesFrom(index - first)

    def _append(self, entries: list[tuple[bytes, int, int]]) -> bool:
        if self.disk_full:
            return False
        try:
            for entry in entries:
                self.journal.add(*entry)
        except DiskFull as exc:
            self._enter_disk_full(exc)
            return False
        for command, _, _ in entries:
            change = self._SyncObj__parseChangeClusterRequest(command)
            if change is not None:
                self._SyncObj__doChangeCluster(change)
        return True

    def _refuse(self, node: Any, prev: int, prev_term: int) -> None:
        hint = min(prev, self._last_index())
        while hint >= self._first_index() and (self._term_at(hint) or 0) > prev_term:
            hint -= 1
        self._SyncObj__transport.send(
            node,
            {
                "type": "next_node_idx",
                "next_node_idx": hint + 1,
                "success": False,
                "reset": True,
                "rejected": prev,
                "hint_term": self._term_at(hint) or 0,
                "term": self._term(),
            },
        )

    def _reply(self, node: Any, matched: int) -> None:
        self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=matched + 1, success=True)

    def _SyncObj__sendNextNodeIdx(
        self,
        node: Any,
        reset: bool = False,
        nextNodeIdx: int | None = None,
        success: bool = False,
    ) -> None:
        # Every answer to an append carries the term it answers in: the leader drops one from
        # another term (it may vouch for entries a later leader made this node drop).
        if nextNodeIdx is None:
            nextNodeIdx = self._last_index() + 1
        self._SyncObj__transport.send(
            node,
            {
                "type": "next_node_idx",
                "next_node_idx": nextNodeIdx,
                "reset": reset,
                "success": success,
                "term": self._term(),
            },
        )

    # --- the leader's view of each follower (rule 3) -----------------------------------------

    def _on_append_reply(self, node: Any, message: dict[str, Any]) -> None:
        if message.get("term", self._term()) != self._term():
            return  # an answer to an append of another term (Raft's responses carry terms)
        self._SyncObj__lastResponseTime[node] = time.monotonic()
        progress = self._progress_of(node)
        next_index: dict[Any, int] = self._SyncObj__raftNextIndex
        match_index: dict[Any, int] = self._SyncObj__raftMatchIndex
        match = match_index.get(node, 0)
        if message["success"]:
            matched = min(message["next_node_idx"] - 1, self._last_index())
            if matched > match:
                match_index[node] = match = matched
            if progress.state != SNAPSHOT:
                progress.state, progress.paused = REPLICATE, False
            next_index[node] = max(next_index.get(node, 0), match + 1)
            return
        if not message.get("reset"):
            return  # a chunk of a dump arrived
        rejected = message.get("rejected")
        if rejected is None:  # a follower that is not RaftCore: take its word, as pysyncobj
            next_index[node] = max(message["next_node_idx"], match + 1)
            progress.state, progress.paused = PROBE, False
            return
        if progress.state == REPLICATE:
            if rejected <= match:
                return  # stale: answers an append sent before the last success
            progress.state, progress.paused = PROBE, False
            next_index[node] = match + 1
            return
        if progress.state != PROBE or rejected != next_index.get(node, 0) - 1:
            return  # stale: not the probe in flight
        hint = self._leader_hint(message["next_node_idx"] - 1, message.get("hint_term", 0))
        next_index[node] = max(min(rejected, hint + 1), match + 1)
        progress.paused = False

    def _leader_hint(self, index: int, term: int) -> int:
        """The last index at or before ``index`` whose term here is not newer than ``term``."""
        index = min(index, self._last_index())
        while index >= self._first_index() and (self._term_at(index) or 0) > term:
            index -= 1
        return index

    def _progress_of(self, node: Any) -> Progress:
        progress = self._progress.get(node)
        if progress is None:
            progress = self._progress[node] = Progress()
        return progress

    def _SyncObj__sendAppendEntries(self) -> None:
        conf = self._SyncObj__conf
        now = time.monotonic()
        heartbeat = now >= self._SyncObj__newAppendEntriesTime
        self._SyncObj__newAppendEntriesTime = now + conf.appendEntriesPeriod
        deadline = now + conf.appendEntriesPeriod
        connected = self._SyncObj__connectedNodes
        for node in self._SyncObj__otherNodes | self._SyncObj__readonlyNodes:
            if node not in connected:
                self.dumps.cancelTransmisstion(node)
                continue
            self._send_to(node, heartbeat, deadline)

    def _send_to(self, node: Any, heartbeat: bool, deadline: float) -> None:
        if self._backlog_bytes(node) > SEND_BACKLOG_BYTES:
            return  # flow control: what is queued for it goes first (see SEND_BACKLOG_BYTES)
        progress = self._progress_of(node)
        next_index: dict[Any, int] = self._SyncObj__raftNextIndex
        first = self._first_index()
        if next_index.get(node, 0) <= first:
            if first == 1:  # never compacted: every log starts with the same entry 1 (term 0)
                next_index[node] = 2
            else:
                progress.state = SNAPSHOT
        if progress.state == SNAPSHOT:
            self._send_dump(node, progress, deadline)
        elif progress.state == PROBE:
            if not progress.paused or heartbeat:
                self._send_entries(node, next_index[node], once=True, deadline=deadline)
                progress.paused = True
        else:
            next_index[node] = self._send_entries(node, next_index[node], False, deadline)

    def _backlog_bytes(self, node: Any) -> int:
        connection = self._SyncObj__transport._connections.get(node)
        return int(connection.getSendBufferSize()) if connection is not None else 0

    def _send_entries(self, node: Any, start: int, once: bool, deadline: float) -> int:
        """Send entries from ``start`` (at least one message, empty when there are none);
        return the index after the last entry sent."""
        batch_bytes = self._SyncObj__conf.appendEntriesBatchSizeBytes
        transport = self._SyncObj__transport
        last = self._last_index()
        start = min(start, last + 1)
        while True:
            entries = self._SyncObj__getEntries(start, None, batch_bytes) if start <= last else []
            message = {
                "type": "append_entries",
                "term": self._term(),
                "commit_index": self._SyncObj__raftCommitIndex,
                "entries": entries,
                "prevLogIdx": start - 1,
                "prevLogTerm": self._term_at(start - 1),
            }
            transport.send(node, message)
            if entries:
                start = entries[-1][1] + 1
            if once or start > last or time.monotonic() > deadline:
                return start
            if (
                node not in self._SyncObj__connectedNodes
                or self._backlog_bytes(node) > SEND_BACKLOG_BYTES
            ):
                return start

    def _send_dump(self, node: Any, progress: Progress, deadline: float) -> None:
        transport = self._SyncObj__transport
        while (
            time.monotonic() <= deadline
            and node in self._SyncObj__connectedNodes
            and self._backlog_bytes(node) <= SEND_BACKLOG_BYTES
        ):
            chunk = self.dumps.getTransmissionData(node)
            if chunk is None:
                return  # a new dump is being written, or none is readable yet
            transport.send(
                node,
                {
                    "type": "append_entries",
                    "term": self._term(),
                    "commit_index": self._SyncObj__raftCommitIndex,
                    "serialized": chunk,
                },
            )
            progress.dump_sent_at = time.monotonic()
            if chunk[2]:  # the last chunk: the follower holds the log up to the dump's entry
                self._SyncObj__raftNextIndex[node] = self.journal[1][1] + 1
                progress.state, progress.paused = PROBE, True
                return

    def _SyncObj__onBecomeLeader(self) -> None:
        self._progress = {node: Progress() for node in self._SyncObj__otherNodes}
        self._prevote = None
        SyncObj._SyncObj__onBecomeLeader(self)

    def _SyncObj__onNodeConnected(self, node: Any) -> None:
        SyncObj._SyncObj__onNodeConnected(self, node)
        self._reprobe(node)

    def _SyncObj__onNodeDisconnected(self, node: Any) -> None:
        SyncObj._SyncObj__onNodeDisconnected(self, node)
        self._reprobe(node)

    def _reprobe(self, node: Any) -> None:
        """``node``'s connection went or came back: messages to it may be lost, and it may have
        restarted with a torn tail cut off (cluster.journal), holding less than it once
        acknowledged. So it is probed afresh, as by a new leader: from the end of the log, with
        nothing known to match (a lower match only delays commits; none is undone)."""
        self._progress[node] = Progress()
        if self._SyncObj__raftState == LEADER and node in self._SyncObj__raftMatchIndex:
            self._SyncObj__raftMatchIndex[node] = 0
            self._SyncObj__raftNextIndex[node] = self._last_index() + 1

    # --- PreVote (rule 4) ----------------------------------------------------------------------

    def _on_pre_vote(self, node: Any, message: dict[str, Any]) -> None:
        granted = (
            message["term"] > self._term()
            and not self.disk_full
            and self._SyncObj__raftState != LEADER
            and time.monotonic() - self.last_leader_contact >= self._SyncObj__conf.raftMinTimeout
            and (message["last_log_term"], message["last_log_index"])
            >= (self._last_term(), self._last_index())
        )
        self._SyncObj__transport.send(
            node,
            {
                "type": "pre_vote_response",
                "term": self._term(),
                "prospective_term": message["term"],
                "granted": granted,
            },
        )

    def _on_pre_vote_response(self, node: Any, message: dict[str, Any]) -> None:
        prevote = self._prevote
        if prevote is None or message["prospective_term"] != prevote.term:
            return
        if message["granted"]:
            prevote.granted.add(node)
            self._count_prevotes()
        elif message["term"] > self._term():
            # Our term is behind the cluster's: take it, so the next round can be won.
            self._prevote = None
            self._SyncObj__setCurrentTerm(message["term"], None)
            self._SyncObj__setState(FOLLOWER)
            self._SyncObj__raftLeader = None

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
        # pysyncobj empties its log unless the log starts with the dump's last two entries.
        # A node stopped between writing a dump and cutting its log to it holds the dump's
        # entries further in, and entries after them that it may have acknowledged: cut the
        # log to the dump's head first, so those stay.
        pending = self.dumps.pending()
        if pending is not None and not clearJournal:
            self._cut_log_to(pending.prev, pending.last)
        # pysyncobj then resets its log to the dump's head and logs (and swallows) any
        # failure; the state is installed only when that reset happened, or the log and the
        # state would disagree about what is applied.
        SyncObj._SyncObj__loadDumpFile(self, clearJournal)
        dump = self.dumps.take_loaded()
        if dump is None:
            return
        if (
            len(self.journal) < 2
            or self.journal[1] != dump.last
            or self._SyncObj__raftLastApplied != dump.last[1]
        ):
            log.error("could not reset the log to a dump: not installed; the leader resends it")
            return
        try:
            self.dumps.restore(dump.state)
        except Exception:
            log.critical("a checked dump failed to load: exiting", exc_info=True)
            os._exit(70)
        self.installs += 1

    def _cut_log_to(self, prev: tuple[bytes, int, int], last: tuple[bytes, int, int]) -> None:
        first = self._first_index()
        at = prev[1] - first
        if (
            0 < at < len(self.journal) - 1
            and self.journal[at] == prev
            and self.journal[at + 1] == last
        ):
            self.journal.deleteEntriesTo(at)

    # --- rule 6 ----------------------------------------------------------------------------------

    def _SyncObj__applyLogEntries(self) -> bool:
        """pysyncobj's apply, a few entries at a time for at most APPLY_SLICE_S (rule 9); true
        when what it applied made news (rule 6)."""
        before = self._news()
        commit = self._SyncObj__raftCommitIndex
        deadline = time.monotonic() + APPLY_SLICE_S
        try:
            while True:
                applied = self._SyncObj__raftLastApplied
                if applied >= commit:
                    break
                self._SyncObj__raftCommitIndex = min(commit, applied + APPLY_STEP_ENTRIES)
                SyncObj._SyncObj__applyLogEntries(self)
                if self._SyncObj__raftLastApplied == applied or time.monotonic() >= deadline:
                    break  # time is up, or no progress: the next tick goes on
        finally:
            self._SyncObj__raftCommitIndex = commit
        self.apply_left = self._SyncObj__raftLastApplied < commit
        return self._news() != before

    # --- the log -----------------------------------------------------------------------------

    def _first_index(self) -> int:
        return int(self.journal[0][1])

    def _last_index(self) -> int:
        return int(self.journal[-1][1])

    def _last_term(self) -> int:
        return int(self.journal[-1][2])

    def _term_at(self, index: int) -> int | None:
        first = self._first_index()
        if index < first or index > self._last_index():
            return None
        return int(self.journal[index - first][2])

    # --- for the node ---------------------------------------------------------------------------

    def cut_off(self) -> bool:
        """This node stepped down for want of a majority (rule 8) and has heard from no leader
        since: waiting here for a leader would only keep a client from going elsewhere."""
        return self.lost_quorum_at > self.last_leader_contact

    def in_contact(self, within_s: float) -> bool:
        """This node is the leader of a quorum, or heard from a leader within ``within_s``."""
        if self._SyncObj__raftState == LEADER:
            return bool(self.hasQuorum)
        return time.monotonic() - self.last_leader_contact <= within_s


class _Transport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport; a follower's acknowledgements pass the ack gate (rule 1)."""

    def send(self, node: Any, message: Any) -> bool:
        gate = self._syncObj.ack_gate
        if gate.hold(node, message, super().send):
            return True
        return bool(super().send(node, message))


class _storage_for:
    """While a RaftCore is built, pysyncobj's journal, serializer and poller factories return
    ours (the poller: ``cluster.raft_loop``'s, so pysyncobj runs on the node's loop)."""

    def __init__(self, journal: Journal, dumps: DumpStore, poller: Any) -> None:
        self._journal = journal
        self._dumps = dumps
        self._poller = poller

    def __enter__(self) -> None:
        _factories.append((self._journal, self._dumps))
        _pollers.append(self._poller)

    def __exit__(self, *exc: object) -> None:
        _factories.remove((self._journal, self._dumps))
        _pollers.remove(self._poller)


_factories: list[tuple[Journal, DumpStore]] = []
_pollers: list[Any] = []
_original_create_journal = syncobj_module.createJournal
_original_serializer = syncobj_module.Serializer
_original_create_poller = syncobj_module.createPoller


def _create_poller(poller_type: str) -> Any:
    """pysyncobj builds its poller first thing in ``SyncObj.__init__``, before the transport
    subscribes its sockets: the RaftCore being built gets the one it was given."""
    if _pollers:
        return _pollers[-1]
    return _original_create_poller(poller_type)


def _create_journal(journal_file: str | None = None) -> Any:
    for journal, _ in _factories:
        if str(journal.path) == journal_file:
            return journal
    return _original_create_journal(journal_file)


def _serializer(file_name: str | None, *args: Any) -> Any:
    for _, dumps in _factories:
        if str(dumps.path) == file_name:
            return dumps
    return _original_serializer(file_name, *args)


def make_node(address: str) -> Any:
    return TCPNode(address)


def install() -> None:
    """Check pysyncobj, then route its storage factories and its wire through beanraft's."""
    verify()
    syncobj_module.createJournal = _create_journal
    syncobj_module.Serializer = _serializer
    syncobj_module.createPoller = _create_poller
    raft_wire.install()
