"""The INT8 fallback: keep the most sensitive convolutions in float until the target holds.

Everything here is tuned on the *validation* split: whether a fallback is needed,
the ranking of layers and where the search stops. The caller judges the final
file once on the test split, so no reported figure was tuned on.

Sensitivity is leave-one-out: the agreement gained when one conv alone stays
float, re-quantised from the cached ranges (no recalibration), on up to 32
validation images. The search then keeps the top 1, 2, 4, ... layers in float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import load_onnx
from retinaunet_deploy.compare import Agreement
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.export.gates import EvalSet, evaluate_variant
from retinaunet_deploy.export.quantize import QUANTIZED_OPS, quantize

RANKING_IMAGES = 32


@dataclass
class FallbackResult:
    kept_float: list[str] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    ranking: list[list] = field(default_factory=list)
    tuned_on: dict | None = None


def _gain(agreement: Agreement, baseline: Agreement) -> float:
    return (agreement.pixel_agreement - baseline.pixel_agreement
            + agreement.mean_dice_vs_reference - baseline.mean_dice_vs_reference
            + agreement.detections.get("matched_fraction", 0.0)
            - baseline.detections.get("matched_fraction", 0.0))


def layer_sensitivity(prepared: Path, work: Path, calib: np.ndarray, options, cache: Path,
                      card: dict, eval_set: EvalSet,
                      baseline: Agreement) -> list[tuple[str, float]]:
    """Leave-one-out: each conv's gain in agreement when it alone is kept in float.

    Returns (node name, gain) sorted largest gain first, where gain = pixel
    agreement + Dice vs float + confident-box match fraction gained.
    """
    trial = work / "leave-one-out.onnx"
    scores = []
    for node in load_onnx(prepared).graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        quantize(prepared, trial, calib, options, cache, exclude=(node.name,))
        agreement = evaluate_variant(trial, card, eval_set, options.targets, fused=False,
                                     threads=options.threads)
        scores.append((node.name, _gain(agreement, baseline)))
    return sorted(scores, key=lambda item: -item[1])


def search_fallback(prepared: Path, qdq: Path, work: Path, calib: np.ndarray, options,
                    cache: Path, card: dict, tune_set: EvalSet, say) -> FallbackResult:
    """Re-write `qdq` with the fewest float layers that pass on `tune_set` (validation).

    Leaves `qdq` all-INT8 when it already passes. Raises `ArtifactError` when only
    every layer in float would pass (that is no INT8 model).
    """
    if tune_set.split == "test":
        raise ValueError("the fallback must be tuned on validation images, not test images")
    result = FallbackResult(tuned_on={"split": tune_set.split, "images": len(tune_set.samples),
                                      "names": tune_set.names})
    tuned = evaluate_variant(qdq, card, tune_set, options.targets, fused=False,
                             threads=options.threads)
    if tuned.passed:
        return result
    say(f"INT8 misses the target on {len(tune_set.samples)} validation images "
        f"({'; '.join(tuned.failures)}): ranking layers")
    subset = tune_set.head(RANKING_IMAGES)
    baseline = evaluate_variant(qdq, card, subset, options.targets, fused=False,
                                threads=options.threads)
    ranking = layer_sensitivity(prepared, work, calib, options, cache, card, subset, baseline)
    result.ranking = [[name, round(gain, 6)] for name, gain in ranking]
    count = 1
    while not tuned.passed and count <= len(ranking):
        result.kept_float = [name for name, _ in ranking[:count]]
        quantize(prepared, qdq, calib, options, cache, exclude=tuple(result.kept_float))
        tuned = evaluate_variant(qdq, card, tune_set, options.targets, fused=False,
                                 threads=options.threads)
        result.trials.append({"kept_float": count, "split": tune_set.split,
                              "pixel_agreement": tuned.pixel_agreement,
                              "mean_dice_vs_reference": tuned.mean_dice_vs_reference})
        say(f"  {count} layer(s) in float (validation): {tuned.summary()}")
        count = len(ranking) if count * 2 > len(ranking) > count else count * 2
    if result.kept_float and len(result.kept_float) == len(ranking):
        raise ArtifactError(
            f"INT8 ({options.method}) reaches the target only with every layer in float, "
            f"which is no INT8 model; try --method entropy or percentile, or more "
            f"calibration images")
    return result
