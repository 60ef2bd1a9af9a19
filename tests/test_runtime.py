"""Predictor: same results across backends, input contract errors, predict command."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from retinaunet_deploy.cli import cli
from retinaunet_deploy.data.folder import write_folder_dataset
from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_dataset
from retinaunet_deploy.errors import ArtifactError, ConfigError, InputError
from retinaunet_deploy.runtime import Predictor
from retinaunet_deploy.runtime.providers import check_providers, cuda_device_count


@pytest.fixture(scope="module")
def images():
    return synthetic_dataset(SyntheticConfig(size=64), 6, seed=0, split="test")[0]


@pytest.fixture(scope="module")
def predictors(tiny_exported):
    run_dir, _ = tiny_exported
    return (Predictor.from_artifact(run_dir / "model.keras"),
            Predictor.from_artifact(run_dir / "model.onnx", threads=2))


def test_keras_and_onnx_predictions_are_identical(predictors, images):
    keras_results, onnx_results = (p.predict(images) for p in predictors)
    assert len(keras_results) == len(onnx_results) == 6
    for k, o in zip(keras_results, onnx_results):
        np.testing.assert_array_equal(k.mask, o.mask)
        np.testing.assert_array_equal(k.detections.classes, o.detections.classes)
        np.testing.assert_allclose(k.detections.boxes, o.detections.boxes, atol=1e-3)
        np.testing.assert_allclose(k.detections.scores, o.detections.scores, atol=1e-5)


def test_single_image_forms_and_probabilities(predictors, images):
    _, predictor = predictors
    batch_result = predictor.predict(images[:1])[0]
    for single in (images[0], images[0, :, :, 0], images[0].astype(np.float32)):
        result = predictor.predict(single, probabilities=True)
        np.testing.assert_array_equal(result.mask, batch_result.mask)
        assert result.probabilities.shape == (64, 64, 3)
        np.testing.assert_allclose(result.probabilities.sum(-1), 1, rtol=1e-5)
    assert predictor.predict(images[0]).probabilities is None


def test_batches_larger_than_the_chunk_size(predictors, images):
    _, predictor = predictors
    many = np.concatenate([images, images, images])  # 18 > batch_size 8
    results = predictor.predict(many)
    np.testing.assert_array_equal(results[12].mask, predictor.predict(images[0]).mask)


@pytest.mark.parametrize("make_input, message", [
    (lambda im: im[None], r"expected one image \(H, W\) or \(H, W, C\) or a batch"),
    (lambda im: im[:, :32], r"image size 32x64 does not match the model's 64x64; resize"),
    (lambda im: np.repeat(im, 3, axis=-1), r"image has 3 channel\(s\), the model takes 1"),
    (lambda im: im.astype(np.uint16), r"integer images must be uint8 .* got uint16"),
    (lambda im: im.astype(bool), r"unsupported image dtype bool"),
    (lambda im: np.where(im > 100, np.nan, im.astype(np.float32)), r"NaN or Inf"),
    (lambda im: np.full(im.shape, np.inf, np.float32), r"NaN or Inf"),
    (lambda im: im[:0], r"the batch is empty"),
    (lambda im: im.tolist(), r"images must be a numpy array, got list"),
])
def test_bad_inputs_get_clear_errors(predictors, images, make_input, message):
    for predictor in predictors:
        with pytest.raises(InputError, match=message):
            predictor.predict(make_input(images))


def test_artifact_errors(tmp_path, run_copy):
    with pytest.raises(ArtifactError, match=r"unsupported artifact type '.pt'"):
        Predictor.from_artifact(tmp_path / "model.pt")
    (run_copy / "model.keras").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ArtifactError, match=r"cannot load .*model.keras .*re-run"):
        Predictor.from_artifact(run_copy / "model.keras")
    (run_copy / "model.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ArtifactError, match=r"cannot read .*model.onnx as ONNX .*corrupt or "
                                            r"truncated: re-create it"):
        Predictor.from_artifact(run_copy / "model.onnx")
    with pytest.raises(ArtifactError, match=r"not found"):
        Predictor.from_artifact(tmp_path / "missing.onnx")


@pytest.mark.skipif(cuda_device_count() > 0, reason="a GPU is present: CUDA can load")
def test_gpu_providers_are_refused_without_a_gpu():
    with pytest.raises(ConfigError, match=r"CUDAExecutionProvider.* cannot load on this machine"):
        check_providers(["CUDAExecutionProvider"])
    assert check_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_predict_command_writes_masks_overlays_and_detections(tiny_exported, tmp_path, images):
    from PIL import Image

    run_dir, _ = tiny_exported
    write_folder_dataset(tmp_path / "in", images[:2], np.zeros((2, 64, 64), np.uint8))
    inputs = sorted(str(p) for p in (tmp_path / "in" / "images").glob("*.png"))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["predict", str(run_dir / "model.onnx"), *inputs,
                                      "--out", str(out), "--score-threshold", "0.05"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "detections.json").read_text())
    assert sorted(report["images"]) == inputs
    for path in inputs:
        stem = path.rsplit("/", 1)[1][:-4]
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert mask.shape == (64, 64) and mask.max() < 3
        overlay = Image.open(out / "overlays" / f"{stem}.png")
        assert overlay.size == (256, 256) and overlay.mode == "RGB"
        entry = report["images"][path]
        assert sum(entry["class_pixels"].values()) == 64 * 64
        for det in entry["detections"]:
            assert det["class"] in ("disk", "ring") and det["score"] >= 0.05


def test_predict_command_reports_a_wrong_size_image(tiny_exported, tmp_path):
    run_dir, _ = tiny_exported
    big = synthetic_dataset(SyntheticConfig(size=96), 1, seed=0)
    write_folder_dataset(tmp_path / "in", *big)
    path = tmp_path / "in" / "images" / "00000.png"
    result = CliRunner().invoke(cli, ["predict", str(run_dir / "model.onnx"), str(path),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {path}: image size 96x96 does not match the "
                                     f"model's 64x64; resize or crop the image first")
