"""LiteRT's model.int8.tflite: full-int8, converted from model.keras.

Calibrated on the same training patches as the ONNX INT8 files, judged as LiteRT
runs it (XNNPACK) on the same whole test images, against the same stored
reference and targets as every other variant (`export.lifecycle`); written only
when it passes, refused with its figures otherwise (an extra target, not the
TensorRT one: the stage goes on).

The OpenVINO judgements (int8 on model.int8.onnx, bf16 on model.onnx) are no
files: every registered runtime with ``judged_files`` is judged by
`export.lifecycle.judge_runtime_variants`.
"""

from __future__ import annotations

from pathlib import Path

from retinaunet_deploy.export.lifecycle import Candidate, Context, Judged
from retinaunet_deploy.names import KERAS

FORMAT = "full int8 (TFLITE_BUILTINS_INT8), float32 I/O"
JUDGED = Judged("tflite", "LiteRT with XNNPACK (as it runs)")
TOOLS = ("tensorflow", "ai-edge-litert")


def make_tflite_int8(context: Context, work: Path) -> Candidate:
    """Convert model.keras to ``work/int8.tflite``, int8-calibrated on the context's patches."""
    from retinaunet_deploy.runtime.backends import load_keras_model
    from retinaunet_deploy.runtime.tflite import convert_to_tflite

    calib = context.calib
    context.say(f"LiteRT int8: converting model.keras, calibrated on the same {len(calib)} "
                f"patches")
    path = work / "int8.tflite"
    path.write_bytes(convert_to_tflite(load_keras_model(context.run_dir / KERAS), calib))
    return Candidate(path, {"format": FORMAT, "calibration_images": len(calib)},
                     {"calibration_images": len(calib)})


def announce_tflite(context: Context, variant, agreement, figures: dict) -> str:
    """The progress line of a written LiteRT file."""
    return f"LiteRT int8: {agreement.summary()}"
