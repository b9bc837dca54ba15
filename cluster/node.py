"""One Raft node: pysyncobj configured safely, the proposer, the tick timer and membership.

Theory of operation. ``RaftNode`` owns a pysyncobj ``SyncObj`` whose only replicated state is a
``MachineConsumer``. It runs on an asyncio loop (the gRPC server's); pysyncobj runs its own tick
thread. The node:
- proposes only while it is the leader (it stamps time; see ``cluster.proposer``); a follower's
  servicer forwards to the leader instead (``cluster.service``);
- proposes a ``Tick`` only when the machine's ``next_deadline_ms()`` has passed, so an idle
  cluster writes nothing;
- records itself in the replicated member directory when it leads, so followers can hint
  clients at the leader's gRPC address;
- changes membership one node at a time, and hands leadership over before removing itself.

pysyncobj's sharp edges handled here: ``password`` (the cluster secret) is
always set, so every Raft message is authenticated before it is unpickled; ``bindAddress`` is
the node's own Raft address, never 0.0.0.0; journal and dump file are both used; fsync follows
``--fsync`` (``cluster.durability``); latency uses ``appendEntriesUseBatch=False``;
``commandsWaitLeader=False`` so nothing waits forever for a leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pysyncobj import FAIL_REASON, SyncObjConf

from cluster import envelope, legacy, raftcore
from cluster.clock import Clock, LeaderTime, SystemClock
from cluster.dumpfile import DumpStore
from cluster.durability import JournalSync
from cluster.errors import MembershipRefused, NotLeader
from cluster.journal import Journal
from cluster.proposer import Proposer, Result
from cluster.raft_loop import LoopPoller, RaftDriver
from cluster.replicated import ClusterState, MachineConsumer
from cluster.wakeups import WakeupHub
from statemachine import codec
from statemachine import commands as c
from statemachine.machine import MachineConfig

log = structlog.get_logger(__name__)
_LEADER = 2
_STATE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
JOURNAL_COMPACT_BYTES = 64 << 20  # big entries (job bodies) compact by size before count
LEADER_FALLBACK_S = 4.0
COMPACT_AFTER_ENTRIES = 20_000
LEASE_EXTENSION_MS = 10_000  # a proxy's default lease (proxy/server.py)
STALL_S = 2.0  # a leader whose tick loop did not run for this long was paused
DUMP_CHUNK_BYTES = 1 << 20  # a dump goes to a follower far behind in chunks of this size


@dataclass
class NodeConfig:
    node_id: str
    data_dir: Path
    raft_addr: str
    grpc_addr: str
    peers: list[str]  # the other members' Raft addresses
    secret: str | None  # the cluster secret; None only with --insecure
    fsync: str = "batch"
    max_job_size: int = 65535
    clock: Clock = field(default_factory=SystemClock)
    # Raft timing: heartbeats every 50 ms, elections after 0.3-0.8 s of silence.
    append_entries_period_s: float = 0.05
    raft_min_timeout_s: float = 0.3
    raft_max_timeout_s: float = 0.8
    # A follower that was away for fewer entries than this catches up from the log, not from
    # a dump (every node's dump is its whole state, sent and installed in one piece).
    log_compaction_min_entries: int = COMPACT_AFTER_ENTRIES

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "raft.log"

    @property
    def dump_path(self) -> Path:
        return self.data_dir / "state.dump"

    @property
    def seed_path(self) -> Path:
        return self.data_dir / "seed.snapshot"

    def incarnation(self) -> str:
        """A random id made once with the data dir: a node started afresh at an address where
        another was removed is another incarnation, and the old removal does not stop it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "node.incarnation"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            value = secrets.token_hex(8)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(value + "\n")
            os.replace(tmp, path)
            return value


