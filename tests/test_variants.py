"""One variant lifecycle: a variant is one table entry plus its make function.

A test-local variant (an fp32 copy of model.onnx) is registered, and `calibrate`
makes, judges, writes and records it with no other edit; a planted one that its
keep-verdict refuses is recorded as refused, its stale file forgotten. A fake
runtime with ``judged_files`` is judged as a runtime variant the same way. The
options split by job keep the calibrate CLI's flat names, and a registered gate
gets its calibrate option.
"""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from retinaunet_deploy.artifacts import load_manifest, record_artifact, runtime_variants
from retinaunet_deploy.cli import cli
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.export import calibration as calibration_module
from retinaunet_deploy.export.calibration import CalibrationOptions, calibrate
from retinaunet_deploy.export.lifecycle import Candidate, Context, Variant, make_variant
from retinaunet_deploy.export.options import recorded_targets
from retinaunet_deploy.export.variants import VARIANTS, register_variant, unregister_variant
from retinaunet_deploy.judge.targets import Gate, register_gate, unregister_gate
from retinaunet_deploy.runtime import registry

# Test-local names: not run-folder files of the toolkit, so not in names.py.
COPY = "model.copy.onnx"
NEVER = "model.never.onnx"
FAKE_RUNTIME = "fake-ort"
FAST = {"calibration_images": 16, "eval_images": 16, "threads": 2,
        "pixel_agreement": 0.98, "mean_dice": 0.8, "matched_fraction": 0.7, "max_ap_drop": 0.1,
        "fallback_runtimes": ("onnxruntime",), "cpu_variant": False, "openvino": False,
        "tflite": False}


def copy_of_fp32(context: Context, work: Path) -> Path:
    """The trivial variant's make function: model.onnx, copied."""
    path = work / "copy.onnx"
    shutil.copyfile(context.run_dir / "model.onnx", path)
    return path


def never_kept(context, agreement, figures):
    return "planted: this variant is never kept"


def _open_fake(path, threads=None, **options):
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, threads=threads, **options)


@pytest.fixture(scope="module")
def with_copy(tiny_exported, tmp_path_factory):
    """The tiny run calibrated with the copy variant, the never-kept one and the fake
    runtime registered: (run_dir, report, progress lines)."""
    run = tmp_path_factory.mktemp("variants") / "run"
    shutil.copytree(tiny_exported[0], run)
    (run / NEVER).write_bytes(b"stale file from an earlier run")
    record_artifact(run, NEVER, "calibrate", parent="model.onnx")
    register_variant(Variant(COPY, "model.onnx", "fp32", copy_of_fp32))
    register_variant(Variant(NEVER, "model.onnx", "fp32", copy_of_fp32, keep=never_kept,
                             label="never-kept variant"))
    registry.register(registry.Runtime(FAKE_RUNTIME, (".onnx",), _open_fake, family="fake",
                                       judged_files=(COPY,)))
    said = []
    try:
        report = calibrate(run, CalibrationOptions.from_flat(**FAST), fp16=False,
                           progress=said.append)
        yield run, report, said
    finally:
        unregister_variant(COPY)
        unregister_variant(NEVER)
        registry.unregister(FAKE_RUNTIME)


def test_a_new_variant_is_judged_written_and_recorded(with_copy):
    run, report, said = with_copy
    figures = report["variants"][COPY]
    assert figures["written"] is True and figures["agreement"]["passed"]
    assert figures["agreement"]["images"] == 16 and figures["split"] == "test"
    assert figures["agreement"]["pixel_agreement"] > 0.9999   # the float model itself
    assert figures["evaluated"] == "fused (as ONNX Runtime runs it)"
    assert (run / COPY).read_bytes() == (run / "model.onnx").read_bytes()
    entry = load_manifest(run)["artifacts"][COPY]
    assert entry["stage"] == "calibrate" and entry["parent"]["file"] == "model.onnx"
    assert entry["figures"]["agreement"] == figures["agreement"]
    assert f"{COPY} (fused): " in "\n".join(said)
    assert json.loads((run / "calibration.json").read_text())["variants"][COPY]["written"]
    assert list(report["variants"]) == ["model.int8.onnx", "model.int8.e2e.onnx", COPY,
                                        NEVER]  # table order (the int8 e2e twin: issue 20)


