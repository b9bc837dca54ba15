"""The beanraft job state machine: beanstalkd's job semantics, pure and deterministic.

Theory of operation: ``JobStateMachine.apply(command, now_ms)`` takes a command (frozen data,
``statemachine.commands``) and the leader-stamped time, and returns an ``Outcome``: the reply
to the sender and the waiting reserves it answered (``statemachine.replies``).

Rules this package keeps:
- Nothing here reads a clock, draws a random number, does I/O, starts a thread or logs.
  Imports: the standard library's pure modules only.
- Time as the queue sees it never runs backwards: ``now_ms`` is clamped to the latest seen.
- Job ids come from a counter inside. Ties are broken by job id, never by hash order.
- Illegal commands return a typed reply and change nothing but counters.
- ``snapshot()`` gives the same bytes for the same state.

Module map (dependencies point down the list):
- ``machine``: ``JobStateMachine`` and ``MachineConfig``: apply, dispatch, next deadline,
  snapshot/restore entry points, invariants entry point.
- ``ops_jobs``, ``ops_sessions``, ``ops_reads``: one handler per command.
- ``events``: due events in time order (leases, TTR, delays, pauses, matching, timeouts,
  deadline-soon) and ``next_event_ms``.
- ``snapshot``: the versioned byte format; ``invariants``: ``check_state``.
- ``state``: ``State`` and the transitions (job places, waits, matching, disconnect, tubes).
- ``heaps``: lazy-deletion validity rules and compaction; ``counters``: the cumulative
  counters.
- ``jobs``, ``tubes``, ``sessions``: ``Job``, ``Tube``, ``Client``.
- ``limits``: beanstalkd's limits as named constants and value checks.
- ``commands``, ``replies``: the contract; ``codec``: their wire encoding (the cluster's).
"""
