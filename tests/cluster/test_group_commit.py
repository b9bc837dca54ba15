"""A follower's acknowledgements under ``--fsync batch``: held until its poll round ends, then
one sync covers every entry the round appended (group commit), never an ack before its sync.

pysyncobj is replaced here by the smallest fakes of its journal, transport and poller that
``JournalSync`` touches, so each rule is checked exactly; test_durability.py checks the same
policy end to end on real nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.durability import JournalSync


class _File:
    def __init__(self, path: Path) -> None:
        self._ResizableFile__f = open(path, "wb")  # noqa: SIM115 - closed by the test


class _Meta:
    def __init__(self, path: Path) -> None:
        self._path = str(path)

    def getPath(self) -> str:
        return self._path

    def storeMeta(self, meta: dict[str, Any]) -> None:
        pass


class _Journal:
    def __init__(self, tmp_path: Path) -> None:
        self._FileJournal__journalFile = _File(tmp_path / "journal")
        self._FileJournal__metaStorer = _Meta(tmp_path / "meta")
        self.entries: list[tuple[bytes, int, int]] = []

    def add(self, command: bytes, idx: int, term: int) -> None:
        self.entries.append((command, idx, term))

    def deleteEntriesFrom(self, entry_from: int) -> None:
        del self.entries[entry_from:]

    def deleteEntriesTo(self, entry_to: int) -> None:
        del self.entries[:entry_to]

    def clear(self) -> None:
        self.entries.clear()

    def __getitem__(self, i: int) -> tuple[bytes, int, int]:
        return self.entries[i]

    def __len__(self) -> int:
        return len(self.entries)


class _Follower:
    """A follower's view: journal, transport (records what was sent, and the sync count at
    the time) and poller (runs the given message handlers as one poll round)."""

    def __init__(self, tmp_path: Path) -> None:
        self._SyncObj__raftLog = _Journal(tmp_path)
        self.sent: list[tuple[str, dict[str, Any], int]] = []
        self._SyncObj__transport = self
        self._poller = self
        self.round: list[Callable[[], None]] = []
        self.sync = JournalSync(self, "batch", str(tmp_path / "dump"))

    def send(self, node: str, message: dict[str, Any]) -> None:
        self.sent.append((node, message, self.sync.syncs))

    def poll(self, timeout: float) -> None:
        for handler in self.round:
            handler()
        self.round = []

    def receive(self, node: str, index: int) -> Callable[[], None]:
        """A handler as pysyncobj's for append_entries: append the entry, then acknowledge."""

        def handle() -> None:
            self._SyncObj__raftLog.add(b"entry", index, 1)
            self._SyncObj__transport.send(node, _ack(index + 1))

        return handle

    def close(self) -> None:
        self._SyncObj__raftLog._FileJournal__journalFile._ResizableFile__f.close()


def _ack(next_index: int, success: bool = True) -> dict[str, Any]:
    return {"type": "next_node_idx", "next_node_idx": next_index, "success": success}


def test_acks_of_one_poll_round_wait_for_one_sync_and_the_latest_per_leader_is_sent(
    tmp_path: Path,
) -> None:
    follower = _Follower(tmp_path)
    follower.round = [follower.receive("leader", i) for i in (1, 2, 3)]
    follower._poller.poll(0.05)
    assert follower.sync.syncs == 1  # one sync for three entries
    assert [(n, m["next_node_idx"], syncs) for n, m, syncs in follower.sent] == [("leader", 4, 1)]
    follower.close()


def test_an_ack_with_nothing_unsynced_goes_out_at_once(tmp_path: Path) -> None:
    follower = _Follower(tmp_path)
    follower._SyncObj__transport.send("leader", _ack(1))  # a heartbeat's ack, nothing appended
    assert [m["next_node_idx"] for _, m, _ in follower.sent] == [1]
    assert follower.sync.syncs == 0
    follower.close()


def test_a_refusal_after_a_held_ack_is_sent_after_it_and_after_the_sync(tmp_path: Path) -> None:
    follower = _Follower(tmp_path)

    def refuse() -> None:
        follower._SyncObj__transport.send("leader", _ack(2, success=False))

    follower.round = [follower.receive("leader", 1), refuse]
    follower._poller.poll(0.05)
    assert [(m["success"], syncs) for _, m, syncs in follower.sent] == [(True, 1), (False, 1)]
    follower.close()


def test_a_vote_is_granted_only_after_the_journal_is_synced(tmp_path: Path) -> None:
    follower = _Follower(tmp_path)

    def vote() -> None:
        follower._SyncObj__transport.send("candidate", {"type": "response_vote", "term": 2})

    follower.round = [follower.receive("leader", 1), vote]
    follower._poller.poll(0.05)
    kinds = [(m["type"], syncs) for _, m, syncs in follower.sent]
    assert kinds[0] == ("response_vote", 1)  # synced first, then the vote
    assert ("next_node_idx", 1) in kinds
    follower.close()


def test_a_truncated_log_drops_the_acks_it_held(tmp_path: Path) -> None:
    follower = _Follower(tmp_path)

    def truncate() -> None:  # a new leader's entries replace the ones just acknowledged
        follower._SyncObj__raftLog.deleteEntriesFrom(0)

    follower.round = [follower.receive("old-leader", 1), truncate]
    follower._poller.poll(0.05)
    assert follower.sent == []
    follower.close()
