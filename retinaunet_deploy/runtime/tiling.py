"""Sliding-window inference (numpy): tile layout, the window over a callable, detection merge.

`sliding_window(image, run, ...)` runs any `run(batch) -> outputs` over the tiles
of a padded image (MONAI's `sliding_window_inference` habit): the Predictor runs
its backend through it, and the bench's size sweep reads the same `tile_layout`.
Tiles never pad: each is a window of the image the Predictor padded once, by
mirroring (`data.patches.pad_to`, as in training), so no tile has an edge that
the whole image would not have.

An image too large to run whole is covered by tiles of one size, multiples of
the network stride and placed on stride multiples, so every tile sees the same
pixel grid as the whole image would. Neighbouring tiles overlap by at least
`overlap` x tile; when the image needs n tiles along an axis, the tile is
shrunk to the smallest stride multiple that still gives that overlap, which
keeps the extra cost near its floor (e.g. 1024 px at tile 512, overlap 0.25:
3 tiles of 416 px, 1.22x the pixels per axis instead of 1.5x).

Mask probabilities are blended with Gaussian weights (sigma = tile / 8, as
nnU-Net does), so tile borders, where the network sees least context, count
least. Each tile's detections are kept only where the box centre lies in the
tile's core (the part of the image closer to this tile's centre than to its
neighbours'), shifted to image coordinates, then one NMS runs over all of them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from retinaunet_deploy.errors import ConfigError
from retinaunet_deploy.model.boxes import batched_nms, clip_boxes
from retinaunet_deploy.postprocess import Detections

# Tiles run together up to about this many pixels per call: eight 1024x1024 tiles at
# once took 8.9 GB of RSS on the small preset; activations grow with the pixels of a call.
TILE_BATCH_PIXELS = 1 << 20


def axis_layout(length: int, tile: int, overlap: float, stride: int) -> tuple[int, list[int]]:
    """Tile length and start offsets covering `length` (a stride multiple) along one axis."""
    if length <= tile:
        return length, [0]
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
    count = math.ceil((length - overlap * tile) / ((1 - overlap) * tile))
    # The smallest stride multiple that covers `length` with `count` tiles at `overlap`.
    size = min(tile, stride * math.ceil(length / (count - overlap * (count - 1)) / stride))
    while True:
        # Evenly spread, on stride multiples (two that round alike are one); the last
        # tile ends at `length`.
        starts = sorted({round((length - size) * i / (count - 1) / stride) * stride
                         for i in range(count)})
        widest = max(b - a for a, b in itertools.pairwise(starts))
        # Rounding to the stride can widen a gap by up to one stride: grow the tile
        # (or, at the tile limit, add one) until every neighbour overlaps enough.
        # Tiles sit on stride multiples, so no gap is finer than one stride.
        if widest <= max(stride, size * (1 - overlap)):
            return size, starts
        if size + stride <= tile:
            size += stride
        else:
            count += 1


def tile_grid(height: int, width: int, tile: int, overlap: float, stride: int):
    """(tile height, tile width, [(top, left), ...]) for a padded (height, width) image."""
    tile_h, tops = axis_layout(height, tile, overlap, stride)
    tile_w, lefts = axis_layout(width, tile, overlap, stride)
    return tile_h, tile_w, [(top, left) for top in tops for left in lefts]


def gaussian_weights(height: int, width: int, sigma_fraction: float = 1 / 8) -> np.ndarray:
    """(height, width) float32 Gaussian centred on the tile, peak 1, floored at 1e-3."""
    def axis(n):
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        return np.exp(-(x**2) / (2 * (sigma_fraction * n) ** 2))

    weights = np.outer(axis(height), axis(width))
    return np.maximum(weights / weights.max(), 1e-3).astype(np.float32)


def core_bounds(starts: list[int], size: int, length: int) -> list[tuple[float, float]]:
    """Per tile along one axis, the [lo, hi) part of the image that it owns."""
    centres = [s + size / 2 for s in starts]
    bounds = []
    for i in range(len(starts)):
        lo = 0.0 if i == 0 else (centres[i - 1] + centres[i]) / 2
        hi = float(length) if i == len(starts) - 1 else (centres[i] + centres[i + 1]) / 2
        bounds.append((lo, hi))
    return bounds


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one padded image lie.

    Attributes:
        size: (height, width) of the padded image, pixels (stride multiples).
        tile: (height, width) of every tile, pixels (stride multiples).
        origins: (top, left) of each tile in the image, rows first.
        cores: per tile, (y_lo, y_hi, x_lo, x_hi): the part of the image it owns
            (closer to its centre than to its neighbours'), for the detection merge.
    """

    size: tuple[int, int]
    tile: tuple[int, int]
    origins: list[tuple[int, int]]
    cores: list[tuple[float, float, float, float]]


