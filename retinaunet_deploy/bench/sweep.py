"""Latency sweeps: random-weights presets at several sizes, and one model across image sizes.

* `latency_sweep`: a random-weights `preset` made by the pipeline's own stages at
  each input size, every row timed (no fidelity: the weights are random);
* `size_sweep`: a trained run's ONNX files on whole images of growing size and,
  at the largest, as a sliding window, all in one interleaved timing, so the
  cost per megapixel and the tiling overhead are measured side by side.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from retinaunet_deploy import names
from retinaunet_deploy.bench.harness import BenchOptions, build_rows, measure_latency, speedups
from retinaunet_deploy.bench.machine import machine_info
from retinaunet_deploy.errors import ArtifactError


def synthetic_crops(config, count: int, seed: int, split: str) -> np.ndarray:
    """(count, S, S, 1) float32 top-left crops of synthetic images, S = config.size."""
    from retinaunet_deploy.data.synthetic import synthetic_samples

    size = config.size
    return np.stack([s.image[:size, :size] for s in
                     synthetic_samples(config, count, seed, split)]).astype(np.float32)


def make_latency_run(run_dir: Path, preset: str, size: int, seed: int = 0,
                     threads: int | None = None,
                     backends: tuple[str, ...] = ("openvino", "tflite")) -> dict:
    """A run folder on random weights, made by the pipeline's own stages: latency only.

    `train` for a single step (the weights stay essentially random), `export_onnx`
    with its parity check, and `calibrate` ungated (random weights agree with
    nothing, so no target can apply; the figures are still recorded). Writes
    model.keras, model.onnx, model.int8.onnx and model.int8.cpu.onnx. Returns the card.
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
    calibrate(run_dir, CalibrationOptions.from_flat(calibration_images=32, eval_images=2,
                                          ungated=True, threads=threads,
                                          openvino="openvino" in backends,
                                          tflite="tflite" in backends), fp16=False)
    return card


def latency_sweep(out_dir: Path, preset: str, sizes: tuple[int, ...],
                  options: BenchOptions | None = None, progress=None) -> dict:
    """Latency of every row on a random-weights `preset` at each size (no fidelity)."""
    from retinaunet_deploy.artifacts import write_json
    from retinaunet_deploy.bench.report import write_sweep_markdown
    from retinaunet_deploy.data.synthetic import SyntheticConfig
    from retinaunet_deploy.model import RetinaUNet
    from retinaunet_deploy.runtime.backends import configure_tensorflow

    options = options or BenchOptions(batch_sizes=(1,))
    configure_tensorflow(options.threads)  # before the first stage runs TensorFlow
    out_dir = Path(out_dir)
    say = progress or (lambda message: None)
    from retinaunet_deploy.bench.harness import limit_shares, machine_limits

    limits = machine_limits(options, say)
    sweeps = []
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
        measure_latency(rows, card, images, options)
        speedups(rows)
        summary = RetinaUNet.from_config(card["builder"]).summary()
        limit_shares(rows, summary.total_gflops, limits)
        sweeps.append({"size": size, "parameters": summary.total_params,
                       "gflops_per_image": float(f"{summary.total_gflops:.4g}"),
                       "rows": [row.to_dict() for row in rows]})
    report = {"latency_only": True, "preset": preset, "weights": "random (latency only)",
              "machine": machine_info(options.threads), "options": asdict(options),
              "limits": limits, "sweeps": sweeps}
    write_json(out_dir / "report.json", report)
    write_sweep_markdown(out_dir / "report.md", report)
    return report