class RaftNode:
    def __init__(self, config: NodeConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.leader_changes = 0
        self.on_state_change: Callable[[int, int], None] = lambda old, new: None
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.incarnation = config.incarnation()
        self.hub = WakeupHub(loop, lambda: self.consumer.state.wakeups)
        self.consumer = MachineConsumer(
            MachineConfig(max_job_size=config.max_job_size),
            seed_snapshot=self._seed(),
            on_applied=self.hub.notify,
            self_raft_addr=config.raft_addr,
            incarnation=self.incarnation,
        )
        raftcore.install()
        legacy.migrate(config.data_dir, config.journal_path, config.dump_path)
        # Storage is opened and checked before Raft starts: a damaged log or dump stops the
        # node here (DamagedJournal, DamagedDump), before it could serve or send any of it.
        self.journal = Journal(config.journal_path, sync_meta=config.fsync != "never")
        self.dumps = DumpStore(
            config.dump_path,
            DUMP_CHUNK_BYTES,
            state_bytes=lambda: self.consumer.state.to_bytes(),
            restore=self.consumer.restore,
            member=raftcore.make_node,
        )
        dump = self.dumps.check_at_start()
        log.info(
            "storage opened",
            log_first_index=self.journal[0][1] if len(self.journal) else 0,
            log_last_index=self.journal[-1][1] if len(self.journal) else 0,
            commit_index=self.journal.getRaftCommitIndex(),
            term=self.journal.getCurrentTerm(),
            dump_index=dump.last[1] if dump is not None else 0,
        )
        self.journal_sync = JournalSync(self.journal, config.fsync)
        # pysyncobj runs on this loop, not on a thread of its own (cluster.raft_loop).
        self.driver = RaftDriver(loop)
        self.syncobj = raftcore.RaftCore(
            config.raft_addr,
            config.peers,
            self._conf(),
            [self.consumer],
            self.journal,
            self.dumps,
            news=self._news,
            ack_gate=self.journal_sync,
            poller=LoopPoller(loop, self.driver.wake),
        )
        # The leader syncs its own journal on the syncer thread, from the moment an entry is
        # appended, in parallel with the followers' round trip; the proposer's callback waits
        # for that sync (when_durable), not the tick. Syncing in the commit callback in
        # the tick instead put each fsync after the followers' round trip and held up
        # every other append, send and apply meanwhile (docs/benchmarks.md, cluster run F).
        self.journal_sync.start_syncer(self.is_leader)
        self.syncobj.addOnTickCallback(self._compact_if_journal_large)
        self.leader_time = LeaderTime(config.clock)
        self.proposer = Proposer(
            self.consumer.apply_batch,
            self.leader_time,
            self.journal_sync.when_durable,
            lambda: int(self.syncobj.raftLastApplied),
            loop,
            remember=self.consumer.remember_decoded,
        )
        self._tick_inflight = False
        # Ticks this node proposed that committed: an idle cluster's count stays still.
        self.ticks_committed = 0
        self._leases_extended_term = -1
        self._last_tick_s = loop.time()
        self._last_ticked_deadline_ms: int | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tick_task: asyncio.Task[None] | None = None

    def _news(self) -> tuple[int, int]:
        """Changes when applied entries made wake-ups or changed job records (raftcore rule 6)."""
        state = self.consumer.state
        return state.wakeups.last_seq, state.machine.records_version

    def _seed(self) -> bytes | None:
        # A restored cluster starts from a seed snapshot, but only on a brand-new data dir:
        # once the journal exists, the journal and dump file are the truth.
        seed = self.config.seed_path
        if (
            seed.exists()
            and not self.config.journal_path.exists()
            and not (self.config.data_dir / legacy.OLD_JOURNAL).exists()
        ):
            log.info("seeding from snapshot", path=str(seed))
            return seed.read_bytes()
        return None

    def _conf(self) -> SyncObjConf:
        cfg = self.config
        return SyncObjConf(
            password=cfg.secret,
            bindAddress=cfg.raft_addr,
            journalFile=str(cfg.journal_path),
            fullDumpFile=str(cfg.dump_path),
            dynamicMembershipChange=True,
            appendEntriesUseBatch=False,
            appendEntriesPeriod=cfg.append_entries_period_s,
            raftMinTimeout=cfg.raft_min_timeout_s,
            raftMaxTimeout=cfg.raft_max_timeout_s,
            # A leader that has not heard from a majority for this long steps down (pysyncobj's
            # CheckQuorum). Not shorter: a new leader whose one reachable follower was busy
            # installing a dump (a second or two on two loaded cores) stepped down at 1 s and
            # at 2 s, and its clients waited for another election (docs/fault-tolerance.md).
            # Clients do not wait for it: their calls time out after 2 s and go elsewhere.
            leaderFallbackTimeout=LEADER_FALLBACK_S,
            # Redial a peer after 1 s, not 5: a node that starts before its peers would
            # otherwise sit out its first seconds (pysyncobj dials from the larger address).
            connectionRetryTime=1.0,
            commandsWaitLeader=False,
            logCompactionMinEntries=cfg.log_compaction_min_entries,
            # Compaction serialises in a forked child (copy-on-write), so nodes compacting at
            # the same time cost little; without the split a forced compaction (the Snapshot
            # RPC) happens at once instead of in this node's slot of a 300 s period.
            logCompactionSplit=False,
            onStateChanged=self._state_changed,
            autoTick=False,  # ticked by RaftDriver on the node's loop
        )

    # --- Lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.driver.start(self._raft_tick)
        self._ticker = self.loop.create_task(self._tick_loop())

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        self.driver.stop()
        self.hub.close()
        self.journal_sync.stop_syncer()
        self.syncobj.destroy()  # at once, on the loop that watches its sockets

    def _raft_tick(self) -> bool:
        """One pysyncobj tick (RaftDriver); True when rule 9 left entries to apply."""
        self.syncobj._onTick(0.0)
        return bool(self.syncobj.apply_left)

    def _state_changed(self, old: int, new: int) -> None:  # in a tick
        log.info(
            "raft state changed",
            node_id=self.config.node_id,
            old=_STATE_NAMES.get(old),
            new=_STATE_NAMES.get(new),
            term=self.syncobj.raftCurrentTerm,
        )
        if new == _LEADER:
            self.leader_changes += 1
        elif old == _LEADER:
            self.consumer.forget_decoded()
            # Its clients go to the new leader now, not when their calls time out.
            with contextlib.suppress(RuntimeError):  # the loop closed: the node is stopping
                self.loop.call_soon_threadsafe(self.proposer.abandon_inflight)
        self.on_state_change(old, new)

    def _compact_if_journal_large(self) -> None:
        # pysyncobj compacts by entry count, but one of our entries may hold a whole batch,
        # and the whole log is read back (and held in memory) at start.
        if self.journal.size_bytes > JOURNAL_COMPACT_BYTES:
            self.syncobj.forceLogCompaction()

    # --- Leadership -----------------------------------------------------------------------

    @property
    def state(self) -> ClusterState:
        return self.consumer.state

    def is_leader(self) -> bool:
        return bool(self.syncobj._isLeader())

    def in_contact(self) -> bool:
        """This node leads a quorum, or heard from a leader within two election timeouts:
        what it applies keeps up with the cluster."""
        return bool(self.syncobj.in_contact(2 * self.config.raft_max_timeout_s))

    def hears_leader(self) -> bool:
        """This node leads, or heard from its leader within the minimum election timeout
        (heartbeats come every 50 ms): a follower past it is about to elect another."""
        return self.is_leader() or bool(self.syncobj.in_contact(self.config.raft_min_timeout_s))

    def leader_raft_addr(self) -> str:
        leader = self.syncobj._getLeader()
        return leader.address if leader is not None else ""

    def leader_info(self) -> tuple[str, str]:
        """(node id, gRPC address) of the leader as this node knows it, or ("", "")."""
        if self.is_leader():
            return self.config.node_id, self.config.grpc_addr
        return self.state.members.get(self.leader_raft_addr(), ("", ""))

    def not_leader(self) -> NotLeader:
        leader_id, leader_grpc = self.leader_info()
        return NotLeader(self.config.node_id, leader_id, leader_grpc)

    def submit(self, requests: list[envelope.Request]) -> Awaitable[list[Result]]:
        """Propose ``requests``; await the result for their outcomes. Raises NotLeader at once
        on a follower. The common case returns the proposer's future itself: no coroutine."""
        if not self.is_leader():
            raise self.not_leader()
        term = int(self.syncobj.raftCurrentTerm)
        self.leader_time.start_term(term, self.state.now_ms)
        self._check_stall()
        if self._leases_extended_term == term:
            return self.proposer.submit_many(requests)
        return self._submit_extending_leases(term, requests)

    async def _submit_extending_leases(
        self, term: int, requests: list[envelope.Request]
    ) -> list[Result]:
        # The first entry of a term extends every proxy's lease before anything it stamps
        # can expire one: the outage before this leader must not disconnect live proxies.
        extend = c.ExtendLeases(self.leader_time.now_ms() + LEASE_EXTENSION_MS)
        first = envelope.Request(envelope.COMMAND, "", codec.encode_command(extend), extend)
        results = await self.proposer.submit_many([first, *requests])
        self._leases_extended_term = term
        return results[1:]

    def _check_stall(self) -> None:
        """The tick loop runs every 50 ms; when it has not for seconds, this process was
        paused or starved and no proxy could renew meanwhile: extend the leases again, as
        after an outage, before anything this leader stamps next can expire one."""
        if self.loop.time() - self._last_tick_s > STALL_S:
            self._leases_extended_term = -1

    async def _tick_loop(self) -> None:
        while True:
            delay_s = 0.05
            try:
                delay_s = await self._tick_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("tick proposal failed", exc_info=True)
            await asyncio.sleep(delay_s)

    def registered(self) -> bool:
        """The member directory holds this node's id, gRPC address and incarnation."""
        raft_addr = self.config.raft_addr
        return self.state.members.get(raft_addr) == (
            self.config.node_id,
            self.config.grpc_addr,
        ) and (self.state.incarnations.get(raft_addr) == self.incarnation)

    def _member_payload(self) -> bytes:
        cfg = self.config
        return envelope.encode_member(cfg.node_id, cfg.grpc_addr, cfg.raft_addr, self.incarnation)

    @property
    def removed(self) -> bool:
        """The log removed this node from the cluster: it must stop (see remove_member)."""
        return bool(self.consumer.removed)

    async def _tick_once(self) -> float:
        """Propose what the leader owes the log; return how long to sleep."""
        self._check_stall()
        self._last_tick_s = self.loop.time()
        if not self.is_leader():
            return 0.05
        if not self.registered():
            await self.submit([envelope.Request(envelope.MEMBER, "", self._member_payload())])
        deadline_ms = self.state.next_deadline_ms
        if deadline_ms is None:
            return 0.05
        self.leader_time.start_term(int(self.syncobj.raftCurrentTerm), self.state.now_ms)
        wait_ms = deadline_ms - self.leader_time.now_ms()
        if wait_ms > 0:
            return min(0.05, max(0.002, wait_ms / 1000))
        if self._tick_inflight:
            return 0.002
        if deadline_ms == self._last_ticked_deadline_ms:
            # A committed Tick left this deadline due: the machine disagrees with itself about
            # what is due. Do not flood the log; retry once a second and say so.
            log.warning("a tick did not clear a due deadline", deadline_ms=deadline_ms)
            self._last_ticked_deadline_ms = None
            return 1.0
        self._last_ticked_deadline_ms = deadline_ms
        self._tick_task = self.loop.create_task(self._propose_tick())  # keep a reference
        return 0.002

    async def _propose_tick(self) -> None:
        self._tick_inflight = True
        try:
            request = envelope.Request(envelope.COMMAND, "", codec.encode_command(c.Tick()))
            await self.submit([request])
            self.ticks_committed += 1
        except Exception as exc:  # a deposed leader's tick simply does not commit
            log.debug("tick not committed", error=str(exc))
            self._last_ticked_deadline_ms = None
        finally:
            self._tick_inflight = False

    # --- Membership -----------------------------------------------------------------------

    async def add_member(
        self, node_id: str, raft_addr: str, grpc_addr: str, incarnation: str = ""
    ) -> None:
        """Add a voter (leader only). Already a member: only its directory entry is updated."""
        if not self.is_leader():
            raise self.not_leader()
        members = {n.address for n in self.syncobj.otherNodes} | {self.config.raft_addr}
        if raft_addr not in members:
            await self._membership(self.syncobj.addNodeToCluster, raft_addr)
            log.info("member added", node_id=node_id, raft_addr=raft_addr)
        # Recorded at once, gRPC address or not (coolbeans' Join does): `leave --node-id`
        # then works for a member that never started, and the id cannot be taken twice.
        grpc_addr = grpc_addr or self.state.members.get(raft_addr, ("", ""))[1]
        payload = envelope.encode_member(node_id, grpc_addr, raft_addr, incarnation)
        await self.submit([envelope.Request(envelope.MEMBER, "", payload)])

    async def remove_member(self, raft_addr: str) -> None:
        """Remove a voter (leader only; the leader cannot remove itself: transfer first)."""
        if not self.is_leader():
            raise self.not_leader()
        if raft_addr == self.config.raft_addr:
            raise MembershipRefused("the leader cannot remove itself: transfer leadership first")
        # First the directory entry, which the leaving node still receives and which tells it
        # (that incarnation of it: a node started later at the same address replays this
        # entry and carries on) to stop its Raft rather than sit outside the cluster.
        incarnation = self.state.incarnations.get(raft_addr, "")
        forget = envelope.Request(
            envelope.FORGET, "", envelope.encode_forget(raft_addr, incarnation)
        )
        forget_index = (await self.submit([forget]))[0][2]
        # The leaving node must also learn that the entry is committed: a later entry, sent
        # with a commit index past the FORGET, tells it. Wait (briefly: it may be dead) for it
        # to hold both before it is cut off.
        await self._wait_for_match(raft_addr, forget_index)
        me = self._member_payload()
        marker_index = (await self.submit([envelope.Request(envelope.MEMBER, "", me)]))[0][2]
        await self._wait_for_match(raft_addr, marker_index)
        await self._membership(self.syncobj.removeNodeFromCluster, raft_addr)
        log.info("member removed", raft_addr=raft_addr)

    async def _wait_for_match(self, raft_addr: str, index: int, timeout_s: float = 5.0) -> None:
        """Wait until the leader knows ``raft_addr`` holds the log up to ``index``."""
        give_up = self.loop.time() + timeout_s
        while self.loop.time() < give_up:
            status = self.syncobj.getStatus()  # between two ticks: they run on this loop
            if status.get(f"match_idx_server_{raft_addr}", 0) >= index:
                return
            await asyncio.sleep(0.05)
        log.warning("a leaving node did not catch up; removing it anyway", raft_addr=raft_addr)

    async def transfer_leadership(self) -> None:
        """Hand leadership to the most caught-up follower and wait until someone else leads."""
        error = await self._call_with_callback(self.syncobj.transferLeadership, None)
        if error != FAIL_REASON.SUCCESS:
            raise MembershipRefused(
                f"leadership transfer refused (reason {error}): no caught-up follower connected"
            )
        for _ in range(100):
            if not self.is_leader():
                log.info("leadership handed over", node_id=self.config.node_id)
                return
            await asyncio.sleep(0.05)
        raise MembershipRefused("leadership transfer did not complete within 5 s: retry")

    async def _membership(self, change: Callable[..., None], raft_addr: str) -> None:
        error = await self._call_with_callback(change, raft_addr)
        if error != FAIL_REASON.SUCCESS:
            raise MembershipRefused(
                f"membership change for {raft_addr} refused (reason {error}): another change "
                "may be pending or the new leader's first entry is not applied yet; retry"
            )

    async def _call_with_callback(self, fn: Callable[..., None], arg: Any) -> int:
        future: asyncio.Future[int] = self.loop.create_future()

        def callback(_result: Any, error: int) -> None:
            self.loop.call_soon_threadsafe(_settle, future, error, None)

        # pysyncobj's membership and transfer calls touch its state: fine between two ticks,
        # which is whenever this loop runs anything else (cluster.raft_loop).
        fn(arg, callback=callback)
        return await asyncio.wait_for(future, 10.0)

    async def wait_applied(self, index: int, timeout_s: float = 2.0) -> bool:
        """Wait until this replica has applied ``index`` (a follower reading what the leader
        just applied for it); False if it has not within ``timeout_s``."""
        deadline = self.loop.time() + timeout_s
        while int(self.syncobj.raftLastApplied) < index:
            if self.loop.time() >= deadline:
                return False
            await asyncio.sleep(0.001)
        return True

    # --- Snapshots ------------------------------------------------------------------------

    async def machine_snapshot(self) -> tuple[bytes, int]:
        """The machine's snapshot bytes and the Raft index they reflect, taken between two
        applies: consistent even under load."""

        return self.state.machine.snapshot(), int(self.syncobj.raftLastApplied)

    def member_addrs(self) -> list[str]:
        return sorted([self.config.raft_addr, *(n.address for n in self.syncobj.otherNodes)])


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
