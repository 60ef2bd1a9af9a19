"""Predictor: any-size input (padding, tiling), same results across backends, input
contract errors, the predict command."""

import itertools
import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from retinaunet_deploy.cli import cli
from retinaunet_deploy.data.folder import Sample, write_folder_dataset
from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_sample, synthetic_samples
from retinaunet_deploy.errors import ArtifactError, ConfigError, InputError
from retinaunet_deploy.judge.agreement import match_detections
from retinaunet_deploy.runtime import Predictor
from retinaunet_deploy.runtime.base import BackendBase, Limits
from retinaunet_deploy.runtime.providers import check_providers, cuda_device_count
from retinaunet_deploy.runtime.tiling import axis_layout, core_bounds, gaussian_weights, tile_grid


@pytest.fixture(scope="module")
def images():
    """Six test images of different sizes (80-160 px a side, mostly not multiples of 16)."""
    return [s.image for s in synthetic_samples(SyntheticConfig(size=64), 6, seed=0,
                                               split="test")]


@pytest.fixture(scope="module")
def predictors(tiny_exported):
    run_dir, _ = tiny_exported
    return (Predictor.from_artifact(run_dir / "model.keras"),
            Predictor.from_artifact(run_dir / "model.onnx", threads=2))


def test_keras_and_onnx_predictions_are_identical_at_any_size(predictors, images):
    keras_results, onnx_results = (p.predict(images) for p in predictors)
    assert len(keras_results) == len(onnx_results) == 6
    for image, k, o in zip(images, keras_results, onnx_results):
        assert k.mask.shape == o.mask.shape == image.shape[:2]
        np.testing.assert_array_equal(k.mask, o.mask)
        np.testing.assert_array_equal(k.detections.classes, o.detections.classes)
        np.testing.assert_allclose(k.detections.boxes, o.detections.boxes, atol=1e-3)
        np.testing.assert_allclose(k.detections.scores, o.detections.scores, atol=1e-5)


def test_padding_and_cropping_round_trip(predictors, images):
    """An image padded by the Predictor gives exactly what the graph gives on the same
    image padded by hand, cropped back; boxes stay inside the image."""
    _, predictor = predictors
    image = next(im for im in images if im.shape[0] % 16 and im.shape[1] % 16)
    h, w = image.shape[:2]
    result = predictor.predict(image, probabilities=True)
    padded = np.pad(image.astype(np.float32), [(0, -h % 16), (0, -w % 16), (0, 0)],
                    mode="reflect")   # mirrored, as training pads
    raw = predictor.run(padded[None])
    np.testing.assert_allclose(result.probabilities, raw["mask"][0, :h, :w], atol=1e-6)
    assert result.mask.shape == (h, w)
    boxes = result.detections.boxes
    assert np.all(boxes >= 0) and np.all(boxes[:, 2] <= h) and np.all(boxes[:, 3] <= w)


def test_single_image_forms_batches_and_probabilities(predictors, images):
    _, predictor = predictors
    image = images[1]
    batch_result = predictor.predict(np.stack([image] * 10))   # 10 > batch_size 8
    for single in (image, image[:, :, 0], image.astype(np.float32)):
        result = predictor.predict(single, probabilities=True)
        np.testing.assert_array_equal(result.mask, batch_result[9].mask)
        assert result.probabilities.shape == (*image.shape[:2], 3)
        np.testing.assert_allclose(result.probabilities.sum(-1), 1, rtol=1e-5)
    assert predictor.predict(image).probabilities is None


def test_tile_layout_covers_aligns_and_keeps_the_overlap():
    for length, tile in ((1024, 512), (1040, 256), (4096, 1024), (208, 128)):
        size, starts = axis_layout(length, tile, 0.25, 16)
        assert size <= tile and size % 16 == 0 and all(s % 16 == 0 for s in starts)
        assert starts[0] == 0 and starts[-1] + size == length
        overlaps = [size - (b - a) for a, b in itertools.pairwise(starts)]
        assert min(overlaps) >= 0.2 * size          # 0.25, less stride rounding
        bounds = core_bounds(starts, size, length)
        assert bounds[0][0] == 0 and bounds[-1][1] == length
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    # 1024 at tile 512: 3 tiles of 416, not 3 of 512.
    assert axis_layout(1024, 512, 0.25, 16) == (416, [0, 304, 608])
    assert tile_grid(96, 80, 128, 0.25, 16) == (96, 80, [(0, 0)])
    weights = gaussian_weights(64, 48)
    assert weights.shape == (64, 48) and weights.max() == 1 and weights.min() >= 1e-3