def tile_layout(height: int, width: int, tile: int, overlap: float, stride: int) -> TileLayout:
    """The tiles of a padded (height, width) image (both stride multiples); one tile
    of the whole image when it is no larger than `tile`. Raises `ConfigError` for an
    overlap outside [0, 1)."""
    tile_h, tile_w, origins = tile_grid(height, width, tile, overlap, stride)
    tops = sorted({top for top, _ in origins})
    lefts = sorted({left for _, left in origins})
    rows = dict(zip(tops, core_bounds(tops, tile_h, height)))
    cols = dict(zip(lefts, core_bounds(lefts, tile_w, width)))
    cores = [(*rows[top], *cols[left]) for top, left in origins]
    return TileLayout((height, width), (tile_h, tile_w), origins, cores)


def sliding_window(image: np.ndarray, run: Callable[[np.ndarray], dict[str, np.ndarray]],
                   tile: int, overlap: float, stride: int, batch: int,
                   decode: Callable[[dict[str, np.ndarray]], list[Detections] | None]
                   | None = None, max_pixels: int = TILE_BATCH_PIXELS):
    """Run `run` over the tiles of one padded image and blend the mask probabilities.

    Args:
        image: (H, W, C) float32, H and W multiples of `stride` (already padded).
        run: (n, tile_h, tile_w, C) float32 -> outputs with "mask" (n, tile_h, tile_w, K)
            float32 probabilities (and whatever `decode` reads).
        tile, overlap, stride: as `tile_layout`.
        batch: at most this many tiles per call (fewer when a call would pass
            `max_pixels` pixels; always at least one).
        decode: outputs of one call -> one `Detections` per tile, in tile pixels
            (None, or a decode returning None: no detections).
    Returns:
        (probabilities (H, W, K) float32, Gaussian-blended; per-tile detections in
        `layout.origins` order, tile coordinates, [] without `decode`; the `TileLayout`).
    """
    height, width = image.shape[:2]
    layout = tile_layout(height, width, tile, overlap, stride)
    tile_h, tile_w = layout.tile
    weights = gaussian_weights(tile_h, tile_w)[..., None]
    total = norm = None
    per_tile: list[Detections] = []
    per_call = max(1, min(batch, max_pixels // (tile_h * tile_w)))
    for first in range(0, len(layout.origins), per_call):
        chunk = layout.origins[first:first + per_call]
        outputs = run(np.stack([image[t:t + tile_h, l:l + tile_w] for t, l in chunk]))
        if total is None:
            total = np.zeros((height, width, outputs["mask"].shape[-1]), np.float32)
            norm = np.zeros((height, width, 1), np.float32)
        for (top, left), probs in zip(chunk, outputs["mask"]):
            total[top:top + tile_h, left:left + tile_w] += probs * weights
            norm[top:top + tile_h, left:left + tile_w] += weights
        if decode is not None:
            per_tile += decode(outputs) or []
    return total / norm, per_tile, layout


def merge_tile_detections(per_tile: list[Detections], origins: list[tuple[int, int]],
                          cores: list[tuple[float, float, float, float]],
                          image_size: tuple[int, int], iou_threshold: float,
                          max_detections: int) -> Detections:
    """One image's detections from its tiles' (tile coordinates) detections.

    Args:
        origins: (top, left) of each tile in the image.
        cores: (y_lo, y_hi, x_lo, x_hi) of the part of the image each tile owns.
    """
    boxes, scores, classes = [], [], []
    for dets, (top, left), (y_lo, y_hi, x_lo, x_hi) in zip(per_tile, origins, cores):
        shifted = dets.boxes + np.array([top, left, top, left], np.float32)
        cy = (shifted[:, 0] + shifted[:, 2]) / 2
        cx = (shifted[:, 1] + shifted[:, 3]) / 2
        own = (cy >= y_lo) & (cy < y_hi) & (cx >= x_lo) & (cx < x_hi)
        boxes.append(shifted[own])
        scores.append(dets.scores[own])
        classes.append(dets.classes[own])
    boxes = np.concatenate(boxes).reshape(-1, 4)
    scores = np.concatenate(scores).astype(np.float32)
    classes = np.concatenate(classes).astype(np.int32)
    boxes = clip_boxes(boxes, image_size)
    kept = batched_nms(boxes, scores, classes, iou_threshold)
    keep = kept[:max_detections]
    # What the caps left out: the merge's own cut, plus each tile's (an upper bound of
    # what the image lost: a box a tile dropped might have been suppressed here).
    return Detections(boxes[keep].astype(np.float32), scores[keep], classes[keep],
                      len(kept) - len(keep) + sum(d.dropped for d in per_tile),
                      sum(d.candidates_dropped for d in per_tile),
                      sum(d.graph_capped for d in per_tile))
