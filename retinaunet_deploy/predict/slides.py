"""Predicting whole-slide images: one level streamed tile by tile with bounded memory.

A slide input (`data.slides.slide_kind`: a tiled pyramidal TIFF / OME-TIFF, or a format
OpenSlide reads) is planned (`plan_slide`: its level chosen by ``--level`` or ``--mpp``,
checked against the model's input contract by its header) and predicted
(`predict_slide`) as follows:

1. Tissue: Otsu on a low-resolution level (`data.slides.tissue`); a tile whose
   footprint holds no tissue is background: it is not read nor run, its labels are 0
   and it has no detections (counted: ``tiles.skipped_background``).
2. Tiles: the Predictor's own sliding-window layout of the whole level
   (`Predictor.tile_layout`: the same tiles, overlap and stride grid as
   `Predictor.predict` on the level as one image). Tiles are read one row of tiles at a
   time (region reads: never the level in memory), mirrored at the level's bottom and
   right edge as the Predictor pads, and run through `Predictor.predict` in batches of
   at most `runtime.tiling.TILE_BATCH_PIXELS` pixels.
3. Labels: each pixel takes the class of the tile whose core holds it (the part of the
   level closer to that tile's centre than to its neighbours', the Predictor's
   ownership rule for boxes). The Predictor's Gaussian blend of probabilities would
   need the probabilities of a whole band of the level at once; the core rule needs
   none, and differs from it only near core borders where two tiles disagree.
4. Detections: merged exactly as the Predictor merges a tiled image's
   (`tiling.merge_tile_detections`): a tile keeps the boxes whose centre lies in its
   core, then one global class-wise NMS and the per-image cap (the card's count scaled
   with the level's area, or ``--max-detections``). Kept boxes are a few numbers each.
5. Outputs (`slide_outputs`): ``masks/NAME.ome.tif`` (the label pyramid, written tile
   by tile as the rows of tiles finish) and ``detections/NAME.geojson`` (level-0 pixel
   coordinates), each to a temporary file renamed into place, then the slide's
   results.jsonl line (`writer.ResultWriter.commit_outputs`).

Memory: a row of tiles' labels (tile height x level width bytes), one batch of tiles
and the model's activations for it, the kept boxes, and the tissue thumbnail (at most
2048 x 2048), whatever the slide's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError, InputError
from retinaunet_deploy.predict.entries import cap_record, class_pixels

MASK_SUFFIX = ".ome.tif"
GEOJSON_SUFFIX = ".geojson"


@dataclass(frozen=True)
class SlideItem:
    """One slide of a run, planned (the `plan.InputItem` fields, and the level).

    Attributes:
        path, name: as `plan.InputItem`. height, width: pixels of the predicted level.
        dtype: its pixel dtype. level: the level predicted (0 = full resolution).
    """

    path: Path
    name: str
    height: int
    width: int
    dtype: np.dtype
    level: int
    kind: str = "slide"


def plan_slide(path: Path, name: str, predictor, level: int | None = None,
               mpp: float | None = None) -> SlideItem:
    """Open `path` as a slide, choose its level (`data.slides.choose_level`) and check
    it against `predictor`'s input contract by its header (`Predictor.check_header`).

    Raises:
        DataError: not readable as a slide, a level that does not exist, an --mpp no
            level has or that the file cannot tell, an unsupported compression or layout.
        InputError: the level's channels or dtype are not the model's.
    """
    from retinaunet_deploy.data.slides import choose_level, open_slide

    with open_slide(path) as slide:
        chosen = choose_level(slide, level, mpp)
        lvl = slide.levels[chosen]
        try:
            predictor.check_header(lvl.height, lvl.width, slide.channels, slide.dtype)
        except InputError as error:
            raise InputError(f"{path} (slide level {chosen}): {error}") from error
        return SlideItem(Path(path), name, lvl.height, lvl.width, slide.dtype, chosen)


@dataclass
class _Run:
    """The state of one slide's prediction while its bands stream out."""

    predictor: object
    slide: object
    item: SlideItem
    tissue: object | None
    per_tile: list = field(default_factory=list)
    origins: list = field(default_factory=list)
    cores: list = field(default_factory=list)
    tiles_total: int = 0
    tiles_run: int = 0
    class_pixels: np.ndarray | None = None

    def read_tile(self, top: int, left: int, tile_h: int, tile_w: int) -> np.ndarray:
        """The tile at (top, left) of the level, mirrored past its bottom/right edge."""
        from retinaunet_deploy.data.patches import pad_to

        height, width = self.item.height, self.item.width
        region = self.slide.read(self.item.level, top, left, min(tile_h, height - top),
                                 min(tile_w, width - left))
        return pad_to(region, tile_h, tile_w)

    def bands(self) -> Iterator[np.ndarray]:
        """The level's labels, (rows, width) uint8, one band per row of tiles, in order."""
        from retinaunet_deploy.runtime.tiling import TILE_BATCH_PIXELS

        predictor, item = self.predictor, self.item
        height, width = item.height, item.width
        layout = predictor.tile_layout(height, width)
        tile_h, tile_w = layout.tile
        ds_y, ds_x = self.slide.levels[item.level].downsample
        per_call = max(1, min(predictor.batch_size, TILE_BATCH_PIXELS // (tile_h * tile_w)))
        rows: dict[int, list] = {}
        for origin, core in zip(layout.origins, layout.cores):
            rows.setdefault(origin[0], []).append((origin, core))
        self.tiles_total = len(layout.origins)
        self.class_pixels = np.zeros(len(predictor.class_names), np.int64)
        for top in sorted(rows):
            y_lo, y_hi = rows[top][0][1][:2]
            r0, r1 = _pixel_span(y_lo, y_hi, height)
            band = np.zeros((max(0, r1 - r0), width), np.uint8)
            todo = [(o, c) for o, c in rows[top] if self.tissue is None or
                    self.tissue.has_tissue(o[0] * ds_y, o[1] * ds_x, (o[0] + tile_h) * ds_y,
                                           (o[1] + tile_w) * ds_x)]
            for first in range(0, len(todo), per_call):
                chunk = todo[first:first + per_call]
                batch = np.stack([self.read_tile(*o, tile_h, tile_w) for o, _ in chunk])
                predictions = predictor.predict(batch)
                del batch
                for ((t, left), core), prediction in zip(chunk, predictions):
                    c0, c1 = _pixel_span(core[2], core[3], width)
                    if r1 > r0 and c1 > c0:
                        band[:, c0:c1] = prediction.mask[r0 - t:r1 - t, c0 - left:c1 - left]
                    if prediction.detections is not None:
                        self.per_tile.append(prediction.detections)
                        self.origins.append((t, left))
                        self.cores.append(core)
                self.tiles_run += len(chunk)
            self.class_pixels += np.bincount(band.ravel(), minlength=len(self.class_pixels))[
                :len(self.class_pixels)]
            yield band

    def detections(self):
        """The slide's detections in level pixels (`tiling.merge_tile_detections`), or
        None for a model without detection heads."""
        from retinaunet_deploy.postprocess import Detections
        from retinaunet_deploy.runtime.tiling import merge_tile_detections

        predictor, item = self.predictor, self.item
        if predictor.anchor_config is None:
            return None
        if not self.per_tile:
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                              np.zeros(0, np.int32))
        return merge_tile_detections(
            self.per_tile, self.origins, self.cores, (item.height, item.width),
            predictor.detection_config.iou_threshold,
            predictor.config_for(item.height, item.width).max_detections)


def _pixel_span(lo: float, hi: float, limit: int) -> tuple[int, int]:
    """The pixels [a, b) whose centres (i + 0.5) lie in [lo, hi), cut at `limit`."""
    return min(limit, max(0, math.ceil(lo - 0.5))), min(limit, math.ceil(hi - 0.5))


def predict_slide(predictor, item: SlideItem, out_dir: Path, *,
                  skip_background: bool = True) -> dict:
    """Predict one planned slide and write its two output files (module docstring);
    returns its entry (for `ResultWriter.commit_outputs`): ``kind`` "slide", ``size``
    [H, W] of the level, ``level``, ``level0_size``, ``downsample`` [y, x], ``mpp`` [y, x]
    of the level (None: unknown), ``format``, ``tiled``, ``tiles`` {total, predicted,
    skipped_background}, ``tissue`` {fraction, threshold, dark_background, level},
    ``class_pixels``, ``detection_count``, ``detections_by_class``,
    ``detections_capped``, ``detections_before_cap``, ``mask`` and ``geojson`` (paths
    relative to `out_dir`) with their sha256, ``outputs`` and ``warnings``.

    Args:
        skip_background: find tissue and skip background tiles (False: run every tile).
    Raises:
        DataError: the slide cannot be read, or changed since it was planned.
        InputError: a tile's pixels break the input contract.
        OutputError: an output cannot be written (nothing of it is left half-written).
    """
    from retinaunet_deploy.artifacts import atomic_path, sha256_file
    from retinaunet_deploy.data.slides import open_slide
    from retinaunet_deploy.data.slides.tissue import find_tissue
    from retinaunet_deploy.outputs import check_writable, output_error
    from retinaunet_deploy.predict.slide_outputs import write_geojson, write_label_pyramid
    from retinaunet_deploy.visualize import PALETTE

    out_dir = Path(out_dir)
    mask_rel = f"masks/{item.name}{MASK_SUFFIX}"
    geojson_rel = f"detections/{item.name}{GEOJSON_SUFFIX}"
    for folder in (out_dir / "masks", out_dir / "detections"):
        check_writable(folder)
    with open_slide(item.path) as slide:
        lvl = slide.levels[item.level] if item.level < len(slide.levels) else None
        if lvl is None or (lvl.height, lvl.width) != (item.height, item.width):
            raise DataError(f"{item.path} changed since it was checked (level {item.level} "
                            f"was {item.height}x{item.width}); run the command again")
        tissue = find_tissue(slide) if skip_background else None
        run = _Run(predictor, slide, item, tissue)
        mpp = slide.level_mpp(item.level)
        path = out_dir / mask_rel
        try:
            with atomic_path(path) as tmp:
                write_label_pyramid(tmp, run.bands(), item.height, item.width, mpp, out_dir,
                                    name=item.name)
            detections = run.detections()
            path = out_dir / geojson_rel
            with atomic_path(path) as tmp:
                count = write_geojson(tmp, detections, lvl.downsample,
                                      list(predictor.det_class_names), PALETTE[1:])
        except OSError as error:
            raise output_error(path, error) from error
        level0 = slide.levels[0]
        entry = {"kind": "slide", "size": [item.height, item.width], "level": item.level,
                 "level0_size": [level0.height, level0.width],
                 "downsample": [round(v, 6) for v in lvl.downsample],
                 "mpp": None if mpp is None else [round(v, 6) for v in mpp],
                 "format": slide.format, "tiled": run.tiles_total > 1,
                 "tiles": {"total": run.tiles_total, "predicted": run.tiles_run,
                           "skipped_background": run.tiles_total - run.tiles_run},
                 "tissue": None if tissue is None else {
                     "fraction": round(tissue.fraction, 6),
                     "threshold": None if tissue.threshold is None else round(
                         tissue.threshold, 3),
                     "dark_background": tissue.dark_background, "level": tissue.level}}
    entry["class_pixels"] = class_pixels(predictor.class_names, run.class_pixels)
    warnings = []
    if detections is not None:
        det_names = list(predictor.det_class_names)
        entry["detection_count"] = count
        entry["detections_by_class"] = {n: int(np.sum(detections.classes == i))
                                        for i, n in enumerate(det_names)}
        caps, warnings = cap_record(item.path, detections)
        entry.update(caps)
    entry.update({"mask": mask_rel, "mask_sha256": sha256_file(out_dir / mask_rel),
                  "geojson": geojson_rel,
                  "geojson_sha256": sha256_file(out_dir / geojson_rel),
                  "outputs": ["mask", "geojson"], "warnings": warnings})
    return entry


def run_slides(predictor, items: list[SlideItem], writer, out_dir: Path,
               warn: Callable[[str], None]) -> None:
    """Predict each slide in turn (`predict_slide`), append its line as it finishes
    (`writer.commit_outputs`) and print its warnings. A slide that fails stops the run;
    the slides before it stay finished (``--resume`` keeps them)."""
    for item in items:
        entry = writer.commit_outputs(item, predict_slide(predictor, item, out_dir))
        for line in entry.get("warnings", []):
            warn(line)
