"""A synthetic whole-slide image: glass with a few regions of the synthetic objects
(`data.synthetic`), written as a tiled pyramidal TIFF tile by tile (memory: one tile
and the regions, whatever the slide's size).

Level 0 is uniform dark glass (grey `GLASS`, as in fluorescence: the synthetic objects
are bright on a darker background) except `regions` squares, each one synthetic
image (disks and rings on a noisy background, `synthetic_sample` at a side of
`region` px) placed at random, apart. Each further level halves the previous
(nearest-neighbour: level k pixel (r, c) is level-0 pixel (r 2^k, c 2^k)) until the
longer side fits one tile. The pyramid is stored as SubIFDs (``pyramid="subifds"``,
as tifffile and Bio-Formats write OME-TIFF) or as following pages marked reduced
(``"pages"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import ConfigError

GLASS = 15


@dataclass(frozen=True)
class Region:
    """One region of objects: its top-left in level-0 pixels, its image (h, w) uint8 and
    instance labels (h, w) int32 (0 = background)."""

    top: int
    left: int
    image: np.ndarray
    instances: np.ndarray


def make_regions(height: int, width: int, regions: int, region: int, seed: int,
                 patch: int = 64) -> list[Region]:
    """`regions` synthetic images of `region` x `region` px, at random places at least
    one region apart (`synthetic_sample` with a training patch of `patch` px)."""
    from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_sample

    side = region / patch
    config = SyntheticConfig(size=patch, side_range=(side, side))
    rng = np.random.default_rng(seed)
    for _ in range(1000):      # whole layouts drawn until one has its regions apart
        corners: list[tuple[int, int]] = []
        for _ in range(regions):
            top = int(rng.integers(0, height - region + 1))
            left = int(rng.integers(0, width - region + 1))
            if not all(abs(top - t) >= 2 * region or abs(left - le) >= 2 * region
                       for t, le in corners):
                break
            corners.append((top, left))
        if len(corners) == regions:
            break
    else:
        raise ConfigError(f"{regions} regions of {region} px do not fit apart on a "
                          f"{height}x{width} slide")
    placed = []
    for index, (top, left) in enumerate(corners):
        sample = synthetic_sample(config, seed, "test", index)
        placed.append(Region(top, left, sample.image[:region, :region, 0],
                             sample.instances[:region, :region]))
    return placed


def _tile(regions: list[Region], factor: int, top: int, left: int, height: int,
          width: int) -> np.ndarray:
    """Pixels [top, top+height) x [left, left+width) of the level of `factor` (2^k)."""
    tile = np.full((height, width), GLASS, np.uint8)
    rows = (top + np.arange(height)) * factor       # level-0 rows of the tile's rows
    cols = (left + np.arange(width)) * factor
    for region in regions:
        h, w = region.image.shape
        in_rows = np.flatnonzero((rows >= region.top) & (rows < region.top + h))
        in_cols = np.flatnonzero((cols >= region.left) & (cols < region.left + w))
        if in_rows.size and in_cols.size:
            tile[np.ix_(in_rows, in_cols)] = region.image[
                np.ix_(rows[in_rows] - region.top, cols[in_cols] - region.left)]
    return tile


def write_synthetic_slide(path: Path, height: int = 20000, width: int = 20000, *,
                          regions: int = 3, region: int = 512, seed: int = 0,
                          tile: int = 512, pyramid: str = "subifds",
                          mpp: float | None = 0.5, patch: int = 64) -> list[Region]:
    """Write the synthetic slide (module docstring) to `path`; returns its regions.

    Args:
        height, width: level 0, pixels. regions, region: how many regions, their side.
        tile: the TIFF tile side (a multiple of 16). pyramid: "subifds" or "pages".
        patch: the synthetic training patch the objects are drawn for (radii 6-14% of
            it: 4-9 px at 64, as the test models see them at level 0).
        mpp: micrometres per level-0 pixel, written as resolution tags in centimetres
            (and as OME PhysicalSizeX/Y for a ``.ome.tif`` path with SubIFDs); None: none
            written.
    """
    import tifffile

    if pyramid not in ("subifds", "pages"):
        raise ConfigError(f"pyramid must be 'subifds' or 'pages', got {pyramid!r}")
    placed = make_regions(height, width, regions, region, seed, patch)
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))

    def tiles(k):
        h, w = shapes[k]
        for top in range(0, h, tile):
            for left in range(0, w, tile):
                yield _tile(placed, 2 ** k, top, left, min(tile, h - top), min(tile, w - left))

    options = {"tile": (tile, tile), "compression": "zlib", "photometric": "minisblack",
               "dtype": np.uint8}
    resolution = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp),
                                         "resolutionunit": "CENTIMETER"}
    metadata = {"axes": "YX"}
    if mpp is not None:
        metadata.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        # A pages pyramid carries no shaped/OME description: it would describe page 0 only.
        writer.write(tiles(0), shape=shapes[0],
                     metadata=metadata if pyramid == "subifds" else None,
                     subifds=len(shapes) - 1 if pyramid == "subifds" else None,
                     **resolution, **options)
        for k in range(1, len(shapes)):
            scaled = {} if mpp is None else {"resolution": (1e4 / mpp / 2 ** k,) * 2,
                                             "resolutionunit": "CENTIMETER"}
            writer.write(tiles(k), shape=shapes[k], subfiletype=1, metadata=None,
                         **scaled, **options)
    return placed
