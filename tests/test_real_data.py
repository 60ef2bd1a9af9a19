"""Real data shipped in a wheel: StarDist's DSB 2018 nuclei image, as a folder dataset.

Trains `tiny` for a few steps on the crops (mixed sizes, none equal to the patch
size) through the CLI and predicts on the whole 512x512 image, another size.
"""

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from retinaunet_deploy.card import load_card
from retinaunet_deploy.cli import cli

# The dev extras install it, so CI runs these; a plain install may not have it.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("stardist") is None,
                                reason="StarDist (the realdata extra) is not installed")


def test_nuclei_instances_separate_touching_objects():
    from retinaunet_deploy.data.real import stardist_nuclei
    from retinaunet_deploy.data.sample import components_as_instances, instance_boxes

    image, instances = stardist_nuclei()
    assert image.shape == (512, 512, 1) and image.dtype == np.uint16
    mask = (instances > 0).astype(np.uint8)
    boxes, classes = instance_boxes(instances, mask)
    merged, _ = instance_boxes(components_as_instances(mask), mask)
    assert len(boxes) == len(np.unique(instances)) - 1 == 125
    assert len(merged) < len(boxes)          # touching nuclei merge without instance labels
    assert set(classes.tolist()) == {0}


def test_import_train_and_predict_on_a_whole_image_of_another_size(tmp_path):
    import tifffile

    from retinaunet_deploy.data.real import stardist_nuclei

    data, run = tmp_path / "nuclei", tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(cli, ["import-data", "stardist-nuclei", str(data)])
    assert result.exit_code == 0, result.output
    sizes = {tifffile.imread(p).shape for p in (data / "images").iterdir()}
    assert len(sizes) > 3 and all(h != w or h != 64 for h, w in sizes)
    assert len(list((data / "instances").iterdir())) == 9

    result = runner.invoke(cli, ["train", "--data", str(data), "--preset", "tiny", "--size", "64",
                                 "--epochs", "2", "--steps-per-epoch", "4", "--batch-size", "4",
                                 "--out", str(run)])
    assert result.exit_code == 0, result.output
    card = load_card(run)
    assert card.input.pixel_dtype == "uint16" and card.data["instances"]
    assert card.input.pixel_max == 65535
    assert sum(len(v) for v in card.data["splits"].values()) == 9
    assert any("only 1 image(s)" in w for w in card.warnings)   # said loudly
    assert "WARNING" in result.output

    # Export and calibrate through the CLI (the barely trained model is gated leniently).
    result = runner.invoke(cli, ["export", str(run), "--parity-images", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["calibrate", str(run), "--calibration-images", "16",
                                 "--target", "0.9", "--min-dice", "0.5", "--min-matched", "0",
                                 "--max-ap-drop", "1", "--no-fallback", "--no-cpu-variant"])
    assert result.exit_code == 0, result.output
    assert "1 whole test images" in result.output and "WARNING" in result.output
    report = json.loads((run / "calibration.json").read_text())
    assert report["evaluation"]["images"] == 1 and report["evaluation"]["warning"]

    image, _ = stardist_nuclei()
    tifffile.imwrite(tmp_path / "whole.tif", image[..., 0])
    result = runner.invoke(cli, ["predict", str(run / "model.int8.onnx"), str(tmp_path / "whole.tif"),
                                 "--out", str(tmp_path / "out"), "--score-threshold", "0.0"])
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "out" / "detections.json").read_text())["images"][
        str(tmp_path / "whole.tif")]
    assert entry["size"] == [512, 512]
    from PIL import Image

    assert np.asarray(Image.open(tmp_path / "out" / entry["mask"])).shape == (512, 512)
    for det in entry["detections"]:
        y1, x1, y2, x2 = det["box"]
        assert 0 <= y1 < y2 <= 512 and 0 <= x1 < x2 <= 512
