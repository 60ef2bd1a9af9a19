"""Stored predictions (Polygraphy's `RunResults` habit): what a model predicted on a list
of whole held-out images, kept in the run folder so a later stage judges it again
without running it again.

An entry is two files, ``NAME.npz`` and ``NAME.json``:

* the arrays, per image i: ``probabilities_i`` (H, W, K) float32 softmax and, with
  detection heads, ``boxes_i`` (D, 4) float32 (image pixels, x1 y1 x2 y2),
  ``scores_i`` (D,) float32 and ``classes_i`` (D,) int32;
* the key: what made them (a model or variant file's sha256, the runtime and its
  options, the card's postprocessing, the Predictor's tiling and padding), every image's
  name and pixel hash, and the sha256 of the ``.npz``.

An entry serves a request whose key matches exactly and whose images are the
first n of its images. Anything else (another file, runtime, option or image
list; a missing, truncated or edited file) is recomputed and replaced: a store
is never trusted past its key.

Where entries live: the float reference in ``RUN/reference/<split>.npz``
(`judge.reference`), every judged variant in
``RUN/reference/variants/<split>-<runtime>-<file sha256[:16]>-<options hash>.npz``
(`VariantStore`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import atomic_path, sha256_file
from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.data.patches import BORDER_PADDING
from retinaunet_deploy.names import REFERENCE_DIR
from retinaunet_deploy.postprocess import Detections
from retinaunet_deploy.runtime.predictor import DEFAULT_OVERLAP, DEFAULT_TILE, Prediction
from retinaunet_deploy.strict_json import dumps_json

FORMAT = 2              # 2: the key holds the arrays' sha256
VARIANTS_DIR = "variants"
MAX_VARIANT_ENTRIES = 16  # beyond this, the least recently used entries are removed (each
# holds 64 test images of the small preset in about 45 MB: probabilities are float32)
# Key fields a request does not have to equal: the image list (a prefix serves) and the
# arrays' hash (checked against the file itself).
_NOT_MATCHED = ("images", "arrays_sha256")


def _digest(value) -> str:
    return hashlib.sha256(dumps_json(value, sort_keys=True).encode()).hexdigest()


def image_list(samples) -> list[list[str]]:
    """[name, first 16 hex digits of the sha256 of its pixels] per sample."""
    return [[s.name, hashlib.sha256(np.ascontiguousarray(s.image).tobytes()).hexdigest()[:16]]
            for s in samples]


def settings_sha256(card: ModelCard) -> str:
    """sha256 of what turns images into network inputs and outputs into predictions: the
    card's postprocessing and anchors (their JSON), the Predictor's tile size and
    overlap, and its border padding (entries stored under another padding are stale)."""
    return _digest({"postprocess": card.postprocess.to_dict() if card.postprocess else None,
                    "anchors": card.anchors.to_dict() if card.anchors else None,
                    "tile": DEFAULT_TILE, "overlap": DEFAULT_OVERLAP,
                    "padding": BORDER_PADDING})


class StoredPredictions:
    """One stored entry: ``<stem>.npz`` and its key ``<stem>.json``."""

    def __init__(self, arrays_path: Path):
        self.arrays_path = Path(arrays_path)
        self.key_path = self.arrays_path.with_suffix(".json")

    def stored_key(self) -> dict | None:
        """The entry's key as stored, or None when missing or unreadable."""
        try:
            key = json.loads(self.key_path.read_text())
        except (OSError, ValueError):
            return None
        return key if isinstance(key, dict) else None

    def load(self, key: dict) -> list[Prediction] | None:
        """The predictions for `key` (its images a prefix of the stored ones), or None when
        the entry is missing, stale or damaged."""
        stored = self.stored_key()
        if stored is None:
            return None
        count = len(key["images"])
        try:
            if ({k: v for k, v in stored.items() if k not in _NOT_MATCHED}
                    != {k: v for k, v in key.items() if k not in _NOT_MATCHED}
                    or stored["images"][:count] != key["images"]):
                return None
            data = self.arrays_path.read_bytes()
            if hashlib.sha256(data).hexdigest() != stored["arrays_sha256"]:
                return None
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                predictions = [_prediction(arrays, i) for i in range(count)]
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            return None  # missing, stale or damaged: recompute
        os.utime(self.key_path)  # recently used (`VariantStore` keeps those)
        return predictions

    def save(self, key: dict, predictions: list[Prediction]) -> None:
        """Store `predictions` (with probabilities) under `key`, replacing the entry."""
        arrays = {}
        for i, prediction in enumerate(predictions):
            arrays[f"probabilities_{i}"] = prediction.probabilities.astype(np.float32)
            if prediction.detections is not None:
                arrays[f"boxes_{i}"] = prediction.detections.boxes
                arrays[f"scores_{i}"] = prediction.detections.scores
                arrays[f"classes_{i}"] = prediction.detections.classes
        self.key_path.unlink(missing_ok=True)  # no key may describe arrays it does not match
        buffer = io.BytesIO()  # hashed as written, not read back (~45 MB on 64 images)
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
        with atomic_path(self.arrays_path) as tmp:
            tmp.write_bytes(data)
        with atomic_path(self.key_path) as tmp:
            stored = {**key, "arrays_sha256": hashlib.sha256(data).hexdigest()}
            tmp.write_text(dumps_json(stored, indent=1) + "\n")

    def remove(self) -> None:
        self.key_path.unlink(missing_ok=True)
        self.arrays_path.unlink(missing_ok=True)


