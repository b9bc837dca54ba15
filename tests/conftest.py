"""Settings for the whole test session, applied before any test module imports grpc.

The executor tests fork isolated jobs from this very process (as a worker does), after the
cluster tests have used gRPC in it. A gRPC stream that a test left open keeps gRPC's poller
busy, and gRPC's fork handlers then crash the forked job (SIGABRT in ev_epoll1 ``Wakeup``).
A real worker never loads gRPC (it speaks beanstalkd's protocol), so only this shared test
process needs gRPC's fork support off.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