def test_a_refused_variant_is_recorded_and_its_stale_file_forgotten(with_copy):
    run, report, said = with_copy
    figures = report["variants"][NEVER]
    assert figures["written"] is False
    assert figures["reason"] == "planted: this variant is never kept"
    assert figures["agreement"]["passed"]         # refused by its keep-verdict, not its gate
    assert not (run / NEVER).exists()
    assert NEVER not in load_manifest(run)["artifacts"]
    assert "never-kept variant not written: planted: this variant is never kept" in said


def test_a_registered_runtime_is_judged_on_its_files_once_they_are_made(with_copy):
    run, report, said = with_copy
    judged = report["runtime_variants"]
    assert list(judged) == ["fake fp32"]         # OpenVINO left out by openvino=False
    assert judged["fake fp32"]["passed"] and judged["fake fp32"]["file"] == COPY
    recorded = runtime_variants(run)["fake fp32"]
    assert recorded["runtime"] == FAKE_RUNTIME and recorded["passed"]
    line = next(i for i, s in enumerate(said) if s.startswith(f"fake fp32 ({COPY}): passes: "))
    assert line > next(i for i, s in enumerate(said) if s.startswith(f"{COPY} (fused): "))


def test_calibration_json_records_the_targets_of_every_precision(with_copy):
    run, report, _ = with_copy
    by_precision = json.loads((run / "calibration.json").read_text())["targets_by_precision"]
    assert set(by_precision) == {"fp32", "int8", "fp16", "bf16"}
    assert by_precision["int8"] == by_precision["fp32"] == report["targets"]
    assert by_precision["int8"]["pixel_agreement"] == 0.98
    assert by_precision["fp16"]["pixel_agreement"] == 0.999
    assert by_precision["fp16"]["mean_dice_vs_reference"] == 0.0   # fp16 is not held to Dice
    assert by_precision["fp16"]["matched_fraction"] == 0.7         # one target for every one
    assert report["options"]["pixel_agreement"] == 0.98 and report["options"]["mean_dice"] == 0.8
    targets = recorded_targets(report)
    assert targets["bf16"].pixel_agreement == 0.999 and targets["int8"].max_ap_drop == 0.1


def test_a_new_variant_is_benchmarked(with_copy, tmp_path):
    from retinaunet_deploy.bench.rows import BenchOptions, build_rows
    from retinaunet_deploy.card import load_card

    run, _, _ = with_copy
    rows = build_rows(run, load_card(run), BenchOptions(backends=("onnxruntime",), threads=2),
                      tmp_path, None)
    assert any(row.artifact == COPY and row.status == "ok" for row in rows)


def test_a_refusal_that_stops_the_stage_forgets_the_stale_file(with_copy, tmp_path):
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.data.splits import calibration_images
    from retinaunet_deploy.judge.gates import make_eval_set

    run, _, _ = with_copy
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    card = load_card(copy)
    stopping = Variant(COPY, "model.onnx", "fp32", copy_of_fp32, stops=True, keep=never_kept)
    options = CalibrationOptions.from_flat(**FAST)
    context = Context(copy, card, calibration_images(card, 4), make_eval_set(copy, card, 4, 2),
                      options)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ArtifactError, match="planted: this variant is never kept"):
        make_variant(context, stopping, work)
    assert not (copy / COPY).exists() and COPY not in load_manifest(copy)["artifacts"]
    # Ungated (latency-only runs): written all the same, the verdict kept as a figure.
    ungated = Context(copy, card, context.calib, context.eval_set,
                      CalibrationOptions.from_flat(**FAST, ungated=True))
    figures = make_variant(ungated, stopping, work)
    assert figures["verdict_if_gated"] == "planted: this variant is never kept"
    assert (copy / COPY).exists() and COPY in load_manifest(copy)["artifacts"]


