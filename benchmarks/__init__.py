"""Benchmarks of melody-edge: ``python -m benchmarks run`` appends JSONL rows (one per measurement), ``python -m
benchmarks report`` turns them into tables and plots; ``benchmarks/test_bench.py`` holds the pytest-benchmark
suites (``pytest benchmarks --benchmark-only``)."""
