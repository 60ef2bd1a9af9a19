"""Predict stage: an artifact + image files -> mask PNGs, overlay PNGs, detections JSON.

    OUT/masks/<name>.png      class indices (8-bit greyscale PNG, 0 = background)
    OUT/overlays/<name>.png   image, mask colours, boxes with class and score (x4 scale)
    OUT/detections.json       per image: boxes (y1, x1, y2, x2 pixels), scores, classes
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import atomic_path, write_json


def predict_files(artifact: Path, image_paths: list[Path], out_dir: Path,
                  threads: int | None = None, score_threshold: float | None = None,
                  providers: list | None = None) -> dict:
    """Run `artifact` on PNG files and write the outputs above; returns the detections dict.

    Args:
        providers: ONNX Runtime providers for an .onnx artifact (None: what loads here).
    """
    import dataclasses

    from PIL import Image

    from retinaunet_deploy.data.folder import read_image
    from retinaunet_deploy.errors import InputError
    from retinaunet_deploy.runtime import Predictor
    from retinaunet_deploy.visualize import overlay

    predictor = Predictor.from_artifact(artifact, threads=threads, providers=providers)
    if score_threshold is not None:
        predictor.detection_config = dataclasses.replace(predictor.detection_config,
                                                         score_threshold=score_threshold)
    out_dir = Path(out_dir)
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
    for path, image in images.items():
        prediction = predictor.predict(image)
        stem = Path(path).stem
        with atomic_path(out_dir / "masks" / f"{stem}.png") as tmp:
            Image.fromarray(prediction.mask).save(tmp)
        picture = overlay(image, prediction.mask, prediction.detections, predictor.class_names,
                          predictor.det_class_names, pixel_max=predictor.pixel_max)
        with atomic_path(out_dir / "overlays" / f"{stem}.png") as tmp:
            picture.save(tmp)
        entry = {"mask": f"masks/{stem}.png", "overlay": f"overlays/{stem}.png",
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
    write_json(out_dir / "detections.json", {"artifact": str(artifact), "images": results})
    return results
