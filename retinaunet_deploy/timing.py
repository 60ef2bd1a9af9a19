"""Interleaved latency measurement.

These machines drift (thermal, neighbours), so candidates are timed in rounds
in a rotating order (A B C, B C A, ...), never all of one candidate's runs
together. Figures from one `interleaved_latency` call are comparable with
each other; figures from different calls or machines are not.

Within a round each candidate runs a short *block* of consecutive calls, and
the first call of every block is not timed. Different runtimes keep their own
thread pools. A pool that has gone cold while the others ran is slow to wake,
by an amount that depends on the runtime. Measured here on the small model
(ms, batch 1):

| | ORT int8 | ORT fp32 | TFLite int8 |
|---|---|---|---|
| each alone | 8.8 | 14.7 | 7.2 |
| interleaved one call at a time | 13.9 | 27.0 | 20.7 |

Single-call interleaving would distort every ratio. A runtime's threads also
keep spinning for tens of milliseconds after it returns: TFLite right after
ONNX Runtime took 14-21 ms for its first calls against 7 ms settled. So before
each block the machine idles for `settle_seconds`, letting the previous
runtime's threads go to sleep. Blocks keep the drift protection and time each
runtime warm and alone, as an app's steady loop runs it.
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
                        progress: Callable[[int, int], None] | None = None,
                        block: int = 5, settle_seconds: float = 0.05) -> dict[str, dict]:
    """Time zero-argument callables side by side.

    Args:
        candidates: name -> callable running one inference (inputs bound in).
        rounds: minimum timed calls per candidate.
        warmup: untimed calls per candidate first (compilation, caches).
        min_seconds: keep adding rounds until every candidate has this much timed time.
        progress: called as progress(timed_calls_done, rounds_planned).
        block: consecutive calls per candidate per round; the first is untimed (wake-up),
            so each round adds block - 1 timed calls (block=1: one timed call, no discard).
        settle_seconds: idle time before each block, so no other runtime's threads spin.
    Returns:
        name -> `summarize` figures.
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    samples = {name: [] for name in names}
    discard = 1 if block > 1 else 0

    def unfinished():
        # A candidate leaves the rotation once it has its runs and its seconds, so a
        # fast one does not drag every other through hundreds of extra calls.
        return [n for n in names
                if len(samples[n]) < rounds or sum(samples[n]) < min_seconds * 1e9]

    turn = 0
    while active := unfinished():
        shift = turn % len(active)
        for name in active[shift:] + active[:shift]:
            if settle_seconds:
                time.sleep(settle_seconds)
            for call in range(block):
                start = time.perf_counter_ns()
                candidates[name]()
                if call >= discard:
                    samples[name].append(time.perf_counter_ns() - start)
        turn += 1
        if progress:
            progress(min(len(s) for s in samples.values()), rounds)
    return {name: summarize(samples[name], batch_size) for name in names}
