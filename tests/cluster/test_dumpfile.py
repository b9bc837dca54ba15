"""The dump file (cluster/dumpfile.py): checked before use, written by a forked child, sent to a
follower in chunks that are checked before they replace anything."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_harness import InProcessCluster
from harness import async_wait_until, wait_until

from cluster.dumpfile import (
    FAILED,
    NOT_SERIALIZING,
    SUCCESS,
    DamagedDump,
    Dump,
    DumpStore,
    decode_dump,
    encode_dump,
    read_dump,
    write_dump_file,
)
from statemachine import commands as c

_DUMP = Dump(
    last=(b"\x00last", 41, 3),
    prev=(b"\x00prev", 40, 3),
    members=["127.0.0.1:7001", "127.0.0.1:7002"],
    state=random.Random(7).randbytes(12_000),  # three chunks of 4 KiB, even compressed
)


class _Member:
    def __init__(self, address: str) -> None:
        self.address = address


def _store(path: Path, state: bytes = _DUMP.state) -> tuple[DumpStore, list[bytes]]:
    restored: list[bytes] = []
    return DumpStore(path, 4096, lambda: state, restored.append), restored


def test_a_dump_reads_back_as_it_was_written() -> None:
    assert decode_dump(encode_dump(_DUMP), "test") == _DUMP


@pytest.mark.parametrize("position", [0, 10, 60, -20, -1])
def test_a_dump_with_any_byte_changed_is_refused(position: int) -> None:
    data = bytearray(encode_dump(_DUMP))
    data[position] ^= 0x01
    with pytest.raises(DamagedDump):
        decode_dump(bytes(data), "test")


def test_a_dump_cut_short_is_refused_with_its_origin_named() -> None:
    data = encode_dump(_DUMP)
    with pytest.raises(DamagedDump, match="the-file: the checksum does not match"):
        decode_dump(data[: len(data) // 2], "the-file")


def test_a_damaged_dump_on_disk_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "state.dump"
    write_dump_file(path, encode_dump(_DUMP)[:-3] + b"xyz")
    store, _ = _store(path)
    with pytest.raises(DamagedDump):
        store.check_at_start()


def test_no_dump_yet_is_not_an_error(tmp_path: Path) -> None:
    store, _ = _store(tmp_path / "state.dump")
    assert store.check_at_start() is None


def _wait(store: DumpStore) -> int:
    def finished() -> tuple[int]:
        state, _ = store.checkSerializing()
        return () if state == 1 else (state,)  # type: ignore[return-value]  # 1: SERIALIZING

    return int(wait_until(finished, 20, "the dump child to finish", poll_s=0.01)[0])


def test_a_forked_child_writes_the_dump_and_it_loads_with_its_members(tmp_path: Path) -> None:
    path = tmp_path / "state.dump"
    store, restored = _store(path)
    members = {_Member("127.0.0.1:7002"), _Member("127.0.0.1:7001")}
    store.serialize((None, _DUMP.last, _DUMP.prev, members), _DUMP.prev[1])
    assert _wait(store) == SUCCESS
    assert store.checkSerializing() == (NOT_SERIALIZING, None)
    assert read_dump(path) == _DUMP
    loader = DumpStore(path, 4096, bytes, restored.append, member=_Member)
    _, last, prev, loaded_members = loader.deserialize()
    assert (last, prev) == (_DUMP.last, _DUMP.prev)
    assert [m.address for m in loaded_members] == _DUMP.members
    loaded = loader.take_loaded()
    assert loaded is not None and loaded.state == _DUMP.state


def test_a_child_that_fails_is_reported_and_the_next_attempt_waits(tmp_path: Path) -> None:
    store, _ = _store(tmp_path / "missing-dir" / "state.dump")
    store.serialize((None, _DUMP.last, _DUMP.prev, set()), 40)
    assert _wait(store) == FAILED
    assert store.failed == 1
    store.serialize((None, _DUMP.last, _DUMP.prev, set()), 40)  # within RETRY_AFTER_S
    assert store.checkSerializing() == (NOT_SERIALIZING, None)


def _send_all(sender: DumpStore, receiver: DumpStore, damage_at: int | None = None) -> bool:
    done = False
    n = 0
    while True:
        chunk: Any = sender.getTransmissionData("follower")
        assert chunk is not None
        if damage_at == n:
            data = bytearray(chunk[0])
            data[len(data) // 2] ^= 0xFF
            chunk = (bytes(data), chunk[1], chunk[2])
        done = receiver.setTransmissionData(chunk)
        n += 1
        if chunk[2]:
            return done


def test_a_dump_sent_in_chunks_replaces_the_followers_once_whole_and_checked(
    tmp_path: Path,
) -> None:
    leader_path = tmp_path / "leader.dump"
    write_dump_file(leader_path, encode_dump(_DUMP))
    sender, _ = _store(leader_path)
    receiver, _ = _store(tmp_path / "follower.dump")
    assert _send_all(sender, receiver)
    assert read_dump(tmp_path / "follower.dump") == _DUMP
    assert not (tmp_path / "follower.dump.incoming").exists()


def test_a_dump_damaged_on_the_way_is_dropped_and_the_old_one_kept(tmp_path: Path) -> None:
    leader_path = tmp_path / "leader.dump"
    write_dump_file(leader_path, encode_dump(_DUMP))
    older = Dump((b"old", 5, 1), (b"older", 4, 1), ["127.0.0.1:7001"], b"old state")
    follower_path = tmp_path / "follower.dump"
    write_dump_file(follower_path, encode_dump(older))
    sender, _ = _store(leader_path)
    receiver, _ = _store(follower_path)
    assert not _send_all(sender, receiver, damage_at=1)
    assert read_dump(follower_path) == older
    assert _send_all(sender, receiver)  # the next transmission goes through
    assert read_dump(follower_path) == _DUMP


async def test_a_node_stopped_between_its_dump_and_its_log_cut_keeps_the_entries_after_the_dump(
    tmp_path: Path,
) -> None:
    """pysyncobj empties a log that does not start at the dump's head; a node stopped after
    writing a dump but before cutting its log holds the dump's entries further in, followed by
    entries it acknowledged. They must survive the restart."""

    cluster = InProcessCluster(tmp_path)
    await cluster.start_all()
    leader = await cluster.wait_for_leader()
    i = next(i for i, n in cluster.nodes.items() if n is not leader)
    follower = cluster.nodes[i]
    for n in range(30):
        await cluster.apply(c.Put("default", 1, 0, 60_000, b"job-%d" % n))
    await cluster.assert_converged()
    follower.journal.deleteEntriesTo = lambda entry_to: None  # stopped before the cut
    follower.syncobj.forceLogCompaction()
    await async_wait_until(lambda: follower.dumps.written, 10, "the follower's dump written")
    for n in range(30, 40):
        await cluster.apply(c.Put("default", 1, 0, 60_000, b"job-%d" % n))
    await cluster.assert_converged()
    last = follower.journal[-1][1]
    await cluster.stop_all()
    alone = cluster.start(i)  # alone: it can only read its own disk
    await asyncio.sleep(1.0)  # its start-up has run by then: it must not have emptied the log
    assert alone.journal[-1][1] == last
    dump = read_dump(alone.config.dump_path)
    assert dump is not None and alone.journal[0] == dump.prev
    await cluster.stop_all()


def test_a_dump_child_dies_with_its_node_and_writes_nothing_after_it(tmp_path: Path) -> None:
    """A node killed while its child writes a dump takes the child with it: the child must not
    rename a dump into the data dir of the node restarted there."""
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from cluster.dumpfile import DumpStore

        def slow_state() -> bytes:
            time.sleep(5)
            return b"state"

        store = DumpStore(Path({str(tmp_path / "state.dump")!r}), 4096, slow_state, print)
        store.serialize((None, (b"l", 2, 1), (b"p", 1, 1), set()), 1)
        print(store._pid, flush=True)
        time.sleep(60)
        """
    )
    node = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    assert node.stdout is not None
    child = int(node.stdout.readline())
    node.kill()
    node.wait()
    wait_until(lambda: not _alive(child), 10, "the dump child to die with its node")
    time.sleep(0.2)  # the scenario: nothing is renamed into place afterwards either
    assert not (tmp_path / "state.dump").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for init is as good as gone
        return f.read().split(")")[-1].split()[0] != "Z"
