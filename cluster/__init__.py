"""A beanraft node: the job state machine replicated with pysyncobj and served over gRPC.

Theory of operation. A client (a proxy, a worker, ``beanraft cluster``) calls any node's gRPC
API. A follower forwards writes to the leader (``service``); the leader stamps the time, batches
everything pending into one log entry (``proposer``) and proposes it through the one replicated
method (``replicated.MachineConsumer.apply_batch``). Every replica applies the entry to its
``JobStateMachine``; the outcome goes back to the caller once a majority has the entry on disk
(``durability``). Wake-ups (answers to waiting reserves) are numbered in the replicated state, so
any node streams them and a stream resumes anywhere (``wakeups``).

Modules: ``clock`` (the only time source), ``envelope`` (log entry bytes), ``replicated`` (the
replicated state), ``proposer`` (group commit), ``durability`` (``--fsync``), ``node`` (Raft,
ticks, membership), ``service`` (leader routing), ``grpc_jsm`` / ``grpc_cluster`` (servicers),
``errors`` (the one status table), ``wakeups``, ``metrics``, ``server`` (a running node),
``cli_node`` / ``cli_admin`` (commands). ``tls``, ``auth``, ``cli_certs`` (mTLS and roles),
``queue`` (the JobQueue interface) and ``local`` (an in-process queue) complete the package.

Rules: nothing here but ``clock`` reads time; nothing from the network is unpickled before
pysyncobj has authenticated it with the cluster secret (only ``--insecure`` without a secret
file skips that, loudly); an apply never raises into pysyncobj.
Dependencies point inward: ``cluster`` imports ``statemachine``, never ``proxy`` or
``executor``.
"""