def test_a_make_function_may_return_what_it_knows(tmp_path):
    candidate = Candidate(tmp_path / "x.onnx", {"kept_float": []}, {"method": "minmax"})
    assert candidate.report == {} and candidate.options == {"method": "minmax"}
    assert list(VARIANTS)[:4] == ["model.fp16.onnx", "model.int8.onnx", "model.int8.cpu.onnx",
                                  "model.int8.tflite"]


def test_flat_options_split_by_job_and_read_back():
    options = CalibrationOptions.from_flat(method="entropy", calibration_images=32,
                                           pixel_agreement=0.99, fp16_pixel_agreement=0.998,
                                           mean_dice=0.9, fallback=False, tflite=False)
    assert options.quantisation.method == "entropy"
    assert options.quantisation.calibration_images == 32
    assert not options.fallback.enabled and not options.extras.tflite
    assert options.targets_for("int8").pixel_agreement == 0.99
    assert options.targets_for("bf16").pixel_agreement == 0.998
    assert options.targets_for("fp16").mean_dice_vs_reference == 0.0
    again = CalibrationOptions.from_flat(**options.record())
    assert again.targets_by_precision() == options.targets_by_precision()
    assert again.record() == options.record()
    with pytest.raises(ConfigError, match="unknown calibration option 'dice'"):
        CalibrationOptions.from_flat(dice=0.9)


def _invoke_calibrate(monkeypatch, tmp_path, *args):
    captured = {}

    def fake_calibrate(run_dir, options, fp16=True, progress=None):
        captured["options"], captured["fp16"] = options, fp16
        return {"variants": {}, "evaluation": {}}

    monkeypatch.setattr(calibration_module, "calibrate", fake_calibrate)
    result = CliRunner().invoke(cli, ["calibrate", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    return captured["options"]


def test_the_calibrate_options_keep_their_names_and_defaults(monkeypatch, tmp_path):
    defaults = _invoke_calibrate(monkeypatch, tmp_path)
    assert defaults.record() == CalibrationOptions().record()
    old = _invoke_calibrate(monkeypatch, tmp_path, "--target", "0.9", "--min-dice", "0.5",
                            "--min-matched", "0", "--max-ap-drop", "0.2", "--no-openvino")
    new = _invoke_calibrate(monkeypatch, tmp_path, "--pixel-agreement", "0.9", "--mean-dice",
                            "0.5", "--matched-fraction", "0", "--max-ap-drop", "0.2",
                            "--no-openvino")
    assert old.record() == new.record()
    assert new.targets_for("int8").to_dict() == {
        "pixel_agreement": 0.9, "mean_dice_vs_reference": 0.5, "matched_fraction": 0.0,
        "max_ap_drop": 0.2, "match_iou": 0.5}
    assert not new.extras.openvino
    fp16 = _invoke_calibrate(monkeypatch, tmp_path, "--fp16-pixel-agreement", "0.997")
    assert fp16.targets_for("fp16").pixel_agreement == 0.997


def test_a_registered_gate_gets_its_calibrate_option(monkeypatch, tmp_path):
    register_gate(Gate("max_prob_diff", "mean |prob diff|", lambda a: a.mean_abs_prob_diff,
                       False, 0.01, "--max-prob-diff", "Target: largest mean |prob diff|."))
    try:
        help_text = CliRunner().invoke(cli, ["calibrate", "--help"]).output
        assert "--max-prob-diff" in help_text
        options = _invoke_calibrate(monkeypatch, tmp_path, "--max-prob-diff", "0.002")
        assert options.targets_for("int8").max_prob_diff == 0.002
        assert options.targets_for("fp16").max_prob_diff == 0.002
        assert options.record()["max_prob_diff"] == 0.002
    finally:
        unregister_gate("max_prob_diff")
