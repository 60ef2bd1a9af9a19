"""Dataset splits: decided once at training, recorded in the model card, read back later.

The card's ``data`` block says where the images came from and which image is in
which split:

* synthetic: ``{"kind": "synthetic", "seed", "config", "counts": {split: n}}``;
  any image can be regenerated bit for bit, so no hashes are needed;
* folder: ``{"kind": "folder", "path", "splits": {split: [[name, sha256], ...]}}``,
  the sha256 covering the image, mask and instance files together.

`load_split` is the only way later stages (export, calibrate, bench) get images
(`held_out_set` and `calibration_images` are built on it):
it regenerates or re-reads exactly the recorded lists and refuses a folder that
changed since (a file missing, changed or added), naming the file. Nothing is
ever re-split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
FEW_IMAGES = 16   # a figure measured on fewer images than this is flagged


def decide_splits(names: list[str], seed: int, val_fraction: float,
                  test_fraction: float) -> dict[str, list[str]]:
    """A seeded shuffle of `names` into train / val / test (each at least one image)."""
    n = len(names)
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    if n - n_val - n_test < 1:
        raise DataError(f"the dataset has {n} image(s); training needs at least 3 (train, "
                        f"validation and test each get one or more)")
    order = np.random.default_rng(seed).permutation(n)
    parts = np.split(order, [n - n_val - n_test, n - n_test])
    return {split: sorted(names[i] for i in part) for split, part in zip(SPLIT_NAMES, parts)}


def read_splits_file(path: Path, available: list[str]) -> dict[str, list[str]]:
    """A user's splits: JSON ``{"train": [names], "val": [names], "test": [names]}``."""
    path = Path(path)
    try:
        given = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read splits file {path}: {error}; give JSON like "
                        f'{{"train": [...], "val": [...], "test": [...]}}') from error
    if not isinstance(given, dict) or sorted(given) != sorted(SPLIT_NAMES) or not all(
            isinstance(v, list) and v and all(isinstance(n, str) for n in v)
            for v in given.values()):
        raise DataError(f"{path} must map exactly 'train', 'val' and 'test' to non-empty lists "
                        f"of image file names")
    seen: dict[str, str] = {}
    for split in SPLIT_NAMES:
        for name in given[split]:
            if name not in available:
                raise DataError(f"{path} names {name!r} ({split}), which is not in the "
                                f"dataset's images/; fix the name or add the image")
            if name in seen:
                raise DataError(f"{path} puts {name!r} in both {seen[name]} and {split}; "
                                f"splits must be disjoint")
            seen[name] = split
    return {split: sorted(given[split]) for split in SPLIT_NAMES}


def folder_description(root: Path, splits: dict[str, list[str]], samples) -> dict:
    """The card's ``data`` block for a folder dataset: recorded names and hashes."""
    by_name = {sample.name: sample.sha256 for sample in samples}
    return {"kind": "folder", "path": str(Path(root).resolve()),
            "instances": (Path(root) / "instances").is_dir(),
            "splits": {split: [[name, by_name[name]] for name in names]
                       for split, names in splits.items()}}


def verify_folder(data: dict) -> None:
    """Refuse a folder dataset that changed since its splits were recorded."""
    from retinaunet_deploy.data.folder import list_folder, sample_sha256

    root = Path(data["path"])
    if not root.is_dir():
        raise DataError(f"the run's dataset {root} is gone; restore it or retrain")
    files = list_folder(root)
    recorded = {name: sha for names in data["splits"].values() for name, sha in names}
    for name, sha in recorded.items():
        if name not in files:
            raise DataError(f"{root / 'images' / name} is recorded in the run's splits but gone "
                            f"from the dataset; restore it or retrain")
        if sample_sha256(files[name]) != sha:
            raise DataError(f"{root / 'images' / name} (or its mask or instances) changed since "
                            f"training; restore it or retrain")
    added = sorted(set(files) - set(recorded))
    if added:
        raise DataError(f"{root / 'images' / added[0]} was added to the dataset after training "
                        f"({len(added)} new file(s)); remove it or retrain, so that no split "
                        f"silently changes")


def load_split(card: dict, split: str, count: int | None = None, min_size: int = 16):
    """The recorded `split` of a run's data as a list of `folder.Sample`.

    Args:
        split: "train", "val" or "test".
        count: at most this many (the first, in recorded order); None: all.
    """
    data = card["data"]
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLIT_NAMES)}")
    if data["kind"] == "synthetic":
        from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_samples

        config = SyntheticConfig.from_dict(data["config"])
        available = data["counts"][split]
        return synthetic_samples(config, min(count or available, available), data["seed"], split)
    from retinaunet_deploy.data.folder import load_folder_dataset

    verify_folder(data)
    names = [name for name, _ in data["splits"][split]][:count]
    return load_folder_dataset(Path(data["path"]), names, min_size=min_size)


def calibration_images(card: dict, count: int, seed: int = 1) -> np.ndarray:
    """`count` training patches of the training size (raw pixels, (N, S, S, C) float32).

    Patches, not whole images: they are what the network saw in training, and one
    size suits the calibrator. Explicit Q/DQ scales are per tensor, not per shape,
    so ranges calibrated on patches hold for every input size.
    """
    from retinaunet_deploy.data.patches import PatchBatches, PatchOptions

    samples = load_split(card, "train")
    if not samples:
        raise DataError(f"no calibration images: the training split of this run is empty "
                        f"({card['data'].get('path', card['data']['kind'])}); retrain")
    spec, norm = card["input"], card.get("normalization", {})
    size = spec.get("patch_size") or card["builder"]["input_shape"][0]
    options = PatchOptions(size, flips=False, rotations=False, intensity_jitter=0.0)
    batches = PatchBatches(samples, options, min(count, 8), None, 1, norm.get("mean", 0.0),
                           norm.get("std", 1.0), spec.get("pixel_max", 255), seed=seed)
    images = np.concatenate([batches.patches(i)[0] for i in range(-(-count // 8))])[:count]
    return _checked_channels(images, card, "calibration")


def held_out_set(card: dict, count: int, split: str = "test"):
    """Whole held-out images (`folder.Sample`s, disjoint from training).

    Synthetic data: `count` images of the split (any count can be made).
    A folder: its recorded split (as many as it has, at most `count`).
    `split` is "test" for every reported figure, "val" for anything tuned.
    """
    data = card["data"]
    if data["kind"] == "synthetic":
        from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_samples

        samples = synthetic_samples(SyntheticConfig.from_dict(data["config"]), count,
                                    data["seed"], split)
    else:
        samples = load_split(card, split, count)
    _checked_channels(np.stack([s.image[:16, :16] for s in samples]), card, "evaluation")
    return samples


def _checked_channels(images: np.ndarray, card: dict, purpose: str) -> np.ndarray:
    channels = card["input"]["channels"]
    if images.shape[-1] != channels:
        raise DataError(f"{purpose} images have {images.shape[-1]} channel(s) but the model "
                        f"takes {channels}; the run's data no longer matches its model: retrain")
    return images.astype(np.float32)


def few_images_warning(count: int, what: str) -> str | None:
    """A loud line when a figure rests on fewer than `FEW_IMAGES` images, else None."""
    if count >= FEW_IMAGES:
        return None
    return (f"WARNING: {what} measured on only {count} image(s) (< {FEW_IMAGES}); treat it as "
            f"anecdotal, not a gate")
