"""The job queue as every front end sees it: the ``JobQueue`` interface (``interface.py``) and
``LocalQueue``, the state machine in-process (``local.py``).

The beanstalkd sessions (``proxy/``) run against this interface alone, so the same code serves
a standalone proxy (``LocalQueue``), a proxy in front of a cluster (``api.client.RemoteQueue``)
and a node's own listener (``cluster.node_queue.NodeQueue``). It depends on the state machine
only, so ``api`` and ``cluster`` can both use it without importing each other.
"""
