"""Calibration stage: ``model.onnx`` -> FP16 and calibrated INT8 variants, each gated.

Outputs in the run folder (each recorded in the manifest with its figures):

* ``model.fp16.onnx``: FP16 weights and compute, fp32 I/O (`precision.to_fp16`).
* ``model.int8.onnx``: the TensorRT form. Explicit Q/DQ, symmetric int8
  activations (zero point 0), per-channel symmetric int8 weights. It is
  judged **unfused** (ONNX Runtime graph optimisations off, so every Q/DQ
  is an exact fake-quant op), which is the arithmetic TensorRT performs.
* ``model.int8.cpu.onnx``: the ONNX Runtime CPU form. QOperator, uint8
  activations, int8 weights (U8S8). It is judged **as it runs**, with
  ONNX Runtime's fused int8 kernels, and kept only when it passes the gate
  and is faster on this CPU than the Q/DQ model.
* ``calibration.json``: the method, the calibration images (count and hashes),
  the activation ranges, the layers kept in float, and every variant's figures.

Calibration patches come from the training split. Agreement is measured on
whole held-out test images against the Keras float model. When the Q/DQ model
misses the target on the *validation* images, a greedy fallback keeps its most
sensitive convolutions in float until the target holds there. Sensitivity is
measured leave-one-out: the agreement gained when that conv alone stays float,
from the cached ranges, on up to 32 validation images. The test images judge
the result once, so the reported figures were never tuned on.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import (
    atomic_path,
    forget_artifact,
    load_onnx,
    record_artifact,
    tool_versions,
    verify_artifact,
    write_json,
)
from retinaunet_deploy.card import load_card
from retinaunet_deploy.compare import Agreement, Targets, compare
from retinaunet_deploy.data.splits import calibration_images, few_images_warning, held_out_set
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.export.precision import FP16Options, to_fp16
from retinaunet_deploy.export.quantize import (  # noqa: F401 - the stage's vocabulary
    CPU_QUANTIZED_OPS,
    METHODS,
    QUANTIZED_OPS,
    _reader,
    activation_ranges,
    calibrate_ranges,
    quantize,
)
from retinaunet_deploy.export.trt_check import check_tensorrt_import
from retinaunet_deploy.names import CALIBRATION, FP16_ONNX, INT8_CPU_ONNX, INT8_ONNX, ONNX


@dataclass
class CalibrationOptions:
    """Options of the calibration stage (recorded in calibration.json and the manifest)."""

    method: str = "minmax"
    percentile: float = 99.999
    calibration_images: int = 128
    eval_images: int = 64
    pixel_agreement: float = 0.995
    mean_dice: float = 0.98
    matched_fraction: float = 0.95
    max_ap_drop: float = 0.02
    fp16_pixel_agreement: float = 0.999
    fallback: bool = True
    cpu_variant: bool = True
    cpu_speedup_margin: float = 0.10   # U8S8 kept only when this much faster than Q/DQ
    batch_size: int = 8
    threads: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown calibration method {self.method!r}; choose one of "
                              f"{list(METHODS)}")
        if not 90 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (90, 100], got {self.percentile}")
        if self.calibration_images < 1 or self.eval_images < 1:
            raise ConfigError("calibration_images and eval_images must be >= 1")

    @property
    def targets(self) -> Targets:
        return Targets(self.pixel_agreement, self.mean_dice, self.matched_fraction,
                       self.max_ap_drop)


# === Data ===

def image_hashes(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(image.tobytes()).hexdigest()[:16] for image in images]


# === Evaluation ===

@dataclass
class EvalSet:
    """Whole held-out images with the float reference's predictions on them."""

    samples: list
    truths: list
    reference: list          # runtime.Prediction per image, with probabilities

    def head(self, count: int) -> EvalSet:
        return EvalSet(self.samples[:count], self.truths[:count], self.reference[:count])


def evaluate_variant(path: Path, card: dict, eval_set: EvalSet, targets: Targets,
                     fused: bool, threads: int | None = None, batch_size: int = 8) -> Agreement:
    """Run an ONNX variant on the whole held-out images, as apps run it, and compare it
    with the float reference.

    Args:
        fused: run with ONNX Runtime's graph optimisations (as the CPU will run it);
            False runs every op as written (exact fake-quant for Q/DQ).
    """
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend
    from retinaunet_deploy.runtime.predictor import Predictor

    predictor = Predictor(OnnxRuntimeBackend(path, threads=threads, optimize=fused), card,
                          batch_size=batch_size)
    predictions = predictor.predict([s.image for s in eval_set.samples], probabilities=True)
    return compare(eval_set.reference, predictions, card["class_names"], eval_set.truths,
                   targets, num_det_classes=len(card.get("det_class_names") or []) or None)


