"""The recommendation: the fastest way to run this model here that passes every gate.

`bench` ends with it, and writes it into the run as ``recommendation.json``
(recorded in the manifest, parent: the chosen file), so that
``retinaunet-deploy predict RUN_DIR images...`` runs exactly what was chosen.
"""

from __future__ import annotations

import json
from pathlib import Path

from retinaunet_deploy import names
from retinaunet_deploy.errors import ArtifactError

# A row's runtime as `Predictor.from_artifact(..., runtime=...)` names it.
_RUNTIMES = {("onnxruntime", None): "onnxruntime", ("openvino", "bf16"): "openvino-bf16",
             ("openvino", None): "openvino", ("tflite", None): "auto",
             ("tensorrt", None): "auto"}


def runtime_of(row: dict) -> str | None:
    """How `predict` runs a row's artifact, or None for a row it cannot (Keras, GPU providers)."""
    backend, precision = row["backend"], row["precision"]
    return _RUNTIMES.get((backend, precision if precision == "bf16" else None))


def recommend(report: dict) -> dict | None:
    """The fastest row at the first batch size (p50 end to end) among those that passed
    their gate and run a file of the run; None when no row qualifies."""
    batch = str(report["options"]["batch_sizes"][0])
    reference = next((r for r in report["rows"] if r["backend"] == "keras"), None)
    candidates = []
    for row in report["rows"]:
        fidelity = row.get("fidelity") or {}
        if (row["status"] != "ok" or row["backend"] == "keras" or not fidelity.get("passed")
                or Path(row["artifact"]).is_absolute() or runtime_of(row) is None
                or batch not in row["latency"]):
            continue
        candidates.append(row)
    if not candidates:
        return None
    best = min(candidates, key=lambda r: r["latency"][batch]["end_to_end"]["p50_ms"])
    p50 = best["latency"][batch]["end_to_end"]["p50_ms"]
    keras = reference["latency"][batch]["end_to_end"]["p50_ms"] if reference else None
    fidelity = best["fidelity"]
    return {"row": best["name"], "file": best["artifact"], "runtime": runtime_of(best),
            "batch_size": int(batch), "p50_ms": p50,
            "speedup_vs_keras": keras / p50 if keras else None,
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
            f"{choice['batch_size']}), {choice['speedup_vs_keras']:.2f}x Keras, pixel agreement "
            f"{choice['pixel_agreement']:.3%}")
    if interval:
        text += f" [95% CI {interval[0]:.3%}, {interval[1]:.3%}]"
    text += f" on {choice['images']} test images; run it with: retinaunet-deploy predict RUN_DIR"
    if choice["interval_failures"]:
        text += f" (note: {'; '.join(choice['interval_failures'])})"
    return text


def write_recommendation(run_dir: Path, choice: dict | None) -> None:
    """Record the choice in the run (or drop a stale one when nothing qualifies)."""
    from retinaunet_deploy.artifacts import forget_artifact, record_artifact, write_json

    if choice is None:
        forget_artifact(run_dir, names.RECOMMENDATION)
        return
    write_json(Path(run_dir) / names.RECOMMENDATION, choice)
    record_artifact(run_dir, names.RECOMMENDATION, "bench", parent=choice["file"])


def recommended_artifact(run_dir: Path) -> tuple[Path, str]:
    """(file, runtime) the run's bench recommended, its file verified unchanged since."""
    from retinaunet_deploy.artifacts import verify_lineage

    run_dir = Path(run_dir)
    path = run_dir / names.RECOMMENDATION
    if not path.exists():
        raise ArtifactError(f"{run_dir} has no {names.RECOMMENDATION}; run 'retinaunet-deploy "
                            f"bench {run_dir}' to choose the fastest variant that passes its "
                            f"gate, or give an artifact file")
    verify_lineage(run_dir, names.RECOMMENDATION, f"retinaunet-deploy bench {run_dir}")
    choice = json.loads(path.read_text())
    verify_lineage(run_dir, choice["file"], f"retinaunet-deploy bench {run_dir}")
    return run_dir / choice["file"], choice["runtime"]