def test_tiled_matches_whole_image_on_a_large_image(tiny_exported):
    """Tiled vs whole-image inference on a 1024x1024 image: the same masks and boxes."""
    run_dir, _ = tiny_exported
    sample = synthetic_sample(SyntheticConfig(size=64, side_range=(16.0, 16.0)), 0, "test", 0)
    assert sample.image.shape[:2] == (1024, 1024)
    whole = Predictor.from_artifact(run_dir / "model.onnx", threads=2, tile=1024)
    tiled = Predictor.from_artifact(run_dir / "model.onnx", threads=2, tile=256, overlap=0.25)
    assert whole.fits_whole(1024, 1024) and not tiled.fits_whole(1024, 1024)
    a, b = whole.predict(sample.image), tiled.predict(sample.image)
    assert b.mask.shape == (1024, 1024)
    assert np.mean(a.mask == b.mask) >= 0.995
    score = 0.2  # the tiny model is barely trained: its boxes score low
    ious, reference = match_detections(a.detections, b.detections, score)
    assert reference >= 10
    assert sum(iou >= 0.5 for iou in ious) >= 0.95 * reference


class ProfiledEngine(BackendBase):
    """A fake engine-like backend: takes only sizes in its profile, records what it ran."""

    limits = Limits(min_size=64, max_size=128)

    def __init__(self, card):
        self.anchors = card.anchors
        self.shapes = []

    def run(self, batch):
        n, h, w, _ = batch.shape
        assert self.limits.min_size <= min(h, w) and max(h, w) <= self.limits.max_size, \
            batch.shape
        self.shapes.append(batch.shape)
        a = self.anchors.num_anchors((h, w))
        probs = np.zeros((n, h, w, 3), np.float32)
        probs[..., 1] = batch[..., 0] / 255           # the mask follows the pixels
        probs[..., 0] = 1 - probs[..., 1]
        return {"mask": probs, "cls_logits": np.full((n, a, 2), -9.0, np.float32),
                "box_deltas": np.zeros((n, a, 4), np.float32)}


def test_an_engine_profile_pads_small_images_and_tiles_large_ones(tiny_trained):
    _, card = tiny_trained
    engine = ProfiledEngine(card)
    with pytest.warns(UserWarning, match=r"--tile 1024 is larger than the backend takes "
                                         r"\(128 px.*tiles of 128 px are used"):
        predictor = Predictor(engine, card, tile=1024)
    assert predictor.tile == 128                     # capped by the profile's max_size
    assert predictor.requested_tile == 1024 and "--max-size 1024" in predictor.tile_warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # a tile within the profile: no warning
        assert Predictor(engine, card, tile=128).tile_warning is None
    small = np.full((20, 30), 255, np.uint8)
    result = predictor.predict(small)
    assert engine.shapes[-1][1:3] == (64, 64)        # padded up to the profile's min_size
    assert result.mask.shape == (20, 30) and np.all(result.mask == 1)
    large = np.zeros((300, 200), np.uint8)
    large[:, 100:] = 255
    result = predictor.predict(large)
    assert result.mask.shape == (300, 200)
    assert np.all(result.mask[:, 100:] == 1) and np.all(result.mask[:, :100] == 0)
    assert all(max(shape[1:3]) <= 128 for shape in engine.shapes)


@pytest.mark.parametrize("make_input, message", [
    (lambda im: im[None, None], r"expected one image \(H, W\) or \(H, W, C\) or a batch"),
    (lambda im: im[:12], r"image size 12x\d+ is smaller than one network stride \(16 px\)"),
    (lambda im: np.repeat(im, 3, axis=-1), r"image has 3 channel\(s\), the model takes 1"),
    (lambda im: im.astype(np.uint16), r"integer images must be uint8 .* got uint16"),
    (lambda im: im.astype(bool), r"unsupported image dtype bool"),
    (lambda im: np.where(im > 100, np.nan, im.astype(np.float32)), r"NaN or Inf"),
    (lambda im: np.full(im.shape, np.inf, np.float32), r"NaN or Inf"),
    (lambda im: im[None][:0], r"the batch is empty"),
    (lambda im: im.tolist(), (r"images must be a numpy array or a list of them, got a list "
                             r"holding a list")),
    (lambda im: 7, r"images must be a numpy array, got int"),
])
def test_bad_inputs_get_clear_errors(predictors, images, make_input, message):
    for predictor in predictors:
        with pytest.raises(InputError, match=message):
            predictor.predict(make_input(images[0]))


