"""The stored float reference: one Keras run per model and image list, read by every stage."""

import json
import shutil

import numpy as np
import pytest

from retinaunet_deploy.bench.harness import BenchOptions, run_bench
from retinaunet_deploy.card import load_card
from retinaunet_deploy.data.splits import held_out_set
from retinaunet_deploy.judge import reference as reference_module
from retinaunet_deploy.judge.reference import float_reference

QUICK = BenchOptions(images=4, batch_sizes=(1,), rounds=1, min_seconds=0.0,
                     backends=("keras", "onnxruntime"), peak=False)


def test_calibrate_and_bench_read_one_stored_reference(tiny_calibrated, tmp_path, monkeypatch):
    run, report = tiny_calibrated
    key = json.loads((run / "reference" / "test.json").read_text())
    assert len(key["images"]) == report["evaluation"]["images"] == 16
    assert "stored in reference/" in report["evaluation"]["reference"]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)

    # The bench must find calibrate's reference (its 4 images are the first 4 of 16):
    # computing one would mean the two stages judged against different references.
    def no_second_keras_run(*args, **kwargs):
        raise AssertionError("the bench ran Keras for a reference calibrate already stored")

    monkeypatch.setattr(reference_module, "_store", no_second_keras_run)
    bench = run_bench(copy, tmp_path / "bench", QUICK)
    keras_row = bench["rows"][0]
    assert keras_row["fidelity"]["pixel_agreement"] == 1.0
    onnx_row = next(r for r in bench["rows"] if r["artifact"] == "model.int8.onnx")
    # The bench's int8 figure on the first 4 images equals the one calibrate's reference
    # gives on the same 4 images (one reference, one comparison).
    assert onnx_row["fidelity"]["images"] == 4
    assert set(onnx_row["fidelity"]["intervals"]) >= {"pixel_agreement",
                                                      "mean_dice_vs_reference"}


def test_a_changed_model_or_damaged_store_is_recomputed(tiny_calibrated, tmp_path):
    run, _ = tiny_calibrated
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    card = load_card(copy)
    samples = held_out_set(card, 3)
    stored = float_reference(copy, card, samples, "test")
    key_path = copy / "reference" / "test.json"
    assert len(json.loads(key_path.read_text())["images"]) == 16  # served from the store

    # A different image list is not a prefix: recomputed and stored in its place.
    others = held_out_set(card, 5, "val")
    float_reference(copy, card, others[2:4], "test")
    assert [name for name, _ in json.loads(key_path.read_text())["images"]] == \
        [s.name for s in others[2:4]]

    # A damaged array file is recomputed, never half-read.
    float_reference(copy, card, samples, "test")
    (copy / "reference" / "test.npz").write_bytes(b"PK\x03\x04 truncated")
    again = float_reference(copy, card, samples, "test")
    for a, b in zip(stored, again):
        assert np.array_equal(a.probabilities, b.probabilities)
        assert np.array_equal(a.detections.boxes, b.detections.boxes)

    # Another model (same name, other weights) invalidates it.
    key = json.loads(key_path.read_text())
    key["model_sha256"] = "0" * 64
    key_path.write_text(json.dumps(key))
    assert reference_module._load(copy, "test", reference_module.reference_key(
        copy, card, samples)) is None


@pytest.mark.parametrize("figure", ["pixel_agreement", "mean_dice_vs_reference"])
def test_intervals_are_recorded_in_calibration_json_and_the_manifest(tiny_calibrated, figure):
    run, report = tiny_calibrated
    manifest = json.loads((run / "manifest.json").read_text())
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        for agreement in (report["variants"][name]["agreement"],
                          manifest["artifacts"][name]["figures"]["agreement"]):
            low, high = agreement["intervals"][figure]
            assert low <= agreement[figure] <= high
            assert "interval_failures" in agreement
