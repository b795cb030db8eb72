"""Benchmark cases; each module has a ``run(ctx)`` returning a section for RESULTS.md."""
