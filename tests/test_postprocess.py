"""Decoding and NMS on hand-made cases."""

import numpy as np
import pytest

from retinaunet_deploy.errors import InputError
from retinaunet_deploy.model.anchors import AnchorConfig, generate_anchors
from retinaunet_deploy.model.boxes import batched_nms, encode_boxes, nms
from retinaunet_deploy.postprocess import DetectionConfig, decode_detections, sigmoid


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = np.array([
        [0, 0, 10, 10],     # 0: best of group A
        [1, 1, 11, 11],     # 1: IoU 0.68 with 0 -> suppressed
        [0, 0, 10, 10.5],   # 2: IoU 0.95 with 0 -> suppressed
        [20, 20, 30, 30],   # 3: alone
        [0, 6, 10, 16],     # 4: IoU 0.25 with 0 -> kept
    ], np.float32)
    scores = np.array([0.9, 0.95, 0.5, 0.3, 0.8], np.float32)
    # 1 has the top score, so it is the one kept from group A; 0 overlaps it by 0.68.
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [1, 4, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.99), [1, 0, 4, 2, 3])  # by score


def test_nms_of_nothing():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).size == 0


def test_batched_nms_does_not_suppress_across_classes():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.6, 0.9, 0.7], np.float32)
    classes = np.array([0, 1, 0])
    np.testing.assert_array_equal(batched_nms(boxes, scores, classes, 0.5), [1, 2])


def test_sigmoid_is_stable_at_extremes():
    np.testing.assert_allclose(sigmoid(np.array([-1000, 0, 1000])), [0, 0.5, 1])


def _heads_for(boxes, classes, anchors, num_classes, score_logit=5.0):
    """Head outputs that put each box on its best anchor with a confident logit."""
    logits = np.full((1, len(anchors), num_classes), -10.0, np.float32)
    deltas = np.zeros((1, len(anchors), 4), np.float32)
    from retinaunet_deploy.model.boxes import box_iou

    for box, cls in zip(boxes, classes):
        best = int(np.argmax(box_iou(box[None], anchors)[0]))
        logits[0, best, cls] = score_logit
        deltas[0, best] = encode_boxes(box, anchors[best])
    return logits, deltas


def test_decode_recovers_boxes_and_classes():
    anchors = generate_anchors(AnchorConfig(), (64, 64))
    boxes = np.array([[5, 5, 20, 25], [30, 34, 60, 62]], np.float32)
    logits, deltas = _heads_for(boxes, [1, 0], anchors, num_classes=2)
    (detections,) = decode_detections(logits, deltas, anchors, (64, 64))
    assert len(detections) == 2
    np.testing.assert_allclose(np.sort(detections.boxes, axis=0), np.sort(boxes, axis=0),
                               atol=1e-3)
    by_class = dict(zip(detections.classes.tolist(), detections.boxes.tolist()))
    np.testing.assert_allclose(by_class[1], boxes[0], atol=1e-3)
    np.testing.assert_allclose(detections.scores, sigmoid(np.float32(5.0)), rtol=1e-6)


def test_decode_clips_to_image_and_respects_thresholds():
    anchors = generate_anchors(AnchorConfig(), (64, 64))
    boxes = np.array([[-10, -10, 20, 20], [30, 30, 50, 50]], np.float32)
    logits, deltas = _heads_for(boxes, [0, 0], anchors, num_classes=1)
    (dets,) = decode_detections(logits, deltas, anchors, (64, 64))
    assert dets.boxes.min() >= 0 and dets.boxes.max() <= 64
    one = decode_detections(logits, deltas, anchors, (64, 64), DetectionConfig(max_detections=1))
    assert len(one[0]) == 1
    none = decode_detections(logits, deltas, anchors, (64, 64),
                             DetectionConfig(score_threshold=0.999))
    assert len(none[0]) == 0


def test_decode_rejects_mismatched_anchors():
    anchors = generate_anchors(AnchorConfig(), (64, 64))
    with pytest.raises(InputError, match="disagree on N or A"):
        decode_detections(np.zeros((1, 10, 2)), np.zeros((1, 10, 4)), anchors, (64, 64))
    with pytest.raises(InputError, match=r"expected cls_logits \(N, A, C\)"):
        decode_detections(np.zeros((10, 2)), np.zeros((10, 4)), anchors, (64, 64))
