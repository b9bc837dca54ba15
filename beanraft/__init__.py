"""The ``beanraft`` command: the composition root that wires the packages together.

It is the outermost layer: it may import every package; no package imports it.
"""
