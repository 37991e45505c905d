"""Benchmarks: each prints a ratio against a baseline measured in the same invocation, and the
machine it ran on (`bench.machine`). Run from the repository root as `python -m bench.<name>`."""
