"""The file names of a run folder: the one place they are spelled.

A run folder holds the trained model, its variants and their records::

    model.keras           the float reference (train)
    model_card.json       everything a runtime needs to pre- and postprocess (train)
    model.onnx            fp32 ONNX (export)
    model.fp16.onnx       FP16 weights and compute, fp32 I/O (calibrate)
    model.int8.onnx       explicit Q/DQ INT8, the TensorRT form (calibrate)
    model.int8.cpu.onnx   QOperator U8S8, the ONNX Runtime CPU form (calibrate)
    model.int8.tflite     full-int8 LiteRT (calibrate)
    model[.p].e2e.onnx    an ONNX file with its post-process in the graph: decoded,
                          NMS'd, padded detections and a `labels` mask (export for
                          model.onnx, calibrate for the fp16/int8 twins)
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
E2E_SUFFIX = ".e2e.onnx"
E2E_ONNX = "model.e2e.onnx"
FP16_E2E_ONNX = "model.fp16.e2e.onnx"
INT8_E2E_ONNX = "model.int8.e2e.onnx"
CALIBRATION = "calibration.json"
MANIFEST = "manifest.json"
TIMING_CACHE = "tensorrt.timing.cache"
REFERENCE_DIR = "reference"
RECOMMENDATION = "recommendation.json"

# The ONNX file each TensorRT engine precision is compiled from (the U8S8 CPU form is
# not for TensorRT).
ONNX_FOR_PRECISION = {"fp32": ONNX, "fp16": FP16_ONNX, "int8": INT8_ONNX}


def e2e_name(plain: str) -> str:
    """The end-to-end twin of a plain ONNX file name: model.int8.onnx -> model.int8.e2e.onnx."""
    if not plain.endswith(".onnx") or plain.endswith(E2E_SUFFIX):
        raise ValueError(f"{plain!r} is not a plain .onnx file name")
    return plain[:-len(".onnx")] + E2E_SUFFIX


def plain_name(e2e: str) -> str:
    """The plain file an end-to-end one is made from: model.int8.e2e.onnx -> model.int8.onnx."""
    if not e2e.endswith(E2E_SUFFIX):
        raise ValueError(f"{e2e!r} is not an end-to-end (.e2e.onnx) file name")
    return e2e[:-len(E2E_SUFFIX)] + ".onnx"


def is_end_to_end(path) -> bool:
    """Whether a file is an end-to-end ONNX file (its post-process in the graph), by its
    name: ``*.e2e.onnx`` (export/README.md, "End-to-end files", gives its outputs)."""
    return str(path).endswith(E2E_SUFFIX)


def plan_name(precision: str) -> str:
    """The engine file of a precision: fp16 -> model.fp16.plan."""
    return f"model.{precision}.plan"


def plan_precision(name: str) -> str | None:
    """The precision of an engine file name (model.int8.plan -> int8), or None."""
    for precision in ONNX_FOR_PRECISION:
        if name == plan_name(precision):
            return precision
    return None
