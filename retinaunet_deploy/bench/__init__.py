"""Benchmark harness: timing (interleaved) and, with issue 6, the report."""
