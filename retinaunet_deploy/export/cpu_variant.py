"""The ONNX Runtime CPU form of INT8 (QOperator U8S8): judged as it runs, kept only if faster.

A second INT8 file is a cost to every user (which one to ship?), so it is written
only when it passes the same gate as the Q/DQ file, run with ONNX Runtime's
fused int8 kernels, and is at least `margin` faster than the Q/DQ file on this
CPU, timed as the bench times (blocks after a settle, rotating).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.export.lifecycle import RUNTIME_LABELS, Candidate, Context, Judged
from retinaunet_deploy.export.quantize import prepare, quantize
from retinaunet_deploy.judge.agreement import Agreement
from retinaunet_deploy.names import INT8_ONNX, ONNX

FORMAT = "QOperator, uint8 activations, per-channel int8 weights (U8S8)"
JUDGED = Judged("onnxruntime", "fused (ONNX Runtime CPU int8 kernels, as it runs)")
# The U8S8 file must beat the Q/DQ file as each of these runs it (latency key -> label);
# a runtime variant of model.int8.onnx that passed its gate is added (`rivals`).
RIVALS = {"int8_qdq": "the Q/DQ model in ONNX Runtime",
          "openvino_int8": "the Q/DQ model in OpenVINO"}


def compare_latency(paths: dict[str, Path], image: np.ndarray, threads: int | None,
                    rounds: int = 20, min_seconds: float = 2.0,
                    runtimes: dict[str, str] | None = None) -> dict[str, float]:
    """p50 ms of each ONNX file on one image as its runtime runs it (ONNX Runtime unless
    `runtimes` names another registered runtime), timed as the bench times (blocks
    after a settle, rotating, at least `rounds` calls and `min_seconds`)."""
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
                        margin: float, rivals: dict[str, str] | None = None) -> str | None:
    """Why the U8S8 file is not kept (None: keep it).

    It must pass its agreement gate and beat the Q/DQ file by `margin`, as ONNX
    Runtime runs it and, where a rival of `rivals` (latency key -> label; default
    `RIVALS`) was timed (e.g. OpenVINO int8, which passed its gate), as that runs
    it: a p50 a hair lower is timing noise, and a second INT8 file is a cost to
    every user.
    """
    if not agreement.passed:
        return ("misses the agreement target as ONNX Runtime runs it: "
                + "; ".join(agreement.failures))
    for rival, label in (rivals or RIVALS).items():
        if rival in latency and latency["int8_cpu"] > latency[rival] * (1 - margin):
            return (f"not at least {margin:.0%} faster than {label} on this CPU "
                    f"({latency['int8_cpu']:.2f} ms vs {latency[rival]:.2f} ms)")
    return None


def rivals(context: Context) -> dict[str, tuple[str, str]]:
    """The runtime variants of model.int8.onnx that passed their gate in this run:
    latency key ("openvino_int8") -> (registered runtime, label)."""
    from retinaunet_deploy.runtime.registry import RUNTIMES

    judged = context.report.get("runtime_variants", {})
    found = {}
    for runtime in RUNTIMES.values():
        if INT8_ONNX not in runtime.judged_files:
            continue
        name = f"{runtime.backend} {runtime.precision_of(INT8_ONNX)}"
        if judged.get(name, {}).get("passed"):
            label = RUNTIME_LABELS.get(runtime.backend, runtime.backend)
            found[name.replace(" ", "_")] = (runtime.name, f"the Q/DQ model in {label}")
    return found


def make_cpu_variant(context: Context, work: Path) -> Candidate:
    """Quantise ``work/int8-cpu.onnx`` (QOperator U8S8) with the layers the Q/DQ file
    keeps in float also in float; the calibration intensity record in its metadata."""
    from retinaunet_deploy.export.int8 import embed_intensity

    options = context.options
    kept_float = list(context.figures_of(INT8_ONNX).get("kept_float", []))
    cpu = work / "int8-cpu.onnx"
    quantize(prepare(context.run_dir / ONNX, work), cpu, context.calib, options.quantisation,
             work, cpu_form=True, exclude=tuple(kept_float))
    embed_intensity(context, cpu)
    return Candidate(cpu, {"format": FORMAT, "kept_float": kept_float,
                           "required_speedup_margin": options.extras.cpu_speedup_margin},
                     {"method": options.quantisation.method})


def cpu_latency(context: Context, candidate: Candidate) -> dict:
    """p50 ms of fp32, the Q/DQ file, the U8S8 candidate and each passed rival runtime."""
    paths = {"fp32": context.run_dir / ONNX, "int8_qdq": context.run_dir / INT8_ONNX,
             "int8_cpu": candidate.path}
    found = rivals(context)
    paths.update({key: context.run_dir / INT8_ONNX for key in found})
    latency = compare_latency(paths, context.calib[:1], context.options.threads,
                              runtimes={key: runtime for key, (runtime, _) in found.items()})
    return {"latency_ms_cpu_batch1": latency}


def keep_if_faster(context: Context, agreement: Agreement, figures: dict) -> str | None:
    """The U8S8 keep-verdict (`cpu_variant_verdict`) against this run's rivals."""
    labels = {"int8_qdq": RIVALS["int8_qdq"],
              **{key: label for key, (_, label) in rivals(context).items()}}
    return cpu_variant_verdict(agreement, figures["latency_ms_cpu_batch1"],
                               context.options.extras.cpu_speedup_margin, labels)


def announce_cpu(context: Context, variant, agreement: Agreement, figures: dict) -> str:
    """The progress line of a written U8S8 file, with its p50 ms and the Q/DQ file's."""
    latency = figures["latency_ms_cpu_batch1"]
    return (f"INT8 CPU (fused): {agreement.summary()}; {latency['int8_cpu']:.1f} ms vs Q/DQ "
            f"{latency['int8_qdq']:.1f} ms")
