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
whole held-out test images against the stored Keras float reference
(`export.gates`, `runtime.reference`), with 95% bootstrap intervals. When the
Q/DQ model misses the target on the *validation* images, the fallback
(`export.fallback`) keeps its most sensitive convolutions in float until the
target holds there. The test images judge the result once, so the reported
figures were never tuned on.

This module only orchestrates: quantisation is `export.quantize`, the gates
`export.gates`, the fallback `export.fallback`, the U8S8 file `export.cpu_variant`.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import (
    atomic_path,
    load_onnx,
    record_artifact,
    tool_versions,
    verify_artifact,
    write_json,
)
from retinaunet_deploy.card import load_card
from retinaunet_deploy.data.splits import calibration_images, few_images_warning
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.export.cpu_runtimes import judge_openvino, tflite_variant
from retinaunet_deploy.export.cpu_variant import compare_latency, make_cpu_variant
from retinaunet_deploy.export.fallback import search_fallback
from retinaunet_deploy.export.precision import FP16Options, to_fp16
from retinaunet_deploy.export.quantize import METHODS, activation_ranges, quantize
from retinaunet_deploy.export.trt_check import check_tensorrt_import
from retinaunet_deploy.judge.gates import evaluate_variant, make_eval_set, variant_figures
from retinaunet_deploy.judge.targets import Targets
from retinaunet_deploy.names import (
    CALIBRATION,
    FP16_ONNX,
    INT8_CPU_ONNX,
    INT8_ONNX,
    INT8_TFLITE,
    ONNX,
)

# In the work folder: every conv quantised. The fallback puts convs back in float from
# it, and its latency is what keeping them float costs.
ALL_INT8 = "int8-all.onnx"


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
    # The Q/DQ file's fallback makes it pass as TensorRT computes it and, with a few more
    # float layers at most, under OpenVINO's int8 kernels too (`export.fallback`).
    fallback_runtimes: tuple[str, ...] = ("onnxruntime", "openvino")
    cpu_variant: bool = True
    openvino: bool = True              # judge OpenVINO int8 (and bf16 where the CPU has it)
    tflite: bool = True                # make and judge model.int8.tflite (LiteRT)
    cpu_speedup_margin: float = 0.10   # U8S8 kept only when this much faster than Q/DQ
    batch_size: int = 8
    threads: int | None = None
    # Latency-only runs on random weights (`bench --latency-only`): every INT8 file is
    # written and its figures recorded, but no target refuses it. Never for shipping.
    ungated: bool = False

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
        return Targets(pixel_agreement=self.pixel_agreement, mean_dice_vs_reference=self.mean_dice,
                       matched_fraction=self.matched_fraction, max_ap_drop=self.max_ap_drop)


def image_hashes(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(image.tobytes()).hexdigest()[:16] for image in images]


