"""The OpenVINO backend: the project's ONNX files on a CPU, at its int8 and bf16 speed.

OpenVINO reads ``model.onnx`` and the Q/DQ ``model.int8.onnx`` unchanged (the
file TensorRT takes), keeps height and width dynamic, and runs:

* ``fp32``: the float file with the f32 inference precision hint. The hint is
  explicit: on CPUs with BF16, OpenVINO's default is bf16, which is a different
  variant with its own gate;
* ``bf16``: the float file with the bf16 hint (CPUs with AVX512_BF16 or AMX):
  no calibration, about half the fp32 time;
* ``int8``: the Q/DQ file; OpenVINO fuses each DequantizeLinear -> Conv ->
  QuantizeLinear into int8 kernels (VNNI), the rest runs in f32.

Same contract as every backend: (N, H, W, C) float32 raw pixels in, float32
outputs by name out. OpenVINO is imported lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.card import ModelCard, embedded_card
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.runtime.base import BackendBase

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


NOT_INSTALLED = "OpenVINO is not installed (pip install openvino)"


def openvino_unavailable() -> str | None:
    """Why OpenVINO cannot run here (it is not installed), or None when it can."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return NOT_INSTALLED
    return None


def openvino_capabilities() -> list[str]:
    """What this CPU can do for OpenVINO (e.g. FP32, BF16, INT8), or [] without OpenVINO."""
    try:
        import openvino as ov
    except ImportError:
        return []
    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def bf16_unavailable() -> str | None:
    """Why the bf16 hint cannot run natively here, or None when it can."""
    capabilities = openvino_capabilities()
    if not capabilities:
        return NOT_INSTALLED
    if "BF16" not in capabilities:
        return ("this CPU has no native bf16 (AVX512_BF16 or AMX); OpenVINO would emulate it, "
                "slower than fp32")
    return None


class OpenVINOBackend(BackendBase):
    """An ONNX file compiled by OpenVINO for the CPU, with an explicit precision."""

    def __init__(self, path: Path, threads: int | None = None, precision: str | None = None):
        """
        Args:
            precision: fp32, bf16 or int8; None: int8 for a file with Q/DQ nodes, else fp32.
        """
        import openvino as ov

        from retinaunet_deploy import remake
        from retinaunet_deploy.artifacts import check_onnx_external_data

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path} not found; {remake.missing(self.path)}")
        graph = check_onnx_external_data(self.path)  # names, metadata; no weights read
        quantized = any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
        self.precision = precision or ("int8" if quantized else "fp32")
        if self.precision not in PRECISION_HINTS:
            raise ConfigError(f"OpenVINO precision must be one of {sorted(PRECISION_HINTS)}, "
                              f"got {self.precision!r}")
        if (self.precision == "int8") != quantized:
            raise ConfigError(f"{self.path}: OpenVINO int8 runs a Q/DQ file (model.int8.onnx) "
                              f"and fp32/bf16 a float one; this file "
                              f"{'is' if quantized else 'is not'} quantised")
        if self.precision == "bf16" and bf16_unavailable():
            raise ConfigError(f"OpenVINO bf16: {bf16_unavailable()}")
        self._metadata = {p.key: p.value for p in graph.metadata_props}
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[self.precision],
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        except RuntimeError as error:
            raise ArtifactError(f"OpenVINO cannot compile {self.path} "
                                f"({str(error).strip().splitlines()[0][:200]}); "
                                f"{remake.remedy(self.path)}") from error
        # Read back from the compiled model: the figure a report states is the one that
        # runs (0: OpenVINO's default, when no count was asked for).
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS")) or None
        self.request = self.compiled.create_infer_request()
        self.output_names = [output.get_any_name() for output in self.compiled.outputs]

    def card(self) -> ModelCard | None:
        """The model card embedded in the ONNX metadata (parsed as JSON, never evaluated)."""
        return embedded_card(self.path, self._metadata.get("model_card"))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self._check_open()
        results = self.request.infer({0: np.ascontiguousarray(batch, np.float32)})
        # Copies: the request reuses its output buffers on the next call. Float outputs as
        # float32; integer ones (an end-to-end file's counts, classes, labels) as they are.
        return {name: _copied(results[output])
                for name, output in zip(self.output_names, self.compiled.outputs)}

    def _release(self) -> None:
        self.request = self.compiled = None  # the compiled model's memory goes with them


def _copied(array) -> np.ndarray:
    """A copy of an output: float32 for a float one, its own dtype for an integer one."""
    array = np.asarray(array)
    return np.array(array, array.dtype if array.dtype.kind in "iub" else np.float32)
