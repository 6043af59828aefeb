"""Tiny random exports and synthetic LLM shards, shared by the tests and the benchmarks
(`python -m benchmarks.NAME` imports them from here, as tests/ does)."""
