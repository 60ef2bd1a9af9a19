"""OpenVINO and LiteRT as gated CPU targets, and the bench's recommendation."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from retinaunet_deploy.artifacts import forget_artifact, load_manifest, runtime_variants
from retinaunet_deploy.bench.recommend import recommend, recommendation_line
from retinaunet_deploy.cli import cli
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.export.calibration import CalibrationOptions
from retinaunet_deploy.runtime import Predictor
from retinaunet_deploy.runtime.openvino import OpenVINOBackend, bf16_unavailable


def test_openvino_runs_any_size_with_the_threads_asked_for(tiny_calibrated):
    run, _ = tiny_calibrated
    onnx = Predictor.from_artifact(run / "model.onnx", threads=1)
    for runtime, file, precision in (("openvino", "model.onnx", "fp32"),
                                     ("openvino", "model.int8.onnx", "int8")):
        predictor = Predictor.from_artifact(run / file, threads=1, runtime=runtime)
        assert predictor.backend.precision == precision and predictor.backend.threads == 1
        for shape in ((64, 64), (80, 144), (37, 53)):  # any size, padded to the stride
            image = np.random.default_rng(sum(shape)).integers(0, 255, shape, np.uint8)
            result = predictor.predict(image, probabilities=True)
            assert result.mask.shape == shape
            if precision == "fp32":  # the same float model: the same outputs, to rounding
                expected = onnx.predict(image, probabilities=True).probabilities
                assert np.abs(result.probabilities - expected).max() < 1e-4
    batch = np.zeros((3, 64, 96, 1), np.float32)
    outputs = OpenVINOBackend(run / "model.onnx", threads=2).run(batch)
    assert outputs["mask"].shape == (3, 64, 96, 3) and outputs["cls_logits"].shape[0] == 3


def test_openvino_precisions_must_fit_the_file(tiny_calibrated):
    run, _ = tiny_calibrated
    with pytest.raises(ConfigError, match="OpenVINO int8 runs a Q/DQ file"):
        OpenVINOBackend(run / "model.onnx", precision="int8")
    with pytest.raises(ConfigError, match="this file is quantised"):
        OpenVINOBackend(run / "model.int8.onnx", precision="fp32")
    with pytest.raises(ConfigError, match="runtime 'openvino' runs .onnx files"):
        Predictor.from_artifact(run / "model.keras", runtime="openvino")
    if bf16_unavailable() is None:
        bf16 = Predictor.from_artifact(run / "model.onnx", runtime="openvino-bf16")
        assert bf16.backend.precision == "bf16"


def test_calibrate_judges_openvino_and_records_it_against_the_files_hash(tiny_calibrated):
    run, report = tiny_calibrated
    judged = report["runtime_variants"]
    recorded = runtime_variants(run)
    assert "openvino int8" in judged and "openvino int8" in recorded
    for name, figures in judged.items():
        if "skipped" in figures:
            continue
        assert recorded[name]["passed"] == figures["passed"] == figures["agreement"]["passed"]
        assert figures["images"] == figures["agreement"]["images"] == 16
        assert "pixel_agreement" in figures["agreement"]["intervals"]
    assert recorded["openvino int8"]["file"] == "model.int8.onnx"


def test_the_litert_file_has_its_lineage_and_passes_or_is_refused(tiny_calibrated, tmp_path):
    run, report = tiny_calibrated
    tflite = report["variants"]["model.int8.tflite"]
    manifest = load_manifest(run)["artifacts"]
    assert tflite["written"] == (run / "model.int8.tflite").exists()
    if tflite["written"]:
        assert manifest["model.int8.tflite"]["parent"]["file"] == "model.keras"
        assert manifest["model.int8.tflite"]["figures"]["calibration_images"] == 16
        predictor = Predictor.from_artifact(run / "model.int8.tflite", threads=1)
        assert predictor.predict(np.zeros((70, 90), np.uint8)).mask.shape == (70, 90)
    # A target no int8 model meets: refused with its figures, a stale file removed.
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.data.splits import calibration_images
    from retinaunet_deploy.export.lifecycle import Context, make_variant
    from retinaunet_deploy.export.variants import VARIANTS
    from retinaunet_deploy.judge.gates import make_eval_set

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "model.int8.tflite").write_bytes(b"stale file from an earlier run")
    card = load_card(copy)
    said = []
    context = Context(copy, card, calibration_images(card, 16), make_eval_set(copy, card, 16),
                      CalibrationOptions.from_flat(pixel_agreement=1.0, mean_dice=1.0,
                                                   threads=2), None, said.append)
    work = tmp_path / "work"
    work.mkdir()
    figures = make_variant(context, VARIANTS["model.int8.tflite"], work)  # refused: goes on
    assert context.report["variants"]["model.int8.tflite"] is figures
    assert said[-1] == f"LiteRT int8 not written: {figures['reason']}"
    assert figures["written"] is False
    assert figures["reason"].startswith("misses the agreement target as LiteRT runs it")
    assert figures["agreement"]["images"] == 16 and figures["agreement"]["failures"]
    assert not (copy / "model.int8.tflite").exists()
    assert "model.int8.tflite" not in load_manifest(copy)["artifacts"]


def _row(name, runtime, precision, artifact, p50, passed=True, ok=True):
    backend = "openvino" if runtime == "openvino-bf16" else runtime
    return {"name": name, "backend": backend, "runtime": runtime, "precision": precision,
            "artifact": artifact, "status": "ok" if ok else "failed",
            "fidelity": {"passed": passed, "pixel_agreement": 0.999, "images": 64,
                         "intervals": {"pixel_agreement": [0.998, 0.9995]},
                         "interval_failures": []},
            "latency": {"1": {"end_to_end": {"p50_ms": p50}}}}


def _report(rows):
    return {"options": {"batch_sizes": [1, 8]}, "rows": rows,
            "machine": {"cpu": "test CPU", "cpu_flags": ["avx2"], "threads": 2}}


def test_the_recommendation_is_the_fastest_row_that_passed_its_gate():
    rows = [_row("keras fp32", "keras", "fp32", "model.keras", 100.0, passed=True),
            _row("onnxruntime fp32 (model.onnx)", "onnxruntime", "fp32", "model.onnx", 90.0),
            _row("openvino int8 (model.int8.onnx)", "openvino", "int8", "model.int8.onnx", 20.0,
                 passed=False),                       # fastest, but missed its gate
            _row("openvino bf16 (model.onnx)", "openvino-bf16", "bf16", "model.onnx", 40.0),
            _row("tflite int8", "tflite", "int8", "/bench/model.int8.tflite", 30.0),  # not a run file
            _row("onnxruntime int8 (model.int8.cpu.onnx)", "onnxruntime", "int8",
                 "model.int8.cpu.onnx", 10.0, ok=False)]  # failed row
    choice = recommend(_report(rows))
    assert choice["row"] == "openvino bf16 (model.onnx)"
    assert (choice["file"], choice["runtime"]) == ("model.onnx", "openvino-bf16")
    assert choice["speedup_vs_keras"] == pytest.approx(2.5)
    line = recommendation_line(choice)
    assert line.startswith("Recommendation: openvino bf16 (model.onnx): 40.0 ms")
    assert "2.50x Keras" in line and "on 64 test images" in line
    # Nothing passes: no recommendation, and the line says so.
    assert recommend(_report([rows[0], rows[2]])) is None
    assert "none" in recommendation_line(None)
    # The choice's runtime is the row's registered one; Keras (not recommendable), a row
    # of no registered runtime (a GPU provider's) and one of an unknown runtime never win.
    passing = dict(rows[2], fidelity=rows[1]["fidelity"])
    assert recommend(_report([rows[0], passing]))["runtime"] == "openvino"
    fast = {"1": {"end_to_end": {"p50_ms": 1.0}}}
    fastest = [dict(rows[0], latency=fast),
               dict(rows[1], name="onnxruntime CUDA fp32 (model.onnx)",
                    backend="onnxruntime-gpu", runtime=None, latency=fast),
               dict(rows[1], runtime="gone", latency=fast), rows[1]]
    assert recommend(_report(fastest))["row"] == "onnxruntime fp32 (model.onnx)"


def test_predict_on_a_run_folder_runs_the_recommended_variant(tiny_calibrated, tmp_path):
    from PIL import Image

    from retinaunet_deploy.bench.harness import BenchOptions, run_bench

    run, _ = tiny_calibrated
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    forget_artifact(copy, "recommendation.json")  # another test's bench may have chosen
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(image)
    result = CliRunner().invoke(cli, ["predict", str(copy), str(image)])
    assert result.exit_code == 1 and "has no recommendation.json" in result.output
    report = run_bench(copy, tmp_path / "bench", BenchOptions(
        images=4, batch_sizes=(1,), rounds=1, min_seconds=0.0, peak=False,
        backends=("keras", "onnxruntime", "openvino")))
    choice = report["recommendation"]
    assert choice is not None and json.loads((copy / "recommendation.json").read_text()) == \
        json.loads(json.dumps(choice))
    out = tmp_path / "predictions"
    result = CliRunner().invoke(cli, ["predict", str(copy), str(image), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "detections.json").read_text())
    assert f"running {copy / choice['file']} in {choice['runtime']}" in result.output
    assert written["artifact"] == str(copy / choice["file"])
    assert written["runtime"] == choice["runtime"]
    from retinaunet_deploy.artifacts import load_manifest
    from retinaunet_deploy.recommendation import recommended_artifact

    # The chosen file changed since its stage: refused with the stage that remakes it.
    chosen = copy / choice["file"]
    original = chosen.read_bytes()
    stage = load_manifest(copy)["artifacts"][choice["file"]]["stage"]
    chosen.write_bytes(original + b"\0")
    with pytest.raises(ArtifactError, match=f"retinaunet-deploy {stage} "):
        recommended_artifact(copy)
    # An edited model card (read beside files that carry none) is refused too.
    chosen.write_bytes(original)
    card = copy / "model_card.json"
    card.write_text(card.read_text().replace('"disk"', '"AAA"'))
    with pytest.raises(ArtifactError, match="model_card.json"):
        recommended_artifact(copy)
    # An edited recommendation: the long remedy (bench) and the quick one (name a file).
    recommendation = copy / "recommendation.json"
    recommendation.write_text(recommendation.read_text() + " ")
    with pytest.raises(ArtifactError, match=r"retinaunet-deploy bench .*, or give an artifact "
                                            r"file \(e\.g\. '.*model\.onnx'\) instead"):
        recommended_artifact(copy)