def make_eval_set(run_dir: Path, card: dict, count: int, threads: int | None,
                  split: str = "test") -> EvalSet:
    """Whole held-out images of `split` and the Keras float reference on them."""
    from retinaunet_deploy.evaluate import sample_truths
    from retinaunet_deploy.runtime.predictor import Predictor

    samples = held_out_set(card, count, split)
    keras_predictor = Predictor.from_artifact(Path(run_dir) / "model.keras", threads=threads)
    reference = keras_predictor.predict([s.image for s in samples], probabilities=True)
    return EvalSet(samples, sample_truths(samples), reference)


def layer_sensitivity(prepared: Path, work: Path, calib: np.ndarray,
                      options: CalibrationOptions, cache: Path, card: dict, eval_set: EvalSet,
                      baseline: Agreement) -> list[tuple[str, float]]:
    """Leave-one-out: each conv's gain in agreement when it alone is kept in float.

    Each trial re-quantises from the cached ranges (no recalibration) and runs the
    fake-quant graph on `eval_set`. Returns (node name, gain) sorted by gain, where
    gain = pixel agreement + Dice vs float + confident-box match fraction gained,
    largest first.
    """

    trial = work / "leave-one-out.onnx"
    scores = []
    for node in load_onnx(prepared).graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        quantize(prepared, trial, calib, options, cache, exclude=(node.name,))
        agreement = evaluate_variant(trial, card, eval_set, options.targets, fused=False,
                                     threads=options.threads)
        gain = (agreement.pixel_agreement - baseline.pixel_agreement
                + agreement.mean_dice_vs_reference - baseline.mean_dice_vs_reference
                + agreement.detections.get("matched_fraction", 0.0)
                - baseline.detections.get("matched_fraction", 0.0))
        scores.append((node.name, gain))
    return sorted(scores, key=lambda item: -item[1])


# === The stage ===

def compare_latency(paths: dict[str, Path], image: np.ndarray, threads: int | None,
                    rounds: int = 20, min_seconds: float = 2.0) -> dict[str, float]:
    """p50 ms of each ONNX file on one image as ONNX Runtime runs it, timed as the bench
    times (blocks after a settle, rotating, at least `rounds` calls and `min_seconds`)."""
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend
    from retinaunet_deploy.timing import interleaved_latency

    backends = {name: OnnxRuntimeBackend(path, threads=threads) for name, path in paths.items()}
    figures = interleaved_latency({name: (lambda b=b: b.run(image)) for name, b in
                                   backends.items()}, rounds=rounds, warmup=2,
                                  min_seconds=min_seconds)
    return {name: round(f["p50_ms"], 3) for name, f in figures.items()}


def cpu_variant_verdict(agreement: Agreement, latency: dict[str, float],
                        margin: float) -> str | None:
    """Why the U8S8 file is not kept (None: keep it).

    It must pass its agreement gate and beat the Q/DQ file by `margin`: a p50 a
    hair lower is timing noise, and a second INT8 file is a cost to every user.
    """
    if not agreement.passed:
        return ("misses the agreement target as ONNX Runtime runs it: "
                + "; ".join(agreement.failures))
    if latency["int8_cpu"] > latency["int8_qdq"] * (1 - margin):
        return (f"not at least {margin:.0%} faster than the Q/DQ model on this CPU "
                f"({latency['int8_cpu']:.2f} ms vs {latency['int8_qdq']:.2f} ms)")
    return None


def _say(progress, message):
    if progress:
        progress(message)


