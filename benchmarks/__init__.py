"""Benchmarks: scripts that print tables and write plots (see /work/shared/docs/benchmark.md).

``python -m benchmarks.dg_benchmark --help`` runs the single-source domain-generalisation benchmark.
"""
