"""The INT8 fallback: keep the most sensitive convolutions in float until the target holds.

Everything here is tuned on the *validation* split: whether a fallback is needed,
the ranking of layers and where the search stops. The caller judges the final
file once on the test split, so no reported figure was tuned on.

The one Q/DQ file must pass as TensorRT computes it (ONNX Runtime unfused:
exact fake-quant) and, where OpenVINO is judged too, as OpenVINO's fused int8
kernels run it: OpenVINO rounds differently, and on the trained small model one
conv after a decoder concat cost its thin class 0.01 of Dice there alone.

Sensitivity is leave-one-out: the agreement gained (summed over the runtimes
that miss) when one more conv is put back in float (the graph edited, nothing
re-quantised), on up to 16 validation images. The search then keeps the top
1, 2, 4, ... layers in float.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from retinaunet_deploy.artifacts import load_onnx
from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.export.quantize import QUANTIZED_OPS, keep_float
from retinaunet_deploy.judge.agreement import Agreement
from retinaunet_deploy.judge.gates import EvalSet, evaluate_variant
from retinaunet_deploy.runtime.openvino import openvino_unavailable

RANKING_IMAGES = 16
OPENVINO_EXTRA_LAYERS = 4   # at most this many more float layers to pass OpenVINO too


@dataclass(frozen=True)
class Tuning:
    """What the search judges with (the caller's parts of the calibration options).

    Attributes:
        targets: the INT8 targets (`judge.targets.targets_for("int8", ...)`).
        runtimes: the runtimes the file must pass under (`judging_runtimes`); ONNX
            Runtime runs it unfused, as TensorRT computes it.
        threads: threads of every runtime (None: each runtime's own).
        method: the calibration method, named in a refusal.
    """

    targets: object
    runtimes: tuple[str, ...] = ("onnxruntime",)
    threads: int | None = None
    method: str = "minmax"


@dataclass
class FallbackResult:
    kept_float: list[str] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    ranking: list[list] = field(default_factory=list)
    tuned_on: dict | None = None


def _gain(agreement: Agreement, baseline: Agreement) -> float:
    """How much better `agreement` is than `baseline`: the sum of the differences of pixel
    agreement, mean Dice vs the reference and matched-box fraction (each in [0, 1]);
    a figure undefined on either side adds nothing."""
    gain = 0.0
    for now, before in ((agreement.pixel_agreement, baseline.pixel_agreement),
                        (agreement.mean_dice_vs_reference, baseline.mean_dice_vs_reference),
                        (agreement.detections.get("matched_fraction"),
                         baseline.detections.get("matched_fraction"))):
        if not any(v is None or math.isnan(v) for v in (now, before)):
            gain += float(now) - float(before)
    return gain


def judging_runtimes(runtimes: tuple[str, ...], openvino: bool = True) -> tuple[str, ...]:
    """The runtimes the Q/DQ file should pass under: TensorRT's arithmetic (ONNX Runtime
    unfused), and OpenVINO's when it is judged (`openvino`) and installed."""
    runtimes = tuple(r for r in runtimes
                     if r == "onnxruntime" or (r == "openvino" and openvino))
    if "openvino" in runtimes and openvino_unavailable():
        return ("onnxruntime",)
    return runtimes


def judge_everywhere(path: Path, card: ModelCard, eval_set: EvalSet, tuning: Tuning,
                     runtimes: tuple[str, ...] = ("onnxruntime",)) -> list[Agreement]:
    """The file's agreement under each of `runtimes` (ONNX Runtime runs it unfused)."""
    return [evaluate_variant(path, card, eval_set, tuning.targets, fused=False,
                             threads=tuning.threads, runtime=runtime)
            for runtime in runtimes]


def layer_sensitivity(prepared: Path, all_int8: Path, kept: list[str], work: Path,
                      tuning: Tuning,
                      card: ModelCard, eval_set: EvalSet, baseline: list[Agreement],
                      runtimes: tuple[str, ...] = ("onnxruntime",)) -> list[tuple[str, float]]:
    """Leave-one-out: each conv's gain in agreement when it is put back in float on top
    of the `kept` ones (the baseline's file), by a graph edit: nothing re-quantised.

    Returns (node name, gain) sorted largest gain first, where gain = pixel
    agreement + Dice vs float + confident-box match fraction gained, summed over
    the judging runtimes.
    """
    trial = work / "leave-one-out.onnx"
    scores = []
    for node in load_onnx(prepared).graph.node:
        if node.op_type not in QUANTIZED_OPS or node.name in kept:
            continue
        write_kept_float(all_int8, prepared, trial, kept + [node.name])
        agreements = judge_everywhere(trial, card, eval_set, tuning, runtimes)
        scores.append((node.name, sum(_gain(a, b) for a, b in zip(agreements, baseline))))
    return sorted(scores, key=lambda item: -item[1])


def write_kept_float(all_int8: Path, prepared: Path, qdq: Path, kept: list[str]) -> None:
    """`qdq` := the all-INT8 file with the convs in `kept` put back in float.

    Every file the search judges, the leave-one-out trials included, is made this
    one way, so the ranking measures exactly what the chosen file will compute.
    """
    if kept:
        keep_float(all_int8, prepared, qdq, tuple(kept))
    else:
        shutil.copyfile(all_int8, qdq)


def search_fallback(prepared: Path, all_int8: Path, qdq: Path, work: Path, tuning: Tuning,
                    card: ModelCard, tune_set: EvalSet, say) -> FallbackResult:
    """Re-write `qdq` with the fewest float layers that pass on `tune_set` (validation).

    `prepared` is the float graph that was quantised into `all_int8` (every conv).

    First as TensorRT computes it. Then, where OpenVINO is among `tuning.runtimes` and misses,
    with at most `OPENVINO_EXTRA_LAYERS` more layers in float so that one file
    passes under both; if that is not enough, the TensorRT-tuned file stays (and
    OpenVINO int8 is reported as missing its gate). Leaves `qdq` all-INT8 when it
    already passes. Raises `ArtifactError` when only every layer in float would
    pass as TensorRT computes it (that is no INT8 model).
    """
    if tune_set.split == "test":
        raise ValueError("the fallback must be tuned on validation images, not test images")
    result = _search(prepared, all_int8, qdq, work, tuning, card, tune_set, say,
                     ("onnxruntime",), limit=None)
    runtimes = tuning.runtimes
    if "openvino" not in runtimes:
        return result
    both = _search(prepared, all_int8, qdq, work, tuning, card, tune_set, say, runtimes,
                   limit=len(result.kept_float) + OPENVINO_EXTRA_LAYERS,
                   start=result.kept_float)
    if both is not None:
        return both
    say(f"OpenVINO int8 would need more than {OPENVINO_EXTRA_LAYERS} more layer(s) in float; "
        f"the file keeps the TensorRT-tuned {len(result.kept_float)}")
    write_kept_float(all_int8, prepared, qdq, result.kept_float)
    result.tuned_on["openvino"] = f"not tuned for: needs more than {OPENVINO_EXTRA_LAYERS} layers"
    return result


def _search(prepared, all_int8, qdq, work, tuning, card, tune_set, say,
            runtimes: tuple[str, ...], limit: int | None,
            start: list[str] = ()) -> FallbackResult | None:
    """Keep the top 1, 2, 4, ... ranked layers (after `start`) in float until every runtime
    passes; None when `limit` layers are not enough (raises when no count is)."""
    result = FallbackResult(kept_float=list(start), tuned_on={
        "split": tune_set.split, "images": len(tune_set.samples), "names": tune_set.names,
        "runtimes": list(runtimes)})
    if start:
        write_kept_float(all_int8, prepared, qdq, list(start))
    tuned = judge_everywhere(qdq, card, tune_set, tuning, runtimes)
    if all(a.passed for a in tuned):
        return result
    missed = [f"{r}: {'; '.join(a.failures)}" for r, a in zip(runtimes, tuned) if not a.passed]
    say(f"INT8 with {len(start)} layer(s) in float misses the target on "
        f"{len(tune_set.samples)} validation images ({' | '.join(missed)}): ranking layers")
    # Rank by the runtimes that miss: the gains of one that passes already are noise
    # (and ONNX Runtime's unfused fake-quant is the slow one to run 40 times).
    failing = tuple(r for r, a in zip(runtimes, tuned) if not a.passed)
    subset = tune_set.head(RANKING_IMAGES)
    baseline = judge_everywhere(qdq, card, subset, tuning, failing)
    ranking = layer_sensitivity(prepared, all_int8, list(start), work, tuning, card, subset,
                                baseline, failing)
    result.ranking = [[name, round(gain, 6)] for name, gain in ranking]
    count = 1
    while not all(a.passed for a in tuned) and count <= len(ranking):
        if limit is not None and len(start) + count > limit:
            return None
        result.kept_float = list(start) + [name for name, _ in ranking[:count]]
        write_kept_float(all_int8, prepared, qdq, result.kept_float)
        tuned = judge_everywhere(qdq, card, tune_set, tuning, runtimes)
        result.trials.append({"kept_float": len(result.kept_float), "split": tune_set.split,
                              **{r: {"pixel_agreement": a.pixel_agreement,
                                     "mean_dice_vs_reference": a.mean_dice_vs_reference,
                                     "passed": a.passed} for r, a in zip(runtimes, tuned)}})
        say(f"  {len(result.kept_float)} layer(s) in float (validation): " + " | ".join(
            f"{r}: {a.summary()}" for r, a in zip(runtimes, tuned)))
        count = len(ranking) if count * 2 > len(ranking) > count else count * 2
    only_all_float = ranking and len(result.kept_float) - len(start) == len(ranking)
    if not all(a.passed for a in tuned) or only_all_float:
        if limit is not None:
            return None
        raise ArtifactError(
            f"INT8 ({tuning.method}) reaches the target only with every layer in float, "
            f"which is no INT8 model; try --method entropy or percentile, or more "
            f"calibration images")
    return result
