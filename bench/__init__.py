"""Benchmarks: each command times one part of the stack and writes its figures to docs/results/."""
