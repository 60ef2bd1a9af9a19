"""Dice, IoU and AP on hand-made cases."""

import numpy as np
import pytest

from retinaunet_deploy.metrics import average_precision, dice_per_class, iou_per_class
from retinaunet_deploy.postprocess import Detections


def test_dice_and_iou_by_hand():
    truth = np.array([[0, 1, 1, 2]])
    pred = np.array([[0, 1, 2, 2]])
    # class 1: |P|=1, |T|=2, overlap 1 -> Dice 2/3, IoU 1/2; class 2: |P|=2, |T|=1 -> same.
    np.testing.assert_allclose(dice_per_class(pred, truth, 3), [1, 2 / 3, 2 / 3])
    np.testing.assert_allclose(iou_per_class(pred, truth, 3), [1, 0.5, 0.5])
    # An absent class in both is perfect, absent in one is zero.
    np.testing.assert_allclose(dice_per_class(np.zeros((2, 2)), np.zeros((2, 2)), 2), [1, 1])
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
