"""The beanraft job state machine: beanstalkd's job semantics, pure and deterministic.

Theory of operation: ``JobStateMachine.apply(command, now_ms)`` takes a command (frozen data,
``statemachine.commands``) and the leader-stamped time, and returns an ``Outcome``: the reply
to the sender and the waiting reserves it answered (``statemachine.replies``).

Rules this package keeps:
- Nothing here reads a clock, draws a random number, does I/O, starts a thread or logs.
  Imports: the standard library's pure modules and sortedcontainers only.
- Time as the queue sees it never runs backwards: ``now_ms`` is clamped to the latest seen.
- Job ids come from a counter inside. Ties are broken by job id, never by hash order.
- Illegal commands return a typed reply and change nothing but counters.
- ``snapshot()`` gives the same bytes for the same state.
"""