def calibrate(run_dir: Path, options: CalibrationOptions | None = None, fp16: bool = True,
              progress=None) -> dict:
    """Make the FP16 and INT8 variants of ``run_dir/model.onnx``; returns calibration.json.

    Args:
        progress: optional callable receiving one-line status messages.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from retinaunet_deploy.runtime.backends import configure_tensorflow

    options = options or CalibrationOptions()
    configure_tensorflow(options.threads)  # the float reference runs with these threads
    run_dir = Path(run_dir)
    card = load_card(run_dir)
    onnx_sha = verify_artifact(run_dir, ONNX, f"retinaunet-deploy export {run_dir}")
    tools = tool_versions("onnx", "onnxruntime", "onnxruntime-gpu", "onnxconverter-common")
    say = progress or (lambda message: None)

    eval_set = make_eval_set(run_dir, card, options.eval_images, options.threads,
                             progress=say)
    say(f"float reference on {len(eval_set.samples)} whole held-out test images")
    warning = few_images_warning(len(eval_set.samples), "every gate below")
    if warning:
        say(warning)
    calib = calibration_images(card, options.calibration_images)
    report = {"parent": {"file": ONNX, "sha256": onnx_sha},
              "options": asdict(options), "targets": options.targets.to_dict(),
              "evaluation": {"images": len(eval_set.samples), "split": "test",
                             "whole_images": True, "warning": warning,
                             "reference": "model.keras (float32), stored in reference/",
                             "intervals": "95% percentile bootstrap over images (1000)"},
              "calibration_data": {"split": "train", "images": len(calib),
                                   "patch_size": int(calib.shape[1]),
                                   "sha256_prefixes": image_hashes(calib)},
              "variants": {}}

    work = Path(tempfile.mkdtemp(prefix="calibrate-"))
    try:
        if fp16:
            report["variants"][FP16_ONNX] = _fp16_variant(run_dir, card, eval_set, options,
                                                          tools, warning, say)
        say(f"INT8: calibrating ({options.method}) on {len(calib)} training patches of "
            f"{calib.shape[1]}x{calib.shape[2]}")
        prepared = work / "prepared.onnx"
        quant_pre_process(str(run_dir / ONNX), str(prepared), skip_symbolic_shape=True)
        cache = work  # ranges-{symmetric,asymmetric}.json, calibrated once each
        all_int8, qdq = work / ALL_INT8, work / "int8.onnx"
        quantize(prepared, all_int8, calib, options, cache)
        shutil.copyfile(all_int8, qdq)
        report["activation_ranges"] = activation_ranges(cache)
        figures = _int8_variant(run_dir, card, eval_set, options, prepared, qdq, work, calib,
                                cache, report, tools, warning, say)
        if options.openvino:
            report["runtime_variants"] = judge_openvino(run_dir, card, eval_set, options,
                                                        warning, say)
        if options.cpu_variant:
            openvino_int8 = report.get("runtime_variants", {}).get("openvino int8", {})
            report["variants"][INT8_CPU_ONNX] = make_cpu_variant(
                run_dir, prepared, work, calib, options, cache, card, eval_set,
                figures["kept_float"], tools, say, warning,
                openvino_int8_passed=bool(openvino_int8.get("passed")))
        if options.tflite:
            report["variants"][INT8_TFLITE] = tflite_variant(run_dir, card, calib, eval_set,
                                                             options, warning, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report["tensorrt_import_check"] = {
        name: check_tensorrt_import(run_dir / name).to_dict()
        for name in (ONNX, FP16_ONNX, INT8_ONNX) if (run_dir / name).exists()}
    write_json(run_dir / CALIBRATION, report)
    record_artifact(run_dir, CALIBRATION, "calibrate", parent=ONNX)
    return report


def _fp16_variant(run_dir, card, eval_set, options, tools, warning, say) -> dict:
    """model.fp16.onnx, judged fused (as ONNX Runtime runs it); refused if it misses."""
    import onnx

    say("FP16: converting and measuring")
    fp16_proto, blocked = to_fp16(load_onnx(run_dir / ONNX), FP16Options())
    targets = Targets(pixel_agreement=options.fp16_pixel_agreement, mean_dice_vs_reference=0.0,
                      matched_fraction=options.matched_fraction, max_ap_drop=options.max_ap_drop)
    with atomic_path(run_dir / FP16_ONNX) as tmp:
        onnx.save(fp16_proto, tmp)
        agreement = evaluate_variant(tmp, card, eval_set, targets, fused=True,
                                     threads=options.threads, intervals=True)
        if not agreement.passed:
            raise ArtifactError(f"FP16 variant misses its target on {agreement.images} test "
                                f"images: {agreement.summary()} (target pixel agreement >= "
                                f"{options.fp16_pixel_agreement:.2%}); not written")
    figures = variant_figures(agreement, eval_set, "fused (as ONNX Runtime runs it)", warning,
                              kept_float32=blocked)
    record_artifact(run_dir, FP16_ONNX, "calibrate", parent=ONNX,
                    options=FP16Options().to_dict(), figures=figures, tools=tools)
    return figures


def _int8_variant(run_dir, card, eval_set, options, prepared, qdq, work, calib, cache, report,
                  tools, warning, say) -> dict:
    """model.int8.onnx: fallback tuned on validation, judged once on test, TensorRT-checked."""
    from retinaunet_deploy.export.onnx import check_standard_ops

    target = run_dir / INT8_ONNX
    fallback = None
    if options.fallback and not options.ungated:
        tune_set = make_eval_set(run_dir, card, options.eval_images, options.threads,
                                 split="val", progress=say)
        try:
            fallback = search_fallback(prepared, work / ALL_INT8, qdq, work, options,
                                       card, tune_set, say)
        except ArtifactError as error:
            raise ArtifactError(f"{error}; {target} was not written") from error
        if fallback.ranking:
            report["layer_sensitivity"] = fallback.ranking
    kept_float = fallback.kept_float if fallback else []
    agreement = evaluate_variant(qdq, card, eval_set, options.targets, fused=False,
                                 threads=options.threads, intervals=True)
    if not agreement.passed and not options.ungated:
        raise ArtifactError(f"INT8 ({options.method}) misses the target on "
                            f"{len(eval_set.samples)} test images with {len(kept_float)} "
                            f"layer(s) in float: {agreement.summary()}; try --method "
                            f"entropy or percentile, or more calibration images; "
                            f"{target} was not written")
    check_standard_ops(load_onnx(qdq), str(target))
    trt = check_tensorrt_import(qdq)
    if not trt.ok:
        raise ArtifactError(f"the INT8 Q/DQ model would not import into TensorRT: "
                            f"{trt.problems[0]} ({len(trt.problems)} problem(s)); "
                            f"{target} was not written")
    fused = evaluate_variant(qdq, card, eval_set, options.targets, fused=True,
                             threads=options.threads, intervals=True)
    figures = variant_figures(
        agreement, eval_set, "unfused (exact fake-quant, the arithmetic TensorRT performs)",
        warning, agreement_fused_onnxruntime_cpu=fused.to_dict(), kept_float=kept_float,
        fallback_trials=fallback.trials if fallback else [],
        fallback_tuned_on=fallback.tuned_on if fallback else None,
        format="QDQ, int8 activations (symmetric, zero point 0), per-channel symmetric "
               "int8 weights", ungated=options.ungated)
    if kept_float:  # what keeping layers in float cost, on this CPU
        figures["latency_ms_cpu_batch1"] = compare_latency(
            {"fp32": run_dir / ONNX, "int8": qdq, "int8_all_layers": work / ALL_INT8},
            calib[:1], options.threads)
    with atomic_path(target) as tmp:
        tmp.write_bytes(qdq.read_bytes())
    report["variants"][INT8_ONNX] = figures
    record_artifact(run_dir, INT8_ONNX, "calibrate", parent=ONNX,
                    options={"method": options.method, "percentile": options.percentile,
                             "calibration_images": len(calib)},
                    figures=figures, tools=tools)
    say(f"INT8 Q/DQ (unfused): {agreement.summary()}")
    return figures
