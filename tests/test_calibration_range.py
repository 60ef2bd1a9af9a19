"""The out-of-calibration guard (`runtime.calibration_range`), on the tiny calibrated run.

Issue 19, input 9: the recommended INT8 file agreed 99.75% with the float model on
test-like images but 96.2% on the same images 90 grey levels brighter, and nothing
warned at prediction time. `calibrate` now records the calibration images'
intensity statistics (calibration.json and the INT8 ONNX metadata) and
`CalibrationRange.check` warns per image outside them.
"""

import json
import shutil

import numpy as np
import pytest

from retinaunet_deploy.data.splits import held_out_set, load_split
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.runtime.calibration_range import (
    METADATA_KEY,
    STATISTICS,
    CalibrationRange,
    image_statistics,
    intensity_record,
    margin_factor,
)
from retinaunet_deploy.strict_json import loads_strict


def _metadata(path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}


@pytest.fixture(scope="module")
def calibrated(tiny_calibrated):
    from retinaunet_deploy.card import load_card

    run, report = tiny_calibrated
    return run, report, load_card(run)


def test_calibrate_records_the_range_in_calibration_json_and_the_int8_files(calibrated):
    run, report, _ = calibrated
    record = loads_strict((run / "calibration.json").read_text())["calibration_data"]["intensity"]
    assert record == report["calibration_data"]["intensity"]
    assert record["images"] == 16 and record["split"] == "train"
    assert record["image_size"] == [64, 64] and record["pixel_max"] == 255
    for name in ("mean", "p1", "p99"):
        figures, (low, high) = record["statistics"][name], record["allowed"][name]
        assert figures["min"] <= figures["mean"] <= figures["max"]
        assert low == pytest.approx(figures["min"] - figures["margin"])
        assert high == pytest.approx(figures["max"] + figures["margin"])
        assert figures["margin"] >= 0.005 * 255
    for name in ("model.int8.onnx", "model.int8.cpu.onnx"):
        if (run / name).exists():
            assert loads_strict(_metadata(run / name)[METADATA_KEY]) == record, name
    assert METADATA_KEY not in _metadata(run / "model.onnx")
    assert METADATA_KEY not in _metadata(run / "model.fp16.onnx")


def test_for_artifact_finds_the_record_or_says_there_is_none(calibrated, tmp_path):
    run, _, _ = calibrated
    from_file = CalibrationRange.for_artifact(run / "model.int8.onnx")
    assert from_file.source.endswith("model.int8.onnx metadata") and from_file.images == 16
    for name in ("model.onnx", "model.fp16.onnx", "model.keras"):
        assert CalibrationRange.for_artifact(run / name) is None, name
    if (run / "model.int8.tflite").exists():  # no metadata: the calibration.json beside it
        beside = CalibrationRange.for_artifact(run / "model.int8.tflite")
        assert beside.source.endswith("calibration.json") and beside.allowed == from_file.allowed
    # A copied file keeps its record, whatever its name.
    shutil.copyfile(run / "model.int8.onnx", tmp_path / "shipped.onnx")
    assert CalibrationRange.for_artifact(tmp_path / "shipped.onnx").allowed == from_file.allowed


def test_an_int8_file_without_the_record_falls_back_to_calibration_json(calibrated, tmp_path):
    import onnx

    run, _, _ = calibrated
    proto = onnx.load(run / "model.int8.onnx")
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    alone = tmp_path / "alone"
    alone.mkdir()
    onnx.save(proto, alone / "old.onnx")       # Q/DQ nodes, no name, no record, nothing beside
    assert CalibrationRange.for_artifact(alone / "old.onnx") is None
    shutil.copyfile(run / "calibration.json", alone / "calibration.json")
    fallback = CalibrationRange.for_artifact(alone / "old.onnx")
    assert fallback.source.endswith("calibration.json")
    report = json.loads((alone / "calibration.json").read_text())
    report["calibration_data"]["intensity"]["allowed"].pop("p99")
    (alone / "calibration.json").write_text(json.dumps(report))
    with pytest.raises(ArtifactError, match=r"calibration.json: the calibration range record is "
                                            r"corrupt .*re-run 'retinaunet-deploy calibrate'"):
        CalibrationRange.for_artifact(alone / "old.onnx")


