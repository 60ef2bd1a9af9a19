"""This machine's dense-math limit per precision, measured, so a row can say how close it is.

The microbenchmark is the work a U-Net is made of: a chain of 3x3 convolutions,
256 -> 256 channels on a 56x56 map (3.7 GFLOP each; of 128/56, 256/56, 128/112
and 64/224 channels/side, the shape that ran fastest here), compiled by OpenVINO for
this CPU in fp32 (f32 hint), bf16 (bf16 hint) and int8 (the same chain with
Q/DQ nodes, run on int8 VNNI kernels), on `threads` threads, timed interleaved
in blocks like every other figure. Its GFLOP/s (int8: GOP/s) is what the best
kernels this machine has attain on large, regular convolutions: a practical
limit, not the data sheet's peak. A model's layers are smaller and less regular,
so a row's share of it says how much speed is left to find.
"""

from __future__ import annotations

import numpy as np

CHANNELS, SIDE, LAYERS = 256, 56, 4


def conv_chain(quantized: bool):
    """The benchmark graph as an ONNX model: (1, C, S, S) float32 in and out."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    inits.append(numpy_helper.from_array(np.float32(0.05), "act_scale"))
    inits.append(numpy_helper.from_array(np.int8(0), "act_zero"))
    current = "input"
    for i in range(LAYERS):
        weight = rng.normal(0, 0.05, (CHANNELS, CHANNELS, 3, 3)).astype(np.float32)
        if quantized:
            scale = np.abs(weight).reshape(CHANNELS, -1).max(1) / 127
            inits += [numpy_helper.from_array(np.round(weight / scale[:, None, None, None])
                                              .astype(np.int8), f"w{i}_q"),
                      numpy_helper.from_array(scale.astype(np.float32), f"w{i}_scale"),
                      numpy_helper.from_array(np.zeros(CHANNELS, np.int8), f"w{i}_zero")]
            nodes += [helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_scale",
                                                            f"w{i}_zero"], [f"w{i}"], axis=0),
                      helper.make_node("QuantizeLinear", [current, "act_scale", "act_zero"],
                                       [f"x{i}_q"]),
                      helper.make_node("DequantizeLinear", [f"x{i}_q", "act_scale",
                                                            "act_zero"], [f"x{i}_dq"])]
            conv_input = f"x{i}_dq"
        else:
            inits.append(numpy_helper.from_array(weight, f"w{i}"))
            conv_input = current
        nodes += [helper.make_node("Conv", [conv_input, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        current = f"r{i}"
    shape = [1, CHANNELS, SIDE, SIDE]
    graph = helper.make_graph(
        nodes, "peak", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gflop_per_call() -> float:
    return LAYERS * 2 * SIDE * SIDE * 9 * CHANNELS * CHANNELS / 1e9


def measure_peaks(threads: int, min_seconds: float = 1.5) -> dict:
    """GFLOP/s (int8: GOP/s) of the conv chain per precision on this CPU, p50-based.

    Returns {"fp32": {...}, "bf16": {...}, "int8": {...}, "engine": ...}; a precision
    this CPU cannot run natively (bf16) says so instead of a figure.
    """
    import openvino as ov

    from retinaunet_deploy.runtime.openvino import PRECISION_HINTS, bf16_unavailable
    from retinaunet_deploy.timing import interleaved_latency

    core = ov.Core()
    image = np.random.default_rng(1).uniform(0, 1, (1, CHANNELS, SIDE, SIDE)).astype(np.float32)
    requests, result = {}, {}
    for precision in ("fp32", "bf16", "int8"):
        if precision == "bf16" and bf16_unavailable():
            result[precision] = {"skipped": bf16_unavailable()}
            continue
        model = core.read_model(conv_chain(precision == "int8").SerializeToString(), b"")
        compiled = core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        requests[precision] = compiled.create_infer_request()
    figures = interleaved_latency({p: (lambda r=r: r.infer({0: image}))
                                   for p, r in requests.items()},
                                  rounds=10, warmup=2, min_seconds=min_seconds)
    for precision, figure in figures.items():
        result[precision] = {"p50_ms": round(figure["p50_ms"], 3),
                             "gflops": round(gflop_per_call() / (figure["p50_ms"] / 1e3), 1)}
    result["workload"] = (f"{LAYERS} x conv 3x3 {CHANNELS}->{CHANNELS} on {SIDE}x{SIDE}, "
                          f"{gflop_per_call():.2f} GFLOP per call, OpenVINO {ov.__version__}, "
                          f"{threads} thread(s)")
    return result


def share_of_peak(gflops_per_image: float, p50_ms: float, batch: int, peak: dict) -> float | None:
    """A row's attained GFLOP/s over the limit of its precision (None: no limit measured)."""
    if not peak or "gflops" not in peak:
        return None
    return gflops_per_image * batch / (p50_ms / 1e3) / peak["gflops"]
