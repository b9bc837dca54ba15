"""A beanraft node: the job state machine replicated with pysyncobj and served over gRPC.

Dependencies point inward: ``cluster`` imports ``statemachine``, never ``proxy`` or
``executor``.
"""
