"""Benchmarks run with `ci/bench.sh` or `pytest bench/ --benchmark-only`; never
in the default test run (pytest's testpaths is tests/)."""
