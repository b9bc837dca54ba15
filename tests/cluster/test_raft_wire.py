"""Raft frames (cluster/raft_wire.py): sealed with AES-256-GCM under the cluster secret, no zlib.

pysyncobj unpickles what ``decrypt`` returns, so every frame that was not sealed by a holder
of the secret, or was altered on the way, must be refused before that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import zlib
from pathlib import Path

import pytest
from cluster_harness import InProcessCluster

from cluster.node import RaftNode
from cluster.raft_wire import AeadFrames, FrameRefused, _Uncompressed
from statemachine import commands as c
from statemachine import replies as r


@pytest.fixture(scope="module")
def frames() -> AeadFrames:
    return AeadFrames("the cluster secret")


def test_a_sealed_frame_opens_with_the_same_secret_and_keeps_its_timestamp(
    frames: AeadFrames,
) -> None:
    token = frames.encrypt_at_time(b"append_entries...", 1234)
    assert frames.extract_timestamp(token) == 1234
    assert frames.decrypt(token) == b"append_entries..."
    assert b"append_entries" not in token  # sealed, not only signed


def test_the_same_message_twice_gives_different_frames(frames: AeadFrames) -> None:
    assert frames.encrypt_at_time(b"m", 1) != frames.encrypt_at_time(b"m", 1)


def test_a_frame_sealed_with_another_secret_is_refused(frames: AeadFrames) -> None:
    foreign = AeadFrames("another cluster").encrypt_at_time(b"m", 1)
    with pytest.raises(FrameRefused, match="authentication"):
        frames.decrypt(foreign)


@pytest.mark.parametrize("position", [1, 9, 21, -1], ids=["timestamp", "nonce", "body", "tag"])
def test_a_frame_altered_anywhere_is_refused_before_its_timestamp_is_read(
    frames: AeadFrames, position: int
) -> None:
    token = bytearray(frames.encrypt_at_time(b"a message of some length", 7))
    token[position] ^= 0x01
    with pytest.raises(FrameRefused):
        frames.extract_timestamp(bytes(token))  # pysyncobj reads this first
    with pytest.raises(FrameRefused):
        frames.decrypt(bytes(token))


@pytest.mark.parametrize("garbage", [b"", b"\x01short", b"gAAAAA" + b"x" * 60])
def test_garbage_or_a_fernet_token_is_refused_before_decryption(
    frames: AeadFrames, garbage: bytes
) -> None:
    with pytest.raises(FrameRefused, match="not a beanraft Raft frame"):
        frames.extract_timestamp(garbage)
    with pytest.raises(FrameRefused):
        frames.decrypt(garbage)


def test_messages_go_out_uncompressed_and_compressed_ones_are_still_read() -> None:
    message = pickle.dumps({"type": "next_node_idx", "next_node_idx": 5}, 2)
    assert _Uncompressed.compress(message, 3) == message
    assert _Uncompressed.decompress(message) == message
    assert _Uncompressed.decompress(zlib.compress(message, 3)) == message


def test_pysyncobj_pickles_with_protocol_4_and_still_reads_what_protocol_2_wrote() -> None:
    import pysyncobj.pickle as pysyncobj_pickle

    from cluster import raft_wire

    raft_wire.install()  # what every node does before building its SyncObj
    entry = b"\x01o" + bytes(range(256)) * 5  # a log entry: our batch of encoded commands
    message = {"type": "append_entries", "term": 3, "entries": [(entry, 7, 3)]}
    written = pysyncobj_pickle.dumps(message)
    assert written[:2] == b"\x80\x04"  # protocol 4: bytes as bytes, not latin-1 text
    assert len(written) < len(pickle.dumps(message, 2)) * 0.75
    assert pysyncobj_pickle.loads(written) == message
    # Journals, dump files and nodes of before wrote protocol 2: still read.
    assert pysyncobj_pickle.loads(pickle.dumps(message, 2)) == message
    assert _Uncompressed.decompress(written) == written  # not taken for a zlib stream


async def test_a_node_with_another_secret_gets_nothing_from_the_cluster(tmp_path: Path) -> None:
    """Real nodes on real sockets: two share the secret and commit; the third, with another
    secret, has every frame refused, so it never learns an entry or a leader."""

    cluster = InProcessCluster(tmp_path)
    intruder = dataclasses.replace(cluster.config(2), secret="not the cluster's secret")
    for i in (0, 1):
        cluster.start(i)
    outsider = RaftNode(intruder, asyncio.get_running_loop())
    outsider.start()
    empty_log_index = int(outsider.syncobj.raftLastApplied)  # pysyncobj's initial entry
    try:
        for i in range(5):
            reply = (await cluster.apply(c.Put("t", 1, 0, 60_000, b"%d" % i))).reply
            assert isinstance(reply, r.Inserted)
        await asyncio.sleep(1.0)  # several heartbeats: the outsider would have them by now
        assert int(outsider.syncobj.raftLastApplied) == empty_log_index
        assert not outsider.leader_raft_addr()
        assert cluster.last_index > empty_log_index + 5
    finally:
        await outsider.stop()
        await cluster.stop_all()
