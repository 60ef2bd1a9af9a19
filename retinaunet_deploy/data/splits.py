"""Dataset splits: decided once at training, recorded in the model card, read back later.

The card's ``data`` block says where the images came from and which image is in
which split; its source (`data.sources`, by ``kind``) wrote it at training and
reads it back here.

`load_split` is the only way later stages (export, calibrate, bench) get images
(`held_out_set` and `calibration_images` are built on it):
it regenerates or re-reads exactly the recorded lists and refuses a folder that
changed since (a file missing, changed or added), naming the file. Nothing is
ever re-split. Masks read from files go through the card's label rules
(`card.labels`: label map, ignore index; `data.labels.apply_labels`), exactly
as training read them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.data.sample import SPLIT_NAMES
from retinaunet_deploy.data.sources import source_of
from retinaunet_deploy.errors import DataError
from retinaunet_deploy.normalization import Normalization, normalize_image

FEW_IMAGES = 16   # a figure measured on fewer images than this is flagged


def load_split(card: ModelCard, split: str, count: int | None = None, min_size: int = 16):
    """The recorded `split` of a run's data as a list of `sample.Sample`.

    Args:
        split: "train", "val" or "test".
        count: at most this many (the first, in recorded order); None: all.
    Raises:
        DataError: an unknown split or data kind, or data that changed since
            training (a folder file missing, changed or added; names the file).
    """
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLIT_NAMES)}")
    source = source_of(card.data)
    if source.takes_labels:
        return source.load(card.data, split, count, min_size, labels=card.labels)
    return source.load(card.data, split, count, min_size)


def calibration_images(card: ModelCard, count: int, seed: int = 1) -> np.ndarray:
    """`count` training patches of the training size, (N, S, S, C) float32, as the graph
    takes them: raw pixels for a model that normalises in its graph; otherwise cut from
    whole training images normalised by `normalization.normalize` (per-image statistics
    are of the whole image, as the Predictor computes them), so the INT8 calibration
    sees exactly the values every runtime feeds.

    Patches, not whole images: they are what the network saw in training, and one
    size suits the calibrator. Explicit Q/DQ scales are per tensor, not per shape,
    so ranges calibrated on patches hold for every input size.
    """
    from retinaunet_deploy.data.patches import PatchBatches, PatchOptions

    samples = load_split(card, "train")
    if not samples:
        raise DataError(f"no calibration images: the training split of this run is empty "
                        f"({card.data.get('path', card.data.get('kind'))}); retrain")
    samples = normalized_samples(samples, card.normalization)
    options = PatchOptions(card.input.patch_size, flips=False, rotations=False,
                           intensity_jitter=0.0)
    batches = PatchBatches(samples, options, min(count, 8), None, 1, card.normalization.mean,
                           card.normalization.std, card.input.pixel_max, seed=seed)
    images = np.concatenate([batches.patches(i)[0] for i in range(-(-count // 8))])[:count]
    return _checked_channels(images, card, "calibration")


def normalized_samples(samples, normalization: Normalization) -> list:
    """The samples with their images through `normalization.normalize` (whole images,
    float32), for a normalisation applied outside the graph; the same list otherwise."""
    if normalization.in_graph:
        return samples
    return [dataclasses.replace(s, image=normalize_image(s.image, normalization))
            for s in samples]


def held_out_set(card: ModelCard, count: int, split: str = "test"):
    """Whole held-out images (`sample.Sample`s, disjoint from training).

    A source that can make any number (synthetic): `count` images of the split.
    Otherwise (a folder): its recorded split (as many as it has, at most `count`).
    `split` is "test" for every reported figure, "val" for anything tuned.
    """
    source = source_of(card.data)
    samples = (source.make(card.data, split, count) if source.make is not None
               else load_split(card, split, count))
    _checked_channels(np.stack([s.image[:16, :16] for s in samples]), card, "evaluation")
    return samples


def _checked_channels(images: np.ndarray, card: ModelCard, purpose: str) -> np.ndarray:
    channels = card.input.channels
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
