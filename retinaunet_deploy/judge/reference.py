"""The float reference, computed once per model and image list and stored beside the run.

Every gate compares a variant with what ``model.keras`` predicts on the same
whole images. `calibrate` and `bench` both read that prediction from here, so
they judge against one and the same reference (the plain traced Keras call,
never the XLA-compiled one used for timing), and Keras runs once, not once per
stage.

Stored as ``RUN/reference/<split>.npz`` and ``<split>.json`` (`judge.store`: per
image the probabilities and detections; the key: sha256 of model.keras and of the
card's postprocessing, the predictor's tiling and padding, every image's name and pixel hash,
and the arrays' sha256). A request whose images are the first n of a stored list
is served from it; any other request recomputes and replaces it.
"""

from __future__ import annotations

from pathlib import Path

from retinaunet_deploy.artifacts import sha256_file
from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.judge.store import FORMAT, StoredPredictions, image_list, settings_sha256
from retinaunet_deploy.names import KERAS, REFERENCE_DIR
from retinaunet_deploy.runtime.predictor import Prediction


def reference_key(run_dir: Path, card: ModelCard, samples) -> dict:
    """What a stored reference must match to be reused."""
    return {"format": FORMAT, "model_sha256": sha256_file(Path(run_dir) / KERAS),
            "settings_sha256": settings_sha256(card), "images": image_list(samples)}


def float_reference(run_dir: Path, card: ModelCard, samples, split: str,
                    threads: int | None = None, progress=None) -> list[Prediction]:
    """The Keras float model's predictions (with probabilities) on `samples`, whole images
    through the Predictor, read from the run's store or computed and stored.

    Returns one `Prediction` per sample, at its size: mask (H, W) uint8, probabilities
    (H, W, K) float32, detections in image pixels (None without heads).
    """
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


def _entry(run_dir: Path, split: str) -> StoredPredictions:
    return StoredPredictions(Path(run_dir) / REFERENCE_DIR / f"{split}.npz")


def _load(run_dir: Path, split: str, key: dict) -> list[Prediction] | None:
    """The stored predictions for `key` (a prefix of the stored images), or None."""
    return _entry(run_dir, split).load(key)


def _store(run_dir: Path, split: str, key: dict, predictions: list[Prediction]) -> None:
    _entry(run_dir, split).save(key, predictions)
