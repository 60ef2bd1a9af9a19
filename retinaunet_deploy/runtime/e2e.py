"""Running an end-to-end file (its post-process in the graph) behind the `Predictor`.

An end-to-end ONNX file (``*.e2e.onnx``, export/README.md "End-to-end files")
returns ``num_detections`` (N, 1), ``detection_boxes`` (N, M, 4),
``detection_scores`` (N, M), ``detection_classes`` (N, M) and ``labels`` (N, H, W)
uint8 instead of ``mask`` / ``cls_logits`` / ``box_deltas``. The Predictor pads
and tiles it as it does a plain file; this module turns its outputs into the
same `Detections` and masks:

* detections: the first ``num_detections`` rows, clipped to the image (the graph
  clipped them to the padded input), empty boxes dropped, kept above the
  Predictor's score threshold (which may be raised, never lowered below the
  graph's); `Detections.graph_capped` counts the graph calls (whole images or
  tiles) that filled all M rows: more may exist than it could return. The graph's
  M and pre-NMS top-k are the card's, set for inputs of the patch size: a call on
  a larger input is warned about once (`scale_warning`); with tiles of the patch
  size the detections are those of the plain file run with the same tiles;
* the mask of a whole image: ``labels`` cropped back;
* the mask of a tiled image: each pixel takes the label of the tile whose core
  (`runtime.tiling.TileLayout.cores`) holds the pixel's centre (row r belongs
  to the core [lo, hi) when lo <= r + 0.5 < hi), the same ownership the
  detection merge uses; there are no probabilities to blend.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from retinaunet_deploy.errors import ConfigError
from retinaunet_deploy.model.boxes import clip_boxes
from retinaunet_deploy.names import is_end_to_end
from retinaunet_deploy.postprocess import DetectionConfig, Detections
from retinaunet_deploy.runtime import tiling

OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes",
           "labels")


def runs_end_to_end(backend) -> bool:
    """Whether `backend` runs an end-to-end file: its outputs (``output_names``) are the
    end-to-end ones, or, for a backend that does not list them, its file is named
    ``*.e2e.onnx`` (`names.is_end_to_end`)."""
    outputs = getattr(backend, "output_names", None)
    if outputs:
        return set(OUTPUTS) <= set(outputs)
    return is_end_to_end(getattr(backend, "path", "") or "")


def detections(outputs: dict[str, np.ndarray], image_size: tuple[int, int],
               graph: DetectionConfig, config: DetectionConfig) -> list[Detections]:
    """Per-image `Detections` from one call's end-to-end outputs.

    Args:
        outputs: the file's outputs for N inputs of one size.
        image_size: (H, W) the boxes are clipped to (the image inside the padding).
        graph: the postprocess the graph was built with (its M and score threshold).
        config: the Predictor's (its score threshold, at least the graph's).
    Raises:
        ConfigError: a score threshold below the graph's (the graph dropped those boxes).
    """
    if config.score_threshold < graph.score_threshold:
        raise ConfigError(f"this end-to-end file drops boxes scoring under "
                          f"{graph.score_threshold:g} in its graph; a score threshold of "
                          f"{config.score_threshold:g} needs its plain .onnx twin")
    results = []
    for index, count in enumerate(np.asarray(outputs["num_detections"]).reshape(-1)):
        count = int(count)
        boxes = clip_boxes(np.asarray(outputs["detection_boxes"][index, :count], np.float32),
                           image_size)
        scores = np.asarray(outputs["detection_scores"][index, :count], np.float32)
        classes = np.asarray(outputs["detection_classes"][index, :count], np.int32)
        keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                & (scores > config.score_threshold))
        results.append(Detections(boxes[keep], scores[keep], classes[keep],
                                  graph_capped=int(count >= graph.max_detections)))
    return results


def scale_warning(path, size: tuple[int, int], patch_size: int,
                  graph: DetectionConfig) -> str | None:
    """The one line warning that a graph call of `size` (H, W) is larger than the patch
    size the card's caps are set for (None when it is not): the graph keeps the card's
    M and pre-NMS top-k for any size, where the plain file's Predictor scales both with
    the area (`Predictor.config_for`), so it may keep fewer detections."""
    height, width = size
    if height * width <= patch_size ** 2:
        return None
    return (f"{path or 'this end-to-end model'}: its graph keeps at most "
            f"{graph.max_detections} detections of its top {graph.pre_nms_top_k} candidates "
            f"per call, the card's caps for {patch_size}x{patch_size} inputs; on "
            f"{height}x{width} inputs it may keep fewer than the plain .onnx file (which "
            f"scales them): run it with --tile {patch_size} (Predictor tile={patch_size}), "
            f"or use the plain file")


def capped(dets: Detections, max_detections: int) -> Detections:
    """`dets` (sorted by score) cut to `max_detections`, the cut counted in ``dropped``."""
    cut = max(0, len(dets) - max_detections)
    if not cut:
        return dets
    return Detections(dets.boxes[:max_detections], dets.scores[:max_detections],
                      dets.classes[:max_detections], dets.dropped + cut,
                      dets.candidates_dropped, dets.graph_capped)


def core_rows(lo: float, hi: float) -> slice:
    """The pixel rows (or columns) r with lo <= r + 0.5 < hi."""
    return slice(max(0, math.ceil(lo - 0.5)), max(0, math.ceil(hi - 0.5)))


def sliding_window_labels(image: np.ndarray, run: Callable[[np.ndarray], dict[str, np.ndarray]],
                          tile: int, overlap: float, stride: int, batch: int,
                          decode: Callable[[dict[str, np.ndarray]], list[Detections]] | None,
                          max_pixels: int = tiling.TILE_BATCH_PIXELS):
    """`runtime.tiling.sliding_window` for an end-to-end file: the same tiles and calls,
    labels by core ownership (module docstring) instead of blended probabilities.

    Returns (labels (H, W) uint8, per-tile detections in tile pixels, the `TileLayout`).
    """
    height, width = image.shape[:2]
    layout = tiling.tile_layout(height, width, tile, overlap, stride)
    tile_h, tile_w = layout.tile
    labels = np.zeros((height, width), np.uint8)
    per_tile: list[Detections] = []
    per_call = max(1, min(batch, max_pixels // (tile_h * tile_w)))
    for first in range(0, len(layout.origins), per_call):
        chunk = layout.origins[first:first + per_call]
        cores = layout.cores[first:first + per_call]
        outputs = run(np.stack([image[t:t + tile_h, l:l + tile_w] for t, l in chunk]))
        for (top, left), (y_lo, y_hi, x_lo, x_hi), tile_labels in zip(chunk, cores,
                                                                      outputs["labels"]):
            rows, cols = core_rows(y_lo, y_hi), core_rows(x_lo, x_hi)
            labels[rows, cols] = tile_labels[rows.start - top:rows.stop - top,
                                             cols.start - left:cols.stop - left]
        if decode is not None:
            per_tile += decode(outputs) or []
    return labels, per_tile, layout
