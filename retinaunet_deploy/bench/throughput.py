"""Folder throughput: `predict` end to end on a folder of images against the same artifact's
inference-only batch-8 throughput, measured in one run, interleaved.

    retinaunet-deploy bench RUN_DIR --folder-throughput [--folder-images 256]
                                    [--folder-artifacts model.int8.onnx:openvino,...]

The images: `count` synthetic images as the synthetic source makes them (the run's own
configuration for a synthetic run, else the default one at the model's patch size),
so their sizes follow the demo's test images (1.25-2.5x the patch on each side),
written as PNG files into a temporary folder. For each artifact (default: the run's
recommendation, what ``predict RUN_DIR`` runs), three candidates:

* ``end_to_end``: `predict.predict_files` on the folder (the default, pipelined
  executor), timed from the call to its return: opening the artifact, planning every
  header, reading, predicting, writing masks, overlays, results.jsonl and
  detections.json. images/s = count / seconds.
* ``end_to_end_no_overlays``: the same with ``--no-overlays`` (masks and results only):
  what drawing and encoding the overlays costs.
* ``end_to_end_sequential``: the same with the sequential executor (read, predict,
  write one image at a time): what the pipeline gains.
* ``inference``: the same artifact opened the same way, `Backend.run` on batches of 8
  copies of every 8th image, padded to the size the Predictor pads it to: inference
  only, at batch 8, on this size distribution. Every shape runs once before timing
  (warm, as every bench latency is). images/s = 8 x batches / seconds.

Candidates run whole passes in rounds whose order rotates (A B C, B C A, C A B), each
after an idle settle (`timing`'s habits); a figure is the median of its rounds, and
``ratio`` is end to end over inference only (the issue's acceptance: at least 0.8).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from retinaunet_deploy.postprocess import APP_SCORE_THRESHOLD

TARGET_RATIO = 0.8
BATCH = 8
SETTLE_SECONDS = 0.5
# (figure, predict's executor, overlays): `predict` as run by default, then the two
# changes that say where its time goes.
END_TO_END_MODES = (("end_to_end", "pipelined", True),
                    ("end_to_end_no_overlays", "pipelined", False),
                    ("end_to_end_sequential", "sequential", True))


def folder_images(card, count: int, same_size: bool = False) -> list[np.ndarray]:
    """`count` (H, W, C) images of the model's pixel dtype and channels, made as the
    synthetic source makes test images (the run's own configuration when synthetic).

    Args:
        same_size: every image 2x the patch size on each side (the middle of the demo's
            range) instead of the demo's mixed sizes: a folder of one shape.
    """
    import dataclasses

    from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_samples

    data = card.data or {}
    if data.get("kind") == "synthetic":
        config, seed = SyntheticConfig.from_dict(data["config"]), data.get("seed", 0)
    else:
        config, seed = SyntheticConfig(size=card.input.patch_size), 0
    if same_size:
        config = dataclasses.replace(config, side_range=(2.0, 2.0))
    images = []
    for sample in synthetic_samples(config, count, seed, "test"):
        image = np.repeat(sample.image, card.input.channels, axis=-1)
        if np.dtype(card.input.pixel_dtype) != np.uint8:   # same content on the model's range
            image = np.round(image.astype(np.float64) * card.input.pixel_max / 255)
        images.append(image.astype(card.input.pixel_dtype))
    return images


def _write_pngs(images: list[np.ndarray], folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        paths.append(folder / f"image{index:04d}.png")
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(paths[-1])
    return paths


def _inference_batches(predictor, images: list[np.ndarray]) -> list[np.ndarray]:
    """Batches of `BATCH` copies of every `BATCH`-th image, at its padded size (float32)."""
    from retinaunet_deploy.data.patches import pad_to

    batches = []
    for image in images[::BATCH]:
        height, width = predictor.padded_size(*image.shape[:2])
        padded = pad_to(image.astype(np.float32)[None], height, width, axes=(1, 2))
        batches.append(np.ascontiguousarray(np.repeat(padded, BATCH, axis=0)))
    return batches


def folder_throughput(run_dir: Path, artifacts: list[tuple[str, str]], threads: int = 2,
                      count: int = 256, rounds: int = 3, same_size: bool = False,
                      progress=None) -> dict:
    """Measure every (file of `run_dir`, runtime) of `artifacts` as the module says
    (`same_size`: a folder of one image size instead, `folder_images`).

    Returns {"images", "image_sizes", "distinct_padded_sizes", "rounds", "threads",
    "target_ratio", "machine", "artifacts": [{"file", "runtime", "inference",
    "end_to_end", "end_to_end_no_overlays", "end_to_end_sequential" (each {"images_per_s",
    "seconds", "rounds_images_per_s"}), "ratio", "no_overlays_ratio", "sequential_ratio",
    "passed"}]}; ``passed`` is the default predict's (with overlays) ratio.

    Raises:
        ArtifactError, ConfigError: an artifact cannot be opened in its runtime.
    """
    from retinaunet_deploy.bench.machine import machine_info
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.predict import open_predictor, predict_files

    say = progress or (lambda message: None)
    run_dir = Path(run_dir)
    card = load_card(run_dir)
    images = folder_images(card, count, same_size)
    work = Path(tempfile.mkdtemp(prefix="retinaunet-folder-throughput-"))
    predictors = []
    try:
        paths = _write_pngs(images, work / "images")
        candidates, sizes = {}, set()
        for file, runtime in artifacts:
            predictor = open_predictor(run_dir / file, threads=threads, runtime=runtime)
            predictors.append(predictor)
            sizes = {predictor.padded_size(*image.shape[:2]) for image in images}
            batches = _inference_batches(predictor, images)
            for batch in batches:       # every shape once: timed warm, as the bench times
                predictor.backend.run(batch)
            candidates[(file, runtime, "inference")] = (
                lambda p=predictor, b=batches: [p.backend.run(x) for x in b], BATCH * len(batches))
            for mode, executor, overlays in END_TO_END_MODES:
                def run(file=file, runtime=runtime, executor=executor, overlays=overlays):
                    out = work / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    predict_files(run_dir / file, paths, out, threads=threads,
                                  score_threshold=APP_SCORE_THRESHOLD, runtime=runtime,
                                  executor=executor, overlays=overlays,
                                  echo=lambda line: None)
                candidates[(file, runtime, mode)] = (run, count)
        # One untimed end-to-end call on a few images: imports and file caches, not shapes.
        first = artifacts[0]
        predict_files(run_dir / first[0], paths[:BATCH], work / "warm", threads=threads,
                      runtime=first[1], echo=lambda line: None)
        seconds = {key: [] for key in candidates}
        keys = list(candidates)
        for turn in range(rounds):
            say(f"folder throughput: round {turn + 1} of {rounds}, {len(keys)} passes of "
                f"{count} images")
            shift = turn % len(keys)
            for key in keys[shift:] + keys[:shift]:
                time.sleep(SETTLE_SECONDS)
                call, _ = candidates[key]
                start = time.perf_counter()
                call()
                seconds[key].append(time.perf_counter() - start)
    finally:
        for predictor in predictors:
            predictor.close()
        shutil.rmtree(work, ignore_errors=True)
    results = []
    for file, runtime in artifacts:
        figures = {}
        for mode in ("inference", *(mode for mode, _, _ in END_TO_END_MODES)):
            times, done = seconds[(file, runtime, mode)], candidates[(file, runtime, mode)][1]
            figures[mode] = {"images_per_s": round(done / statistics.median(times), 2),
                             "seconds": round(statistics.median(times), 3),
                             "rounds_images_per_s": [round(done / t, 2) for t in times],
                             "images": done}
        ratio = figures["end_to_end"]["images_per_s"] / figures["inference"]["images_per_s"]
        over_inference = {f"{mode.removeprefix('end_to_end_')}_ratio": round(
            figures[mode]["images_per_s"] / figures["inference"]["images_per_s"], 3)
            for mode in ("end_to_end_no_overlays", "end_to_end_sequential")}
        results.append({"file": file, "runtime": runtime, **figures,
                        "ratio": round(ratio, 3), **over_inference,
                        "passed": bool(ratio >= TARGET_RATIO)})
    heights = [image.shape[0] for image in images]
    widths = [image.shape[1] for image in images]
    return {"images": count,
            "image_sizes": f"{min(heights)}-{max(heights)} x {min(widths)}-{max(widths)} px",
            "distinct_padded_sizes": len(sizes), "rounds": rounds, "threads": threads,
            "batch": BATCH, "score_threshold": APP_SCORE_THRESHOLD,
            "target_ratio": TARGET_RATIO, "machine": machine_info(threads),
            "artifacts": results}


def markdown_section(figures: dict) -> list[str]:
    """The report.md section of `folder_throughput`'s figures."""
    machine = figures["machine"]
    flags = ", ".join(machine.get("cpu_flags", [])) or "flags unknown"
    lines = ["", "## Folder throughput: `predict` end to end against inference only", "",
             (f"{figures['images']} synthetic PNG images of the demo's test sizes "
              f"({figures['image_sizes']}, {figures['distinct_padded_sizes']} distinct padded "
              f"sizes); {machine['cpu']} ({flags}), "
              f"{machine['cores']} cores, {figures['threads']} threads. End to end "
              f"is `predict` from call to return (open, plan, read, predict, write every file; "
              f"score threshold {figures['score_threshold']}); inference only is the backend on "
              f"batches of {figures['batch']} copies of every {figures['batch']}th image at its "
              f"padded size, warm. Median of {figures['rounds']} interleaved rounds."), "",
             ("| artifact | runtime | inference only, batch 8 (images/s) | end to end, "
              "pipelined (images/s) | ratio | same, --no-overlays | ratio | end to end, "
              f"sequential (images/s) | ratio | target >= {figures['target_ratio']} |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in figures["artifacts"]:
        lines.append(f"| {row['file']} | {row['runtime']} | "
                     f"{row['inference']['images_per_s']:.1f} | "
                     f"{row['end_to_end']['images_per_s']:.1f} | {row['ratio']:.2f} | "
                     f"{row['end_to_end_no_overlays']['images_per_s']:.1f} | "
                     f"{row['no_overlays_ratio']:.2f} | "
                     f"{row['end_to_end_sequential']['images_per_s']:.1f} | "
                     f"{row['sequential_ratio']:.2f} | "
                     f"{'pass' if row['passed'] else 'miss'} |")
    return lines


def append_section(report_md: Path, figures: dict) -> None:
    """Add `markdown_section` to the end of report.md (rewritten atomically)."""
    from retinaunet_deploy.artifacts import atomic_path

    text = Path(report_md).read_text().rstrip("\n") + "\n" + "\n".join(
        markdown_section(figures)) + "\n"
    with atomic_path(Path(report_md)) as tmp:
        tmp.write_text(text)


RECOMMENDED = "recommended"


def folder_artifacts(text: str) -> tuple[tuple[str, str], ...]:
    """``--folder-artifacts``: comma-separated FILE[:RUNTIME] of the run ("recommended": the
    run's recommendation). Runtime "auto" when none is named.

    Raises:
        ConfigError: an empty list or an empty file name.
    """
    from retinaunet_deploy.errors import ConfigError

    pairs = []
    for part in (p.strip() for p in text.split(",")):
        file, _, runtime = part.partition(":")
        if not file:
            raise ConfigError(f"--folder-artifacts {text!r}: name run files as FILE[:RUNTIME], "
                              f"comma-separated (e.g. recommended,model.int8.onnx:openvino)")
        pairs.append((file, runtime or "auto"))
    return tuple(pairs)


def measure_folder_throughput(run_dir: Path, report: dict, options, say) -> dict:
    """The bench's folder-throughput section: `folder_throughput` of the artifacts
    `options.folder_artifacts` names, "recommended" read from ``report["recommendation"]``
    (model.onnx when nothing was recommended, said in the figures' ``notes``)."""
    from retinaunet_deploy import names

    choice, notes, artifacts = report.get("recommendation"), [], []
    for file, runtime in options.folder_artifacts:
        if file == RECOMMENDED:
            if choice is None:
                notes.append(f"no recommendation (no variant passed its gate): "
                             f"{names.ONNX} measured instead")
                file, runtime = names.ONNX, "auto"
            else:
                file, runtime = choice["file"], choice["runtime"]
        if (file, runtime) not in artifacts:
            artifacts.append((file, runtime))
    say(f"folder throughput of {', '.join(f'{f} ({r})' for f, r in artifacts)} on "
        f"{options.folder_images} images")
    figures = folder_throughput(run_dir, artifacts, threads=options.threads,
                                count=options.folder_images, progress=say)
    figures["recommended"] = None if choice is None else [choice["file"], choice["runtime"]]
    figures["notes"] = notes
    return figures


def summary_lines(figures: dict) -> list[str]:
    """One console line per artifact: both figures, their ratio and the target."""
    return [f"folder throughput, {row['file']} ({row['runtime']}), {figures['images']} images: "
            f"predict {row['end_to_end']['images_per_s']:.1f} images/s end to end, inference "
            f"only {row['inference']['images_per_s']:.1f} images/s at batch {figures['batch']}: "
            f"{row['ratio']:.2f}x ({'meets' if row['passed'] else 'misses'} the "
            f"{figures['target_ratio']}x target; {row['no_overlays_ratio']:.2f}x with "
            f"--no-overlays)" for row in figures["artifacts"]] + [
            f"folder throughput: {note}" for note in figures.get("notes", [])]