def _prediction(arrays, i: int) -> Prediction:
    probabilities = arrays[f"probabilities_{i}"]
    detections = None
    if f"boxes_{i}" in arrays:
        detections = Detections(arrays[f"boxes_{i}"], arrays[f"scores_{i}"],
                                arrays[f"classes_{i}"])
    return Prediction(probabilities.argmax(-1).astype(np.uint8), detections, probabilities)


@dataclass(frozen=True)
class VariantStore:
    """Every judged variant's predictions in ``run_dir/reference/variants/``.

    An entry is named by split, runtime name, the file's sha256 and its options,
    so a changed file never finds the old entry; its key adds the settings, the
    batch size, the providers the backend reported and the image list. At most
    `MAX_VARIANT_ENTRIES` are kept, the least recently used removed first.
    """

    run_dir: Path

    @property
    def folder(self) -> Path:
        return Path(self.run_dir) / REFERENCE_DIR / VARIANTS_DIR

    def key(self, file: Path, runtime: str, options: dict, card: ModelCard, samples,
            batch_size: int, providers: list | None = None,
            file_sha256: str | None = None) -> dict:
        """What stored predictions of `file` run in `runtime` with opener `options`
        (JSON values, e.g. ``{"optimize": True}``) must match to be reused."""
        return {"format": FORMAT,
                "file_sha256": file_sha256 or sha256_file(file),
                "runtime": runtime, "options": options,
                "providers": list(providers) if providers is not None else None,
                "settings_sha256": settings_sha256(card), "batch_size": int(batch_size),
                "images": image_list(samples)}

    def entry(self, file_sha256: str, runtime: str, options: dict,
              split: str) -> StoredPredictions:
        name = f"{split}-{runtime}-{file_sha256[:16]}-{_digest(options)[:8]}.npz"
        return StoredPredictions(self.folder / name)

    def load(self, key: dict, split: str) -> list[Prediction] | None:
        """The stored predictions for `key`, or None (see `StoredPredictions.load`)."""
        return self.entry(key["file_sha256"], key["runtime"], key["options"], split).load(key)

    def save(self, key: dict, split: str, predictions: list[Prediction]) -> None:
        self.entry(key["file_sha256"], key["runtime"], key["options"], split).save(
            key, predictions)
        self._prune()

    def _prune(self) -> None:
        keys = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime,
                      reverse=True)
        for stale in keys[MAX_VARIANT_ENTRIES:]:
            StoredPredictions(stale.with_suffix(".npz")).remove()
