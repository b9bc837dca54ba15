"""The leader's append messages to its followers: each entry sent once, commit news only when
someone waits for it.

pysyncobj with ``appendEntriesUseBatch=False`` sends a follower a new entry as soon as it is
proposed, and a message carrying only the new commit index each time the leader applies
entries. Two changes, both measured with bench/proxy_cost.py (docs/benchmarks.md, "Append
messages"):

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
- Commit news. A follower learns the commit index from every append and heartbeat; the extra
  message after each apply only lets it apply sooner. Nothing in a follower waits for its
  apply except the wake-up streams that proxies may open on it (a reserve answered there), so
  the message goes out at once only when the applied entries made wake-ups; otherwise the
  commit index rides on the next append or on the heartbeat (``appendEntriesPeriod``). Under
  load that removes one message and its acknowledgement per entry per follower, and the
  follower's replica lags the leader by at most a heartbeat when the cluster goes quiet. The
  commit itself, and so every reply to a client, is unchanged: the leader decides it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_NEXT_INDEX = "_SyncObj__raftNextIndex"
_APPLY = "_SyncObj__applyLogEntries"
_NOT_STATE = "_SyncObj__properies"  # sic: the attributes its dump file leaves out


def install(syncobj: Any, last_wakeup_seq: Callable[[], int]) -> None:
    """Pipeline ``syncobj``'s appends, and send commit news at once only after wake-ups
    (``last_wakeup_seq`` is the number of the newest wake-up the applied entries made)."""
    if not all(hasattr(syncobj, name) for name in (_NEXT_INDEX, _APPLY, _NOT_STATE)):
        raise RuntimeError("pysyncobj's SyncObj layout changed: review cluster.appends")
    _keep_next_index_on_success(syncobj)
    _commit_news_for_wakeups(syncobj, last_wakeup_seq)


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


def _commit_news_for_wakeups(syncobj: Any, last_wakeup_seq: Callable[[], int]) -> None:
    apply_entries = getattr(syncobj, _APPLY)

    def apply_then_ask_for_news() -> bool:
        # pysyncobj calls this on every tick and sends appends at once when it returns True,
        # which it does whenever it applied anything.
        before = last_wakeup_seq()
        applied = bool(apply_entries())
        return applied and last_wakeup_seq() != before

    setattr(syncobj, _APPLY, apply_then_ask_for_news)
    # pysyncobj's dump pickles every attribute the SyncObj did not have when it was built, so
    # this one (code, not Raft state, and a closure that pickle refuses) must be listed out.
    getattr(syncobj, _NOT_STATE).add(_APPLY)
