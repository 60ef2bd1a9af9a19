"""CPU runtimes as gated variants: OpenVINO int8 and bf16, and LiteRT's model.int8.tflite.

OpenVINO fuses differently from ONNX Runtime, so a file that passed under one
runtime has not passed under another: each (file, runtime) pair is judged the
way it runs, on the same whole test images, against the same stored reference
and targets as every other variant.

* ``openvino int8``: ``model.int8.onnx`` (the TensorRT form) compiled by OpenVINO;
* ``openvino bf16``: ``model.onnx`` with the bf16 precision hint (only where the
  CPU has native bf16);
* ``model.int8.tflite``: full-int8 LiteRT converted from ``model.keras``,
  calibrated on the same training patches as the ONNX INT8 files; written only
  when it passes, refused with its figures otherwise.

The OpenVINO pairs are not files, so they are recorded in the manifest's
``runtime_variants`` table, tied to the hash of the file they ran.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import (
    atomic_path,
    forget_artifact,
    record_artifact,
    record_runtime_variant,
    tool_versions,
)
from retinaunet_deploy.judge.gates import EvalSet, judge, run_predictor, variant_figures
from retinaunet_deploy.names import INT8_ONNX, INT8_TFLITE, KERAS, ONNX

OPENVINO_VARIANTS = {  # name -> (file, precision)
    "openvino int8": (INT8_ONNX, "int8"),
    "openvino bf16": (ONNX, "bf16"),
}


def judge_openvino(run_dir: Path, card: dict, eval_set: EvalSet, options, warning, say) -> dict:
    """Judge each OpenVINO variant this machine can run; record each in the manifest.

    Returns name -> figures (with ``passed``), or ``skipped`` with the reason.
    """
    from retinaunet_deploy.runtime.openvino import (
        OpenVINOBackend,
        bf16_unavailable,
        openvino_unavailable,
    )

    if openvino_unavailable():
        return {name: {"skipped": openvino_unavailable()} for name in OPENVINO_VARIANTS}
    tools = tool_versions("openvino")
    results = {}
    for name, (file, precision) in OPENVINO_VARIANTS.items():
        if not (run_dir / file).exists():
            continue
        reason = bf16_unavailable() if precision == "bf16" else None
        if reason:
            results[name] = {"skipped": reason}
            say(f"{name}: skipped: {reason}")
            continue
        backend = OpenVINOBackend(run_dir / file, threads=options.threads, precision=precision)
        agreement = judge(eval_set, run_predictor(backend, card, eval_set), card,
                          options.targets)
        figures = variant_figures(agreement, eval_set, f"OpenVINO CPU, {precision} (as it runs)",
                                  warning, file=file, runtime="openvino",
                                  precision_hint=precision)
        figures["passed"] = agreement.passed
        record_runtime_variant(run_dir, name, file, "openvino" if precision != "bf16" else
                               "openvino-bf16", agreement.passed, figures, tools)
        results[name] = figures
        say(f"{name} ({file}): {'passes' if agreement.passed else 'misses'}: "
            f"{agreement.summary()}")
    return results


def make_tflite_int8(run_dir: Path, card: dict, calib: np.ndarray, eval_set: EvalSet, options,
                     warning, say) -> dict:
    """Convert, judge and write model.int8.tflite (refused with its figures on a miss)."""
    from retinaunet_deploy.runtime.backends import load_keras_model
    from retinaunet_deploy.runtime.tflite import TFLiteBackend, convert_to_tflite

    say(f"LiteRT int8: converting model.keras, calibrated on the same {len(calib)} patches")
    target = run_dir / INT8_TFLITE
    flatbuffer = convert_to_tflite(load_keras_model(run_dir / KERAS), calib)
    with atomic_path(target) as tmp:
        tmp.write_bytes(flatbuffer)
        backend = TFLiteBackend(tmp, threads=options.threads)
        agreement = judge(eval_set, run_predictor(backend, card, eval_set), card,
                          options.targets)
        figures = variant_figures(
            agreement, eval_set, "LiteRT with XNNPACK (as it runs)", warning,
            format="full int8 (TFLITE_BUILTINS_INT8), float32 I/O",
            calibration_images=len(calib))
        if not agreement.passed and not options.ungated:
            raise _Refused(figures, "; ".join(agreement.failures))
    record_artifact(run_dir, INT8_TFLITE, "calibrate", parent=KERAS,
                    options={"calibration_images": len(calib)}, figures=figures,
                    tools=tool_versions("tensorflow", "ai-edge-litert"))
    figures["written"] = True
    say(f"LiteRT int8: {agreement.summary()}")
    return figures


class _Refused(Exception):
    def __init__(self, figures: dict, reason: str):
        super().__init__(reason)
        self.figures = figures


def tflite_variant(run_dir: Path, card: dict, calib: np.ndarray, eval_set: EvalSet, options,
                   warning, say) -> dict:
    """`make_tflite_int8`, with a refusal recorded (and any stale file removed) rather than
    stopping the stage: the LiteRT file is an extra target, not the TensorRT one."""
    try:
        return make_tflite_int8(run_dir, card, calib, eval_set, options, warning, say)
    except _Refused as refused:
        forget_artifact(run_dir, INT8_TFLITE)
        figures = {**refused.figures, "written": False,
                   "reason": f"misses the agreement target as LiteRT runs it: {refused}"}
        say(f"LiteRT int8 not written: {figures['reason']}")
        return figures
