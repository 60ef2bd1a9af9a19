"""INT8 quantisation of an ONNX file: activation ranges and the two INT8 forms.

* the TensorRT form: Q/DQ, symmetric int8 activations (zero point 0), per-channel
  symmetric int8 weights, float biases;
* the ONNX Runtime CPU form: QOperator U8S8, per-channel.

`options` is the calibration stage's quantisation part (`export.options.QuantisationOptions`:
method, percentile, batch_size); ranges are calibrated once per form and cached in a folder.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import load_onnx
from retinaunet_deploy.export.graph_edits import drop_dead_nodes
from retinaunet_deploy.export.precision import preprocess_node_names, unshare_conv_biases

METHODS = ("minmax", "entropy", "percentile")
# In a calibrate work folder: model.onnx prepared for quantisation (`prepare`).
PREPARED = "prepared.onnx"
# Q/DQ goes on the inputs and weights of convolutions only (NVIDIA's recommended
# placement for explicit quantization). Quantising the Softmax would put the mask's
# probabilities in 1/127 steps (near-ties flip the argmax), and quantised Concats
# force the skip connections onto a shared scale. It also means that keeping every
# conv in float gives back the float model, so the fallback always ends.
QUANTIZED_OPS = ("Conv", "ConvTranspose")
CPU_QUANTIZED_OPS = QUANTIZED_OPS


def prepare(source: Path, work: Path) -> Path:
    """`source` (fp32 ONNX) pre-processed for quantisation into ``work/prepared.onnx``, made
    once per work folder: every INT8 form is quantised from this one graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = Path(work) / PREPARED
    if not prepared.exists():
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    return prepared


def _reader(images: np.ndarray, batch_size: int, input_name: str = "image"):
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([images[i:i + batch_size]
                                  for i in range(0, len(images), batch_size)])

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return ImageReader()


def _ort_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def calibrate_ranges(source: Path, images: np.ndarray, options,
                     cache: Path, symmetric: bool) -> None:
    """Calibrate activation ranges of `source` on `images` into `cache` (ORT's format).

    ONNX Runtime's `quantize_static` builds its entropy calibrator with 128
    histogram bins and 128 quantised bins, which leaves the KL search a single
    candidate (so "entropy" silently equals min/max). Here the histogram methods
    use 2048 bins, as TensorRT's entropy calibrator does.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    extra = {"symmetric": symmetric}
    if options.method == "entropy":
        extra.update(num_bins=2048, num_quantized_bins=128)
    elif options.method == "percentile":
        extra.update(num_bins=2048, percentile=options.percentile)
    with tempfile.TemporaryDirectory(prefix="calibrator-") as scratch:
        calibrator = create_calibrator(
            Path(source), list(QUANTIZED_OPS), calibrate_method=_ort_method(options.method),
            augmented_model_path=str(Path(scratch) / "augmented.onnx"), extra_options=extra)
        calibrator.collect_data(_reader(images, options.batch_size))
        save_tensors_data(calibrator.compute_data(), Path(cache), smooth_quant=False)


def quantize(source: Path, target: Path, images: np.ndarray, options,
             cache_dir: Path, cpu_form: bool = False, exclude: tuple[str, ...] = ()) -> None:
    """Quantise `source` (pre-processed fp32 ONNX) into `target`.

    The TensorRT form is Q/DQ S8S8, symmetric, per-channel. The CPU form is
    QOperator U8S8, per-channel. Activation ranges are calibrated once per form
    into `cache_dir`, then reused by every later call with the same folder.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    cache = Path(cache_dir) / f"ranges-{'asymmetric' if cpu_form else 'symmetric'}.json"
    if not cache.exists():
        calibrate_ranges(source, images, options, cache, symmetric=not cpu_form)
    extra = {"WeightSymmetric": True, "ActivationSymmetric": not cpu_form,
             # TensorRT's Q/DQ import takes int8 only: conv biases stay float (it
             # fuses them itself), rather than ONNX Runtime's int32 bias + DQ.
             "QuantizeBias": cpu_form}
    if not cpu_form:
        # Q/DQ at the inputs of convs only (activations and weights), as TensorRT's
        # guide places them: TensorRT fuses conv + ReLU + the next conv's input Q itself.
        # ONNX Runtime would also quantise each conv's *output*, which rounds twice
        # (conv -> Q/DQ -> ReLU -> Q/DQ -> conv) and, fused by OpenVINO, cost 2.4% of
        # the trained small model's pixels (97.5% agreement; 99.75% without it).
        extra["OpTypesToExcludeOutputQuantization"] = list(QUANTIZED_OPS)
    proto = load_onnx(source)
    # The input normalisation stays float: it is elementwise and cheap, and
    # quantising raw pixels to 8 bits would throw away half of their levels.
    exclude = tuple(exclude) + tuple(preprocess_node_names(proto))
    unshared = Path(target).with_name(Path(target).stem + ".unshared.onnx")
    if cpu_form and unshare_conv_biases(proto):  # int32 biases need one scale per node
        import onnx

        onnx.save(proto, unshared)
        source = unshared
    try:
        quantize_static(
            str(source), str(target), None,
            quant_format=QuantFormat.QOperator if cpu_form else QuantFormat.QDQ,
            op_types_to_quantize=list(CPU_QUANTIZED_OPS if cpu_form else QUANTIZED_OPS),
            per_channel=True,
            activation_type=QuantType.QUInt8 if cpu_form else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            calibrate_method=_ort_method(options.method),  # must match the cache's
            extra_options=extra,
            calibration_cache_path=str(cache),
        )
    finally:
        unshared.unlink(missing_ok=True)