def calibrate(run_dir: Path, options: CalibrationOptions | None = None, fp16: bool = True,
              progress=None) -> dict:
    """Make the FP16 and INT8 variants of ``run_dir/model.onnx``; returns calibration.json.

    Args:
        progress: optional callable receiving one-line status messages.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from retinaunet_deploy.export.onnx import check_standard_ops

    options = options or CalibrationOptions()
    run_dir = Path(run_dir)
    card = load_card(run_dir)
    onnx_sha = verify_artifact(run_dir, ONNX, f"retinaunet-deploy export {run_dir}")
    targets = options.targets
    tools = tool_versions("onnx", "onnxruntime", "onnxruntime-gpu", "onnxconverter-common")

    eval_set = make_eval_set(run_dir, card, options.eval_images, options.threads)
    _say(progress, f"float reference on {len(eval_set.samples)} whole held-out test images")
    warning = few_images_warning(len(eval_set.samples), "every gate below")
    if warning:
        _say(progress, warning)
    calib = calibration_images(card, options.calibration_images)
    report = {"parent": {"file": ONNX, "sha256": onnx_sha},
              "options": asdict(options), "targets": asdict(targets),
              "evaluation": {"images": len(eval_set.samples), "split": "test",
                             "whole_images": True, "warning": warning,
                             "reference": "model.keras (float32)"},
              "calibration_data": {"split": "train", "images": len(calib),
                                   "patch_size": int(calib.shape[1]),
                                   "sha256_prefixes": image_hashes(calib)},
              "variants": {}}

    work = Path(tempfile.mkdtemp(prefix="calibrate-"))
    try:
        source = load_onnx(run_dir / ONNX)

        if fp16:
            _say(progress, "FP16: converting and measuring")
            fp16_proto, blocked = to_fp16(source, FP16Options())
            with atomic_path(run_dir / FP16_ONNX) as tmp:
                onnx.save(fp16_proto, tmp)
                agreement = evaluate_variant(tmp, card, eval_set,
                                             Targets(options.fp16_pixel_agreement, 0.0,
                                                     options.matched_fraction,
                                                     options.max_ap_drop),
                                             fused=True, threads=options.threads)
                if not agreement.passed:
                    raise ArtifactError(f"FP16 variant misses its target: {agreement.summary()} "
                                        f"(target pixel agreement "
                                        f">= {options.fp16_pixel_agreement:.2%}); not written")
            figures = {"agreement": agreement.to_dict(), "kept_float32": blocked,
                       "evaluated": "fused (as ONNX Runtime runs it)",
                       "images": len(eval_set.samples), "few_images_warning": warning}
            report["variants"][FP16_ONNX] = figures
            record_artifact(run_dir, FP16_ONNX, "calibrate", parent=ONNX,
                            options=FP16Options().to_dict(), figures=figures, tools=tools)

        _say(progress, f"INT8: calibrating ({options.method}) on {len(calib)} training patches of "
                   f"{calib.shape[1]}x{calib.shape[2]}")
        prepared = work / "prepared.onnx"
        quant_pre_process(str(run_dir / ONNX), str(prepared), skip_symbolic_shape=True)
        cache = work  # ranges-{symmetric,asymmetric}.json, calibrated once each
        qdq = work / "int8.onnx"
        quantize(prepared, qdq, calib, options, cache)
        report["activation_ranges"] = activation_ranges(cache)

        kept_float, trials, tuned_on = [], [], None
        if options.fallback:
            # The fallback is tuned on validation images only: whether it is needed,
            # the layer ranking and where its search stops. The test images below
            # judge the final file once, so the reported figures are never tuned.
            tune_set = make_eval_set(run_dir, card, options.eval_images, options.threads,
                                     split="val")
            tuned_on = {"split": "val", "images": len(tune_set.samples)}
            tuned = evaluate_variant(qdq, card, tune_set, targets, fused=False,
                                     threads=options.threads)
            if not tuned.passed:
                _say(progress, f"INT8 misses the target on {len(tune_set.samples)} validation "
                               f"images ({'; '.join(tuned.failures)}): ranking layers")
                subset = tune_set.head(32)
                ranking = layer_sensitivity(
                    prepared, work, calib, options, cache, card, subset,
                    evaluate_variant(qdq, card, subset, targets, fused=False,
                                     threads=options.threads))
                report["layer_sensitivity"] = [[name, round(s, 6)] for name, s in ranking]
                count = 1
                while not tuned.passed and count <= len(ranking):
                    kept_float = [name for name, _ in ranking[:count]]
                    quantize(prepared, qdq, calib, options, cache, exclude=tuple(kept_float))
                    tuned = evaluate_variant(qdq, card, tune_set, targets, fused=False,
                                             threads=options.threads)
                    trials.append({"kept_float": len(kept_float), "split": "val",
                                   "pixel_agreement": tuned.pixel_agreement,
                                   "mean_dice_vs_reference": tuned.mean_dice_vs_reference})
                    _say(progress, f"  {len(kept_float)} layer(s) in float (validation): "
                                   f"{tuned.summary()}")
                    count = len(ranking) if count * 2 > len(ranking) > count else count * 2
                if kept_float and len(kept_float) == len(ranking):
                    raise ArtifactError(
                        f"INT8 ({options.method}) reaches the target only with every layer in "
                        f"float, which is no INT8 model; try --method entropy or percentile, "
                        f"or more calibration images; {run_dir / INT8_ONNX} was not written")
        agreement = evaluate_variant(qdq, card, eval_set, targets, fused=False,
                                     threads=options.threads)
        if not agreement.passed:
            raise ArtifactError(f"INT8 ({options.method}) misses the target on "
                                f"{len(eval_set.samples)} test images with {len(kept_float)} "
                                f"layer(s) in float: {agreement.summary()}; try --method "
                                f"entropy or percentile, or more calibration images; "
                                f"{run_dir / INT8_ONNX} was not written")
        proto = load_onnx(qdq)
        check_standard_ops(proto, str(run_dir / INT8_ONNX))
        trt = check_tensorrt_import(qdq)
        if not trt.ok:
            raise ArtifactError(f"the INT8 Q/DQ model would not import into TensorRT: "
                                f"{trt.problems[0]} ({len(trt.problems)} problem(s)); "
                                f"{run_dir / INT8_ONNX} was not written")
        fused_agreement = evaluate_variant(qdq, card, eval_set, targets, fused=True,
                                           threads=options.threads)
        figures = {"agreement": agreement.to_dict(), "evaluated": "unfused (exact fake-quant, "
                   "the arithmetic TensorRT performs)",
                   "agreement_fused_onnxruntime_cpu": fused_agreement.to_dict(),
                   "kept_float": kept_float, "fallback_trials": trials,
                   "fallback_tuned_on": tuned_on,
                   "images": len(eval_set.samples), "few_images_warning": warning,
                   "format": "QDQ, int8 activations (symmetric, zero point 0), per-channel "
                             "symmetric int8 weights"}
        if kept_float:  # what keeping layers in float cost, on this CPU
            all_int8 = work / "int8-all.onnx"
            quantize(prepared, all_int8, calib, options, cache)
            figures["latency_ms_cpu_batch1"] = compare_latency(
                {"fp32": run_dir / ONNX, "int8": qdq, "int8_all_layers": all_int8},
                calib[:1], options.threads)
        with atomic_path(run_dir / INT8_ONNX) as tmp:
            tmp.write_bytes(qdq.read_bytes())
        report["variants"][INT8_ONNX] = figures
        record_artifact(run_dir, INT8_ONNX, "calibrate", parent=ONNX,
                        options={"method": options.method, "percentile": options.percentile,
                                 "calibration_images": len(calib)},
                        figures=figures, tools=tools)
        _say(progress, f"INT8 Q/DQ (unfused): {agreement.summary()}")

        if options.cpu_variant:
            report["variants"][INT8_CPU_ONNX] = _cpu_variant(
                run_dir, prepared, work, calib, options, cache, card, eval_set, targets,
                kept_float, tools, progress, warning)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)

    report["tensorrt_import_check"] = {
        name: check_tensorrt_import(run_dir / name).to_dict()
        for name in (ONNX, FP16_ONNX, INT8_ONNX) if (run_dir / name).exists()}
    write_json(run_dir / CALIBRATION, report)
    record_artifact(run_dir, CALIBRATION, "calibrate", parent=ONNX)
    return report


def _cpu_variant(run_dir, prepared, work, calib, options, cache, card, eval_set, targets,
                 kept_float, tools, progress, warning) -> dict:
    """The QOperator U8S8 variant: written only if it passes fused and beats Q/DQ on CPU."""
    cpu = work / "int8-cpu.onnx"
    quantize(prepared, cpu, calib, options, cache, cpu_form=True, exclude=tuple(kept_float))
    agreement = evaluate_variant(cpu, card, eval_set, targets, fused=True,
                                 threads=options.threads)
    latency = compare_latency({"fp32": run_dir / ONNX, "int8_qdq": run_dir / INT8_ONNX,
                               "int8_cpu": cpu}, calib[:1], options.threads)
    figures = {"agreement": agreement.to_dict(),
               "evaluated": "fused (ONNX Runtime CPU int8 kernels, as it runs)",
               "format": "QOperator, uint8 activations, per-channel int8 weights (U8S8)",
               "kept_float": list(kept_float), "latency_ms_cpu_batch1": latency,
               "required_speedup_margin": options.cpu_speedup_margin,
               "images": len(eval_set.samples), "few_images_warning": warning}
    reason = cpu_variant_verdict(agreement, latency, options.cpu_speedup_margin)
    if reason is None:
        with atomic_path(run_dir / INT8_CPU_ONNX) as tmp:
            tmp.write_bytes(cpu.read_bytes())
        record_artifact(run_dir, INT8_CPU_ONNX, "calibrate", parent=ONNX,
                        options={"method": options.method}, figures=figures, tools=tools)
        figures["written"] = True
        _say(progress, f"INT8 CPU (fused): {agreement.summary()}; {latency['int8_cpu']:.1f} ms "
                       f"vs Q/DQ {latency['int8_qdq']:.1f} ms")
    else:
        figures["written"] = False
        figures["reason"] = reason
        forget_artifact(run_dir, INT8_CPU_ONNX)  # a stale one from an earlier run must go
        _say(progress, f"INT8 CPU variant not written: {figures['reason']}")
    return figures
