"""Soak run of the Predictor: concurrent callers for minutes, memory and results watched.

    .venv/bin/python bench/soak.py [export/default/model.onnx] [--minutes 5] [--threads 2]
                                   [--callers 2] [--out bench/soak]

One `Predictor` (ONNX Runtime, `--threads` intra-op threads) is shared by
`--callers` threads, each making one call at a time on held-out images of the
run (so at most `--callers` calls are in flight: the load is bounded). A sampler
reads the process RSS every second. It passes when:

* the median RSS of the last minute is within 5% of the first minute's, and
* every call returns exactly the result of the first call on the same image
  (mask bytes, boxes, scores and classes).

Writes OUT/result.json (every figure) and OUT/rss.png; exits 1 if it fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

RSS_TOLERANCE = 0.05
LATENCY_RING = 100_000  # the last call times kept per caller


def rss_mib() -> float:
    """Resident set size of this process, MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def fingerprint(prediction) -> str:
    """A hash of everything a caller gets back: mask, boxes, scores, classes."""
    digest = hashlib.sha256(prediction.mask.tobytes())
    if prediction.detections is not None:
        for array in (prediction.detections.boxes, prediction.detections.scores,
                      prediction.detections.classes):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def soak(artifact: Path, minutes: float, threads: int, callers: int, images: int = 16) -> dict:
    from retinaunet_deploy.bench.machine import machine_info
    from retinaunet_deploy.data.splits import held_out_set
    from retinaunet_deploy.runtime import Predictor

    predictor = Predictor.from_artifact(artifact, threads=threads)
    pixels = [sample.image for sample in held_out_set(predictor.card, images)]  # any sizes
    expected = [fingerprint(predictor.predict(image)) for image in pixels]

    duration = minutes * 60
    stop = threading.Event()
    samples: list[tuple[float, float]] = []  # one a second: 300 in 5 minutes
    calls, mismatches, errors = [0] * callers, [0] * callers, []
    # Call times go into ring buffers written in full up front, so the soak's own
    # bookkeeping does not grow the RSS it is watching (a Python list would: ~32 B a call).
    latencies = np.full((callers, LATENCY_RING), np.nan)
    start = time.monotonic()

    def sample():
        while not stop.is_set():
            samples.append((time.monotonic() - start, rss_mib()))
            stop.wait(1.0)

    def call(worker: int):
        index = worker
        while not stop.is_set():
            i = index % len(pixels)
            began = time.perf_counter_ns()
            try:
                result = fingerprint(predictor.predict(pixels[i]))
            except Exception as error:  # noqa: BLE001 - recorded, and the soak fails
                errors.append(f"{type(error).__name__}: {error}")
                stop.set()
                return
            latencies[worker, calls[worker] % LATENCY_RING] = (time.perf_counter_ns()
                                                               - began) / 1e6
            calls[worker] += 1
            mismatches[worker] += result != expected[i]
            index += callers

    workers = [threading.Thread(target=sample, daemon=True)] + [
        threading.Thread(target=call, args=(w,), daemon=True) for w in range(callers)]
    for worker in workers:
        worker.start()
    while time.monotonic() - start < duration and not stop.is_set():
        elapsed = time.monotonic() - start
        print(f"\r{elapsed:5.0f}/{duration:.0f} s  calls {sum(calls):6d}  RSS {rss_mib():7.1f} MiB",
              end="", file=sys.stderr, flush=True)
        time.sleep(min(5.0, max(0.0, duration - elapsed)))
    stop.set()
    for worker in workers:
        worker.join()
    print(file=sys.stderr)

    window = min(60.0, duration / 3)
    first = [rss for t, rss in samples if t < window]
    last = [rss for t, rss in samples if t >= samples[-1][0] - window]
    first_mib, last_mib = float(np.median(first)), float(np.median(last))
    growth = last_mib / first_mib - 1
    every = latencies[np.isfinite(latencies)] if np.isfinite(latencies).any() else np.zeros(1)
    return {
        "artifact": str(artifact), "minutes": minutes, "threads": threads, "callers": callers,
        "images": len(pixels), "calls": sum(calls), "calls_per_caller": calls,
        "mismatched_results": sum(mismatches), "errors": errors,
        "call_ms": {"p50": float(np.percentile(every, 50)),
                    "p99": float(np.percentile(every, 99))},
        "rss_window_s": window, "rss_first_mib": first_mib, "rss_last_mib": last_mib,
        "rss_growth": growth, "rss_peak_mib": max(rss for _, rss in samples),
        "rss_samples": [[round(t, 1), round(rss, 2)] for t, rss in samples],
        "passed": bool(abs(growth) <= RSS_TOLERANCE and not sum(mismatches) and not errors),
        "machine": machine_info(threads),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, rss = np.asarray(result["rss_samples"]).T
    figure, axis = plt.subplots(figsize=(8, 3.5))
    axis.plot(t, rss, lw=1)
    axis.axhline(result["rss_first_mib"], ls="--", c="grey", lw=0.8, label="first-minute median")
    axis.axhspan(result["rss_first_mib"] * (1 - RSS_TOLERANCE),
                 result["rss_first_mib"] * (1 + RSS_TOLERANCE), color="green", alpha=0.08,
                 label="±5%")
    axis.set_xlabel("seconds")
    axis.set_ylabel("RSS, MiB")
    axis.set_title(f"{result['callers']} callers, {result['calls']} calls, "
                   f"growth {result['rss_growth']:+.2%}")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", nargs="?", type=Path, default=Path("export/default/model.onnx"))
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--callers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/soak"))
    args = parser.parse_args()
    if not args.artifact.is_file():
        print(f"error: {args.artifact} not found; run 'make export' first or pass an .onnx",
              file=sys.stderr)
        return 1

    from retinaunet_deploy.artifacts import write_json

    result = soak(args.artifact, args.minutes, args.threads, args.callers)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "result.json", result)
    plot(result, args.out / "rss.png")
    summary = {k: result[k] for k in ("calls", "mismatched_results", "rss_first_mib",
                                      "rss_last_mib", "rss_growth", "call_ms", "passed")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/result.json and rss.png")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
