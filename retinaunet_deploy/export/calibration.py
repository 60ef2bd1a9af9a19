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
* ``model.int8.tflite``: full-int8 LiteRT from ``model.keras`` (`export.cpu_runtimes`),
  judged as LiteRT runs it; refused with its figures when it misses.
* ``model.fp16.e2e.onnx``, ``model.int8.e2e.onnx``: the end-to-end twins of the two
  above (post-process in the graph, `export.e2e`), gated against the numpy
  post-process on their parent's outputs (`export.e2e_gate`); a twin that misses
  is recorded with its reason and not written.
* runtime variants (no file): every registered runtime with ``judged_files``
  (OpenVINO int8 on model.int8.onnx, bf16 on model.onnx), in the manifest's
  ``runtime_variants``.
* ``calibration.json``: the options, the targets (``targets`` for int8/fp32 and
  ``targets_by_precision``), the method, the calibration images (count, hashes and
  their intensity range, ``calibration_data.intensity``: `runtime.calibration_range`,
  also in each INT8 ONNX file's metadata as ``calibration_range``),
  the activation ranges, the layers kept in float, and every variant's figures.

Calibration patches come from the training split. Agreement is measured on
whole held-out test images against the stored Keras float reference
(`judge.gates`, `judge.reference`), with 95% bootstrap intervals. When the
Q/DQ model misses the target on the *validation* images, the fallback
(`export.fallback`) keeps its most sensitive convolutions in float until the
target holds there. The test images judge the result once, so the reported
figures were never tuned on.

This module only orchestrates: the variants are the table `export.variants.VARIANTS`,
each taken through `export.lifecycle.make_variant` in turn; the runtime variants
(OpenVINO) are judged by `export.lifecycle.judge_runtime_variants` as soon as the
files they run are made. Options are `export.options`.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import record_artifact, verify_artifact, write_json
from retinaunet_deploy.card import load_card
from retinaunet_deploy.data.splits import calibration_images, few_images_warning
from retinaunet_deploy.data.volume_source import counts_phrase, split_counts
from retinaunet_deploy.export.lifecycle import (
    Context,
    judge_runtime_variants,
    judged_runtimes,
    make_variant,
)
from retinaunet_deploy.export.options import CalibrationOptions
from retinaunet_deploy.export.trt_check import check_tensorrt_import
from retinaunet_deploy.export.variants import VARIANTS
from retinaunet_deploy.judge.gates import make_eval_set
from retinaunet_deploy.names import CALIBRATION, ONNX, ONNX_FOR_PRECISION, e2e_name
from retinaunet_deploy.runtime.calibration_range import intensity_record

__all__ = ["CalibrationOptions", "calibrate", "image_hashes"]


def image_hashes(images: np.ndarray) -> list[str]:
    """The first 16 hex digits of each image's sha256 (its bytes as stored)."""
    return [hashlib.sha256(image.tobytes()).hexdigest()[:16] for image in images]


def calibrate(run_dir: Path, options: CalibrationOptions | None = None, fp16: bool = True,
              progress=None) -> dict:
    """Make the variants of ``run_dir/model.onnx`` (`export.variants`); returns calibration.json.

    Args:
        options: the stage's options (default `CalibrationOptions()`).
        fp16: False skips model.fp16.onnx (as ``options.extras.fp16`` does).
        progress: optional callable receiving one-line status messages.

    Raises `ArtifactError` when model.onnx is missing or changed, or a variant whose
    refusal stops the stage (FP16, INT8 Q/DQ) misses its target; `DataError` when
    the run's data is gone or changed.
    """
    from retinaunet_deploy.artifacts import check_writable
    from retinaunet_deploy.runtime.backends import configure_tensorflow

    options = options or CalibrationOptions()
    if not fp16:
        options = options.without_fp16()
    configure_tensorflow(options.threads)  # the float reference runs with these threads
    run_dir = Path(run_dir)
    card = load_card(run_dir)
    check_writable(run_dir)  # a run folder (it exists)
    onnx_sha = verify_artifact(run_dir, ONNX, f"retinaunet-deploy export {run_dir}")
    say = progress or (lambda message: None)

    eval_set = make_eval_set(run_dir, card, options.eval_images, options.threads,
                             progress=say)
    counts = split_counts(card.data, eval_set.samples)   # volumes: slices of volumes
    say(f"float reference on {len(eval_set.samples)} whole held-out test images"
        f"{counts_phrase(counts)}")
    warning = few_images_warning(len(eval_set.samples), "every gate below")
    if warning:
        say(warning)
    calib = calibration_images(card, options.quantisation.calibration_images)
    # What the INT8 files were calibrated on, for the out-of-calibration guard at predict
    # time (`runtime.calibration_range`); also inside each INT8 ONNX file.
    intensity = intensity_record(calib, card.input.pixel_max,
                                 normalization=card.normalization)
    report = {"parent": {"file": ONNX, "sha256": onnx_sha},
              "options": options.record(), "targets": options.targets_for("int8").to_dict(),
              "targets_by_precision": options.targets_by_precision(),
              "evaluation": {"images": len(eval_set.samples), **counts, "split": "test",
                             "whole_images": True, "warning": warning,
                             "reference": "model.keras (float32), stored in reference/",
                             "intervals": "95% percentile bootstrap over images (1000)"},
              "calibration_data": {"split": "train", "images": len(calib),
                                   **({"drawn_from": card.data["counts"]["train"]}
                                      if counts else {}),
                                   "patch_size": int(calib.shape[1]),
                                   "sha256_prefixes": image_hashes(calib),
                                   "intensity": intensity},
              "variants": {}}
    context = Context(run_dir, card, calib, eval_set, options, warning, say, report)
    _make_all(context)
    report["tensorrt_import_check"] = {
        name: check_tensorrt_import(run_dir / name).to_dict()
        for plain in ONNX_FOR_PRECISION.values() for name in (plain, e2e_name(plain))
        if (run_dir / name).exists()}
    write_json(run_dir / CALIBRATION, report)
    record_artifact(run_dir, CALIBRATION, "calibrate", parent=ONNX)
    return report


def _make_all(context: Context) -> None:
    """Every enabled variant in table order, in one work folder; the runtime variants are
    judged right after the last variant whose file one of them runs (before the first
    variant when none does), so a later variant can compare itself with them."""
    variants = [v for v in VARIANTS.values()
                if v.enabled(context.options) and v.applies(context.card)]
    runtimes = judged_runtimes(context.options)
    judged = {file for runtime in runtimes for file in runtime.judged_files}
    after = max((i for i, v in enumerate(variants) if v.file in judged), default=-1)

    def runtime_variants():
        if runtimes:
            context.report["runtime_variants"] = judge_runtime_variants(context)

    work = Path(tempfile.mkdtemp(prefix="calibrate-"))
    try:
        if after < 0:
            runtime_variants()
        for index, variant in enumerate(variants):
            make_variant(context, variant, work)
            if index == after:
                runtime_variants()
    finally:
        shutil.rmtree(work, ignore_errors=True)
