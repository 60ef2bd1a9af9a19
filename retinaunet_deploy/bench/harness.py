"""The benchmark: every artifact x every backend that can run here, side by side.

One row per (artifact, backend). For each row, on the same held-out images:

* fidelity against the Keras float reference (`compare`) and against ground
  truth (`evaluate_outputs`);
* latency per batch size, interleaved across rows (`timing.interleaved_latency`),
  both inference-only and end to end (input checks + inference + decode/NMS);
* size: file bytes, parameters, GFLOPs per image.

The Keras reference is timed its fastest way: a compiled tf.function, with
XLA when that is faster here. A row whose backend fails becomes a row marked
"failed" with the reason. Rows that cannot run on this machine (TensorRT, GPU
providers) are marked "skipped" with the reason. Only a failing reference
makes the bench fail.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from retinaunet_deploy import names
from retinaunet_deploy.bench.machine import machine_info
from retinaunet_deploy.bench.rows import (
    REFERENCE,
    BenchOptions,
    Row,
    build_rows,
)
from retinaunet_deploy.card import ModelCard, load_card
from retinaunet_deploy.errors import ArtifactError

STORED_NOTE = "fidelity judged from its stored predictions (file unchanged; not run again)"


def measure_fidelity(rows: list[Row], card: ModelCard, eval_set, targets: dict):
    """Fill each ok row's fidelity (vs the stored float reference, with 95% intervals and
    its gate) and ground-truth figures, on whole images through the Predictor (padding,
    tiling, decoding), as apps run them. The gates are `judge.gates`, as in calibrate.

    The Keras row *is* the reference: its figures come from the stored predictions,
    so Keras does not run a second time. A row whose file, runtime and options
    (ONNX Runtime fused, as calibrate's fused judgement) were judged on these images
    before is judged from its stored predictions (`judge.store.VariantStore`) without
    running; its fidelity's ``predictions`` says "stored" (else "run") and its notes
    say so. Returns every row's masks (for overlays).
    """
    from retinaunet_deploy.judge.gates import judge, runtime_options, stored_or_run
    from retinaunet_deploy.judge.ground_truth import evaluate_predictions

    masks_by_row = {}
    for row in rows:
        if row.status != "ok":
            continue
        try:
            stored = False
            if row.name == REFERENCE:
                predictions = eval_set.reference
            else:
                runtime = row.runtime
                predictions, stored = stored_or_run(
                    row.runner, card, eval_set, eval_set.store if runtime else None, runtime,
                    runtime_options(runtime, fused=True) if runtime else None)
            agreement = judge(eval_set, predictions, card, targets[row.precision],
                              intervals=row.name != REFERENCE)
            row.fidelity = agreement.to_dict()
            if row.name != REFERENCE:
                row.fidelity["predictions"] = "stored" if stored else "run"
            if stored:
                row.notes = f"{row.notes}; {STORED_NOTE}" if row.notes else STORED_NOTE
            row.ground_truth = evaluate_predictions(predictions, eval_set.samples,
                                                    card.class_names, card.num_det_classes,
                                                    eval_set.truths)
            masks_by_row[row.name] = [p.mask for p in predictions]
        except Exception as error:  # a backend that fails on these images: the row says why
            if row.name == REFERENCE:
                raise
            row.status, row.reason = "failed", f"{type(error).__name__}: {error}".splitlines()[0]
    return masks_by_row


def row_targets(run_dir: Path) -> dict:
    """The gate of each precision, as calibrate applied it (calibration.json's
    ``targets_by_precision``), or the defaults when the run was not calibrated."""
    import json

    from retinaunet_deploy.export.options import recorded_targets

    path = Path(run_dir) / names.CALIBRATION
    return recorded_targets(json.loads(path.read_text()) if path.exists() else {})


def measure_latency(rows: list[Row], card: ModelCard, images: np.ndarray, options: BenchOptions,
                    progress=None, between=None):
    """Interleaved latency of every ok row, per batch size, inference-only and end to end.

    Each candidate is called once first; one that raises marks its row failed and
    is left out, so a broken backend never stops the timing of the others.
    `between(when)`, if given, runs before the first batch size's timing, between
    batch sizes and after the last (the measured limit's repeats, `bench.peak`).
    """
    from retinaunet_deploy.runtime.predictor import Predictor
    from retinaunet_deploy.timing import interleaved_latency

    between = between or (lambda when: None)
    for row in rows:
        if row.status == "ok":
            row.runner.use_fastest()  # Keras: XLA when that is faster here
    previous = None
    for batch_size in options.batch_sizes:
        between(f"before batch {batch_size}" if previous is None
                else f"between batch {previous} and {batch_size}")
        batch = np.ascontiguousarray(np.resize(images, (batch_size, *images.shape[1:])),
                                     dtype=np.float32)
        raw = batch.astype(card.input.pixel_dtype)
        candidates = {}
        for row in [r for r in rows if r.status == "ok"]:
            predictor = Predictor(row.runner, card, batch_size=batch_size)
            pair = {f"{row.name}|inference": lambda r=row, b=batch: r.runner.run(b),
                    f"{row.name}|end_to_end": lambda p=predictor, x=raw: p.predict(x)}
            try:
                for call in pair.values():
                    call()
            except Exception as error:  # the row says why; the others still run
                if row.name == REFERENCE:
                    raise
                row.status, row.reason = "failed", f"{type(error).__name__}: {error}".splitlines()[0]
                continue
            candidates.update(pair)
        # min_seconds is per row and batch size, shared by its two modes.
        figures = interleaved_latency(candidates, rounds=options.rounds, warmup=2,
                                      min_seconds=options.min_seconds / 2,
                                      batch_size=batch_size, progress=progress)
        for row in rows:
            if row.status == "ok":
                row.latency[str(batch_size)] = {
                    mode: figures[f"{row.name}|{mode}"] for mode in ("inference", "end_to_end")}
        previous = batch_size
    between(f"after batch {previous}")


def speedups(rows: list[Row]) -> None:
    """Speed-up of every row over the reference, per batch size (p50 end to end)."""
    reference = next((r for r in rows if r.name == REFERENCE and r.latency), None)
    if reference is None:
        return
    for row in rows:
        for batch, figures in row.latency.items():
            base = reference.latency[batch]["end_to_end"]["p50_ms"]
            figures["speedup_vs_reference"] = base / figures["end_to_end"]["p50_ms"]


CPU_BACKENDS = ("keras", "onnxruntime", "openvino", "tflite")
LIMIT_OF_PRECISION = {"fp32": "fp32", "fp16": "fp32", "bf16": "bf16", "int8": "int8"}


def limit_probe(options: BenchOptions, say):
    """A `bench.peak.LimitProbe` to measure between the rows' timings, or None when no
    limit is asked for (`--no-limits`)."""
    from retinaunet_deploy.bench.peak import LimitProbe

    return LimitProbe(options.threads, say=say) if options.peak else None


def limit_shares(rows: list[dict], gflops_per_image: float, limits: dict) -> list[dict]:
    """Each CPU row's attained GFLOP/s (inference only, p50) as a share of the measured
    limit of its precision, per batch size, into its latency figures ("share_of_limit").

    A share over 100% is no figure but a measurement fault (the limit was measured
    while the machine was disturbed): that batch gets "limit_fault": True instead, and
    the fault is returned (`bench.peak.limit_fault`), for the report to name.

    Args:
        rows: report rows (`Row.to_dict()`), changed in place.
    """
    from retinaunet_deploy.bench.peak import limit_fault, share_of_peak

    faults = []
    for row in rows:
        if row["backend"] not in CPU_BACKENDS:
            continue
        precision = LIMIT_OF_PRECISION.get(row["precision"], "fp32")
        limit = limits.get(precision)
        for batch, figures in row["latency"].items():
            p50_ms = figures["inference"]["p50_ms"]
            share = share_of_peak(gflops_per_image, p50_ms, int(batch), limit)
            if share is None:
                continue
            if share > 1:
                figures["limit_fault"] = True
                faults.append(limit_fault(row["name"], int(batch), precision,
                                          gflops_per_image * int(batch) / (p50_ms / 1e3),
                                          limit))
            else:
                figures["share_of_limit"] = float(f"{share:.4g}")
    return faults


def run_bench(run_dir: Path, out_dir: Path, options: BenchOptions | None = None,
              progress=None) -> dict:
    """Benchmark a run folder; writes report.json, report.md and the plots into `out_dir`.

    Raises `ArtifactError` only if the reference (model.keras) cannot run.
    """
    from retinaunet_deploy.artifacts import check_writable, write_json
    from retinaunet_deploy.bench.e2e import append_section as append_end_to_end
    from retinaunet_deploy.bench.e2e import measure_end_to_end
    from retinaunet_deploy.bench.recommend import recommend, write_recommendation
    from retinaunet_deploy.bench.report import write_markdown, write_plots
    from retinaunet_deploy.data.splits import calibration_images, few_images_warning
    from retinaunet_deploy.data.volume_source import counts_phrase, split_counts
    from retinaunet_deploy.judge.gates import make_eval_set
    from retinaunet_deploy.model import RetinaUNet
    from retinaunet_deploy.runtime.backends import configure_tensorflow

    options = options or BenchOptions()
    configure_tensorflow(options.threads)  # before anything runs TensorFlow
    say = progress or (lambda message: None)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    card = load_card(run_dir)
    check_writable(run_dir)  # recommendation.json goes there
    check_writable(out_dir)
    # Latency is timed on patches of the training size (one shape for every batch size).
    calibration = calibration_images(card, 32)
    say(f"building rows for {run_dir}")
    rows = build_rows(run_dir, card, options, out_dir, calibration)
    if rows[0].status != "ok":
        raise ArtifactError(f"the reference {run_dir / names.KERAS} cannot run: "
                            f"{rows[0].reason}")
    say(f"float reference on {options.images} whole held-out images")
    eval_set = make_eval_set(run_dir, card, options.images, progress=say)
    samples = eval_set.samples
    targets = row_targets(run_dir)
    say(f"fidelity on {len(samples)} whole held-out images"
        f"{counts_phrase(split_counts(card.data, samples))}")
    masks_by_row = measure_fidelity(rows, card, eval_set, targets)
    say(f"latency, batch sizes {list(options.batch_sizes)}, rows interleaved")
    probe = limit_probe(options, say)
    measure_latency(rows, card, calibration[:8], options,
                    between=probe.measure if probe else None)
    speedups(rows)
    # In-graph against numpy post-processing, side by side (`bench.e2e`; {} without e2e files).
    end_to_end = measure_end_to_end(run_dir, card, calibration[:8], options.batch_sizes,
                                    options.threads, options.rounds, options.min_seconds / 2,
                                    say)
    summary = RetinaUNet.from_config(card.builder).summary()
    limits = probe.limits() if probe else {}
    row_figures = [row.to_dict() for row in rows]
    report = {
        "run": str(run_dir), "machine": machine_info(options.threads),
        "options": asdict(options), "images": len(samples),
        **split_counts(card.data, samples), "split": "test",
        "whole_images": True,
        "image_sizes": (f"{min(s.image.shape[0] for s in samples)}-"
                        f"{max(s.image.shape[0] for s in samples)} x "
                        f"{min(s.image.shape[1] for s in samples)}-"
                        f"{max(s.image.shape[1] for s in samples)} px"),
        "few_images_warning": few_images_warning(len(samples),
                                                                       "every figure"),
        "latency_input": f"{calibration.shape[1]}x{calibration.shape[2]} training patches",
        "model": {"preset": card.preset, "parameters": summary.total_params,
                  "gflops_per_image": float(f"{summary.total_gflops:.4g}"),
                  "input": card.input.to_dict()},
        "targets": {precision: t.to_dict() for precision, t in targets.items()},
        "intervals": "95% percentile bootstrap over images (1000 resamples)",
        "limits": limits,
        "limit_faults": limit_shares(row_figures, summary.total_gflops, limits),
        "rows": row_figures,
        "end_to_end_postprocess": end_to_end,
    }
    report["recommendation"] = recommend(report)
    write_recommendation(run_dir, report["recommendation"])
    if options.folder_artifacts:
        from retinaunet_deploy.bench.throughput import append_section, measure_folder_throughput

        report["folder_throughput"] = measure_folder_throughput(run_dir, report, options, say)
    write_json(out_dir / "report.json", report)
    write_markdown(out_dir / "report.md", report)
    append_end_to_end(out_dir / "report.md", end_to_end)
    if options.folder_artifacts:
        append_section(out_dir / "report.md", report["folder_throughput"])
    write_plots(out_dir, report, [s.image for s in samples[:options.overlay_images]],
                {name: m[:options.overlay_images] for name, m in masks_by_row.items()},
                card)
    return report