def test_bad_tiling_options(tiny_exported):
    run_dir, _ = tiny_exported
    with pytest.raises(ConfigError, match="tile 100 must be a positive multiple of the stride 16"):
        Predictor.from_artifact(run_dir / "model.onnx", tile=100)
    with pytest.raises(ConfigError, match=r"overlap must be in \[0, 1\), got 1.0"):
        Predictor.from_artifact(run_dir / "model.onnx", overlap=1.0)


def test_artifact_errors(tmp_path, run_copy):
    with pytest.raises(ArtifactError, match=r"unsupported artifact type '.pt'"):
        Predictor.from_artifact(tmp_path / "model.pt")
    (run_copy / "model.keras").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ArtifactError, match=r"cannot load .*model.keras .*re-train it with "
                                            r"'retinaunet-deploy train --out "):
        Predictor.from_artifact(run_copy / "model.keras")
    (run_copy / "model.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ArtifactError, match=r"cannot read .*model.onnx as ONNX .*corrupt or "
                                            r"truncated: re-create it"):
        Predictor.from_artifact(run_copy / "model.onnx")
    with pytest.raises(ArtifactError, match=r"not found; check the path"):
        Predictor.from_artifact(tmp_path / "missing.onnx")
    with pytest.raises(ArtifactError, match=r"model.int8.onnx not found; run 'retinaunet-deploy "
                                            r"calibrate .*' first"):
        Predictor.from_artifact(tmp_path / "model.int8.onnx")


@pytest.mark.skipif(cuda_device_count() > 0, reason="a GPU is present: CUDA can load")
def test_gpu_providers_are_refused_without_a_gpu():
    with pytest.raises(ConfigError, match=r"CUDAExecutionProvider.* cannot load on this machine"):
        check_providers(["CUDAExecutionProvider"])
    assert check_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_predict_command_writes_outputs_at_each_images_size(tiny_exported, tmp_path, images):
    """Non-square images of other sizes, and two same-named files from different folders."""
    from PIL import Image

    from retinaunet_deploy.predict.writer import overlay_scale

    run_dir, _ = tiny_exported
    for folder, picked in (("a", images[:2]), ("b", images[2:3])):
        write_folder_dataset(tmp_path / folder, [
            Sample(f"img{i}.png", im, np.zeros(im.shape[:2], np.uint8),
                   np.zeros(im.shape[:2], np.int32)) for i, im in enumerate(picked)])
    inputs = sorted(str(p) for p in tmp_path.glob("*/images/*.png"))
    assert [p.rsplit("/", 1)[1] for p in inputs] == ["img0.png", "img1.png", "img0.png"]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["predict", str(run_dir / "model.onnx"), *inputs,
                                      "--out", str(out), "--score-threshold", "0.05"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "detections.json").read_text())
    assert sorted(report["images"]) == inputs
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == ["a__images__img0.png", "b__images__img0.png", "img1.png"]
    for path, image in zip(inputs, [images[0], images[1], images[2]]):
        entry = report["images"][path]
        h, w = image.shape[:2]
        assert entry["size"] == [h, w] and not entry["tiled"]
        mask = np.asarray(Image.open(out / entry["mask"]))
        assert mask.shape == (h, w) and mask.max() < 3
        scale = overlay_scale(h, w)      # small images are upscaled, up to ~512 px
        assert scale > 1 and Image.open(out / entry["overlay"]).size == (w * scale, h * scale)
        assert sum(entry["class_pixels"].values()) == h * w
        for det in entry["detections"]:
            y1, x1, y2, x2 = det["box"]
            assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
            assert det["class"] in ("disk", "ring") and det["score"] >= 0.05


def test_predict_command_tiles_large_images(tiny_exported, tmp_path):
    import tifffile

    run_dir, _ = tiny_exported
    image = synthetic_sample(SyntheticConfig(size=64, side_range=(4.0, 5.0)), 1, "test",
                             0).image
    path = tmp_path / "large.tif"
    tifffile.imwrite(path, image[..., 0])
    result = CliRunner().invoke(cli, ["predict", str(run_dir / "model.onnx"), str(path),
                                      "--out", str(tmp_path / "out"), "--tile", "128"])
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "out" / "detections.json").read_text())["images"][str(path)]
    assert entry["tiled"] and entry["size"] == list(image.shape[:2])
    assert f"({image.shape[0]}x{image.shape[1]}, tiled)" in result.output


def test_predict_command_reports_a_too_small_image(tiny_exported, tmp_path):
    from PIL import Image

    run_dir, _ = tiny_exported
    path = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((10, 40), np.uint8)).save(path)
    result = CliRunner().invoke(cli, ["predict", str(run_dir / "model.onnx"), str(path),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {path}: image size 10x40 is smaller than one "
                                     f"network stride (16 px); use a larger image")
    assert not (tmp_path / "out").exists()
