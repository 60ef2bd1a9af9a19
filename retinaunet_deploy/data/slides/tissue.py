"""Where the tissue is on a slide: Otsu's threshold on a low-resolution level.

1. Thumbnail: the coarsest level whose longer side is at least `THUMB_MIN` px (level 0
   when none is), read in bands of rows and subsampled by the integer step that brings
   its longer side to at most `THUMB_MAX` px; RGB is averaged to grey.
2. Threshold: Otsu's (N. Otsu, "A threshold selection method from gray-level
   histograms", IEEE SMC 1979): the 256-bin histogram cut that maximises the
   between-class variance w0 w1 (mu0 - mu1)^2.
3. Which side is background: the side holding most of the thumbnail's border pixels
   (a slide's border is glass: bright in brightfield, dark in fluorescence); the other
   side is tissue. QuPath's "simple tissue detection" thresholds a downsampled image
   the same way, with the dark-background choice made by hand.
4. The tissue mask is dilated by `DILATE` thumbnail pixels, so tiles at a tissue edge
   are kept. A thumbnail of one value (or nearly) cannot be split: all of it is tissue.

A tile of the predicted level is run when its footprint on the thumbnail holds any
tissue pixel (`TissueMap.has_tissue`); the others are background and skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

THUMB_MIN = 1024
THUMB_MAX = 2048
DILATE = 1
BAND_ROWS = 512        # rows of a level read at once while making the thumbnail


@dataclass(frozen=True)
class TissueMap:
    """The tissue found on a slide.

    Attributes:
        mask: (h, w) bool, True for tissue, on the thumbnail.
        scale: (y, x) level-0 pixels per thumbnail pixel.
        threshold: Otsu's threshold (grey value), None when the thumbnail was uniform.
        dark_background: whether background is the dark side (fluorescence).
        level: the slide level the thumbnail was read from; step: its subsampling.
    """

    mask: np.ndarray
    scale: tuple[float, float]
    threshold: float | None
    dark_background: bool
    level: int
    step: int

    @property
    def fraction(self) -> float:
        """The share of the thumbnail that is tissue (after dilation)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def has_tissue(self, top: float, left: float, bottom: float, right: float) -> bool:
        """Whether the level-0 pixel box [top, bottom) x [left, right) holds tissue."""
        sy, sx = self.scale
        y0, x0 = max(0, math.floor(top / sy)), max(0, math.floor(left / sx))
        y1, x1 = math.ceil(bottom / sy), math.ceil(right / sx)
        return bool(self.mask[y0:y1, x0:x1].any())


def thumbnail(slide) -> tuple[np.ndarray, int, int, tuple[float, float]]:
    """(grey (h, w) float32, level, step, scale (y, x) level-0 px per thumbnail px)."""
    levels = slide.levels
    longest0 = max(levels[0].height, levels[0].width)
    wanted = min(THUMB_MIN, longest0)
    level = max(i for i, lvl in enumerate(levels) if max(lvl.height, lvl.width) >= wanted)
    lvl = levels[level]
    step = max(1, math.ceil(max(lvl.height, lvl.width) / THUMB_MAX))
    rows = []
    band = max(step, BAND_ROWS // step * step)
    for top in range(0, lvl.height, band):
        region = slide.read(level, top, 0, min(band, lvl.height - top), lvl.width)
        rows.append(region[::step, ::step].astype(np.float32).mean(axis=-1))
    grey = np.concatenate(rows)
    return grey, level, step, (lvl.downsample[0] * step, lvl.downsample[1] * step)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float | None:
    """Otsu's threshold of `values` (any shape): pixels below it are the lower class.
    None when the values hold (nearly) one level."""
    low, high = float(values.min()), float(values.max())
    if not high - low > 1e-6 * max(1.0, abs(high)):
        return None
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts).astype(np.float64)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(counts * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def find_tissue(slide) -> TissueMap:
    """The `TissueMap` of an open `data.slides.Slide` (the module docstring)."""
    from scipy import ndimage

    grey, level, step, scale = thumbnail(slide)
    threshold = otsu_threshold(grey)
    if threshold is None:
        return TissueMap(np.ones(grey.shape, bool), scale, None, False, level, step)
    low = grey < threshold
    border = np.concatenate([low[0], low[-1], low[:, 0], low[:, -1]])
    dark_background = bool(border.mean() > 0.5)
    tissue = ~low if dark_background else low
    if DILATE:
        tissue = ndimage.binary_dilation(tissue, iterations=DILATE)
    return TissueMap(tissue, scale, threshold, dark_background, level, step)
