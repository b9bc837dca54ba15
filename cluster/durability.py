"""The ``--fsync always|batch|never`` policy, added to pysyncobj's journal (it never fsyncs).

pysyncobj writes its log to an mmap'd file and its term/vote to a meta file, and syncs neither
(pysyncobj.md section 9). Raft's promise is that an acknowledged entry is durable on a majority,
so beanraft syncs at the two points where a node vouches for entries:

- a follower syncs its journal before it tells the leader "I have these entries"
  (``next_node_idx`` with success) and before it grants a vote (``response_vote``);
- the leader syncs its journal before it acknowledges a committed command to a client.

So when a client hears "done", the leader and at least one follower (a majority of 3) have the
entry on disk. The leader's sync runs on its own thread (``start_syncer``), started as soon as an
entry is on its way to the followers, so it overlaps their round trip instead of following it
on pysyncobj's tick thread; a commit is acknowledged (``when_durable``) once a sync that began after
its entry was written has finished. Raft allows this: the leader's own write may go in parallel
with replication, as long as the ack waits for both (Raft thesis, section 10.2.1).

``always`` syncs after every appended entry as well; ``batch`` (the default) syncs once per
acknowledgement on the leader and once per poll round on a follower, covering every entry
appended since (group commit);
``never`` leaves it to the OS: writes survive ``kill -9`` of every node (the page cache
outlives the process) but not a power loss of a majority.

Also, before the journal drops entries covered by a new dump file (compaction, snapshot
install), the dump file is synced, so the state never exists only in an unsynced file.

This reaches into pysyncobj's private attributes (there is no supported hook; PR #98 was never
merged); ``install`` checks that they exist so an upgrade that renames them fails loudly.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from typing import Any

import structlog

POLICIES = ("always", "batch", "never")
log = structlog.get_logger(__name__)


class JournalSync:
    """Tracks unsynced journal writes of one SyncObj and syncs them according to the policy."""

    def __init__(self, syncobj: Any, policy: str, dump_path: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown fsync policy {policy!r}: choose always, batch or never")
        self.policy = policy
        self._journal = syncobj._SyncObj__raftLog
        self._dump_path = dump_path
        self._dirty = False
        self._lock = threading.Lock()  # one fdatasync at a time
        # _state guards the indices, _dirty and the waiters; never held across an fdatasync.
        self._state = threading.Condition(threading.Lock())
        self._written_index = 0  # the highest Raft index whose bytes are in the journal file
        self.synced_index = 0  # every entry up to here is on disk
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._eager: Callable[[], bool] = lambda: False
        self._forget_acks: Callable[[], None] = lambda: None
        self._stopped = False
        self.syncs = 0
        if not hasattr(self._journal, "_FileJournal__journalFile"):
            raise RuntimeError("pysyncobj's FileJournal layout changed: review cluster.durability")
        self._log_compactions()
        if policy != "never":
            self._wrap_journal()
            self._wrap_transport(syncobj._SyncObj__transport, syncobj._poller)
            meta = self._journal._FileJournal__metaStorer
            meta.storeMeta = _durable_meta_writer(meta.getPath())

    def sync_if_dirty(self, force: bool = False) -> None:
        """Make every entry appended so far durable (no-op when nothing is pending)."""
        if self.policy == "never" or not (self._dirty or force):
            return
        with self._lock:
            with self._state:
                if not (self._dirty or force):
                    return
                self._dirty = False  # an entry appended from here on sets it again
                upto = self._written_index  # written before the fdatasync below starts
            resizable = self._journal._FileJournal__journalFile
            # On Linux a MAP_SHARED mapping shares the page cache with the file, so fdatasync
            # of the descriptor writes the pages dirtied through the mmap and any new file
            # size (not the mtime, which nobody needs); an msync of the whole (doubling)
            # mapping would only cost more. The descriptor stays the same when the mapping
            # grows (mmap.resize), so a sync may run while the tick thread appends.
            os.fdatasync(resizable._ResizableFile__f.fileno())
            self.syncs += 1
            with self._state:
                self.synced_index = max(self.synced_index, upto)
                ready = [fn for index, fn in self._waiters if index <= self.synced_index]
                self._waiters = [w for w in self._waiters if w[0] > self.synced_index]
        for fn in ready:
            fn()

    def _wake_syncer(self) -> None:
        with self._state:
            if self._dirty:
                self._state.notify()  # the leader's syncer starts now (see _wanted)

    def when_durable(self, index: int, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the entry at ``index`` (already appended) is on disk: at once when
        it is (or under ``never``), else from the syncer thread after its next sync."""
        if self.policy != "never":
            with self._state:
                if index > self.synced_index:
                    self._waiters.append((index, fn))
                    self._state.notify()
                    return
        fn()

    def start_syncer(self, eager: Callable[[], bool]) -> None:
        """Start the thread that syncs for ``when_durable``; while ``eager()`` (this node
        leads) it also syncs every entry as soon as it is appended, to overlap the followers."""
        self._eager = eager
        if self.policy != "never":
            threading.Thread(target=self._sync_forever, name="journal-sync", daemon=True).start()

    def stop_syncer(self) -> None:
        with self._state:
            self._stopped = True
            self._state.notify()

    def _sync_forever(self) -> None:
        while True:
            with self._state:
                while not self._stopped and not self._due() and not self._wanted():
                    self._state.wait(0.5)
                if self._stopped:
                    return
                force = self._due()
            try:
                self.sync_if_dirty(force=force)
            except Exception:  # a closed journal (node stopping): the waiters are moot
                log.warning("journal sync failed", exc_info=True)
                with self._state:
                    self._state.wait(0.1)

    def _wanted(self) -> bool:
        return self._dirty and self._eager()

    def _due(self) -> bool:
        # A waiter whose entry is written but not yet synced (one not yet written waits for
        # the append, which notifies): sync even if another sync cleared _dirty meanwhile.
        return any(index <= self._written_index for index, _ in self._waiters)

    def _log_compactions(self) -> None:
        # pysyncobj cuts the journal right after a new dump file is in place: say so.
        journal = self._journal
        original_delete_to = journal.deleteEntriesTo

        def delete_to(entry_to: int) -> None:
            original_delete_to(entry_to)
            log.info("log compacted into a snapshot", dump=self._dump_path, kept=len(journal))

        journal.deleteEntriesTo = delete_to

    def _wrap_journal(self) -> None:
        journal = self._journal
        original_add = journal.add
        original_delete_from = journal.deleteEntriesFrom
        original_delete_to = journal.deleteEntriesTo
        original_clear = journal.clear

        def add(command: bytes, idx: int, term: int) -> None:
            original_add(command, idx, term)
            with self._state:
                self._written_index = idx
                self._dirty = True
            # The leader's syncer starts once the entry is on its way to a follower (see send
            # in _wrap_transport): woken here, its thread would contend for the GIL with the
            # very send that the commit waits for.
            if self.policy == "always":
                self.sync_if_dirty()

        def delete_from(entry_from: int) -> None:
            first = journal[entry_from][1] if entry_from < len(journal) else None
            self._forget_acks()
            original_delete_from(entry_from)
            with self._state:
                if first is not None:  # indices from `first` on now hold other (unsynced) bytes
                    self._written_index = min(self._written_index, first - 1)
                    self.synced_index = min(self.synced_index, first - 1)
                self._dirty = True

        def delete_to(entry_to: int) -> None:
            # The entries dropped here now live only in the dump file: make it durable first.
            _fsync_file_and_dir(self._dump_path)
            original_delete_to(entry_to)
            self._dirty = True
            self.sync_if_dirty()

        def clear() -> None:
            _fsync_file_and_dir(self._dump_path)
            original_clear()
            with self._state:
                self.synced_index = 0  # entries are written again from the start of the file
                self._dirty = True

        journal.add = add
        journal.deleteEntriesFrom = delete_from
        journal.deleteEntriesTo = delete_to
        journal.clear = clear

    def _wrap_transport(self, transport: Any, poller: Any) -> None:
        """Sync before a follower vouches for entries, once per poll round (group commit).

        A follower's "I have entries up to N" (``next_node_idx`` with success) waits in
        ``deferred`` until the poll round that produced it ends; then one sync covers every
        entry that round appended and the acknowledgements go out. Under load one round holds
        several append messages, so a follower syncs once for all of them instead of once per
        message, with the tick thread, not the disk, setting the pace. A later acknowledgement
        to the same leader supersedes an earlier one (they are cumulative; pysyncobj's leader
        only ever raises its match index). A vote is never granted before the sync."""
        original_send = transport.send
        original_poll = poller.poll
        deferred: dict[Any, Any] = {}  # node -> the latest unsent acknowledgement

        def send(node: Any, message: Any) -> Any:
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "append_entries" and message.get("entries"):
                try:
                    return original_send(node, message)
                finally:
                    self._wake_syncer()  # the entry is on its way: now the leader's own sync
            if kind == "next_node_idx" and message.get("success"):
                if self._dirty or node in deferred:
                    deferred[node] = message
                    return None
            elif kind == "response_vote":
                self.sync_if_dirty()
            elif kind == "next_node_idx" and node in deferred:
                flush()  # a refusal must not overtake an earlier acknowledgement
            return original_send(node, message)

        def flush() -> None:
            if not deferred:
                return
            self.sync_if_dirty()
            acks = list(deferred.items())
            deferred.clear()
            for node, message in acks:
                original_send(node, message)

        def poll(timeout: float) -> Any:
            try:
                return original_poll(timeout)
            finally:
                flush()

        self._forget_acks = deferred.clear  # a truncated log voids what they vouched for
        transport.send = send
        poller.poll = poll


def _durable_meta_writer(path: str) -> Any:
    from pysyncobj.pickle import dumps

    def store_meta(meta: dict[str, Any]) -> None:
        # Term and vote must be on disk before a vote is sent (Raft figure 2).
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        shutil.move(tmp, path)
        _fsync_dir(os.path.dirname(path) or ".")

    return store_meta


def _fsync_file_and_dir(path: str) -> None:
    if not os.path.exists(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