def size_sweep(run_dir: Path, out_dir: Path, sizes: tuple[int, ...] = (128, 256, 512, 1024),
               tile: int | None = None, overlap: float = 0.25, artifact: str = names.ONNX,
               threads: int = 2, rounds: int = 5, min_seconds: float = 4.0,
               progress=None) -> dict:
    """Time `artifact` end to end (Predictor: pad, run, decode) on one square synthetic-style
    image per size, whole, and at the largest size also as a sliding window of `tile`
    (default: half the largest size), all candidates interleaved in one run.

    Writes ``size_sweep.json`` and ``size_sweep.md`` into `out_dir`; returns the figures:
    per candidate p50 ms and ms per megapixel, the ratio of ms/MP to that at 256 (or the
    second size), and the tiled/whole cost ratio.
    """
    from retinaunet_deploy.artifacts import verify_lineage, write_json
    from retinaunet_deploy.data.splits import held_out_set
    from retinaunet_deploy.runtime.predictor import Predictor
    from retinaunet_deploy.timing import interleaved_latency

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    verify_lineage(run_dir, artifact, f"retinaunet-deploy export {run_dir}")
    largest = max(sizes)
    tile = tile or largest // 2
    whole = Predictor.from_artifact(run_dir / artifact, threads=threads, batch_size=1,
                                    tile=max(largest, 16))
    tiled = Predictor.from_artifact(run_dir / artifact, threads=threads, batch_size=1,
                                    tile=tile, overlap=overlap)
    # Real content at every size (objects, so decoding does real work): a held-out
    # test image repeated by wrapping to each size.
    seed_image = held_out_set(whole.card, 1)[0].image
    images = {size: np.pad(seed_image, [(0, max(0, size - seed_image.shape[0])),
                                        (0, max(0, size - seed_image.shape[1])), (0, 0)],
                           mode="wrap")[:size, :size] for size in sizes}
    candidates = {f"whole {size}": (lambda p=whole, x=images[size]: p.predict(x))
                  for size in sizes}
    candidates[f"tiled {largest}"] = lambda: tiled.predict(images[largest])
    if progress:
        progress(f"size sweep of {artifact}: {len(candidates)} candidates interleaved")
    figures = interleaved_latency(candidates, rounds=rounds, warmup=1, min_seconds=min_seconds)
    rows = {}
    for name, figure in figures.items():
        size = int(name.split()[1])
        rows[name] = {"p50_ms": round(figure["p50_ms"], 2), "megapixels": size * size / 1e6,
                      "ms_per_megapixel": round(figure["p50_ms"] / (size * size / 1e6), 2)}
    base_size = sizes[1] if len(sizes) > 1 else sizes[0]
    base = rows[f"whole {base_size}"]["ms_per_megapixel"]
    for row in rows.values():
        row["ms_per_mp_vs_base"] = round(row["ms_per_megapixel"] / base, 3)
    tile_h, tile_w, origins = tiling_layout(tiled, largest)
    report = {"run": str(run_dir), "artifact": artifact, "machine": machine_info(threads),
              "sizes": list(sizes), "base_size": base_size, "tile": tile, "overlap": overlap,
              "tiles": {"count": len(origins), "size": [tile_h, tile_w],
                        "pixels_ratio": round(len(origins) * tile_h * tile_w / largest**2, 3)},
              "rows": rows,
              "tiled_over_whole": round(rows[f"tiled {largest}"]["p50_ms"]
                                        / rows[f"whole {largest}"]["p50_ms"], 3)}
    write_json(out_dir / "size_sweep.json", report)
    lines = [f"# Cost against image size: `{artifact}`", "",
             (f"{report['machine']['cpu']}, {threads} threads; end to end through the Predictor "
             f"(pad, run, decode), candidates interleaved in one run, p50 of at least "
             f"{rounds} calls."), "",
             f"| candidate | p50 ms | ms per megapixel | ms/MP vs {base_size} |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['p50_ms']:.1f} | {r['ms_per_megapixel']:.1f} | "
              f"{r['ms_per_mp_vs_base']:.2f}x |" for name, r in rows.items()]
    lines += ["", (f"Tiled at {largest}: {len(origins)} tiles of {tile_h}x{tile_w} (tile "
              f"{tile}, overlap {overlap}), {report['tiles']['pixels_ratio']:.2f}x the pixels; "
              f"cost {report['tiled_over_whole']:.2f}x whole-image."), ""]
    from retinaunet_deploy.artifacts import atomic_path

    with atomic_path(out_dir / "size_sweep.md") as tmp:
        tmp.write_text("\n".join(lines))
    return report


def tiling_layout(predictor, size: int):
    """The tile grid a predictor uses on a size x size image."""
    from retinaunet_deploy.runtime.tiling import tile_grid

    padded = -(-size // predictor.stride) * predictor.stride
    return tile_grid(padded, padded, predictor.tile, predictor.overlap, predictor.stride)
