"""The fault harness: a real cluster under a seeded, replayable schedule of real faults.

Theory of operation. Every node runs as its own Unix user (``hosts``), so iptables rules that
match a packet's owner cut exactly the links between chosen nodes on 127.0.0.1 (``netfault``);
each node keeps its data on a small tmpfs that can be filled (``disk``). Two proxies and a
workload of producers and consumers with unique bodies (``workload``) run through the whole
schedule (``schedule``): kill -9, SIGSTOP, partitions, a full disk, torn and corrupted journal
tails. Then everything heals, the queue is drained, and ``checker`` reports: acknowledged puts
lost, jobs DELETED by two clients, reserves left unanswered past their timeout plus a bound,
replicas whose snapshots differ, the recovery time after the heal and the longest spell with no
acknowledged put, in all and per fault.

Needs root (users, iptables, mounts) and iptables; everything it changes is undone at the end:
the rules and chains, the mounts, and the permission it may add for the node users to reach the
interpreter. ``python -m nemesis --help`` (from tests/) runs a schedule by hand; ``make nemesis``
runs the long one; ``test_nemesis.py`` runs a short one in CI.
"""
