"""The latency-only sweep: a random-weights preset made by the pipeline's own stages.

`retinaunet-deploy bench --latency-only --preset P --sizes 128,256`: at each input
size, `train` for one step (the weights stay essentially random), `export_onnx`,
`calibrate` ungated, then every row timed by the bench (`bench.harness`), no
fidelity (the weights are random). It lives above `bench` because it trains: the
bench itself only measures what is on disk.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from retinaunet_deploy.bench.harness import limit_probe, limit_shares, measure_latency, speedups
from retinaunet_deploy.bench.machine import machine_info
from retinaunet_deploy.bench.rows import BenchOptions, build_rows
from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.errors import ArtifactError


def synthetic_crops(config, count: int, seed: int, split: str) -> np.ndarray:
    """(count, S, S, 1) float32 top-left crops of synthetic images, S = config.size."""
    from retinaunet_deploy.data.synthetic import synthetic_samples

    size = config.size
    return np.stack([s.image[:size, :size] for s in
                     synthetic_samples(config, count, seed, split)]).astype(np.float32)


def make_latency_run(run_dir: Path, preset: str, size: int, seed: int = 0,
                     threads: int | None = None,
                     backends: tuple[str, ...] = ("openvino", "tflite")) -> ModelCard:
    """A run folder on random weights, made by the pipeline's own stages: latency only.

    `train` for a single step (the weights stay essentially random), `export_onnx`
    with its parity check, and `calibrate` ungated (random weights agree with
    nothing, so no target can apply; the figures are still recorded). Writes
    model.keras, model.onnx, model.int8.onnx and model.int8.cpu.onnx. Returns the
    `card.ModelCard`.
    """
    import shutil

    from retinaunet_deploy.export.calibration import CalibrationOptions, calibrate
    from retinaunet_deploy.export.onnx import ExportOptions, export_onnx
    from retinaunet_deploy.train import TrainOptions, train

    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a stale folder from an earlier sweep
    card = train(TrainOptions(preset=preset, size=size, epochs=1, steps_per_epoch=1,
                              batch_size=1, train_images=8, val_images=2, test_images=2,
                              seed=seed), run_dir, verbose=0)
    # Random weights give large unbounded logits: parity is checked relative to them.
    export_onnx(run_dir, ExportOptions(parity_images=1, tolerance=1e-2))
    calibrate(run_dir, CalibrationOptions.from_flat(
        calibration_images=32, eval_images=2, ungated=True, threads=threads,
        openvino="openvino" in backends, tflite="tflite" in backends), fp16=False)
    return card


def latency_sweep(out_dir: Path, preset: str, sizes: tuple[int, ...],
                  options: BenchOptions | None = None, progress=None) -> dict:
    """Latency of every row on a random-weights `preset` at each size (no fidelity).

    The measured limit's repeats run before, between and after each size's batch
    sizes; shares of limit are taken against the best of all of them. Writes
    report.json and report.md into `out_dir`; returns the report. Raises
    `ArtifactError` when the Keras reference cannot run.
    """
    from retinaunet_deploy.artifacts import check_writable, write_json
    from retinaunet_deploy.bench.report import write_sweep_markdown
    from retinaunet_deploy.data.synthetic import SyntheticConfig
    from retinaunet_deploy.model import RetinaUNet
    from retinaunet_deploy.runtime.backends import configure_tensorflow

    options = options or BenchOptions(batch_sizes=(1,))
    configure_tensorflow(options.threads)  # before the first stage runs TensorFlow
    out_dir = Path(out_dir)
    check_writable(out_dir)
    say = progress or (lambda message: None)
    probe = limit_probe(options, say)
    sweeps, gflops = [], []
    for size in sizes:
        run_dir = out_dir / f"{preset}-{size}"
        say(f"{preset} at {size}x{size}: random weights, exporting and quantising")
        card = make_latency_run(run_dir, preset, size, threads=options.threads,
                                backends=options.backends)
        calibration = synthetic_crops(SyntheticConfig(size=size), 32, 0, "train")
        rows = build_rows(run_dir, card, options, run_dir, calibration)
        if rows[0].status != "ok":
            raise ArtifactError(f"the Keras reference cannot run: {rows[0].reason}")
        images = synthetic_crops(SyntheticConfig(size=size), 8, 0, "test")
        say(f"{preset} at {size}x{size}: timing, rows interleaved")
        measure_latency(rows, card, images, options,
                        between=(lambda when, s=size: probe.measure(f"{s}x{s}, {when}"))
                        if probe else None)
        speedups(rows)
        summary = RetinaUNet.from_config(card.builder).summary()
        gflops.append(summary.total_gflops)
        sweeps.append({"size": size, "parameters": summary.total_params,
                       "gflops_per_image": float(f"{summary.total_gflops:.4g}"),
                       "rows": [row.to_dict() for row in rows]})
    limits = probe.limits() if probe else {}
    faults = [{**fault, "size": sweep["size"],
               "note": f"{sweep['size']}x{sweep['size']}: {fault['note']}"}
              for sweep, total in zip(sweeps, gflops)
              for fault in limit_shares(sweep["rows"], total, limits)]
    report = {"latency_only": True, "preset": preset, "weights": "random (latency only)",
              "machine": machine_info(options.threads), "options": asdict(options),
              "limits": limits, "limit_faults": faults, "sweeps": sweeps}
    write_json(out_dir / "report.json", report)
    write_sweep_markdown(out_dir / "report.md", report)
    return report
