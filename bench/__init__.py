"""Benchmarks: scripts that print their figures and the machine they ran on (docs/benchmarks.md)."""
