"""packsentry's benchmarks (`make bench`, `python -m bench`): every speed figure is a ratio
against a baseline measured in the same run, the median of several runs after a warm-up.

bench/registry.py lists the benchmarks; bench/harness.py times them and writes
bench/results/latest.json and latest.md; docs/performance.md explains each figure.
"""
