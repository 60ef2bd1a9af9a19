"""compare(): a pure function of outputs; Targets gate masks and detections."""

import numpy as np
import pytest

from retinaunet_deploy.compare import Agreement, Targets, compare, match_detections
from retinaunet_deploy.postprocess import Detections
from retinaunet_deploy.runtime.predictor import Prediction

NAMES = ["background", "disk", "ring"]


def _predictions(masks, k=3):
    """Per-image predictions (probabilities one-hot) of masks of any sizes."""
    return [Prediction(m, None, np.eye(k, dtype=np.float32)[m]) for m in masks]


def test_identical_outputs_agree_exactly_on_images_of_different_sizes():
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, (8, 8)), rng.integers(0, 3, (5, 12))]
    result = compare(_predictions(masks), _predictions(masks), NAMES)
    assert result.images == 2
    assert result.pixel_agreement == 1.0 and result.mean_dice_vs_reference == 1.0
    assert result.max_abs_prob_diff == 0.0 and result.passed and result.failures == []


def test_mismatched_sizes_are_refused():
    with pytest.raises(ValueError, match=r"image 0: mask shapes differ"):
        compare(_predictions([np.zeros((4, 4), int)]), _predictions([np.zeros((4, 5), int)]),
                NAMES)


def test_disagreement_by_hand():
    reference = np.zeros((4, 4), int)
    reference[:2, :2] = 1               # 4 disk pixels
    candidate = reference.copy()
    candidate[0, 0] = 0                 # one disk pixel lost
    result = compare(_predictions([reference]), _predictions([candidate]), NAMES)
    assert result.pixel_agreement == 15 / 16
    assert result.dice_vs_reference["disk"] == round(2 * 3 / (3 + 4), 5)
    assert not result.passed and result.failures[0].startswith("pixel agreement 93.7500%")


def _dets(boxes, scores, classes):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4),
                      np.asarray(scores, np.float32), np.asarray(classes, np.int32))


def test_match_detections_counts_confident_boxes_only():
    reference = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.8, 0.3],
                      [0, 1, 0])
    candidate = _dets([[0, 0, 10, 12], [20, 20, 30, 30]], [0.95, 0.4], [0, 1])
    ious, confident = match_detections(reference, candidate, 0.5)
    assert confident == 2  # the 0.3 reference box is not confident
    assert ious == [pytest.approx(10 * 10 / (10 * 12))]  # the 0.4 candidate box is not either


def test_detection_targets_fail_a_mask_perfect_variant():
    agreement = Agreement(images=1, pixel_agreement=1.0, dice_vs_reference={"disk": 1.0},
                          mean_dice_vs_reference=1.0, mean_abs_prob_diff=0.0,
                          max_abs_prob_diff=0.0,
                          detections={"matched_fraction": 0.5, "map@0.1_diff": -0.14},
                          targets=Targets())
    assert agreement.failures == ["confident boxes matched 50.0% < 95%",
                                  "AP@0.1 drop 0.140 > 0.02"]
    assert not agreement.passed
    lenient = Targets(matched_fraction=0.5, max_ap_drop=0.2)
    assert Agreement(**{**agreement.__dict__, "targets": lenient}).passed