def activation_ranges(cache_dir: Path) -> dict:
    """Calibrated [lowest, highest] per tensor, from the symmetric (TensorRT-form) cache."""
    raw = json.loads((Path(cache_dir) / "ranges-symmetric.json").read_text())
    ranges = {}
    for name, value in raw.get("data", {}).items():
        lo, hi = (np.asarray(value[k].get("data", value[k]) if isinstance(value[k], dict)
                             else value[k], np.float64).reshape(-1) for k in ("lowest", "highest"))
        ranges[name] = [round(float(lo.min()), 6), round(float(hi.max()), 6)]
    return ranges


def keep_float(qdq_path: Path, prepared_path: Path, target: Path, names: tuple[str, ...]) -> None:
    """Write `qdq_path` with the convs in `names` back in float, without re-quantising.

    Each named conv takes its float inputs from `prepared_path` (the graph that was
    quantised: ONNX Runtime keeps its tensor names) instead of the Dequantize
    outputs; Q/DQ nodes left without a consumer are dropped. For a conv with its own
    weights this is exactly what `quantize(..., exclude=names)` computes (tested); a
    conv that shares its weights with quantised ones (the detection heads across
    levels) gets float weights here too. One file edit instead of a
    `quantize_static` run per trial of the leave-one-out ranking.
    """
    import onnx

    proto, prepared = load_onnx(qdq_path), load_onnx(prepared_path)
    float_inputs = {node.name: list(node.input) for node in prepared.graph.node
                    if node.name in names}
    missing = set(names) - set(float_inputs)
    if missing:
        raise ValueError(f"{prepared_path}: no node named {sorted(missing)}")
    graph = proto.graph
    present = {init.name for init in graph.initializer}
    wanted = {name for inputs in float_inputs.values() for name in inputs}
    graph.initializer.extend(init for init in prepared.graph.initializer
                             if init.name in wanted and init.name not in present)
    for node in graph.node:
        if node.name in float_inputs:
            del node.input[:]
            node.input.extend(float_inputs[node.name])
    drop_dead_nodes(graph)  # the Q/DQ nodes nothing reads any more
    onnx.save(proto, target)

