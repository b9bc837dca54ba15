"""The ``beanraft`` command: the composition root that wires the packages together.

It is the outermost layer: it may import every package; no package imports it.
"""

import os

# gRPC's fork handlers abort forked children while its threads are busy (a node forks to write
# its dump: cluster/dumpfile.py); beanraft's children never use gRPC, so the handlers are off.
# gRPC reads this when it first loads, and this package is imported before anything loads it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
