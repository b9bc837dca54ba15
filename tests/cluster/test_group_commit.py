"""A follower's acknowledgements under ``--fsync batch``: held until its poll round ends, then
one sync covers every entry the round appended (group commit), never an ack before its sync.

A real journal and ``JournalSync``, driven as RaftCore drives them: every message a node sends
passes ``hold``, and ``flush`` runs when a tick's poll round ends. test_durability.py checks
the same policy end to end on real nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.durability import JournalSync
from cluster.journal import Journal


class _Follower:
    """A follower's journal and sync; ``sent`` records each message with the sync count then."""

    def __init__(self, tmp_path: Path) -> None:
        self.journal = Journal(tmp_path / "raft.log")
        self.journal.add(b"first", 1, 0)
        self.journal.sync()
        self.sync = JournalSync(self.journal, "batch")
        self.sent: list[tuple[str, dict[str, Any], int]] = []

    def _wire(self, node: str, message: dict[str, Any]) -> None:
        self.sent.append((node, message, self.sync.syncs))

    def send(self, node: str, message: dict[str, Any]) -> None:
        if not self.sync.hold(node, message, self._wire):
            self._wire(node, message)

    def receive(self, node: str, index: int) -> None:
        """As the follower's append handler: append the entry, then acknowledge it."""
        self.journal.add(b"entry", index, 1)
        self.send(node, _ack(index + 1))

    def end_round(self) -> None:
        self.sync.flush()

    def close(self) -> None:
        self.journal._destroy()


def _ack(next_index: int, success: bool = True) -> dict[str, Any]:
    return {"type": "next_node_idx", "next_node_idx": next_index, "success": success}


def test_acks_of_one_poll_round_wait_for_one_sync_and_the_latest_per_leader_is_sent(
    tmp_path: Path,
) -> None:
    follower = _Follower(tmp_path)
    for index in (2, 3, 4):
        follower.receive("leader", index)
    assert follower.sent == []  # held until the round ends
    follower.end_round()
    assert follower.sync.syncs == 1  # one sync for three entries
    assert [(n, m["next_node_idx"], syncs) for n, m, syncs in follower.sent] == [("leader", 5, 1)]
    follower.close()


def test_an_ack_with_nothing_unsynced_goes_out_at_once(tmp_path: Path) -> None:
    follower = _Follower(tmp_path)
    follower.send("leader", _ack(2))  # a heartbeat's ack, nothing appended
    assert [m["next_node_idx"] for _, m, _ in follower.sent] == [2]
    assert follower.sync.syncs == 0
    follower.close()


def test_a_refusal_after_a_held_ack_is_sent_after_it_and_after_the_sync(tmp_path: Path) -> None:
    follower = _Follower(tmp_path)
    follower.receive("leader", 2)
    follower.send("leader", _ack(3, success=False))
    follower.end_round()
    assert [(m["success"], syncs) for _, m, syncs in follower.sent] == [(True, 1), (False, 1)]
    follower.close()


def test_a_vote_is_granted_only_after_the_journal_is_synced(tmp_path: Path) -> None:
    follower = _Follower(tmp_path)
    follower.receive("leader", 2)
    follower.send("candidate", {"type": "response_vote", "term": 2})
    follower.end_round()
    kinds = [(m["type"], syncs) for _, m, syncs in follower.sent]
    assert kinds[0] == ("response_vote", 1)  # synced first, then the vote
    assert ("next_node_idx", 1) in kinds
    follower.close()


def test_a_truncated_log_drops_the_acks_it_held(tmp_path: Path) -> None:
    follower = _Follower(tmp_path)
    follower.receive("old-leader", 2)
    # a new leader's entries replace the one just acknowledged (as RaftCore truncates)
    follower.sync.log_truncated()
    follower.journal.deleteEntriesFrom(1)
    follower.end_round()
    assert follower.sent == []
    follower.close()
