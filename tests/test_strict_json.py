"""Strict JSON everywhere: every JSON file and metadata string the toolkit writes parses
with a strict parser (no NaN or Infinity); an undefined figure is null with a reason.

Issue 19, input 2: a dataset without foreground wrote bare `NaN` into the card and the
manifest (Node's `JSON.parse` refuses it), and export copied it into the ONNX metadata.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from retinaunet_deploy.artifacts import write_json
from retinaunet_deploy.strict_json import dumps_json, loads_strict, null_figure, undefined_as_null


def _strict_files(folder: Path) -> list[Path]:
    """Parse every *.json and *.jsonl file under `folder` strictly; returns them."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix in (".json", ".jsonl"))
    for path in files:
        text = path.read_text()
        lines = text.splitlines() if path.suffix == ".jsonl" else [text]
        for line in filter(str.strip, lines):
            try:
                loads_strict(line)
            except ValueError as error:
                raise AssertionError(f"{path} is not strict JSON: {error}") from error
    return files


def _strict_onnx_metadata(path: Path) -> dict:
    import onnx

    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    for key in ("model_card", "calibration_range"):
        if key in props:
            loads_strict(props[key])
    return props


def test_write_json_refuses_nan_and_infinity_naming_where(tmp_path):
    target = tmp_path / "figures.json"
    for bad in (float("nan"), math.inf, -math.inf):
        with pytest.raises(ValueError, match=r"refusing to write .* at \['test'\]\['map@0.1'\]"):
            write_json(target, {"test": {"map@0.1": bad}})
        assert not target.exists()                   # nothing (not even a part) written
    with pytest.raises(ValueError, match=r"at \['rows'\]\[1\]"):
        dumps_json({"rows": [1.0, -math.inf]})
    write_json(target, {"test": {"map@0.1": None, "map@0.1_reason": "no objects"}})
    assert loads_strict(target.read_text())["test"]["map@0.1"] is None
    with pytest.raises(ValueError, match="bare NaN"):
        loads_strict('{"a": NaN}')


def test_undefined_figures_become_null_with_a_reason():
    record = {}
    null_figure(record, "map@0.1", float("nan"), "no ground-truth object")
    null_figure(record, "ratio", np.float64(0.25), "unused")
    assert record == {"map@0.1": None, "map@0.1_reason": "no ground-truth object", "ratio": 0.25}
    nested = undefined_as_null({"a": {"b": math.inf, "c": 1.0}, "d": [1.0, float("nan")]}, "why")
    assert nested == {"a": {"b": None, "b_reason": "why", "c": 1.0}, "d": [1.0, None],
                      "d_reason": "why"}


def test_figures_on_images_without_objects_are_null_with_a_reason():
    """AP on images without objects, and boxes matched when none is confident."""
    from retinaunet_deploy.judge.agreement import compare
    from retinaunet_deploy.judge.ground_truth import evaluate_predictions
    from retinaunet_deploy.postprocess import Detections
    from retinaunet_deploy.runtime.predictor import Prediction

    class Blank:
        mask = np.zeros((32, 32), np.uint8)
        instances = np.zeros((32, 32), np.uint16)

    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                       np.zeros(0, np.int64))
    probabilities = np.zeros((32, 32, 2), np.float32)
    probabilities[..., 0] = 1
    predictions = [Prediction(np.zeros((32, 32), np.uint8), empty, probabilities)] * 2
    report = evaluate_predictions(predictions, [Blank(), Blank()], ["background", "disk"], 1)
    assert report["objects"] == 0
    assert report["map@0.1"] is None and report["map@0.5"] is None
    assert report["map@0.1_reason"] == "no ground-truth object in these images"
    agreement = compare(predictions, predictions, ["background", "disk"],
                        truths=[(np.zeros((0, 4)), np.zeros(0, np.int64))] * 2, intervals=True)
    figures = agreement.to_dict()
    assert figures["detections"]["mean_matched_iou"] is None
    assert figures["detections"]["mean_matched_iou_reason"]
    assert figures["detections"]["map@0.1_diff"] is None and agreement.passed
    loads_strict(dumps_json(report))
    loads_strict(dumps_json(figures))
    nothing = compare([], [], ["background", "disk"]).to_dict()   # no image at all
    assert nothing["pixel_agreement"] is None and nothing["pixel_agreement_reason"]
    loads_strict(dumps_json(nothing))


@pytest.fixture(scope="module")
def pipeline(tiny_calibrated, tmp_path_factory):
    """The tiny run (trained, exported, calibrated) copied, benched into a bench folder,
    and predicted on two test images with its INT8 file: (run, bench, predict folders)."""
    from PIL import Image

    from retinaunet_deploy.bench.harness import BenchOptions, run_bench
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.data.splits import held_out_set
    from retinaunet_deploy.predict import predict_files

    root = tmp_path_factory.mktemp("strict")
    run = root / "run"
    shutil.copytree(tiny_calibrated[0], run)
    bench = root / "bench"
    run_bench(run, bench, BenchOptions(images=2, batch_sizes=(1,), rounds=2, min_seconds=0.0,
                                       peak=False, backends=("keras", "onnxruntime")))
    images = []
    for index, sample in enumerate(held_out_set(load_card(run), 2)):
        images.append(root / f"image{index}.png")
        Image.fromarray(sample.image[..., 0]).save(images[-1])
    predicted = root / "predicted"
    predict_files(run / "model.int8.onnx", images, predicted, threads=1)
    return run, bench, predicted


def test_every_json_the_pipeline_writes_is_strict(pipeline):
    run, bench, predicted = pipeline
    files = {p.relative_to(run).as_posix() for p in _strict_files(run)}
    assert {"model_card.json", "manifest.json", "calibration.json",
            "recommendation.json"} <= files
    assert any(name.startswith("reference/") for name in files)
    assert "report.json" in {p.name for p in _strict_files(bench)}
    assert "detections.json" in {p.name for p in _strict_files(predicted)}


def test_every_onnx_metadata_string_is_strict(pipeline):
    run, _, _ = pipeline
    onnx_files = sorted(run.glob("*.onnx"))
    assert {p.name for p in onnx_files} >= {"model.onnx", "model.fp16.onnx", "model.int8.onnx"}
    for path in onnx_files:
        assert "model_card" in _strict_onnx_metadata(path), path.name


def test_readers_show_a_null_figure(pipeline, tmp_path):
    """The manifest's headline, the bench table and the recommendation line read null."""
    from retinaunet_deploy.artifacts import headline_figure
    from retinaunet_deploy.bench.recommend import recommendation_line
    from retinaunet_deploy.bench.report import table_rows

    run, bench, _ = pipeline
    assert headline_figure({"figures": {"test": {"mean_dice": 0.5, "map@0.1": None}}}) == \
        "test Dice 0.5000, mAP@0.1 n/a"
    report = json.loads((bench / "report.json").read_text())
    for row in report["rows"]:
        row["ground_truth"].update({"map@0.1": None, "map@0.5": None})
    assert all(cells[8] == "—" for cells, row in zip(table_rows(report), report["rows"])
               if row["status"] == "ok")
    choice = json.loads((run / "recommendation.json").read_text())
    choice.update(speedup_vs_keras=None)
    assert "n/a x Keras" in recommendation_line(choice)
