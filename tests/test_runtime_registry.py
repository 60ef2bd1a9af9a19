"""One registration per runtime: a fake runtime registered in one place (the `fake_cpu`
fixture) appears, with no other edit, in `Predictor.from_artifact`, `predict --runtime`,
the bench's rows (with its thread read-back), the calibration gates (a runtime variant
judged and recorded by `calibrate`) and the recommendation's candidates."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retinaunet_deploy import names
from retinaunet_deploy.artifacts import ARTIFACT_SUFFIXES
from retinaunet_deploy.bench.recommend import recommend
from retinaunet_deploy.bench.rows import BenchOptions, build_rows
from retinaunet_deploy.cli import cli
from retinaunet_deploy.errors import ConfigError
from retinaunet_deploy.runtime import Predictor
from retinaunet_deploy.runtime.base import BackendBase
from retinaunet_deploy.runtime.registry import (
    Runtime,
    register,
    runtime_choices,
    runtime_suffixes,
    unregister,
)

FAKE = "fake-cpu"


class InMemoryOnnx(BackendBase):
    """An ONNX Runtime session over the file's bytes held in memory, reading back its own
    thread count (`lie` reports another count than it runs with)."""

    def __init__(self, path: Path, threads: int | None = None, lie: int = 0):
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 1
        self._session = ort.InferenceSession(self.path.read_bytes(), options,
                                             providers=["CPUExecutionProvider"])
        self.threads = self._session.get_session_options().intra_op_num_threads + lie

    def card(self):
        from retinaunet_deploy.card import embedded_card

        self._check_open()
        return embedded_card(self.path, self._session.get_modelmeta().custom_metadata_map
                             .get("model_card"))

    def run(self, batch):
        self._check_open()
        names_ = [o.name for o in self._session.get_outputs()]
        return dict(zip(names_, self._session.run(names_, {"image": batch})))

    def _release(self):
        self._session = None


def _register(**options):
    return register(Runtime(FAKE, (".onnx",), lambda path, threads=None: InMemoryOnnx(
        path, threads, **options), bench_files=(names.ONNX,), judged_files=(names.ONNX,)))


@pytest.fixture
def fake_cpu():
    """The one registration."""
    yield _register()
    unregister(FAKE)


def test_every_runtime_suffix_is_an_artifact_suffix():
    assert set(runtime_suffixes()) <= set(ARTIFACT_SUFFIXES)


def test_the_fake_runtime_runs_through_the_predictor(fake_cpu, tiny_exported):
    run, _ = tiny_exported
    image = np.random.default_rng(0).integers(0, 255, (70, 90), np.uint8)
    with Predictor.from_artifact(run / names.ONNX, threads=2, runtime=FAKE) as fake, \
            Predictor.from_artifact(run / names.ONNX, threads=2) as onnx:
        assert isinstance(fake.backend, InMemoryOnnx) and fake.backend.threads == 2
        np.testing.assert_array_equal(fake.predict(image).mask, onnx.predict(image).mask)
    assert fake.backend.closed
    with pytest.raises(ConfigError, match="execution providers apply to .onnx files in ONNX "
                                          "Runtime only"):
        Predictor.from_artifact(run / names.ONNX, runtime=FAKE, providers=["CPU"])


def test_predict_offers_and_runs_the_fake_runtime(fake_cpu, tiny_exported, tmp_path):
    from PIL import Image

    run, _ = tiny_exported
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(image)
    assert FAKE in runtime_choices()
    result = CliRunner().invoke(cli, ["predict", str(run / names.ONNX), str(image), "--runtime",
                                      FAKE, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "detections.json").read_text())["runtime"] == FAKE


def test_an_unregistered_runtime_is_not_offered(tiny_exported, tmp_path):
    run, _ = tiny_exported
    result = CliRunner().invoke(cli, ["predict", str(run / names.ONNX), str(run / names.CARD),
                                      "--runtime", FAKE])
    assert result.exit_code == 2 and f"'{FAKE}' is not one of" in result.output


def test_the_fake_runtime_gets_a_bench_row_and_can_be_recommended(fake_cpu, tiny_exported,
                                                                 tmp_path):
    run, _ = tiny_exported
    rows = build_rows(run, {}, BenchOptions(threads=2, backends=(FAKE,)), tmp_path, None)
    try:
        assert [r.name for r in rows] == ["keras fp32", f"{FAKE} fp32 (model.onnx)"]
        row = rows[1]
        assert (row.status, row.backend, row.runtime, row.artifact) == (
            "ok", FAKE, FAKE, names.ONNX)
        assert isinstance(row.runner, InMemoryOnnx) and row.threads == 2
    finally:
        for r in rows:
            r.runner.close()
    # The recommendation's candidates: the fake row passed its gate and is fastest.
    report = {"options": {"batch_sizes": [1]}, "machine": {"cpu": "test", "threads": 2},
              "rows": []}
    for r, p50 in zip(rows, (100.0, 25.0)):
        report["rows"].append({**r.to_dict(), "latency": {"1": {"end_to_end": {"p50_ms": p50}}},
                               "fidelity": {"passed": True, "pixel_agreement": 1.0,
                                            "images": 4}})
    choice = recommend(report)
    assert (choice["row"], choice["file"], choice["runtime"]) == (
        f"{FAKE} fp32 (model.onnx)", names.ONNX, FAKE)
    assert choice["speedup_vs_keras"] == pytest.approx(4.0)


def test_a_runtime_reading_back_other_threads_is_refused_by_the_bench(tiny_exported, tmp_path):
    run, _ = tiny_exported
    _register(lie=1)
    try:
        with pytest.raises(ConfigError, match=f"bench row '{FAKE} fp32 \\(model.onnx\\)' runs "
                                              f"with 3 intra-op threads, not the 2 asked for"):
            build_rows(run, {}, BenchOptions(threads=2, backends=(FAKE,)), tmp_path, None)
    finally:
        unregister(FAKE)


def test_the_fake_runtime_is_judged_by_calibrate(fake_cpu, tiny_exported, tmp_path):
    """`calibrate` judges every registered runtime's `judged_files` as runtime variants:
    the fake one is judged on model.onnx, recorded in calibration.json and the manifest."""
    import shutil

    from retinaunet_deploy.artifacts import runtime_variants
    from retinaunet_deploy.export.calibration import CalibrationOptions, calibrate

    run = tmp_path / "run"
    shutil.copytree(tiny_exported[0], run)
    lines = []
    report = calibrate(run, CalibrationOptions.from_flat(
        calibration_images=8, eval_images=8, threads=2, fallback=False, cpu_variant=False,
        openvino=False, tflite=False, pixel_agreement=0.98, mean_dice=0.8,
        matched_fraction=0.7, max_ap_drop=0.1), fp16=False, progress=lines.append)
    judged = report["runtime_variants"][f"{FAKE} fp32"]
    assert judged["file"] == names.ONNX and judged["images"] == 8
    # The same file in another runtime: it agrees with the float model to the last bit.
    assert judged["passed"] and judged["agreement"]["pixel_agreement"] > 0.9999
    recorded = runtime_variants(run)[f"{FAKE} fp32"]
    assert recorded["runtime"] == FAKE and recorded["passed"] is True
    assert any(line.startswith(f"{FAKE} fp32 ({names.ONNX}): passes") for line in lines)


def test_a_folder_or_a_file_of_another_runtime_is_refused_with_the_fix(tmp_path):
    from retinaunet_deploy.errors import ArtifactError
    from retinaunet_deploy.runtime.registry import auto_runtime, runtime_named

    with pytest.raises(ArtifactError, match="is a folder; give an artifact file"):
        auto_runtime(tmp_path)
    with pytest.raises(ConfigError, match=r"use --runtime auto or one of \['onnxruntime'"):
        runtime_named("tflite").open(tmp_path / "model.onnx")
