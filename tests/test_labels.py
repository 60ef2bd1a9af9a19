"""Labels that say what they are (issue 19, inputs 1 and 2).

Mask values must be the classes 0..K-1: a 0/255 binary mask or a 255 void border
is refused in one line naming the file, the values and the fix, or read through
``--label-map`` / ``--ignore-index`` (recorded in the card, applied wherever ground
truth is read). A class absent from truth and prediction is n/a, never 1.0. Data
without foreground is refused before training; nothing NaN reaches a card.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from retinaunet_deploy.card import VOID_LABEL, Labels, ModelCard, load_card
from retinaunet_deploy.cli import cli
from retinaunet_deploy.errors import ArtifactError, ConfigError, DataError
from retinaunet_deploy.train import TrainOptions, train

TINY = {"preset": "tiny", "size": 64, "epochs": 2, "steps_per_epoch": 3, "batch_size": 4}
TINY_ARGS = ["--preset", "tiny", "--size", "64", "--epochs", "2", "--steps-per-epoch", "3",
             "--batch-size", "4"]


def disks_folder(root, count=10, size=96, value=255, border=0, empty=(), seed=0,
                 dtype=np.uint8):
    """`count` noisy size x size PNGs with 2-3 bright disks each; masks hold `value` on the
    disks (with `border`: 1 on the disks and a `border`-px ring of 255 around them, as a
    VOC void border); the images numbered in `empty` have no disk and an all-zero mask."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        image = rng.normal(60, 10, (size, size))
        mask = np.zeros((size, size), dtype)
        for _ in range(0 if i in empty else int(rng.integers(2, 4))):
            cy, cx = rng.integers(16, size - 16, 2)
            distance = np.hypot(yy - cy, xx - cx)
            radius = int(rng.integers(7, 12))
            image[distance <= radius] += 100
            if border:
                mask[(distance <= radius + border) & (mask == 0)] = 255
            mask[distance <= radius] = 1 if border else value
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            root / "images" / f"{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.png")
    return root


