"""Predict stage: an artifact + image files -> mask PNGs, overlay PNGs, detections JSON.

    OUT/masks/<name>.png      class indices at the image's own size (8-bit PNG, 0 = background)
    OUT/overlays/<name>.png   image, mask colours, boxes with class and score
    OUT/detections.json       per image: its size, boxes (y1, x1, y2, x2 image pixels),
                              scores, classes

Images (PNG or TIFF) may have any size: the Predictor pads them to the stride,
and tiles the ones larger than `tile`. `<name>` is the file's stem; when two
inputs share a stem (``a/x.png`` and ``b/x.png``), their names carry the
folders that tell them apart (``a__x``, ``b__x``), so no output overwrites another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import atomic_path, write_json

OVERLAY_MAX_SIDE = 2048   # overlays are upscaled (small crops) or kept at 1x, never huge


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output name per input path: the stem, or with its folders when stems clash."""
    paths = [Path(p).resolve() for p in paths]
    stems = [p.stem for p in paths]
    names = []
    for path, stem in zip(paths, stems):
        if stems.count(stem) == 1:
            names.append(stem)
            continue
        twins = [p for p, s in zip(paths, stems) if s == stem]
        common = Path(*Path(twins[0]).parts[:_shared_prefix([t.parts for t in twins])])
        relative = path.relative_to(common).with_suffix("")
        names.append("__".join(relative.parts) + ("" if path.suffix == ".png"
                                                  else "_" + path.suffix.lstrip(".")))
    return names


def _shared_prefix(parts_lists) -> int:
    count = 0
    for items in zip(*parts_lists):
        if len(set(items)) != 1:
            break
        count += 1
    return min(count, min(len(p) for p in parts_lists) - 1)


def predict_files(artifact: Path, image_paths: list[Path], out_dir: Path,
                  threads: int | None = None, score_threshold: float | None = None,
                  providers: list | None = None, tile: int | None = None,
                  overlap: float | None = None, runtime: str = "auto") -> dict:
    """Run `artifact` on image files and write the outputs above; returns the detections dict.

    Args:
        artifact: a file, or a run folder: then the file and runtime its bench
            recommended (``recommendation.json``: the fastest that passed its gate here).
        providers: ONNX Runtime providers for an .onnx artifact (None: what loads here).
        tile, overlap: the sliding window (None: the Predictor's defaults).
        runtime: "auto" (by suffix) or a registered runtime's name
            (`runtime.registry.runtime_choices()`).
    """
    import dataclasses

    from retinaunet_deploy.errors import InputError
    from retinaunet_deploy.runtime import Predictor
    from retinaunet_deploy.runtime.predictor import DEFAULT_OVERLAP, DEFAULT_TILE
    from retinaunet_deploy.runtime.registry import resolve

    if Path(artifact).is_dir():
        from retinaunet_deploy.recommendation import recommended_artifact

        if runtime != "auto":
            raise InputError(f"{artifact} is a run folder: its recommendation names the "
                             f"runtime; give a file to choose one with --runtime")
        artifact, runtime = recommended_artifact(artifact)
    with Predictor.from_artifact(artifact, threads=threads, providers=providers,
                                 tile=tile or DEFAULT_TILE,
                                 overlap=DEFAULT_OVERLAP if overlap is None else overlap,
                                 runtime=runtime) as predictor:
        if score_threshold is not None:
            predictor.detection_config = dataclasses.replace(predictor.detection_config,
                                                             score_threshold=score_threshold)
        results = _predict_into(predictor, image_paths, Path(out_dir))
    write_json(Path(out_dir) / "detections.json", {"artifact": str(artifact),
                                                    "runtime": resolve(artifact, runtime).name,
                                                    "images": results})
    return results


def _predict_into(predictor, image_paths: list[Path], out_dir: Path) -> dict:
    """Masks and overlays of every image written into `out_dir`; the detections by path."""
    from PIL import Image

    from retinaunet_deploy.data.readers import read_image
    from retinaunet_deploy.errors import InputError
    from retinaunet_deploy.visualize import overlay

    # Read and check every image before writing anything, so one bad file in a list
    # leaves no partial set of outputs behind.
    images = {}
    for path in image_paths:
        image = read_image(Path(path))
        try:
            predictor.prepare(image)
        except InputError as error:
            raise InputError(f"{path}: {error}") from error
        images[path] = image
    results = {}
    for (path, image), name in zip(images.items(), output_names(list(images))):
        prediction = predictor.predict(image)
        with atomic_path(out_dir / "masks" / f"{name}.png") as tmp:
            Image.fromarray(prediction.mask).save(tmp)
        scale = max(1, min(4, OVERLAY_MAX_SIDE // max(image.shape[:2])))
        picture = overlay(image, prediction.mask, prediction.detections, predictor.class_names,
                          predictor.det_class_names, pixel_max=predictor.pixel_max, scale=scale)
        with atomic_path(out_dir / "overlays" / f"{name}.png") as tmp:
            picture.save(tmp)
        height, width = image.shape[:2]
        entry = {"size": [height, width], "mask": f"masks/{name}.png",
                 "overlay": f"overlays/{name}.png",
                 "tiled": not predictor.fits_whole(height, width),
                 "class_pixels": {name: int(np.sum(prediction.mask == i))
                                  for i, name in enumerate(predictor.class_names)}}
        if prediction.detections is not None:
            dets = prediction.detections
            entry["detections"] = [
                {"box": [round(float(v), 2) for v in box], "score": round(float(score), 4),
                 "class": predictor.det_class_names[cls] if cls < len(predictor.det_class_names)
                 else int(cls)}
                for box, score, cls in zip(dets.boxes, dets.scores, dets.classes)]
        results[str(path)] = entry
    return results