def _brighter(image, levels=90):
    return np.clip(image.astype(np.int32) + levels, 0, 255).astype(np.uint8)


def test_images_90_grey_levels_brighter_are_flagged_and_test_like_ones_are_not(calibrated):
    """The tiny run's 16 calibration patches come from its 16 training images, whose
    brightness spans less than its test images' does: a test image is "like" them when
    each statistic lies within the training images' own range."""
    run, _, card = calibrated
    guard = CalibrationRange.for_artifact(run / "model.int8.onnx")
    training = [s.image for s in load_split(card, "train")]
    assert [guard.check(image) for image in training] == [None] * len(training)
    spans = {name: (min(s[name] for s in stats), max(s[name] for s in stats))
             for stats in [[image_statistics(image) for image in training]] for name in STATISTICS}
    tests = [s.image for s in held_out_set(card, 32)]
    like = [image for image in tests if all(
        spans[name][0] <= value <= spans[name][1] for name, value in image_statistics(image).items())]
    assert len(like) >= 8
    assert [guard.check(image) for image in like] == [None] * len(like)
    # 90 grey levels brighter: every training image, and most test images (the darkest
    # test images, brightened, can look like the brightest training images).
    assert all(guard.check(_brighter(image)) for image in training)
    flagged = [w for w in (guard.check(_brighter(image)) for image in tests) if w is not None]
    assert len(flagged) >= 0.75 * len(tests), f"{len(flagged)} of {len(tests)}"
    line = flagged[0]
    assert "\n" not in line
    assert " is outside " in line and "the range of the 16 INT8 calibration images" in line
    assert line.endswith("INT8 agreement was not measured on data like this image; compare "
                         "with model.onnx")


def test_the_margin_rule():
    assert margin_factor(128) == pytest.approx(0.506, abs=0.002)
    assert margin_factor(16) == pytest.approx(1.32, abs=0.01)
    assert margin_factor(100_000) == 0.0   # the observed extremes are already far out
    rng = np.random.default_rng(0)
    images = rng.normal(100, 5, (64, 32, 32, 1)) + rng.normal(0, 10, (64, 1, 1, 1))
    record = intensity_record(images, 255)
    guard = CalibrationRange.from_record(record, "test")
    low, high = guard.allowed["mean"]
    assert guard.check(np.full((40, 40), (low + high) / 2)) is None
    warning = guard.check(np.full((40, 40, 1), high + 1.0))
    assert warning.startswith(f"mean pixel value {high + 1:.1f} is outside {low:.1f}..{high:.1f}")
    assert "(and 2 more statistic(s))" in guard.check(np.full((40, 40), 250.0))  # p1, p99 too
    # A set of identical images still leaves rounding room: 0.5% of pixel_max.
    flat = CalibrationRange.from_record(intensity_record(np.full((8, 16, 16, 1), 50.0), 255), "")
    assert flat.check(np.full((16, 16), 51.0)) is None
    assert flat.check(np.full((16, 16), 52.0)) is not None
    # A large image is measured on a subsample of its pixels, with the same verdict.
    big = np.full((2048, 1024), (low + high) / 2, np.float32)
    assert guard.check(big) is None


@pytest.mark.parametrize("dtype,top", [(np.uint8, 256), (np.uint16, 65536), (np.uint8, 3)])
@pytest.mark.parametrize("size", [1, 2, 101, 4096])
def test_histogram_statistics_of_integer_images_equal_numpys(dtype, top, size):
    from retinaunet_deploy.runtime.calibration_range import image_statistics

    values = np.random.default_rng(size).integers(0, top, size).astype(dtype)
    expected = np.percentile(values.astype(np.float64), [1, 99])
    figures = image_statistics(values.reshape(1, -1))
    assert figures["p1"] == pytest.approx(expected[0], abs=1e-9)
    assert figures["p99"] == pytest.approx(expected[1], abs=1e-9)
    assert figures["mean"] == pytest.approx(values.mean(), rel=1e-12)
