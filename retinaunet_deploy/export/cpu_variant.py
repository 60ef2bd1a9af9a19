"""The ONNX Runtime CPU form of INT8 (QOperator U8S8): judged as it runs, kept only if faster.

A second INT8 file is a cost to every user (which one to ship?), so it is written
only when it passes the same gate as the Q/DQ file, run with ONNX Runtime's
fused int8 kernels, and is at least `margin` faster than the Q/DQ file on this
CPU, timed as the bench times (blocks after a settle, rotating).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import atomic_path, forget_artifact, record_artifact
from retinaunet_deploy.export.quantize import quantize
from retinaunet_deploy.judge.agreement import Agreement
from retinaunet_deploy.judge.gates import EvalSet, evaluate_variant, variant_figures
from retinaunet_deploy.names import INT8_CPU_ONNX, INT8_ONNX, ONNX


def compare_latency(paths: dict[str, Path], image: np.ndarray, threads: int | None,
                    rounds: int = 20, min_seconds: float = 2.0,
                    runtimes: dict[str, str] | None = None) -> dict[str, float]:
    """p50 ms of each ONNX file on one image as its runtime runs it (ONNX Runtime unless
    `runtimes` names another), timed as the bench times (blocks after a settle,
    rotating, at least `rounds` calls and `min_seconds`)."""
    from retinaunet_deploy.runtime.registry import open_backend
    from retinaunet_deploy.timing import interleaved_latency

    runtimes = runtimes or {}
    backends = {name: open_backend(path, runtimes.get(name, "onnxruntime"), threads)
                for name, path in paths.items()}
    figures = interleaved_latency({name: (lambda b=b: b.run(image)) for name, b in
                                   backends.items()}, rounds=rounds, warmup=2,
                                  min_seconds=min_seconds)
    return {name: round(f["p50_ms"], 3) for name, f in figures.items()}


def cpu_variant_verdict(agreement: Agreement, latency: dict[str, float],
                        margin: float) -> str | None:
    """Why the U8S8 file is not kept (None: keep it).

    It must pass its agreement gate and beat the Q/DQ file by `margin`, as ONNX
    Runtime runs it and, where ``openvino_int8`` was timed (OpenVINO int8 passed
    its gate), as OpenVINO runs it: a p50 a hair lower is timing noise, and a
    second INT8 file is a cost to every user.
    """
    if not agreement.passed:
        return ("misses the agreement target as ONNX Runtime runs it: "
                + "; ".join(agreement.failures))
    for rival, label in (("int8_qdq", "the Q/DQ model in ONNX Runtime"),
                         ("openvino_int8", "the Q/DQ model in OpenVINO")):
        if rival in latency and latency["int8_cpu"] > latency[rival] * (1 - margin):
            return (f"not at least {margin:.0%} faster than {label} on this CPU "
                    f"({latency['int8_cpu']:.2f} ms vs {latency[rival]:.2f} ms)")
    return None


def make_cpu_variant(run_dir: Path, prepared: Path, work: Path, calib: np.ndarray, options,
                     cache: Path, card: dict, eval_set: EvalSet, kept_float: list[str],
                     tools: dict, say, warning: str | None,
                     openvino_int8_passed: bool = False) -> dict:
    """Quantise, judge and time the U8S8 file; write it only if it earns its place.

    Returns its figures (with ``written`` and, if not written, ``reason``).
    """
    cpu = work / "int8-cpu.onnx"
    quantize(prepared, cpu, calib, options, cache, cpu_form=True, exclude=tuple(kept_float))
    agreement = evaluate_variant(cpu, card, eval_set, options.targets, fused=True,
                                 threads=options.threads, intervals=True)
    paths = {"fp32": run_dir / ONNX, "int8_qdq": run_dir / INT8_ONNX, "int8_cpu": cpu}
    if openvino_int8_passed:  # a gated rival the U8S8 file must beat too
        paths["openvino_int8"] = run_dir / INT8_ONNX
    latency = compare_latency(paths, calib[:1], options.threads,
                              runtimes={"openvino_int8": "openvino"})
    figures = variant_figures(
        agreement, eval_set, "fused (ONNX Runtime CPU int8 kernels, as it runs)", warning,
        format="QOperator, uint8 activations, per-channel int8 weights (U8S8)",
        kept_float=list(kept_float), latency_ms_cpu_batch1=latency,
        required_speedup_margin=options.cpu_speedup_margin, ungated=options.ungated)
    reason = cpu_variant_verdict(agreement, latency, options.cpu_speedup_margin)
    if options.ungated:  # a latency-only run times every form; the verdict is recorded
        figures["verdict_if_gated"], reason = reason, None
    if reason is None:
        with atomic_path(run_dir / INT8_CPU_ONNX) as tmp:
            tmp.write_bytes(cpu.read_bytes())
        record_artifact(run_dir, INT8_CPU_ONNX, "calibrate", parent=ONNX,
                        options={"method": options.method}, figures=figures, tools=tools)
        figures["written"] = True
        say(f"INT8 CPU (fused): {agreement.summary()}; {latency['int8_cpu']:.1f} ms vs Q/DQ "
            f"{latency['int8_qdq']:.1f} ms")
    else:
        figures["written"] = False
        figures["reason"] = reason
        forget_artifact(run_dir, INT8_CPU_ONNX)  # a stale one from an earlier run must go
        say(f"INT8 CPU variant not written: {reason}")
    return figures
