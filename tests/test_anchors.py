"""Anchor generation and box coding on hand-made cases."""

import math

import numpy as np
import pytest

from retinaunet_deploy.errors import ConfigError
from retinaunet_deploy.model.anchors import AnchorConfig, anchor_shapes, generate_anchors
from retinaunet_deploy.model.boxes import box_iou, decode_boxes, encode_boxes


def test_single_level_single_shape_anchors_by_hand():
    config = AnchorConfig(strides=(8,), scales=(1.0,), ratios=(1.0,), size_factor=2.0)
    anchors = generate_anchors(config, (16, 24))
    # 2 x 3 positions, row-major, 16 px squares centred on (4 + 8i, 4 + 8j)
    expected = np.array([[4 + 8 * i - 8, 4 + 8 * j - 8, 4 + 8 * i + 8, 4 + 8 * j + 8]
                         for i in range(2) for j in range(3)], dtype=np.float32)
    np.testing.assert_array_equal(anchors, expected)


def test_anchor_order_levels_then_positions_then_shapes():
    config = AnchorConfig(strides=(4, 8), scales=(1.0, 2.0), ratios=(0.5, 1.0, 2.0))
    anchors = generate_anchors(config, (16, 16))
    k = config.anchors_per_position
    assert k == 6 and len(anchors) == (16 + 4) * k == config.num_anchors((16, 16))

    first = anchors[:k]  # stride 4, position (0, 0): centre (2, 2)
    np.testing.assert_allclose((first[:, :2] + first[:, 2:]) / 2, 2.0)
    heights, widths = first[:, 2] - first[:, 0], first[:, 3] - first[:, 1]
    # k = ratio_index * len(scales) + scale_index; size = 4 * 4 * scale; h/w = ratio
    np.testing.assert_allclose(heights / widths, [0.5, 0.5, 1, 1, 2, 2], rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(heights * widths), [16, 32] * 3, rtol=1e-6)

    second_position = anchors[k:2 * k]  # stride 4, row 0, column 1: centre (2, 6)
    np.testing.assert_allclose((second_position[:, 1] + second_position[:, 3]) / 2, 6.0)
    level2 = anchors[16 * k]  # first anchor of stride 8: centre (4, 4)
    assert (level2[0] + level2[2]) / 2 == pytest.approx(4.0)


def test_anchor_shapes_keep_area_across_ratios():
    config = AnchorConfig()
    shapes = anchor_shapes(config, 8)
    areas = shapes[:, 0] * shapes[:, 1]
    np.testing.assert_allclose(areas.reshape(3, 3), np.tile((32 * np.array(config.scales)) ** 2,
                                                              (3, 1)), rtol=1e-5)


def test_encode_known_deltas():
    anchor = np.array([10, 20, 30, 60], np.float32)   # centre (20, 40), h 20, w 40
    box = np.array([12, 24, 52, 64], np.float32)      # centre (32, 44), h 40, w 40
    deltas = encode_boxes(box, anchor)
    np.testing.assert_allclose(
        deltas, [12 / 20 / 0.1, 4 / 40 / 0.1, math.log(2) / 0.2, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(encode_boxes(anchor, anchor), np.zeros(4, np.float32))


def test_encode_then_decode_returns_the_boxes():
    rng = np.random.default_rng(1)
    anchors = generate_anchors(AnchorConfig(), (64, 64))
    top_left = rng.uniform(0, 50, size=(len(anchors), 2))
    size = rng.uniform(2, 60, size=(len(anchors), 2))
    boxes = np.concatenate([top_left, top_left + size], axis=1).astype(np.float32)
    np.testing.assert_allclose(decode_boxes(encode_boxes(boxes, anchors), anchors), boxes,
                               atol=1e-3)


def test_decode_clamps_huge_size_deltas():
    anchor = np.array([0, 0, 16, 16], np.float32)
    boxes = decode_boxes(np.array([0, 0, 1e6, 1e6], np.float32), anchor)
    assert np.all(np.isfinite(boxes))


def test_box_iou_by_hand():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1, 25 / 175, 0], [0, 0, 0]], rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"strides": (8, 4)}, "ascending"),
    ({"scales": (0.0,)}, "scales must be positive"),
    ({"size_factor": -1}, "size_factor"),
])
def test_bad_anchor_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AnchorConfig(**kwargs)


def test_anchor_config_round_trip():
    config = AnchorConfig(strides=(8, 16), scales=(1.0,), ratios=(1.0, 2.0), size_factor=3)
    assert AnchorConfig.from_dict(config.to_dict()) == config


def test_size_not_multiple_of_stride_is_rejected():
    with pytest.raises(ConfigError, match="not a multiple of anchor stride 16"):
        generate_anchors(AnchorConfig(), (64, 72))


def test_clip_boxes_by_hand():
    from retinaunet_deploy.model.boxes import clip_boxes

    boxes = np.array([[-5, 2, 40, 30], [10, -1, 12, 50], [50, 50, 60, 60]], np.float32)
    clipped = clip_boxes(boxes, (32, 48))
    np.testing.assert_array_equal(clipped, [[0, 2, 32, 30], [10, 0, 12, 48], [32, 48, 32, 48]])
    assert clipped.dtype == np.float32
