"""The Raft log entry: a batch of requests, each a command for the machine or a directory note.

One log entry carries every request the leader had pending when it proposed (group commit: a
busy leader replicates many puts per Raft round trip). Each request is
``(kind, request_id, payload)``: kind ``COMMAND`` carries ``statemachine.codec`` bytes; kind
``MEMBER`` records a node's id, gRPC address and incarnation under its Raft address, so any
replica can say where the leader's gRPC endpoint is (a leader hint) and ``cluster status`` can
name members; kind ``FORGET`` removes a node from that directory and tells that node, and only
that incarnation of it, to stop (a new node at the same address replays it and carries on).

The format is explicit bytes (struct + lengths), not pickle: the log never holds a pickle of
ours, so what a follower applies is data, never code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
COMMAND = 1
MEMBER = 2
FORGET = 3

_HEADER = struct.Struct("<BI")  # version, count
_ITEM = struct.Struct("<BHI")  # kind, len(request_id), len(payload)


@dataclass(frozen=True, slots=True)
class Request:
    kind: int
    request_id: str
    payload: bytes
    # The command decoded from ``payload`` by whoever built this request (the leader, which
    # checks every command before proposing it), so its own apply need not decode it again.
    # Never encoded; a pure function of ``payload``, so a stale one is still right.
    decoded: Any = field(default=None, compare=False)


def encode_batch(requests: list[Request]) -> bytes:
    parts = [_HEADER.pack(FORMAT_VERSION, len(requests))]
    for request in requests:
        rid = request.request_id.encode("utf-8")
        parts.append(_ITEM.pack(request.kind, len(rid), len(request.payload)))
        parts.append(rid)
        parts.append(request.payload)
    return b"".join(parts)


def decode_batch(data: bytes) -> list[Request]:
    """Decode a batch written by ``encode_batch``; raise ValueError on anything else."""
    version, count = _HEADER.unpack_from(data, 0)
    if version != FORMAT_VERSION:
        raise ValueError(f"unknown log entry version {version}")
    pos = _HEADER.size
    requests = []
    for _ in range(count):
        kind, rid_len, payload_len = _ITEM.unpack_from(data, pos)
        pos += _ITEM.size
        rid = data[pos : pos + rid_len].decode("utf-8")
        pos += rid_len
        requests.append(Request(kind, rid, bytes(data[pos : pos + payload_len])))
        pos += payload_len
    if pos != len(data):
        raise ValueError("trailing bytes in log entry")
    return requests


def encode_member(node_id: str, grpc_addr: str, raft_addr: str, incarnation: str = "") -> bytes:
    return "\n".join((node_id, grpc_addr, raft_addr, incarnation)).encode("utf-8")


def decode_member(payload: bytes) -> tuple[str, str, str, str]:
    """(node id, gRPC address, Raft address, incarnation); entries written before nodes had
    incarnations have three fields."""
    node_id, grpc_addr, raft_addr, *rest = payload.decode("utf-8").split("\n")
    return node_id, grpc_addr, raft_addr, rest[0] if rest else ""


def encode_forget(raft_addr: str, incarnation: str) -> bytes:
    return f"{raft_addr}\n{incarnation}".encode()


def decode_forget(payload: bytes) -> tuple[str, str | None]:
    """(Raft address, incarnation of the node removed); None for an entry written before
    nodes had incarnations, which names the node by its address alone."""
    raft_addr, sep, incarnation = payload.decode("utf-8").partition("\n")
    return raft_addr, incarnation if sep else None
