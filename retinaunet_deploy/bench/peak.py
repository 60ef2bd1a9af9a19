"""This machine's dense-math limit per precision, measured, so a row can say how close it is.

The microbenchmark is the work a U-Net is made of: a chain of 3x3 convolutions,
256 -> 256 channels on a 56x56 map (3.7 GFLOP each; of 128/56, 256/56, 128/112
and 64/224 channels/side, the shape that ran fastest here), compiled by OpenVINO for
this CPU in fp32 (f32 hint), bf16 (bf16 hint) and int8 (the same chain with
Q/DQ nodes, run on int8 VNNI kernels), on `threads` threads, timed interleaved
in blocks like every other figure, repeated between the rows' timings (`LimitProbe`;
the limit is the best repeat). Its GFLOP/s (int8: GOP/s) is what the best
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


# Seconds per precision per repeat: a bench takes two or three repeats, so their sum
# is about the 1.5 s that one measurement took when the limit was a single moment.
REPEAT_SECONDS = 0.5


class LimitProbe:
    """The conv chain compiled once per precision, timed as often as asked.

    A limit measured at one moment is whatever the machine gave then: a run disturbed
    by another job measured int8 at 1047 GFLOP/s instead of about 1750, and a row then
    showed 130% of it. So the bench measures between its rows' timings (`measure`,
    labelled with when), and a precision's limit is the best of the repeats
    (`limits`, every repeat kept).

    Args:
        threads: OpenVINO inference threads.
        min_seconds: minimum timed seconds per precision per repeat.
        say: progress messages (one line per repeat).
    """

    def __init__(self, threads: int, min_seconds: float = REPEAT_SECONDS, say=None):
        self.threads, self.min_seconds = threads, min_seconds
        self.say = say or (lambda message: None)
        self.repeats: list[dict] = []
        self.skipped: dict[str, str] = {}     # precision -> why it has no figure
        self.unavailable: str | None = None   # why no limit can be measured at all
        self.workload = ""
        self._requests = None

    def _compile(self) -> dict:
        import openvino as ov

        from retinaunet_deploy.runtime.openvino import PRECISION_HINTS, bf16_unavailable

        core = ov.Core()
        requests = {}
        for precision in ("fp32", "bf16", "int8"):
            if precision == "bf16" and bf16_unavailable():
                self.skipped[precision] = bf16_unavailable()
                continue
            model = core.read_model(conv_chain(precision == "int8").SerializeToString(), b"")
            compiled = core.compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
                "INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"})
            requests[precision] = compiled.create_infer_request()
        self.workload = (f"{LAYERS} x conv 3x3 {CHANNELS}->{CHANNELS} on {SIDE}x{SIDE}, "
                         f"{gflop_per_call():.2f} GFLOP per call, OpenVINO {ov.__version__}, "
                         f"{self.threads} thread(s)")
        return requests

    def measure(self, when: str) -> None:
        """One repeat: GFLOP/s (int8: GOP/s) per precision, p50-based, labelled `when`
        (the first call compiles; without OpenVINO, nothing is measured and `limits`
        says why)."""
        from retinaunet_deploy.timing import interleaved_latency

        if self.unavailable:
            return
        self.say(f"measuring this CPU's int8, bf16 and fp32 limits ({when})")
        if self._requests is None:
            try:
                self._requests = self._compile()
            except ImportError:
                self.unavailable = "OpenVINO is not installed: no limit measured"
                return
        image = np.random.default_rng(1).uniform(0, 1, (1, CHANNELS, SIDE, SIDE)).astype(
            np.float32)
        figures = interleaved_latency({p: (lambda r=r: r.infer({0: image}))
                                       for p, r in self._requests.items()},
                                      rounds=10, warmup=2, min_seconds=self.min_seconds)
        self.repeats.append({"when": when, **{
            precision: {"p50_ms": round(figure["p50_ms"], 3),
                        "gflops": round(gflop_per_call() / (figure["p50_ms"] / 1e3), 1)}
            for precision, figure in figures.items()}})

    def limits(self) -> dict:
        """{"fp32": {...}, "bf16": {...}, "int8": {...}, "workload": ...} (`best_of`); a
        precision this CPU cannot run natively (bf16) says so instead of a figure;
        {"skipped": why} without OpenVINO."""
        if self.unavailable:
            return {"skipped": self.unavailable}
        return {**best_of(self.repeats), **{p: {"skipped": why} for p, why in
                                            self.skipped.items()}, "workload": self.workload}


def best_of(repeats: list[dict]) -> dict:
    """Each precision's limit as the best (fastest) of its repeats, every repeat kept.

    Args:
        repeats: [{"when": str, precision: {"p50_ms": ms, "gflops": GFLOP/s}, ...}, ...].
    Returns:
        {precision: {"p50_ms", "gflops" (of the best repeat), "repeats": [{"when",
        "p50_ms", "gflops"}, ...] in measurement order}}; {} for no repeats.
    """
    result = {}
    for repeat in repeats:
        for precision, figure in repeat.items():
            if precision == "when":
                continue
            entry = result.setdefault(precision, {"p50_ms": None, "gflops": None,
                                                  "repeats": []})
            entry["repeats"].append({"when": repeat["when"], **figure})
            if entry["gflops"] is None or figure["gflops"] > entry["gflops"]:
                entry.update(p50_ms=figure["p50_ms"], gflops=figure["gflops"])
    return result


def limit_fault(row: str, batch: int, precision: str, attained_gflops: float,
                limit: dict) -> dict:
    """A row that attained more than its precision's measured limit: not a figure but a
    measurement fault (the limit's repeats were all disturbed), named for the report."""
    repeats = [r["gflops"] for r in limit.get("repeats", [])]
    note = (f"{row}, batch {batch}: attained {attained_gflops:.0f} GFLOP/s, above the "
            f"{precision} limit measured here ({limit['gflops']:.0f} GFLOP/s, best of "
            f"{len(repeats) or 1}"
            + (f": {', '.join(f'{g:.0f}' for g in repeats)}" if repeats else "")
            + "): the limit measurement was disturbed (another job on this machine?), so "
              "no share of limit is given")
    return {"row": row, "batch": batch, "precision": precision,
            "attained_gflops": round(attained_gflops, 1), "limit_gflops": limit["gflops"],
            "limit_repeats": repeats, "note": note}


def share_of_peak(gflops_per_image: float, p50_ms: float, batch: int, peak: dict) -> float | None:
    """A row's attained GFLOP/s over the limit of its precision (None: no limit measured)."""
    if not peak or "gflops" not in peak:
        return None
    return gflops_per_image * batch / (p50_ms / 1e3) / peak["gflops"]
