"""The leader's append messages to its followers: each entry sent once.

pysyncobj with ``appendEntriesUseBatch=False`` sends a follower a new entry as soon as it is
proposed. Measured with bench/proxy_cost.py (docs/benchmarks.md, "Append messages"):

- Pipelined appends. On sending, pysyncobj moves its next index for the follower past the
  entries sent. But when a success comes back ("I hold everything below N") it sets the next
  index to N, back below entries still on their way, and the next send repeats them. Each
  repeat cost a frame both ways, and the follower a truncation of entries it already held
  (logged as "truncating already-applied log entries"), their append again and another sync.
  Raft lowers the next index only on a refusal (section 5.3); a success raises the match index
  and leaves the next index past what was sent, as etcd's raft does in its replicate state.
  Here a success never lowers it. A refusal (``reset``) still sets it where the follower asks,
  and that is how a follower that lost messages with a dropped connection catches up: the next
  append's previous entry is missing there, so the follower refuses with its own last index.
  Entries sent on one connection arrive in order, so they are acknowledged in order.
"""

from __future__ import annotations

from typing import Any

_NEXT_INDEX = "_SyncObj__raftNextIndex"


def install(syncobj: Any) -> None:
    """Pipeline ``syncobj``'s appends."""
    if not hasattr(syncobj, _NEXT_INDEX):
        raise RuntimeError("pysyncobj's SyncObj layout changed: review cluster.appends")
    _keep_next_index_on_success(syncobj)


def _keep_next_index_on_success(syncobj: Any) -> None:
    transport = syncobj._SyncObj__transport
    handle = transport._onMessageReceivedCallback

    def on_message(node: Any, message: Any) -> None:
        if not _is_success(message):
            handle(node, message)
            return
        next_index: dict[Any, int] = getattr(syncobj, _NEXT_INDEX)
        sent = next_index.get(node)
        handle(node, message)
        if sent is not None and next_index.get(node, sent) < sent:
            next_index[node] = sent

    transport.setOnMessageReceivedCallback(on_message)


def _is_success(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("type") == "next_node_idx"
        and bool(message.get("success"))
        and not message.get("reset")
    )
