"""The file names of a run folder: the one place they are spelled.

A run folder holds the trained model, its variants and their records::

    model.keras           the float reference (train)
    model_card.json       everything a runtime needs to pre- and postprocess (train)
    model.onnx            fp32 ONNX (export)
    model.fp16.onnx       FP16 weights and compute, fp32 I/O (calibrate)
    model.int8.onnx       explicit Q/DQ INT8, the TensorRT form (calibrate)
    model.int8.cpu.onnx   QOperator U8S8, the ONNX Runtime CPU form (calibrate)
    model.int8.tflite     full-int8 LiteRT (calibrate)
    model.<p>.plan        a TensorRT engine of precision p (build-engine)
    calibration.json      how the variants were made and how they measured (calibrate)
    manifest.json         sha256, parent and figures of every file above
    reference/            the float model's stored outputs on held-out images
    recommendation.json   the fastest variant that passed its gate here (bench)
"""

from __future__ import annotations

KERAS = "model.keras"
CARD = "model_card.json"
ONNX = "model.onnx"
FP16_ONNX = "model.fp16.onnx"
INT8_ONNX = "model.int8.onnx"
INT8_CPU_ONNX = "model.int8.cpu.onnx"
INT8_TFLITE = "model.int8.tflite"
CALIBRATION = "calibration.json"
MANIFEST = "manifest.json"
TIMING_CACHE = "tensorrt.timing.cache"
REFERENCE_DIR = "reference"
RECOMMENDATION = "recommendation.json"

# The ONNX file each TensorRT engine precision is compiled from (the U8S8 CPU form is
# not for TensorRT).
ONNX_FOR_PRECISION = {"fp32": ONNX, "fp16": FP16_ONNX, "int8": INT8_ONNX}


def plan_name(precision: str) -> str:
    """The engine file of a precision: fp16 -> model.fp16.plan."""
    return f"model.{precision}.plan"


def plan_precision(name: str) -> str | None:
    """The precision of an engine file name (model.int8.plan -> int8), or None."""
    for precision in ONNX_FOR_PRECISION:
        if name == plan_name(precision):
            return precision
    return None
