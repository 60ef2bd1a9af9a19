"""A new gate is one definition: a planted "max_mean_prob_diff" gate, registered in one
place (the fixture), is taken by Targets, targets_for, Agreement.failures, the bench's
targets and rejudge() of an old run's stored predictions."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.judge.agreement import compare
from retinaunet_deploy.judge.targets import (
    GATES,
    Gate,
    Targets,
    register_gate,
    targets_for,
    unregister_gate,
)
from retinaunet_deploy.runtime import registry
from retinaunet_deploy.runtime.predictor import Prediction

NAMES = ["background", "disk", "ring"]
PLANTED = "max_mean_prob_diff"


@pytest.fixture
def planted_gate():
    """The one place the planted gate is defined; unregistered after the test."""
    gate = register_gate(Gate(
        PLANTED, "mean |prob diff|", lambda agreement: agreement.mean_abs_prob_diff,
        at_least=False, default=0.01, option="--max-mean-prob-diff",
        help="Target: largest mean |probability difference| from the float model.",
        fmt="{:.2e}", target_fmt="{:.2e}", summary=lambda agreement: None))
    yield gate
    unregister_gate(PLANTED)


def _soft(masks, confidence):
    """Per-image predictions whose argmax is `masks`, with `confidence` on that class."""
    predictions = []
    for mask in masks:
        probabilities = np.full((*mask.shape, 3), (1 - confidence) / 2, np.float32)
        np.put_along_axis(probabilities, mask[..., None], confidence, axis=-1)
        predictions.append(Prediction(mask.astype(np.uint8), None, probabilities))
    return predictions


def test_the_planted_gate_exists_only_while_registered():
    assert PLANTED not in GATES
    with pytest.raises(ConfigError, match="unknown gate"):
        Targets(max_mean_prob_diff=0.1)
    with pytest.raises(TypeError):
        Targets(0.99)  # keyword-only: a new gate can never shift the others


def test_targets_accept_the_planted_gate_and_targets_for_gives_its_default(planted_gate):
    assert Targets(max_mean_prob_diff=0.001).max_mean_prob_diff == 0.001
    assert Targets().max_mean_prob_diff == 0.01
    for precision in ("fp32", "int8", "fp16", "bf16"):
        assert targets_for(precision).max_mean_prob_diff == 0.01
    recorded = {"int8": Targets(max_mean_prob_diff=0.2).to_dict()}
    assert targets_for("int8", recorded).max_mean_prob_diff == 0.2
    assert targets_for("fp32", recorded).max_mean_prob_diff == 0.2  # int8's group
    assert targets_for("fp16", recorded).max_mean_prob_diff == 0.01
    assert Targets.from_dict(Targets(max_mean_prob_diff=0.3).to_dict()).max_mean_prob_diff == 0.3


def test_failures_name_the_planted_gate_when_missed(planted_gate):
    masks = [np.arange(16).reshape(4, 4) % 3]
    reference, candidate = _soft(masks, 1.0), _soft(masks, 0.9)
    # Mean |diff| over all probabilities: (0.1 + 0.05 + 0.05) / 3.
    strict = compare(reference, candidate, NAMES, targets=Targets(max_mean_prob_diff=0.01))
    assert strict.pixel_agreement == 1.0
    assert strict.failures == ["mean |prob diff| 6.67e-02 > 1.00e-02"]
    assert not strict.passed
    lenient = compare(reference, candidate, NAMES, targets=Targets(max_mean_prob_diff=0.1))
    assert lenient.passed and lenient.failures == []
    assert lenient.to_dict()["targets"][PLANTED] == 0.1


def test_bench_targets_come_from_targets_by_precision(tmp_path, planted_gate):
    from retinaunet_deploy.bench.harness import row_targets

    defaults = row_targets(tmp_path)  # not calibrated: every default
    assert defaults["int8"] == targets_for("int8") and defaults["bf16"] == targets_for("bf16")
    by_precision = {p: targets_for(p).to_dict() for p in ("fp32", "int8", "fp16", "bf16")}
    by_precision["int8"][PLANTED] = 0.05
    by_precision["fp16"]["pixel_agreement"] = 0.9
    (tmp_path / "calibration.json").write_text(json.dumps(
        {"targets_by_precision": by_precision, "options": {"pixel_agreement": 0.5}}))
    targets = row_targets(tmp_path)
    assert targets["int8"].max_mean_prob_diff == 0.05
    assert targets["fp32"].max_mean_prob_diff == 0.01
    assert targets["fp16"].pixel_agreement == 0.9 and targets["bf16"].pixel_agreement == 0.999
    assert targets["int8"].pixel_agreement == 0.995  # the new key wins over old options


def test_bench_targets_of_a_run_calibrated_before_targets_by_precision(tmp_path):
    from retinaunet_deploy.bench.harness import row_targets

    (tmp_path / "calibration.json").write_text(json.dumps({"options": {
        "pixel_agreement": 0.98, "mean_dice": 0.8, "matched_fraction": 0.7, "max_ap_drop": 0.1,
        "fp16_pixel_agreement": 0.99, "method": "minmax"}}))
    targets = row_targets(tmp_path)
    assert targets["int8"] == targets["fp32"] == Targets(
        pixel_agreement=0.98, mean_dice_vs_reference=0.8, matched_fraction=0.7, max_ap_drop=0.1)
    assert targets["fp16"] == targets["bf16"] == Targets(
        pixel_agreement=0.99, mean_dice_vs_reference=0.0, matched_fraction=0.7, max_ap_drop=0.1)


@pytest.fixture(scope="module")
def old_run(tiny_exported, tmp_path_factory):
    """A run whose model.onnx was judged (fused, as ONNX Runtime runs it) and stored before
    the planted gate existed: (run_dir, its agreement then)."""
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.judge.gates import evaluate_variant, make_eval_set

    run = tmp_path_factory.mktemp("old_run") / "run"
    shutil.copytree(tiny_exported[0], run)
    card = load_card(run)
    eval_set = make_eval_set(run, card, 4, threads=2)
    agreement = evaluate_variant(run / "model.onnx", card, eval_set, targets_for("fp32"),
                                 fused=True, threads=2, intervals=True, store=eval_set.store)
    return run, agreement


def test_an_old_run_is_rejudged_under_the_planted_gate_without_running(old_run, planted_gate,
                                                                         monkeypatch):
    from retinaunet_deploy.judge.gates import rejudge

    run, before = old_run

    def never(*args, **kwargs):
        raise AssertionError("rejudge opened the variant instead of reading its predictions")

    for name, entry in list(registry.RUNTIMES.items()):
        monkeypatch.setitem(registry.RUNTIMES, name, dataclasses.replace(entry, opener=never))
    monkeypatch.setattr("retinaunet_deploy.runtime.predictor.Predictor.from_artifact", never)
    assert before.mean_abs_prob_diff > 0  # ONNX Runtime and Keras differ in the last bits
    strict = before.mean_abs_prob_diff / 2
    missed = rejudge(run, "model.onnx", "onnxruntime", Targets(max_mean_prob_diff=strict))
    expected = f"mean |prob diff| {before.mean_abs_prob_diff:.2e} > {strict:.2e}"
    assert missed.failures == [expected]
    met = rejudge(run, "model.onnx", "onnxruntime")  # targets_for("fp32"): the default 0.01
    assert met.passed and met.targets.max_mean_prob_diff == 0.01
    # The same predictions: every figure the old judgement had, to the bit.
    old, new = before.to_dict(), met.to_dict()
    for figure in ("pixel_agreement", "mean_dice_vs_reference", "mean_abs_prob_diff",
                   "max_abs_prob_diff", "detections", "intervals", "images"):
        assert new[figure] == old[figure], figure
    # Never judged unfused: nothing stored to re-judge, refused.
    with pytest.raises(ArtifactError, match="no stored predictions of model.onnx"):
        rejudge(run, "model.onnx", "onnxruntime", fused=False)
