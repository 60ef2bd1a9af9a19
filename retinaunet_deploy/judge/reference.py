"""The float reference, computed once per model and image list and stored beside the run.

Every gate compares a variant with what ``model.keras`` predicts on the same
whole images. `calibrate` and `bench` both read that prediction from here, so
they judge against one and the same reference (the plain traced Keras call,
never the XLA-compiled one used for timing), and Keras runs once, not once per
stage.

Stored as ``RUN/reference/<split>.npz`` (per image: probabilities (H, W, K)
float32, boxes (D, 4) float32, scores (D,) float32, classes (D,) int32) and
``<split>.json``, the key: sha256 of model.keras and of the card's
postprocessing, the predictor's tiling, and every image's name and pixel hash.
A request whose images are the first n of a stored list is served from it; any
other request recomputes and replaces it.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import atomic_path, sha256_file
from retinaunet_deploy.names import KERAS, REFERENCE_DIR
from retinaunet_deploy.postprocess import Detections
from retinaunet_deploy.runtime.predictor import DEFAULT_OVERLAP, DEFAULT_TILE, Prediction

FORMAT = 1


def reference_key(run_dir: Path, card: dict, samples) -> dict:
    """What a stored reference must match to be reused."""
    settings = {"postprocess": card.get("postprocess"), "anchors": card.get("anchors"),
                "tile": DEFAULT_TILE, "overlap": DEFAULT_OVERLAP}
    return {"format": FORMAT, "model_sha256": sha256_file(Path(run_dir) / KERAS),
            "settings_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True)
                                              .encode()).hexdigest(),
            "images": [[s.name, hashlib.sha256(np.ascontiguousarray(s.image).tobytes())
                        .hexdigest()[:16]] for s in samples]}


def float_reference(run_dir: Path, card: dict, samples, split: str,
                    threads: int | None = None, progress=None) -> list[Prediction]:
    """The Keras float model's predictions (with probabilities) on `samples`, whole images
    through the Predictor, read from the run's store or computed and stored."""
    run_dir = Path(run_dir)
    key = reference_key(run_dir, card, samples)
    stored = _load(run_dir, split, key)
    if stored is not None:
        return stored
    from retinaunet_deploy.runtime.predictor import Predictor

    if progress:
        progress(f"float reference: model.keras on {len(samples)} whole {split} images")
    keras = Predictor.from_artifact(run_dir / KERAS, threads=threads)
    predictions = keras.predict([s.image for s in samples], probabilities=True)
    _store(run_dir, split, key, predictions)
    return predictions


def _paths(run_dir: Path, split: str) -> tuple[Path, Path]:
    folder = Path(run_dir) / REFERENCE_DIR
    return folder / f"{split}.npz", folder / f"{split}.json"


def _load(run_dir: Path, split: str, key: dict) -> list[Prediction] | None:
    """The stored predictions for `key` (a prefix of the stored images), or None."""
    arrays_path, key_path = _paths(run_dir, split)
    try:
        stored_key = json.loads(key_path.read_text())
        count = len(key["images"])
        if ({k: v for k, v in stored_key.items() if k != "images"}
                != {k: v for k, v in key.items() if k != "images"}
                or stored_key["images"][:count] != key["images"]):
            return None
        with np.load(arrays_path, allow_pickle=False) as arrays:
            return [_prediction(arrays, i) for i in range(count)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # missing, stale or damaged: recompute


def _prediction(arrays, i: int) -> Prediction:
    probabilities = arrays[f"probabilities_{i}"]
    detections = None
    if f"boxes_{i}" in arrays:
        detections = Detections(arrays[f"boxes_{i}"], arrays[f"scores_{i}"],
                                arrays[f"classes_{i}"])
    return Prediction(probabilities.argmax(-1).astype(np.uint8), detections, probabilities)


def _store(run_dir: Path, split: str, key: dict, predictions: list[Prediction]) -> None:
    arrays_path, key_path = _paths(run_dir, split)
    arrays = {}
    for i, prediction in enumerate(predictions):
        arrays[f"probabilities_{i}"] = prediction.probabilities.astype(np.float32)
        if prediction.detections is not None:
            arrays[f"boxes_{i}"] = prediction.detections.boxes
            arrays[f"scores_{i}"] = prediction.detections.scores
            arrays[f"classes_{i}"] = prediction.detections.classes
    key_path.unlink(missing_ok=True)  # no key may ever describe arrays it does not match
    with atomic_path(arrays_path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    with atomic_path(key_path) as tmp:
        tmp.write_text(json.dumps(key, indent=1) + "\n")
