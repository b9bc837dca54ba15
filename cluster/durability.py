"""The ``--fsync always|batch|never`` policy: when the Raft log is synced, and what waits for it.

Raft's promise is that an acknowledged entry is durable on a majority, so beanraft syncs the
journal (``cluster.journal``) at the two points where a node vouches for entries:

- a follower syncs before it tells the leader "I have these entries" (``next_node_idx`` with
  success) and before it grants a vote (``response_vote``);
- the leader syncs before it acknowledges a committed command to a client.

So when a client hears "done", the leader and at least one follower (a majority of 3) have the
entry on disk. The leader's sync runs on its own thread (``start_syncer``), started as soon as an
entry is on its way to the followers, so it overlaps their round trip instead of following it
in pysyncobj's tick on the loop; a commit is acknowledged (``when_durable``) once a sync that
began after its entry was written has finished. Raft allows this: the leader's own write may go
in parallel with replication, as long as the ack waits for both (Raft thesis, section 10.2.1).

A follower groups its syncs: its acknowledgements of one poll round wait in ``hold`` until the
round ends (``flush``, called by ``RaftCore`` after every tick); one sync then covers every entry
the round appended and the acknowledgements go out. A later acknowledgement to the same leader
supersedes an earlier one (they are cumulative), and one that vouched for entries a conflict
then removed from the log is dropped (``log_truncated``).

``always`` also syncs after every appended entry; ``batch`` (the default) syncs as above;
``never`` leaves it to the OS: writes survive ``kill -9`` of every node (the page cache outlives
the process) but not a power loss of a majority, and the term and vote are not synced either.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

from cluster.journal import Journal

POLICIES = ("always", "batch", "never")
log = structlog.get_logger(__name__)

Send = Callable[[Any, Any], Any]


class JournalSync:
    """Syncs one journal according to the policy; the leader's waiters and the follower's
    acknowledgements wait for it."""

    def __init__(self, journal: Journal, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown fsync policy {policy!r}: choose always, batch or never")
        self.policy = policy
        self.journal = journal
        self._lock = threading.Lock()  # one fdatasync at a time
        # _state guards the waiters; never held across an fdatasync.
        self._state = threading.Condition(threading.Lock())
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._eager: Callable[[], bool] = lambda: False
        self._stopped = False
        self._deferred: dict[Any, tuple[Any, Send, int]] = {}  # node -> latest held ack
        self._truncations = 0
        self.syncs = 0
        if policy == "always":
            journal.after_write = self.sync_if_dirty

    @property
    def synced_index(self) -> int:
        return self.journal.synced_index

    @property
    def dirty(self) -> bool:
        return self.journal.dirty

    def sync_if_dirty(self, force: bool = False) -> None:
        """Make every entry appended so far durable (no-op when nothing is pending)."""
        if self.policy == "never" or not (self.journal.dirty or force):
            return
        with self._lock:
            if not (self.journal.dirty or force):
                return
            synced = self.journal.sync()
            self.syncs += 1
        with self._state:
            ready = [fn for index, fn in self._waiters if index <= synced]
            self._waiters = [w for w in self._waiters if w[0] > synced]
        for fn in ready:
            fn()

    # --- the leader ------------------------------------------------------------------------

    def when_durable(self, index: int, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the entry at ``index`` (already appended) is on disk: at once when
        it is (or under ``never``), else from the syncer thread after its next sync."""
        if self.policy != "never":
            with self._state:
                if index > self.journal.synced_index:
                    self._waiters.append((index, fn))
                    self._state.notify()
                    return
        fn()

    def start_syncer(self, eager: Callable[[], bool]) -> None:
        """Start the thread that syncs for ``when_durable``; while ``eager()`` (this node
        leads) it also syncs every entry as soon as it is on its way to the followers."""
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
        return self.journal.dirty and self._eager()

    def _due(self) -> bool:
        # A waiter whose entry is written but not yet synced (one not yet written waits for
        # the append, which notifies): sync even if another sync cleared dirty meanwhile.
        written = self.journal.written_index
        return any(index <= written for index, _ in self._waiters)

    def _wake_syncer(self) -> None:
        with self._state:
            if self.journal.dirty:
                self._state.notify()

    # --- the ack gate: every message a node sends passes here (RaftCore's transport) -------

    def hold(self, node: Any, message: Any, send: Send) -> bool:
        """Send ``message`` through ``send`` now, later or never; True when this took it."""
        if self.policy == "never" or not isinstance(message, dict):
            return False
        kind = message.get("type")
        if kind == "append_entries" and message.get("entries"):
            send(node, message)
            self._wake_syncer()  # the entry is on its way: now the leader's own sync
            return True
        if kind == "next_node_idx" and message.get("success"):
            if self.journal.dirty or node in self._deferred:
                self._deferred[node] = (message, send, self._truncations)
                return True
        elif kind == "response_vote":
            self.sync_if_dirty()
        elif kind == "next_node_idx" and node in self._deferred:
            self.flush()  # a refusal must not overtake an earlier acknowledgement
        return False

    def flush(self) -> None:
        """Sync once for every acknowledgement held since the last flush, then send them."""
        if not self._deferred:
            return
        self.sync_if_dirty()
        acks = list(self._deferred.items())
        self._deferred.clear()
        for node, (message, send, truncations) in acks:
            if truncations == self._truncations:
                send(node, message)

    def log_truncated(self) -> None:
        """Entries were removed from the log: acknowledgements held for them are void."""
        self._truncations += 1
