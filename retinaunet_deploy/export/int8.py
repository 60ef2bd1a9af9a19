"""model.int8.onnx, the TensorRT form: how it is made and what refuses it.

Explicit Q/DQ, symmetric int8 activations (zero point 0), per-channel symmetric
int8 weights (`export.quantize`). When the all-INT8 file misses its target on the
*validation* images, the fallback (`export.fallback`) keeps its most sensitive
convolutions in float until the target holds there; the test images judge the
result once (`export.lifecycle`), unfused, which is the arithmetic TensorRT
performs. Beyond its gate, a file with non-standard ops or one TensorRT's importer
would refuse is refused here (`checks`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from retinaunet_deploy.artifacts import load_onnx
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.export.cpu_variant import compare_latency
from retinaunet_deploy.export.fallback import Tuning, judging_runtimes, search_fallback
from retinaunet_deploy.export.lifecycle import Candidate, Context, Judged
from retinaunet_deploy.export.quantize import activation_ranges, prepare, quantize
from retinaunet_deploy.export.trt_check import check_tensorrt_import
from retinaunet_deploy.judge.gates import make_eval_set
from retinaunet_deploy.names import INT8_ONNX, ONNX

# In the work folder: every conv quantised. The fallback puts convs back in float from
# it, and its latency is what keeping them float costs.
ALL_INT8 = "int8-all.onnx"
QDQ = "int8.onnx"
FORMAT = "QDQ, int8 activations (symmetric, zero point 0), per-channel symmetric int8 weights"

UNFUSED = Judged("onnxruntime", "unfused (exact fake-quant, the arithmetic TensorRT performs)",
                 {"optimize": False})
FUSED = Judged("onnxruntime", "fused (as ONNX Runtime runs it)")


def make_int8(context: Context, work: Path) -> Candidate:
    """Quantise model.onnx into ``work/int8.onnx`` (fallback tuned on validation images).

    The range cache (`export.quantize`) is `work`, shared with the U8S8 form.
    Raises `ArtifactError` when only every layer in float would pass.
    """
    options, calib, say = context.options, context.calib, context.say
    quantisation = options.quantisation
    say(f"INT8: calibrating ({quantisation.method}) on {len(calib)} training patches of "
        f"{calib.shape[1]}x{calib.shape[2]}")
    prepared = prepare(context.run_dir / ONNX, work)
    all_int8, qdq = work / ALL_INT8, work / QDQ
    quantize(prepared, all_int8, calib, quantisation, work)
    shutil.copyfile(all_int8, qdq)
    report = {"activation_ranges": activation_ranges(work)}
    fallback = None
    if options.fallback.enabled and not options.ungated:
        tune_set = make_eval_set(context.run_dir, context.card, options.eval_images,
                                 options.threads, split="val", progress=say)
        tuning = Tuning(context.targets("int8"),
                        judging_runtimes(options.fallback.runtimes, options.extras.openvino),
                        options.threads, quantisation.method)
        try:
            fallback = search_fallback(prepared, all_int8, qdq, work, tuning, context.card,
                                       tune_set, say)
        except ArtifactError as error:
            raise ArtifactError(f"{error}; {context.run_dir / INT8_ONNX} was not "
                                f"written") from error
        if fallback.ranking:
            report["layer_sensitivity"] = fallback.ranking
    figures = {"kept_float": fallback.kept_float if fallback else [],
               "fallback_trials": fallback.trials if fallback else [],
               "fallback_tuned_on": fallback.tuned_on if fallback else None,
               "format": FORMAT}
    made_with = {"method": quantisation.method, "percentile": quantisation.percentile,
                 "calibration_images": len(calib)}
    embed_intensity(context, qdq)
    return Candidate(qdq, figures, made_with, report)


def embed_intensity(context: Context, path: Path) -> None:
    """Put the calibration images' intensity record (calibration.json's
    ``calibration_data.intensity``) into an INT8 ONNX candidate's metadata, before it is
    judged, so the judged and written file carry it (`runtime.calibration_range`)."""
    from retinaunet_deploy.export.onnx import embed_calibration_range

    record = context.report.get("calibration_data", {}).get("intensity")
    if record is not None:
        embed_calibration_range(path, record)


def int8_refusal(context: Context, candidate: Candidate, agreement) -> str:
    """Why a Q/DQ file that misses its gate on the test images is not written."""
    return (f"INT8 ({context.options.quantisation.method}) misses the target on "
            f"{len(context.eval_set.samples)} test images with "
            f"{len(candidate.figures['kept_float'])} layer(s) in float: {agreement.summary()}; "
            f"try --method entropy or percentile, or more calibration images; "
            f"{context.run_dir / INT8_ONNX} was not written")


def standard_ops(context: Context, candidate: Candidate) -> str | None:
    """Why the file holds ops outside the standard domains (None: it does not)."""
    from retinaunet_deploy.export.onnx import check_standard_ops

    try:
        check_standard_ops(load_onnx(candidate.path), str(context.run_dir / INT8_ONNX))
    except ArtifactError as error:
        return str(error)
    return None


def tensorrt_import(context: Context, candidate: Candidate) -> str | None:
    """Why TensorRT's importer would refuse the file (None: it would take it)."""
    trt = check_tensorrt_import(candidate.path)
    if trt.ok:
        return None
    return (f"the INT8 Q/DQ model would not import into TensorRT: {trt.problems[0]} "
            f"({len(trt.problems)} problem(s)); {context.run_dir / INT8_ONNX} was not written")


def float_layer_latency(context: Context, candidate: Candidate) -> dict:
    """What keeping layers in float cost on this CPU: p50 ms of fp32, the file, and the
    all-INT8 file (only when the fallback kept some layer in float)."""
    if not candidate.figures["kept_float"]:
        return {}
    paths = {"fp32": context.run_dir / ONNX, "int8": candidate.path,
             "int8_all_layers": candidate.path.parent / ALL_INT8}
    return {"latency_ms_cpu_batch1": compare_latency(paths, context.calib[:1],
                                                     context.options.threads)}


def announce_int8(context: Context, variant, agreement, figures: dict) -> str:
    """The progress line of a written Q/DQ file."""
    return f"INT8 Q/DQ (unfused): {agreement.summary()}"
