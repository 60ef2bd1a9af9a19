"""Soak run of the Predictor: concurrent callers for minutes, memory and results watched.

    retinaunet-deploy bench RUN_DIR --soak [--soak-minutes 5] [--threads 2] [--callers 2]
                                    [--soak-artifact model.onnx] [--out bench/soak]

One `Predictor` (the artifact's default runtime, `threads` intra-op threads) is
shared by `callers` threads, each making one call at a time on held-out images
of the run (so at most `callers` calls are in flight: the load is bounded). A
sampler reads the process RSS every second. It passes when:

* the median RSS of the last minute is within 5% of the first minute's (for a
  soak shorter than three minutes: of the first and last third), and
* every call returns exactly the result of the first call on the same image
  (mask bytes, boxes, scores and classes), and no call raises.

`run_soak` writes OUT/result.json (every figure) and OUT/rss.png; the command
exits 1 when the soak fails.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import numpy as np

RSS_TOLERANCE = 0.05
# Runtimes grow their arenas for the first tens of seconds (measured here: +35% RSS in a
# 6 s soak, +5.6% in 30 s); a shorter soak judges the warm-up, not a leak.
WARM_MINUTES = 3
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


def rss_verdict(samples: list[tuple[float, float]], duration: float) -> dict:
    """The RSS figures of a soak from its (seconds, MiB) samples.

    The window is the first and last minute (a third of the soak when shorter);
    growth is the last window's median over the first's, minus 1.
    """
    window = min(60.0, duration / 3)
    first = [rss for t, rss in samples if t < window]
    last = [rss for t, rss in samples if t >= samples[-1][0] - window]
    first_mib, last_mib = float(np.median(first)), float(np.median(last))
    return {"rss_window_s": window, "rss_first_mib": first_mib, "rss_last_mib": last_mib,
            "rss_growth": last_mib / first_mib - 1,
            "rss_peak_mib": max(rss for _, rss in samples)}


def soak_passed(rss_growth: float, mismatched_results: int, errors: list[str]) -> bool:
    """RSS within `RSS_TOLERANCE` either way, every result identical, no call raised."""
    return bool(abs(rss_growth) <= RSS_TOLERANCE and not mismatched_results and not errors)


def failures(result: dict) -> list[str]:
    """Why a soak result failed, one phrase per broken criterion ([] when it passed)."""
    found = []
    if result["errors"]:
        found.append(f"{len(result['errors'])} call(s) raised: {result['errors'][0]}")
    if result["mismatched_results"]:
        found.append(f"{result['mismatched_results']} result(s) differ from the first call's")
    if abs(result["rss_growth"]) > RSS_TOLERANCE:
        found.append(f"RSS changed {result['rss_growth']:+.2%} (more than "
                     f"{RSS_TOLERANCE:.0%}) from the first window to the last"
                     + (f"; a soak of {result['minutes']:g} min mostly measures the "
                        f"runtime's warm-up: soak for --soak-minutes {WARM_MINUTES} or more"
                        if result.get("minutes", WARM_MINUTES) < WARM_MINUTES else ""))
    return found


def soak(artifact: Path, minutes: float, threads: int, callers: int, images: int = 16,
         progress=None) -> dict:
    """Share one Predictor between `callers` threads for `minutes`; return every figure.

    Args:
        artifact: a file `Predictor.from_artifact` opens (the run's model card beside it).
        progress: called every 5 s with a one-line status (seconds, calls, RSS).
    Returns:
        calls, mismatched results, errors, call p50/p99 ms, the RSS figures
        (`rss_verdict`) and samples, "passed" (`soak_passed`), the machine.
    """
    from retinaunet_deploy.bench.machine import machine_info
    from retinaunet_deploy.data.splits import held_out_set
    from retinaunet_deploy.runtime.predictor import Predictor

    say = progress or (lambda message: None)
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
        say(f"soak {elapsed:5.0f}/{duration:.0f} s  calls {sum(calls):6d}  "
            f"RSS {rss_mib():7.1f} MiB")
        time.sleep(min(5.0, max(0.0, duration - elapsed)))
    stop.set()
    for worker in workers:
        worker.join()
    if not samples:  # stopped before the sampler's first turn (a call raised at once)
        samples.append((time.monotonic() - start, rss_mib()))

    every = latencies[np.isfinite(latencies)] if np.isfinite(latencies).any() else np.zeros(1)
    rss = rss_verdict(samples, duration)
    return {
        "artifact": str(artifact), "minutes": minutes, "threads": threads, "callers": callers,
        "images": len(pixels), "calls": sum(calls), "calls_per_caller": calls,
        "mismatched_results": sum(mismatches), "errors": errors,
        "call_ms": {"p50": float(np.percentile(every, 50)),
                    "p99": float(np.percentile(every, 99))},
        **rss,
        "rss_samples": [[round(t, 1), round(mib, 2)] for t, mib in samples],
        "passed": soak_passed(rss["rss_growth"], sum(mismatches), errors),
        "machine": machine_info(threads),
    }


def plot(result: dict, path: Path) -> None:
    """rss.png: RSS against time, the first window's median and the ±5% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retinaunet_deploy.artifacts import atomic_path

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
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)


def check_artifact(artifact: Path) -> str | None:
    """Refuse a missing artifact or one that differs from its manifest record, naming the
    command that remakes it; return that command (None for a file no stage writes).

    Raises:
        ArtifactError: "<file> not found; run '<command>' first ..." or "<file> changed
            since '<stage>' recorded it (...); re-run '<command>'".
    """
    from retinaunet_deploy.artifacts import load_manifest, verify_artifact
    from retinaunet_deploy.errors import ArtifactError
    from retinaunet_deploy.remake import command_for

    run_dir, name = artifact.parent, artifact.name
    remedy = command_for(artifact)     # the stage's command, as every other message names it
    if not artifact.is_file():
        raise ArtifactError(f"{artifact} not found; " + (f"run '{remedy}' first, or " if remedy
                                                          else "") +
                            "name another file of the run with --soak-artifact")
    if name in load_manifest(run_dir)["artifacts"]:
        verify_artifact(run_dir, name, remedy)
    return remedy


def run_soak(artifact: Path, out_dir: Path, minutes: float = 5.0, threads: int = 2,
             callers: int = 2, progress=None) -> dict:
    """`soak`, then OUT/result.json and OUT/rss.png; returns the result ("passed" says
    whether it held).

    Raises:
        ArtifactError: `artifact` is missing, differs from its manifest record, or cannot
            be opened, naming the command that remakes it (`check_artifact`).
    """
    from retinaunet_deploy.artifacts import check_writable, write_json
    from retinaunet_deploy.errors import ArtifactError

    artifact, out_dir = Path(artifact), Path(out_dir)
    remedy = check_artifact(artifact)
    check_writable(out_dir)
    try:
        result = soak(artifact, minutes, threads, callers, progress=progress)
    except ArtifactError as error:
        # Damaged where no record shows it (an unrecorded file): name the stage's command
        # where the runtime could only say "re-create it".
        if remedy is None or not str(error).endswith("re-create it"):
            raise
        raise ArtifactError(f"{error} with '{remedy}'") from error
    write_json(out_dir / "result.json", result)
    plot(result, out_dir / "rss.png")
    return result
