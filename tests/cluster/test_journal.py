"""The Raft log on disk (cluster/journal.py): what is written reads back, a torn or damaged tail
is cut off, damage before the tail refuses to open, and a full disk is an error, not a signal."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.journal import (
    FIRST_RECORD_OFFSET,
    META_SLOT_BYTES,
    DamagedJournal,
    DiskFull,
    Journal,
)


def _fill(
    journal: Journal, count: int, start: int = 1, term: int = 1
) -> list[tuple[bytes, int, int]]:
    entries = [(b"command-%d" % i * 3, i, term) for i in range(start, start + count)]
    for entry in entries:
        journal.add(*entry)
    return entries


def _reopen(journal: Journal) -> Journal:
    journal._destroy()
    return Journal(journal.path)


def _record_offsets(journal: Journal) -> list[int]:
    return list(journal._offsets)


def test_entries_term_vote_and_commit_index_read_back_after_a_restart(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "raft.log")
    entries = _fill(journal, 20)
    journal.setCurrentTerm(7, "127.0.0.1:7001")
    journal.setRaftCommitIndex(15)
    journal.onOneSecondTimer()
    journal = _reopen(journal)
    assert list(journal) == entries
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (7, "127.0.0.1:7001")
    assert journal.getRaftCommitIndex() == 15
    journal._destroy()


def test_a_record_cut_in_the_middle_is_cut_off_and_the_records_before_it_kept(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "raft.log")
    entries = _fill(journal, 10)
    cut = _record_offsets(journal)[-1] + 11  # inside the last record
    journal._destroy()
    os.truncate(journal.path, cut)
    journal = Journal(journal.path)
    assert list(journal) == entries[:-1]
    journal.add(b"next", 10, 2)  # the log goes on from there
    journal = _reopen(journal)
    assert list(journal)[-1] == (b"next", 10, 2)
    journal._destroy()


def test_a_zeroed_last_record_is_cut_off(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "raft.log")
    entries = _fill(journal, 10)
    start, end = _record_offsets(journal)[-1], journal.size_bytes
    journal._destroy()
    with open(journal.path, "r+b") as f:
        f.seek(start)
        f.write(bytes(end - start))
    journal = Journal(journal.path)
    assert list(journal) == entries[:-1]
    journal._destroy()


def test_a_flipped_byte_in_the_last_record_is_cut_off_and_never_read_back(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "raft.log")
    entries = _fill(journal, 10)
    _flip(journal.path, journal.size_bytes - 9)
    journal._destroy()
    journal = Journal(journal.path)
    assert list(journal) == entries[:-1]
    journal.add(b"replacement", 10, 3)
    journal = _reopen(journal)
    assert list(journal) == [*entries[:-1], (b"replacement", 10, 3)]
    journal._destroy()


def test_a_flipped_byte_inside_the_log_refuses_to_open_and_names_the_place(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "raft.log")
    _fill(journal, 10)
    offset = _record_offsets(journal)[4] + 30  # in the body of entry 5
    journal._destroy()
    _flip(journal.path, offset)
    with pytest.raises(DamagedJournal, match=r"after index 4\) is followed by valid records"):
        Journal(journal.path)


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "raft.log"
    path.write_bytes(b"PYSYNCOBJ" + bytes(100))
    (tmp_path / "raft.log.meta").write_bytes(b"")
    with pytest.raises(DamagedJournal, match="header"):
        Journal(path)


def test_removing_the_tail_zeroes_it_so_a_restart_never_reads_it_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "raft.log")
    entries = _fill(journal, 10)
    journal.deleteEntriesFrom(6)  # entries 7..10 conflicted with a new leader's
    journal.add(b"short", 7, 2)
    journal = _reopen(journal)
    assert list(journal) == [*entries[:6], (b"short", 7, 2)]
    journal._destroy()


def test_compaction_keeps_the_tail_in_a_new_file_that_survives_a_restart(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "raft.log")
    entries = _fill(journal, 10)
    journal.deleteEntriesTo(7)
    assert list(journal) == entries[7:]
    journal.add(b"after", 11, 1)
    journal = _reopen(journal)
    assert list(journal) == [*entries[7:], (b"after", 11, 1)]
    assert not (tmp_path / "raft.log.new").exists()
    journal._destroy()


def test_the_commit_index_never_points_past_a_log_whose_tail_was_cut(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "raft.log")
    _fill(journal, 10)
    journal.setRaftCommitIndex(10)
    journal.onOneSecondTimer()
    cut = _record_offsets(journal)[8]
    journal._destroy()
    os.truncate(journal.path, cut)
    journal = Journal(journal.path)
    assert journal.getRaftCommitIndex() == 8
    journal._destroy()


def test_a_torn_meta_slot_falls_back_to_the_other_one(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "raft.log")
    journal.setCurrentTerm(3, "a")
    journal.setCurrentTerm(4, "b")  # the newest slot
    newest = journal.meta.seq % 2
    journal._destroy()
    _flip(tmp_path / "raft.log.meta", newest * META_SLOT_BYTES + 20)
    journal = Journal(journal.path)
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (3, "a")
    journal._destroy()


def test_a_meta_file_with_both_slots_damaged_refuses_to_open(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "raft.log")
    journal.setCurrentTerm(3, "a")
    journal._destroy()
    _flip(tmp_path / "raft.log.meta", 20)
    _flip(tmp_path / "raft.log.meta", META_SLOT_BYTES + 20)
    with pytest.raises(DamagedJournal, match="term and vote are lost"):
        Journal(journal.path)


def test_sync_reports_what_it_made_durable(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "raft.log")
    _fill(journal, 3)
    assert journal.dirty and journal.synced_index == 0
    assert journal.sync() == 3
    assert not journal.dirty and journal.synced_index == 3
    journal._destroy()


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs (root only) to fill."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("a full-disk test needs root to mount a tmpfs")
        pytest.skip("a full-disk test needs root to mount a tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.root
def test_a_full_disk_raises_disk_full_keeps_the_log_as_it_was_and_recovers(
    small_disk: Path,
) -> None:
    journal = Journal(small_disk / "raft.log")
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # half the disk: the journal fills the rest
        f.write(bytes(12 << 20))
    written = []
    with pytest.raises(DiskFull, match="no space left"):
        for i in range(1, 100_000):
            journal.add(bytes(1000), i, 1)
            written.append(i)
    assert [index for _, index, _ in journal] == written  # the failed record is not in the log
    assert not journal.has_room()
    filler.unlink()
    assert journal.has_room()
    journal.add(b"after", len(written) + 1, 1)
    journal = _reopen(journal)
    assert journal[-1] == (b"after", len(written) + 1, 1)
    journal.setCurrentTerm(9, "x")  # the meta is written in place: it needs no new space
    journal._destroy()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 5), st.binary(max_size=40)),
            st.tuples(st.just("delete_from"), st.integers(0, 30), st.just(b"")),
            st.tuples(st.just("delete_to"), st.integers(0, 30), st.just(b"")),
            st.tuples(st.just("reopen"), st.just(0), st.just(b"")),
        ),
        max_size=30,
    )
)
def test_the_journal_always_reads_back_as_a_plain_list_would(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, bytes]]
) -> None:
    journal = Journal(tmp_path_factory.mktemp("journal") / "raft.log")
    model: list[tuple[bytes, int, int]] = []
    for op, n, data in ops:
        if op == "add":
            for _ in range(n):
                index = model[-1][1] + 1 if model else 1
                journal.add(data, index, 1)
                model.append((data, index, 1))
        elif op == "delete_from":
            journal.deleteEntriesFrom(n)
            del model[n:]
        elif op == "delete_to" and n <= len(model):
            journal.deleteEntriesTo(n)
            del model[:n]
        elif op == "reopen":
            journal = _reopen(journal)
        assert list(journal) == model
    journal = _reopen(journal)
    assert list(journal) == model
    assert journal.size_bytes >= FIRST_RECORD_OFFSET
    journal._destroy()
