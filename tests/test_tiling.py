"""The sliding window over a callable (`runtime.tiling.sliding_window`): blending, batching,
the layout it reports, and that the Predictor and the size sweep read the same layout."""

import itertools

import numpy as np
import pytest

from retinaunet_deploy.postprocess import Detections
from retinaunet_deploy.runtime.base import BackendBase
from retinaunet_deploy.runtime.tiling import TileLayout, sliding_window, tile_layout


def pixelwise(calls):
    """A `run` whose mask depends on each pixel alone (so tiling cannot change it), and
    that records the shape of every call."""
    def run(batch):
        calls.append(batch.shape)
        p = np.clip(batch[..., :1] / 255.0, 0, 1).astype(np.float32)
        return {"mask": np.concatenate([1 - p, p], axis=-1)}
    return run


def one_box_per_tile(outputs):
    """A decode giving each tile one box at its centre, scored by the tile's mean."""
    masks = outputs["mask"]
    h, w = masks.shape[1:3]
    return [Detections(np.array([[h / 2 - 1, w / 2 - 1, h / 2 + 1, w / 2 + 1]], np.float32),
                       np.array([m[..., 1].mean()], np.float32), np.zeros(1, np.int32))
            for m in masks]


@pytest.mark.parametrize("height,width,tile,overlap", [
    (320, 480, 128, 0.25), (96, 96, 128, 0.25), (512, 64, 96, 0.5), (208, 336, 64, 0.0)])
def test_blending_a_pixelwise_model_gives_the_whole_image_result(height, width, tile, overlap):
    image = np.random.default_rng(0).uniform(0, 255, (height, width, 1)).astype(np.float32)
    calls = []
    probabilities, per_tile, layout = sliding_window(image, pixelwise(calls), tile, overlap,
                                                     16, batch=4)
    whole = pixelwise([])(image[None])["mask"][0]
    assert probabilities.shape == (height, width, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, whole, rtol=1e-5, atol=1e-6)
    assert per_tile == []                                  # no decode: no detections
    assert layout == tile_layout(height, width, tile, overlap, 16)
    assert sum(shape[0] for shape in calls) == len(layout.origins)
    assert all(shape[1:3] == layout.tile for shape in calls)


def test_how_tiles_are_batched_does_not_change_a_bit():
    image = np.random.default_rng(1).uniform(0, 255, (400, 560, 1)).astype(np.float32)
    results = {}
    for batch, max_pixels in ((1, 1 << 20), (3, 1 << 20), (64, 1 << 20), (64, 2 * 128 * 128)):
        calls = []
        results[batch, max_pixels] = sliding_window(image, pixelwise(calls), 128, 0.25, 16,
                                                    batch, decode=one_box_per_tile,
                                                    max_pixels=max_pixels)
        layout = results[batch, max_pixels][2]
        per_call = max(1, min(batch, max_pixels // (layout.tile[0] * layout.tile[1])))
        assert [shape[0] for shape in calls] == [
            min(per_call, len(layout.origins) - i)
            for i in range(0, len(layout.origins), per_call)]
    first, *others = results.values()
    for other in others:
        np.testing.assert_array_equal(first[0], other[0])
        assert len(other[1]) == len(first[1]) == len(first[2].origins)
        for a, b in zip(first[1], other[1]):
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.scores, b.scores)


def test_the_layout_covers_the_image_and_its_cores_partition_it():
    layout = tile_layout(624, 1040, 256, 0.25, 16)
    assert isinstance(layout, TileLayout) and layout.size == (624, 1040)
    tile_h, tile_w = layout.tile
    covered = np.zeros(layout.size, int)
    owned = np.zeros(layout.size, int)
    for (top, left), (y_lo, y_hi, x_lo, x_hi) in zip(layout.origins, layout.cores):
        covered[top:top + tile_h, left:left + tile_w] += 1
        assert top <= y_lo < y_hi <= top + tile_h and left <= x_lo < x_hi <= left + tile_w
        ys = (np.arange(624) + 0.5 >= y_lo) & (np.arange(624) + 0.5 < y_hi)
        xs = (np.arange(1040) + 0.5 >= x_lo) & (np.arange(1040) + 0.5 < x_hi)
        owned += np.outer(ys, xs)
    assert covered.min() >= 1 and np.all(owned == 1)     # every pixel owned exactly once
    assert len(set(layout.origins)) == len(layout.origins)
    assert layout.origins == list(itertools.product(sorted({t for t, _ in layout.origins}),
                                                    sorted({x for _, x in layout.origins})))


def test_the_predictor_runs_the_layout_it_reports():
    """`Predictor.tile_layout` (what the size sweep records) is what its window ran."""
    from retinaunet_deploy.model.anchors import AnchorConfig
    from retinaunet_deploy.runtime.predictor import Predictor

    anchors = AnchorConfig()
    card = {"card_version": 1, "builder": {}, "normalization": {},
            "input": {"channels": 1, "stride": 16, "patch_size": 32, "pixel_dtype": "uint8",
                      "pixel_max": 255},
            "class_names": ["background", "object"], "det_class_names": ["object"],
            "anchors": anchors.to_dict(), "postprocess": {}}
    seen = []

    class Recording(BackendBase):
        def run(self, batch):
            seen.append(batch.shape)
            n, h, w = batch.shape[:3]
            a = anchors.num_anchors((h, w))
            return {**pixelwise([])(batch), "cls_logits": np.zeros((n, a, 1), np.float32),
                    "box_deltas": np.zeros((n, a, 4), np.float32)}

    predictor = Predictor(Recording(), card, batch_size=1, tile=64, overlap=0.25)
    image = np.random.default_rng(2).integers(0, 255, (150, 201, 1), dtype=np.uint8)
    result = predictor.predict(image)
    layout = predictor.tile_layout(150, 201)
    assert layout.size == (160, 208) and len(seen) == len(layout.origins) > 1
    assert all(shape[1:3] == layout.tile for shape in seen)
    assert result.mask.shape == (150, 201)
    assert predictor.tile_layout(60, 60).origins == [(0, 0)]   # fits whole: one tile


def test_merged_boxes_in_the_padding_beyond_the_image_are_dropped():
    """A tile owns the padded strip below the image; a box there is empty once clipped to
    the image and is dropped, as `decode_detections` drops it on a whole image."""
    from retinaunet_deploy.runtime.tiling import merge_tile_detections

    layout = tile_layout(96, 64, 64, 0.25, 16)          # an image of 90 x 64, padded to 96
    boxes = np.array([[91, 10, 95, 20], [80, 10, 92, 20]], np.float32)   # tile coordinates
    per_tile = [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                           np.zeros(0, np.int32))] * len(layout.origins)
    last = len(layout.origins) - 1                       # the bottom tile owns rows 90..96
    top = layout.origins[last][0]
    per_tile = per_tile[:last] + [Detections(boxes - [top, 0, top, 0], np.array([0.9, 0.8],
                                                                                 np.float32),
                                             np.zeros(2, np.int32))]
    merged = merge_tile_detections(per_tile, layout.origins, layout.cores, (90, 64), 0.5, 10)
    np.testing.assert_array_equal(merged.boxes, [[80, 10, 90, 20]])
    assert merged.scores.tolist() == [np.float32(0.8)]