def strict_json(path):
    """Parse as a strict parser does (Node's JSON.parse): NaN and Infinity are errors."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _one_line_refusal(args, *expected):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    for text in expected:
        assert text in result.output, (text, result.output)
    return result.output


# === Input 1: binary masks stored as 0/255 ===

def test_binary_0_255_masks_are_refused_in_one_line_naming_the_fix(tmp_path):
    data = disks_folder(tmp_path / "data")
    _one_line_refusal(["train", "--data", data, "--out", tmp_path / "run", *TINY_ARGS],
                      f"mask {data}/masks/", "has values [0, 255]",
                      "class 1 never occurs in the dataset", "--label-map 255:1")
    assert not (tmp_path / "run").exists()          # refused before any training


def test_a_label_map_trains_two_classes_and_the_mean_is_not_inflated(tmp_path):
    from retinaunet_deploy.data.splits import load_split

    data, run = disks_folder(tmp_path / "data"), tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--data", str(data), "--out", str(run),
                                      "--label-map", "255:1", *TINY_ARGS])
    assert result.exit_code == 0, result.output
    card = load_card(run)
    assert card.class_names == ("background", "class_1")
    assert card.det_class_names == ("class_1",) and card.builder["num_classes"] == 2
    assert card.labels == Labels({255: 1}) and card.labels.void is None
    assert strict_json(run / "model_card.json")["labels"] == {"map": {"255": 1},
                                                              "ignore_index": None}
    strict_json(run / "manifest.json")
    evaluation = card.evaluation
    assert set(evaluation["dice"]) == {"class_1"}
    assert evaluation["mean_dice"] == evaluation["dice"]["class_1"]   # one class, its mean
    # Later stages read the masks through the recorded map.
    assert all(set(np.unique(s.mask)) <= {0, 1} for s in load_split(card, "test"))
    assert card.training["best_epoch"] >= 1 and card.training["best_val_score"] is not None
    assert not any("--label-map" in w for w in card.warnings)    # its entry mapped 255
    # The same scenes stored as 0/1 train the same model to the same figures; the map's
    # entry now matches no stored value: said, naming the entry.
    same = train(TrainOptions(data=str(disks_folder(tmp_path / "data01", value=1)),
                              label_map={255: 1}, **TINY), tmp_path / "run01", verbose=0)
    assert same.evaluation == evaluation
    assert same.training["history"] == card.training["history"]
    assert any(w.startswith("--label-map 255:1: no mask holds the stored value 255")
               for w in same.warnings), same.warnings


def test_sixteen_bit_masks_beyond_a_uint8_class_name_the_map(tmp_path):
    data = disks_folder(tmp_path / "data", count=4, value=65535, dtype=np.uint16)
    with pytest.raises(DataError, match=r"has class value 65535; at most 256 classes .*values "
                                        r"found: \[0, 65535\]\); map them with --label-map "
                                        r"65535:1$"):
        train(TrainOptions(data=str(data), **TINY), tmp_path / "run", verbose=0)


# === A VOC-style 255 void border ===

def test_a_void_border_is_refused_then_left_out_with_ignore_index(tmp_path):
    from retinaunet_deploy.data.splits import load_split
    from retinaunet_deploy.judge.ground_truth import evaluate_predictions

    data = disks_folder(tmp_path / "data", border=2)
    _one_line_refusal(["train", "--data", data, "--out", tmp_path / "no", *TINY_ARGS],
                      "has values [0, 1, 255]", "--ignore-index 255", "--label-map 255:2")
    card = train(TrainOptions(data=str(data), ignore_index=255, **TINY), tmp_path / "run",
                 verbose=0)
    assert card.class_names == ("background", "class_1") and card.labels.ignore_index == 255
    assert load_card(tmp_path / "run").to_dict()["labels"] == {"map": {}, "ignore_index": 255}
    assert card.det_class_names == ("class_1",)
    samples = load_split(card, "test")
    for sample in samples:
        void = sample.mask == VOID_LABEL
        assert void.any() and set(np.unique(sample.mask)) == {0, 1, VOID_LABEL}
        assert not sample.instances[void].any()            # void belongs to no object
    # Every later stage reads the masks through the same rules: held-out sets (evaluation,
    # bench), their ground-truth boxes (gates) and calibration patches.
    from retinaunet_deploy.data.splits import calibration_images, held_out_set
    from retinaunet_deploy.judge.ground_truth import sample_truths

    held_out = held_out_set(card, 8)
    assert [s.name for s in held_out] == [s.name for s in samples]
    assert all((s.mask == VOID_LABEL).any() for s in held_out)
    assert all(set(classes.tolist()) <= {0} for _, classes in sample_truths(held_out))
    assert sum(len(classes) for _, classes in sample_truths(held_out)) >= 2 * len(held_out)
    assert calibration_images(card, 4).shape == (4, 64, 64, 1)
    # Void pixels count in no figure: predicting them as anything scores the same.
    perfect = [SimpleNamespace(mask=np.where(s.mask == VOID_LABEL, 1, s.mask).astype(np.uint8),
                               detections=None) for s in samples]
    report = evaluate_predictions(perfect, samples, card.class_names)
    assert report["dice"] == {"class_1": 1.0} and report["mean_dice"] == 1.0
    strict_json(tmp_path / "run" / "model_card.json")


def test_the_mask_loss_leaves_void_pixels_out():
    from retinaunet_deploy.model.losses import MaskLoss

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, (2, 8, 8)).astype(np.int32)
    truth[:, :2] = VOID_LABEL
    probs = rng.dirichlet([1, 1], (2, 8, 8)).astype(np.float32)
    other = probs.copy()
    other[:, :2] = probs[:, :2, :, ::-1]                    # differ only on void pixels
    loss = MaskLoss(2, ignore=VOID_LABEL)
    assert float(loss(truth, probs)) == pytest.approx(float(loss(truth, other)), rel=1e-6)
    assert np.isfinite(float(loss(truth, probs)))
    plain = np.where(truth == VOID_LABEL, 0, truth)
    assert float(MaskLoss(2)(plain, probs)) != pytest.approx(float(MaskLoss(2)(plain, other)))


# === Input 2: no foreground at all ===

def test_a_dataset_without_foreground_is_refused_before_training(tmp_path):
    data = disks_folder(tmp_path / "data", count=8, value=1, empty=range(8))
    _one_line_refusal(["train", "--data", data, "--out", tmp_path / "run", *TINY_ARGS],
                      f"no mask in {data}/masks has a foreground pixel")
    assert not (tmp_path / "run").exists()


def test_a_training_split_without_foreground_is_refused(tmp_path):
    data = disks_folder(tmp_path / "data", count=6, value=1, empty=(3, 4, 5))
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": ["03.png", "04.png"], "val": ["00.png"],
                                  "test": ["01.png", "02.png", "05.png"]}))
    with pytest.raises(DataError, match=r"the training split of .*data \(2 image\(s\)\) has no "
                                        r"mask with a foreground pixel.*--splits FILE"):
        train(TrainOptions(data=str(data), splits=str(splits), **TINY), tmp_path / "run",
              verbose=0)


def test_validation_and_test_splits_without_foreground_give_null_with_a_reason(tmp_path):
    data = disks_folder(tmp_path / "data", count=6, value=1, empty=(3, 4, 5))
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": ["00.png", "01.png", "02.png"],
                                  "val": ["03.png", "04.png"], "test": ["05.png"]}))
    card = train(TrainOptions(data=str(data), splits=str(splits), ignore_index=200, **TINY),
                 tmp_path / "run", verbose=0)
    assert any("--ignore-index 200: no mask holds that value" in w for w in card.warnings)
    written = strict_json(tmp_path / "run" / "model_card.json")      # no NaN anywhere
    strict_json(tmp_path / "run" / "manifest.json")
    training = written["training"]
    assert training["best_epoch"] is None and training["best_val_score"] is None
    assert "no foreground pixel" in training["best_epoch_reason"]
    evaluation = written["evaluation"]
    assert evaluation["map@0.1"] is None and evaluation["map@0.1_reason"]
    if evaluation["mean_dice"] is None:                # nothing predicted either: n/a
        assert evaluation["mean_dice_reason"] and evaluation["absent_classes"] == ["class_1"]
    else:                                              # something predicted: a real 0
        assert evaluation["mean_dice"] == 0.0
    assert any("validation split has no foreground" in w for w in card.warnings)
    assert any("test split has no foreground" in w for w in card.warnings)


# === The n/a rule and the label rules, as units ===

def test_a_class_absent_from_truth_and_prediction_is_left_out_of_the_mean():
    from retinaunet_deploy.judge.ground_truth import evaluate_predictions
    from retinaunet_deploy.judge.metrics import defined_mean, dice_per_class, iou_per_class

    truth = np.array([[0, 1, 1, 0]])
    pred = np.array([[0, 1, 0, 0]])
    dice = dice_per_class(pred, truth, 4)
    assert dice[1] == pytest.approx(2 / 3) and np.isnan(dice[2]) and np.isnan(dice[3])
    assert np.isnan(iou_per_class(pred, truth, 4)[3])
    assert defined_mean(dice[1:]) == pytest.approx(2 / 3)          # not (2/3 + 1 + 1) / 3
    assert defined_mean([np.nan, np.nan]) is None
    # Predicted but absent from truth: a real 0, counted.
    assert dice_per_class(np.array([[2]]), np.array([[0]]), 3)[2] == 0.0
    # Today's 0/255 reading: 256 classes, 254 never occurring; the mean is class 1's alone.
    names = ["background"] + [f"class_{c}" for c in range(1, 256)]
    sample = SimpleNamespace(mask=truth.astype(np.uint8), instances=np.zeros_like(truth))
    report = evaluate_predictions([SimpleNamespace(mask=pred, detections=None)], [sample],
                                  names)
    assert report["mean_dice"] == round(2 / 3, 4) and report["dice"]["class_2"] is None
    assert len(report["absent_classes"]) == 254 and report["absent_reason"]
    json.dumps(report, allow_nan=False)
    # Nothing in either: null with a reason, never NaN.
    empty = evaluate_predictions([SimpleNamespace(mask=np.zeros((2, 2), np.uint8),
                                                  detections=None)],
                                 [SimpleNamespace(mask=np.zeros((2, 2), np.uint8))],
                                 ["background", "x"])
    assert empty["mean_dice"] is None and empty["mean_dice_reason"]
    json.dumps(empty, allow_nan=False)


def test_label_map_entries_matching_no_stored_value_are_named(tmp_path):
    from retinaunet_deploy.data.labels import label_map_warnings

    data = disks_folder(tmp_path / "data", count=3)                    # masks of 0 and 255
    description = {"kind": "folder", "path": str(data),
                   "splits": {"train": [["00.png", "-"], ["01.png", "-"]],
                              "test": [["02.png", "-"]]}}
    warnings = label_map_warnings(description, Labels({255: 1, 128: 2, 7: 3}))
    assert warnings == [
        f"--label-map {v}:{c}: no mask holds the stored value {v}, so the entry maps nothing "
        f"(stored values found: [0, 255]); check the value" for v, c in ((7, 3), (128, 2))]
    assert label_map_warnings(description, Labels({255: 1})) == []
    assert label_map_warnings(description, Labels()) == []            # no map: not read
    assert label_map_warnings({"kind": "synthetic"}, Labels({9: 1})) == []


def test_out_of_range_classes_are_an_error_not_another_cell():
    from retinaunet_deploy.judge.metrics import confusion_counts

    with pytest.raises(ValueError, match="truth holds class 255 outside 0..1"):
        confusion_counts(np.zeros(3), np.array([0, 1, 255]), 2)
    counts = confusion_counts(np.array([1, 1, 1]), np.array([0, 1, 255]), 2, ignore=255)
    assert counts.tolist() == [[0, 1], [0, 1]]


def test_label_rules_options_and_card_section():
    from retinaunet_deploy.label_rules import parse_label_map

    assert parse_label_map("255:1") == {255: 1}
    assert parse_label_map("128:1, 255:2") == {128: 1, 255: 2}
    assert parse_label_map(None) == {}
    with pytest.raises(ConfigError, match=r"entry '255' is not STORED:CLASS"):
        parse_label_map("255")
    with pytest.raises(ConfigError, match="maps 255 twice"):
        parse_label_map("255:1,255:2")
    with pytest.raises(ConfigError, match="--ignore-index 255 is also mapped"):
        TrainOptions(label_map={255: 1}, ignore_index=255)
    with pytest.raises(ConfigError, match="classes are 0..254"):
        Labels({1: 255})
    with pytest.raises(ConfigError, match="--data synthetic makes its masks as classes"):
        from retinaunet_deploy.train import load_splits

        load_splits(TrainOptions(label_map={255: 1}))
    assert Labels({255: 1}).describe() == "--label-map 255:1"
    assert Labels.from_dict(Labels({255: 1}, 254).to_dict()) == Labels({255: 1}, 254)
    # A card without the section reads masks as stored; with it, it round-trips exactly.
    minimal = {"card_version": 1, "builder": {"depth": 4, "input_shape": [32, 32, 1]},
               "class_names": ["background", "x"], "input": {"channels": 1},
               "normalization": {}}
    card = ModelCard.from_dict(minimal)
    assert card.labels == Labels() and "labels" not in card.to_dict()
    labelled = {**minimal, "labels": {"map": {"255": 1}, "ignore_index": None}}
    assert ModelCard.from_dict(labelled).to_dict() == labelled
    with pytest.raises(ArtifactError, match="malformed 'labels' section"):
        ModelCard.from_dict({**minimal, "labels": {"map": {"x": 1}}})


def test_a_detection_class_the_model_lacks_is_an_error_not_a_shifted_one_hot():
    from retinaunet_deploy.data.targets import match_anchors

    box = np.array([[0, 0, 10, 10]], np.float32)
    cls_target, _ = match_anchors(box, np.array([0]), box, 1)
    assert cls_target.tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match=r"detection class 254 outside 0..0"):
        match_anchors(box, np.array([254]), box, 1)
