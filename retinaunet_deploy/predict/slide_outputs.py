"""A slide's outputs: the label pyramid as a tiled OME-TIFF, written tile by tile, and
the detections as GeoJSON that QuPath imports.

Label pyramid (``OUT/masks/NAME.ome.tif``): uint8 class indices (0 = background) of
the predicted level, tiles of `LABEL_TILE` px, deflate (zlib), lossless; further levels
as SubIFDs (as tifffile and Bio-Formats write OME-TIFF), each half the previous by
nearest neighbour (level k pixel (r, c) = level-0 label (r 2^k, c 2^k): labels are not
averaged) until the longer side fits one tile. Pixel size (OME PhysicalSizeX/Y and
resolution tags in cm) is the predicted level's when the slide records one.
Memory: tifffile pulls level-0 tiles from the bands of rows the prediction yields (at
most a band and one row of tiles held); the reduced levels are kept, as the bands
pass, in raw files in a temporary folder beside the output and read back band by
band when their turn comes (tifffile writes level 0 first).

GeoJSON (``OUT/detections/NAME.geojson``): a FeatureCollection, one Feature per
detection: geometry a Polygon (the box, closed ring [[x1, y1], [x2, y1], [x2, y2],
[x1, y2], [x1, y1]]) in LEVEL-0 pixel coordinates (x right, y down, origin top-left of
the full-resolution image), whatever level was predicted; properties as QuPath writes
and reads them: ``objectType`` "detection", ``classification`` {name, color [r, g, b]},
``measurements`` {"score": s}, plus ``score`` and ``class`` for other readers.
Written feature by feature (no list of all of them as JSON in memory).
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from retinaunet_deploy.predict.entries import class_name

LABEL_TILE = 512


def pyramid_shapes(height: int, width: int, tile: int = LABEL_TILE) -> list[tuple[int, int]]:
    """(height, width) of each level of the label pyramid, full resolution first."""
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def _row_tiles(rows: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    for left in range(0, rows.shape[1], tile):
        yield rows[:, left:left + tile]


def write_label_pyramid(path: Path, bands: Iterable[np.ndarray], height: int, width: int,
                        mpp: tuple[float, float] | None, scratch: Path, name: str = "labels",
                        tile: int = LABEL_TILE) -> None:
    """Write the label pyramid (module docstring) to `path` (a temporary name: the caller
    renames it) from `bands`: consecutive (rows, width) uint8 blocks of the level's labels,
    top to bottom, `height` rows in all. `scratch`: a folder for the temporary level files.
    `name`: the OME image name.

    Raises whatever `bands` raises (nothing is then left but the partial `path`, which
    the caller removes) and `OSError` from writing.
    """
    import tifffile

    shapes = pyramid_shapes(height, width, tile)
    factors = [2 ** k for k in range(len(shapes))]
    options = {"dtype": np.uint8, "tile": (tile, tile), "compression": "zlib",
               "photometric": "minisblack"}

    def resolution(k):
        if mpp is None:
            return {}
        return {"resolution": (1e4 / (mpp[1] * factors[k]), 1e4 / (mpp[0] * factors[k])),
                "resolutionunit": "CENTIMETER"}

    # The OME UUID from the image's name and size: the same run writes the same bytes.
    metadata = {"axes": "YX", "Name": name,
                "UUID": str(uuid.uuid5(uuid.NAMESPACE_URL,
                                       f"retinaunet-deploy:{name}:{height}x{width}"))}
    if mpp is not None:
        metadata.update(PhysicalSizeX=mpp[1], PhysicalSizeY=mpp[0],
                        PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    with tempfile.TemporaryDirectory(prefix=".slide-levels.", dir=scratch) as folder, \
            contextlib.ExitStack() as stack:
        raw = [Path(folder) / f"level{k}.raw" for k in range(len(shapes))]
        handles = [stack.enter_context(open(raw[k], "wb")) for k in range(1, len(shapes))]
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as writer:
            writer.write(_level0_tiles(bands, height, width, tile, handles, factors[1:]),
                         shape=shapes[0], subifds=len(shapes) - 1, metadata=metadata,
                         **resolution(0), **options)
            for handle in handles:
                handle.close()
            for k in range(1, len(shapes)):
                writer.write(_raw_tiles(raw[k], shapes[k], tile), shape=shapes[k],
                             subfiletype=1, metadata=None, **resolution(k), **options)


def _level0_tiles(bands: Iterable[np.ndarray], height: int, width: int, tile: int,
                  handles: list, factors: list[int]) -> Iterator[np.ndarray]:
    """Level-0 tiles in row-major order from the bands; each band's rows of every further
    level (every factor-th row and column) appended to that level's raw file."""
    pending = np.zeros((0, width), np.uint8)
    row = 0
    for band in bands:
        band = np.asarray(band, np.uint8)
        index = row + np.arange(len(band))
        for handle, factor in zip(handles, factors):
            handle.write(np.ascontiguousarray(band[index % factor == 0, ::factor]).tobytes())
        row += len(band)
        pending = np.concatenate([pending, band]) if len(pending) else band
        while len(pending) >= tile:
            yield from _row_tiles(pending[:tile], tile)
            pending = pending[tile:]
    if row != height:
        raise AssertionError(f"label bands gave {row} rows of {height}")
    if len(pending):
        yield from _row_tiles(pending, tile)


def _raw_tiles(path: Path, shape: tuple[int, int], tile: int) -> Iterator[np.ndarray]:
    """The tiles of a raw (rows x width uint8) level file, a row of tiles at a time."""
    height, width = shape
    with open(path, "rb") as handle:
        for top in range(0, height, tile):
            rows = min(tile, height - top)
            data = np.frombuffer(handle.read(rows * width), np.uint8)
            if data.size != rows * width:
                raise AssertionError(f"{path} ended early")
            yield from _row_tiles(data.reshape(rows, width), tile)


def write_geojson(path: Path, detections, downsample: tuple[float, float],
                  class_names: list[str], palette: list[tuple[int, int, int]]) -> int:
    """Write `detections` (a `postprocess.Detections` in level pixels, or None) as the
    GeoJSON FeatureCollection of the module docstring; returns the number of features.

    Args:
        downsample: (y, x) level-0 pixels per level pixel (boxes are scaled by it).
        class_names: detection class names (index -> name). palette: colours by
            detection class index.
    """
    count = 0
    sy, sx = downsample
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('{"type": "FeatureCollection", "features": [')
        if detections is not None:
            for box, score, cls in zip(detections.boxes, detections.scores,
                                       detections.classes):
                y1, x1, y2, x2 = (round(float(v), 2) for v in
                                  (box[0] * sy, box[1] * sx, box[2] * sy, box[3] * sx))
                name = str(class_name(class_names, int(cls)))
                score = round(float(score), 4)
                feature = {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [
                        [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]]},
                    "properties": {"objectType": "detection",
                                   "classification": {"name": name,
                                                      "color": list(palette[int(cls)
                                                                            % len(palette)])},
                                   "measurements": {"score": score},
                                   "score": score, "class": name}}
                handle.write(("," if count else "") + "\n" + json.dumps(feature))
                count += 1
        handle.write("\n]}\n")
    return count
