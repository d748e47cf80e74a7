"""Benchmarks: ``python -m benchmarks.<name> [--quick]``.

Each one prints readable figures, the ratio against a baseline measured in the same run on
the same machine, and ends with one line of JSON holding those figures (for tracking over
time). They report; they never fail on a figure. See the README's "Benchmarks" section.
"""
