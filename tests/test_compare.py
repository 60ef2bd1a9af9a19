"""compare(): a pure function of outputs; Targets gate masks and detections."""

import json

import numpy as np
import pytest

from retinaunet_deploy.judge.agreement import Agreement, compare, match_detections
from retinaunet_deploy.judge.targets import Targets
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


def test_a_class_in_neither_mask_is_left_out_of_the_mean_dice_not_counted_as_one():
    # "ring" (class 2) occurs in neither mask: its Dice is undefined, not 1.0.
    reference = [np.array([[0, 1, 1, 0]])]
    candidate = [np.array([[0, 1, 0, 0]])]
    result = compare(_predictions(reference), _predictions(candidate), NAMES, intervals=True)
    assert result.dice_vs_reference["disk"] == round(2 / 3, 5)
    assert np.isnan(result.dice_vs_reference["ring"])
    assert result.mean_dice_vs_reference == pytest.approx(2 / 3)    # not (2/3 + 1) / 2
    assert result.intervals["mean_dice_vs_reference"] == pytest.approx([2 / 3, 2 / 3])
    written = result.to_dict()
    assert written["dice_vs_reference"] == {"disk": round(2 / 3, 5), "ring": None}
    assert "ring" in written["dice_vs_reference_reason"]
    json.dumps(written, allow_nan=False)
    # No foreground class in either mask: the mean is undefined (null with a reason, "n/a"),
    # and an undefined figure misses no target.
    blank = [np.zeros((4, 4), int)]
    result = compare(_predictions(blank), _predictions(blank), NAMES, intervals=True)
    assert np.isnan(result.mean_dice_vs_reference) and result.passed
    assert "Dice vs float n/a" in result.summary()
    written = result.to_dict()
    assert written["mean_dice_vs_reference"] is None
    assert written["mean_dice_vs_reference_reason"]
    assert written["dice_vs_reference"] == {"disk": None, "ring": None}
    json.dumps(written, allow_nan=False)


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
    assert agreement.failures == ["confident boxes matched (IoU >= 0.5) 50.0% < 95%",
                                  "AP@0.1 drop 0.140 > 0.02"]
    assert not agreement.passed
    lenient = Targets(matched_fraction=0.5, max_ap_drop=0.2)
    assert Agreement(**{**agreement.__dict__, "targets": lenient}).passed


def _with_boxes(boxes, classes, scores=None):
    masks = [np.zeros((64, 64), int)]
    scores = np.full(len(classes), 0.9) if scores is None else scores
    return [Prediction(masks[0], _dets(boxes, scores, classes),
                       np.eye(3, dtype=np.float32)[masks[0]])]


def test_boxes_drifted_to_iou_0_3_do_not_match_and_fail_the_gate():
    reference = _with_boxes([[10, 10, 30, 30], [40, 40, 60, 60]], [0, 1])
    # Each box shifted 10.77 px along x: IoU 9.23*20 / (2*400 - 9.23*20) = 0.30.
    drifted = _with_boxes([[10, 20.77, 30, 40.77], [40, 50.77, 60, 70.77]], [0, 1])
    result = compare(reference, drifted, NAMES)
    assert result.detections["matched_fraction"] == 0.0
    assert result.detections["match_iou"] == 0.5
    assert not result.passed
    assert "confident boxes matched (IoU >= 0.5) 0.0% < 95%" in result.failures
    # Any-overlap matching (the old rule) would have called both boxes matched.
    loose = compare(reference, drifted, NAMES, targets=Targets(match_iou=0.0))
    assert loose.detections["matched_fraction"] == 1.0
    assert loose.detections["mean_matched_iou"] == pytest.approx(0.3, abs=0.01)


def test_detection_classes_come_from_the_model_not_the_mask_classes():
    """Three detection classes on a model with three mask classes (K - 1 = 2)."""
    truths = [(np.array([[10, 10, 30, 30], [40, 40, 60, 60]], np.float32), np.array([0, 2]))]
    reference = _with_boxes([[10, 10, 30, 30], [40, 40, 60, 60]], [0, 2])
    missing = _with_boxes([[10, 10, 30, 30]], [0])
    full = compare(reference, reference, NAMES, truths, num_det_classes=3)
    assert full.detections["map@0.1"] == 1.0
    lost = compare(reference, missing, NAMES, truths, num_det_classes=3)
    # Class 2's AP falls from 1 to 0: the mean over 2 classes with boxes drops by 0.5.
    assert lost.detections["map@0.1_diff"] == pytest.approx(-0.5)
    assert lost.detections["matched_fraction"] == 0.5


def test_bootstrap_intervals_bracket_the_figure_and_narrow_with_more_images():
    rng = np.random.default_rng(1)

    def noisy(count):
        masks = [rng.integers(0, 3, (16, 16)) for _ in range(count)]
        flipped = [np.where(rng.random(m.shape) < rng.uniform(0, 0.02), (m + 1) % 3, m)
                   for m in masks]
        return compare(_predictions(masks), _predictions(flipped), NAMES, intervals=True)

    few, many = noisy(8), noisy(128)
    for result in (few, many):
        low, high = result.intervals["pixel_agreement"]
        assert low <= result.pixel_agreement <= high < 1.0
        low, high = result.intervals["mean_dice_vs_reference"]
        assert low <= result.mean_dice_vs_reference <= high
    width = lambda r: np.subtract(*r.intervals["pixel_agreement"][::-1])
    assert width(many) < width(few)
    assert not compare(_predictions([np.zeros((4, 4), int)]),
                       _predictions([np.zeros((4, 4), int)]), NAMES).intervals


def test_a_pass_whose_interval_reaches_past_the_target_is_reported():
    # 7 images agree perfectly, 1 image agrees on 75% of its pixels: the point figure
    # (96.9%) passes a 96% target, but resamples heavy in the bad image do not.
    masks = [np.zeros((8, 8), int) for _ in range(8)]
    bad = [m.copy() for m in masks]
    bad[0][:2] = 1
    result = compare(_predictions(masks), _predictions(bad), NAMES,
                     targets=Targets(pixel_agreement=0.96, mean_dice_vs_reference=0.0),
                     intervals=True)
    assert result.passed
    assert result.intervals["pixel_agreement"][0] < 0.96
    assert any(f.startswith("pixel agreement 95% interval starts at") for f in
               result.interval_failures)
    assert result.to_dict()["interval_failures"] == result.interval_failures


def test_intervals_cover_box_matching_and_ap():
    truths = [(np.array([[10, 10, 30, 30]], np.float32), np.array([0]))] * 6
    reference = _with_boxes([[10, 10, 30, 30]], [0]) * 6
    candidate = _with_boxes([[10, 10, 30, 30]], [0]) * 5 + _with_boxes([[50, 50, 60, 60]], [0])
    result = compare(reference, candidate, NAMES, truths, intervals=True)
    low, high = result.intervals["matched_fraction"]
    assert result.detections["matched_fraction"] == pytest.approx(5 / 6)
    assert low < 5 / 6 <= high == 1.0
    low, high = result.intervals["map@0.1_diff"]
    assert low <= result.detections["map@0.1_diff"] <= high <= 0.0
