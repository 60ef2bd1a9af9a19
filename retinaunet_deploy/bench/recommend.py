"""The recommendation: the fastest way to run this model here that passes every gate.

`bench` ends with it, and writes it into the run as ``recommendation.json``
(`retinaunet_deploy.recommendation`: the file format, read back by `predict`), so
that ``retinaunet-deploy predict RUN_DIR images...`` runs exactly what was chosen.
"""

from __future__ import annotations

from pathlib import Path

from retinaunet_deploy.recommendation import write_recommendation
from retinaunet_deploy.runtime.registry import RUNTIMES

__all__ = ["recommend", "recommendation_line", "write_recommendation"]


def is_candidate(row: dict, batch: str) -> bool:
    """An ok row that passed its gate, timed at `batch`, of a registered runtime that
    `predict` may be sent to (`Runtime.recommendable`), running a file of the run (not one
    the bench converted into its own folder)."""
    runtime = RUNTIMES.get(row.get("runtime") or "")
    return (row["status"] == "ok" and runtime is not None and runtime.recommendable
            and bool((row.get("fidelity") or {}).get("passed"))
            and not Path(row["artifact"]).is_absolute() and batch in row["latency"])


def recommend(report: dict) -> dict | None:
    """The fastest row at the first batch size (p50 end to end) among those that passed
    their gate and run a file of the run; None when no row qualifies."""
    batch = str(report["options"]["batch_sizes"][0])
    reference = next((r for r in report["rows"] if r["backend"] == "keras"), None)
    candidates = [row for row in report["rows"] if is_candidate(row, batch)]
    if not candidates:
        return None
    best = min(candidates, key=lambda r: r["latency"][batch]["end_to_end"]["p50_ms"])
    p50 = best["latency"][batch]["end_to_end"]["p50_ms"]
    keras = reference["latency"][batch]["end_to_end"]["p50_ms"] if reference else None
    fidelity = best["fidelity"]
    return {"row": best["name"], "file": best["artifact"], "runtime": best["runtime"],
            "batch_size": int(batch), "p50_ms": p50,
            "speedup_vs_keras": keras / p50 if keras else None,
            **({} if keras else {"speedup_vs_keras_reason": "the Keras reference was not timed"}),
            "pixel_agreement": fidelity["pixel_agreement"],
            "pixel_agreement_interval": fidelity.get("intervals", {}).get("pixel_agreement"),
            "interval_failures": fidelity.get("interval_failures", []),
            "images": fidelity["images"], "machine": report["machine"]["cpu"],
            "cpu_flags": report["machine"].get("cpu_flags", []),
            "threads": report["machine"]["threads"]}


def recommendation_line(choice: dict | None) -> str:
    if choice is None:
        return ("Recommendation: none: no variant passed its gate with timings here; ship "
                "model.keras or model.onnx")
    interval = choice["pixel_agreement_interval"]
    text = (f"Recommendation: {choice['row']}: {choice['p50_ms']:.1f} ms per image (batch "
            f"{choice['batch_size']}), {_times(choice['speedup_vs_keras'])} Keras, pixel agreement "
            f"{choice['pixel_agreement']:.3%}")
    if interval:
        text += f" [95% CI {interval[0]:.3%}, {interval[1]:.3%}]"
    text += f" on {choice['images']} test images; run it with: retinaunet-deploy predict RUN_DIR"
    if choice["interval_failures"]:
        text += f" (note: {'; '.join(choice['interval_failures'])})"
    return text


def _times(speedup: float | None) -> str:
    return "n/a x" if speedup is None else f"{speedup:.2f}x"
