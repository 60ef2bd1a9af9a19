"""Interleaved latency measurement.

These machines drift (thermal, neighbours), so candidates are timed in rounds,
one call each per round in a rotating order (A B C, B C A, ...), never one
candidate's runs back to back. Figures from one `interleaved_latency` call are
comparable with each other; figures from different calls or machines are not.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def summarize(samples_ns: list[int], batch_size: int = 1) -> dict:
    """Median, p90, p99, mean (ms) and throughput (images/s) of per-call timings."""
    ms = np.asarray(samples_ns, np.float64) / 1e6
    p50 = float(np.median(ms))
    return {"runs": len(ms), "p50_ms": p50, "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "min_ms": float(ms.min()), "images_per_s": batch_size * 1000.0 / p50}


def interleaved_latency(candidates: dict[str, Callable[[], object]], rounds: int = 30,
                        warmup: int = 3, min_seconds: float = 0.0, batch_size: int = 1,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """Time zero-argument callables side by side.

    Args:
        candidates: name -> callable running one inference (inputs bound in).
        rounds: minimum timed calls per candidate.
        warmup: untimed calls per candidate first (compilation, caches).
        min_seconds: keep adding rounds until every candidate has this much timed time.
        progress: called as progress(round_done, rounds_planned).
    Returns:
        name -> `summarize` figures.
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    samples = {name: [] for name in names}
    completed = 0
    while completed < rounds or min(sum(s) for s in samples.values()) < min_seconds * 1e9:
        shift = completed % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter_ns()
            candidates[name]()
            samples[name].append(time.perf_counter_ns() - start)
        completed += 1
        if progress:
            progress(completed, rounds)
    return {name: summarize(samples[name], batch_size) for name in names}
