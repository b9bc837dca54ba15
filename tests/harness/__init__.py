"""The test harness every test directory shares (tests/ is on sys.path: pyproject's
``pythonpath``, and the cwd of ``cd tests && python -m nemesis``).

- :mod:`harness.ports`: ports held from hand-out until release, outside the ephemeral range;
- :mod:`harness.logs`: the log of every child process, its tail shown when a test fails;
- :mod:`harness.process`: start a child, wait until it serves, stop it (always reaped);
- :mod:`harness.wait`: wait on a condition instead of sleeping.
"""

from . import logs, ports
from .process import Process, start, stop_all
from .wait import async_wait_until, wait_until

__all__ = ["Process", "async_wait_until", "logs", "ports", "start", "stop_all", "wait_until"]
