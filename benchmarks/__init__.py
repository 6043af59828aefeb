"""Speed and memory scripts, each run from the repository root as `python -m benchmarks.NAME`
(results in benchmarks/README.md)."""
