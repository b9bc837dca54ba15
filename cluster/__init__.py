"""A beanraft node: the job state machine replicated with pysyncobj and served over gRPC.

Theory of operation. A client (a proxy, a worker, ``beanraft cluster``) calls any node's gRPC
API. A follower forwards writes to the leader (``service``); the leader stamps the time, batches
everything pending into one log entry (``proposer``) and proposes it through the one replicated
method (``replicated.MachineConsumer.apply_batch``). Every replica applies the entry to its
``JobStateMachine``; the outcome goes back to the caller once a majority has the entry on disk
(``durability``). Wake-ups (answers to waiting reserves) are numbered in the replicated state, so
any node streams them and a stream resumes anywhere (``wakeups``).

Modules: ``clock`` (the state machine's time: the leader's stamp), ``envelope`` (log entry
bytes), ``replicated`` (the replicated state), ``proposer`` (group commit), ``durability``
(``--fsync``), ``node`` (Raft, ticks, membership), ``raftcore`` (every change to pysyncobj's
Raft), ``journal`` / ``dumpfile`` (storage), ``service`` (leader routing), ``forwarder`` (a
follower's batched forwards), ``node_queue`` (the direct path's queue), ``grpc_jsm`` /
``grpc_cluster`` / ``grpc_joblet`` (servicers), ``errors`` (the one status table),
``wakeups``, ``metrics``, ``server`` (a running node), ``auth`` (roles), ``cli_*`` (commands).

Rules: the state machine's time comes only from ``clock`` (the leader's ``LeaderTime`` stamps
every entry; timeouts, leases and Raft's timers read the monotonic clock where they run);
nothing from the network is unpickled before pysyncobj has authenticated it with the cluster
secret (only ``--insecure`` without a secret file skips that, loudly); an apply never raises
into pysyncobj. Dependencies point inward: ``cluster`` imports ``api`` (the wire),
``jobqueue`` and ``statemachine``, never ``proxy`` or ``executor`` (``make layers``).
"""
