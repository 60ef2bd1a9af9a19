"""Dice, IoU and AP on hand-made cases."""

import numpy as np
import pytest

from retinaunet_deploy.judge.metrics import average_precision, dice_per_class, iou_per_class
from retinaunet_deploy.postprocess import Detections


def test_dice_and_iou_by_hand():
    truth = np.array([[0, 1, 1, 2]])
    pred = np.array([[0, 1, 2, 2]])
    # class 1: |P|=1, |T|=2, overlap 1 -> Dice 2/3, IoU 1/2; class 2: |P|=2, |T|=1 -> same.
    np.testing.assert_allclose(dice_per_class(pred, truth, 3), [1, 2 / 3, 2 / 3])
    np.testing.assert_allclose(iou_per_class(pred, truth, 3), [1, 0.5, 0.5])
    # A class absent in both has no Dice (n/a: NaN, left out of means), absent in one is zero.
    np.testing.assert_allclose(dice_per_class(np.zeros((2, 2)), np.zeros((2, 2)), 2),
                               [1, np.nan])
    np.testing.assert_allclose(dice_per_class(np.ones((2, 2)), np.zeros((2, 2)), 2), [0, 0])


def _dets(boxes, scores, classes):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4),
                      np.asarray(scores, np.float32), np.asarray(classes, np.int32))


def test_ap_perfect_and_missed():
    truth = [(np.array([[0, 0, 10, 10]], np.float32), np.array([0]))]
    perfect = [_dets([[0, 0, 10, 10]], [0.9], [0])]
    assert average_precision(perfect, truth, 1, 0.5)[0] == pytest.approx(1.0)
    assert average_precision([_dets([], [], [])], truth, 1, 0.5)[0] == 0.0


def test_ap_with_a_false_positive_ranked_first():
    truth = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([0, 0]))]
    dets = [_dets([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7],
                  [0, 0, 0])]
    # precision at recall 0.5 is 1/2 and at recall 1.0 is 2/3 -> interpolated 2/3 both.
    assert average_precision(dets, truth, 1, 0.5)[0] == pytest.approx(2 / 3)


def test_ap_threshold_and_duplicates_and_missing_class():
    truth = [(np.array([[0, 0, 10, 10]], np.float32), np.array([0]))]
    loose = [_dets([[0, 0, 10, 4]], [0.9], [0])]   # IoU 0.4
    assert average_precision(loose, truth, 2, 0.1)[0] == pytest.approx(1.0)
    assert average_precision(loose, truth, 2, 0.5)[0] == 0.0
    assert np.isnan(average_precision(loose, truth, 2, 0.5)[1])  # class 1 has no truth
    twice = [_dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    assert average_precision(twice, truth, 1, 0.5)[0] == pytest.approx(1.0)  # dup is FP after


def test_ap_of_an_image_multiset_equals_ap_of_the_repeated_images():
    """The bootstrap weights images; that must equal scoring the images repeated."""
    from retinaunet_deploy.judge.metrics import ap_from_hits, detection_hits

    rng = np.random.default_rng(3)
    for _ in range(50):
        count = int(rng.integers(1, 6))
        dets, truths = [], []
        for _ in range(count):
            k, m = rng.integers(0, 8), rng.integers(0, 5)
            corner, size = rng.uniform(0, 50, (k, 2)), rng.uniform(5, 20, (k, 2))
            boxes = np.concatenate([corner, corner + size], 1).astype(np.float32)
            dets.append(_dets(boxes.tolist(), rng.uniform(0, 1, k).tolist(),
                              rng.integers(0, 2, k).tolist()))
            corner = rng.uniform(0, 50, (m, 2))
            truths.append((np.concatenate([corner, corner + 12], 1), rng.integers(0, 2, m)))
        weights = rng.integers(0, 3, count)
        if weights.sum() == 0:
            continue
        repeated = np.repeat(np.arange(count), weights)
        expected = average_precision([dets[i] for i in repeated],
                                     [truths[i] for i in repeated], 2, 0.1)
        weighted = ap_from_hits(detection_hits(dets, truths, 2, 0.1), weights[None])[0]
        np.testing.assert_allclose(weighted, expected, equal_nan=True)
