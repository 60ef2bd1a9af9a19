"""The C++ example's image I/O (examples/cpp/image_io.hpp), compiled and run here.

The TensorRT part (main.cpp) needs TensorRT's headers and is built where they
are; the PGM/raw-float reading and the argmax mask it relies on are checked
against numpy on every machine with a C++ compiler.
"""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaunet_deploy.card import ModelCard, load_card

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cpp"
COMPILER = shutil.which("g++") or shutil.which("clang++")


def _compile(name: str, tmp_path_factory) -> Path:
    """Build examples/cpp/NAME.cpp with warnings as errors; skip without a compiler."""
    if COMPILER is None:
        pytest.skip("no C++ compiler on this machine")
    binary = tmp_path_factory.mktemp("cpp") / name
    subprocess.run([COMPILER, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1", "-o",
                    str(binary), str(EXAMPLE / f"{name}.cpp")], check=True)
    return binary


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    return _compile("io_selftest", tmp_path_factory)


def _run(binary, pgm, probs_shape, tmp_path, probs=None):
    h, w, k = probs_shape
    probs = probs if probs is not None else np.random.default_rng(0).random(
        (h, w, k), dtype=np.float32)
    (tmp_path / "probs.f32").write_bytes(probs.astype("<f4").tobytes())
    result = subprocess.run([str(binary), str(pgm), str(tmp_path / "pixels.f32"),
                             str(tmp_path / "probs.f32"), str(h), str(w), str(k),
                             str(tmp_path / "mask.pgm")], capture_output=True, text=True,
                            check=False)
    return result, probs


def test_8bit_pgm_and_argmax_match_numpy(selftest, tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (24, 40), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "image.pgm")
    result, probs = _run(selftest, tmp_path / "image.pgm", (24, 40, 3), tmp_path)
    assert result.returncode == 0, result.stderr
    pixels = np.fromfile(tmp_path / "pixels.f32", "<f4").reshape(24, 40)
    assert np.array_equal(pixels, image.astype(np.float32))
    mask = np.asarray(Image.open(tmp_path / "mask.pgm"))
    assert np.array_equal(mask, probs.argmax(-1))


def test_16bit_pgm_is_read_big_endian(selftest, tmp_path):
    image = np.random.default_rng(2).integers(0, 65536, (16, 8), dtype=np.uint16)
    # A comment in the header, as some writers add.
    (tmp_path / "image.pgm").write_bytes(b"P5\n# from a scanner\n8 16\n65535\n"
                                         + image.astype(">u2").tobytes())
    result, _ = _run(selftest, tmp_path / "image.pgm", (16, 8, 2), tmp_path)
    assert result.returncode == 0, result.stderr
    pixels = np.fromfile(tmp_path / "pixels.f32", "<f4").reshape(16, 8)
    assert np.array_equal(pixels, image.astype(np.float32))


def test_bad_inputs_are_one_line_errors(selftest, tmp_path):
    image = np.zeros((8, 8), np.uint8)
    Image.fromarray(image).save(tmp_path / "image.pgm")
    data = (tmp_path / "image.pgm").read_bytes()
    (tmp_path / "short.pgm").write_bytes(data[:-5])
    result, _ = _run(selftest, tmp_path / "short.pgm", (8, 8, 3), tmp_path)
    assert result.returncode == 1 and result.stderr.strip().endswith("truncated PGM data")
    (tmp_path / "png.pgm").write_bytes(b"\x89PNG\r\n")
    result, _ = _run(selftest, tmp_path / "png.pgm", (8, 8, 3), tmp_path)
    assert result.returncode == 1 and "not a binary PGM (P5)" in result.stderr
    # A probability file of the wrong size names the expected size.
    result, _ = _run(selftest, tmp_path / "image.pgm", (8, 8, 3), tmp_path,
                     probs=np.zeros((8, 8, 2), np.float32))
    assert result.returncode == 1
    assert "expected 768 bytes (8x8x3 float32), got 512" in result.stderr


@pytest.mark.parametrize("height, width, min_size", [(37, 50, 16), (48, 64, 16), (20, 20, 64)])
def test_padding_to_the_stride_and_cropping_back_match_the_predictor(selftest, tmp_path,
                                                                     height, width, min_size):
    """The C++ example pads any image as the Python Predictor does, and crops back."""
    image = np.random.default_rng(4).integers(0, 256, (height, width), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "image.pgm")
    result = subprocess.run([str(selftest), "pad", str(tmp_path / "image.pgm"), "16",
                             str(min_size), str(tmp_path / "padded.f32"),
                             str(tmp_path / "cropped.f32")], capture_output=True, text=True,
                            check=True)
    padded_h, padded_w = map(int, result.stdout.split())
    expected_h = max(min_size, -(-height // 16) * 16)
    expected_w = max(min_size, -(-width // 16) * 16)
    assert (padded_h, padded_w) == (expected_h, expected_w)
    padded = np.fromfile(tmp_path / "padded.f32", "<f4").reshape(padded_h, padded_w)
    expected = np.pad(image.astype(np.float32), [(0, expected_h - height),
                                                 (0, expected_w - width)],
                      mode="reflect")   # as the Predictor pads (data.patches.pad_to)
    np.testing.assert_array_equal(padded, expected)
    cropped = np.fromfile(tmp_path / "cropped.f32", "<f4").reshape(height, width)
    np.testing.assert_array_equal(cropped, image.astype(np.float32))


# === Detection decoding (detections.hpp) against retinaunet_deploy.postprocess ===

@pytest.fixture(scope="module")
def det_selftest(tmp_path_factory):
    return _compile("det_selftest", tmp_path_factory)


def _cpp_detections(binary, card_path, logits, deltas, size, tmp_path):
    n, _, c = logits.shape
    (tmp_path / "logits.f32").write_bytes(logits.astype("<f4").tobytes())
    (tmp_path / "deltas.f32").write_bytes(deltas.astype("<f4").tobytes())
    result = subprocess.run([str(binary), str(card_path), str(tmp_path / "logits.f32"),
                             str(tmp_path / "deltas.f32"), str(n), str(size), str(size), str(c),
                             str(tmp_path / "anchors.f32"), str(tmp_path / "dets.txt")],
                            check=True, capture_output=True, text=True)
    card = ModelCard.from_dict(json.loads(Path(card_path).read_text()), str(card_path))
    _, stride = result.stdout.split()
    assert int(stride) == card.input.stride == 16
    rows = [line.split() for line in (tmp_path / "dets.txt").read_text().splitlines()]
    anchors = np.fromfile(tmp_path / "anchors.f32", "<f4").reshape(-1, 4)
    per_image = [[r for r in rows if int(r[0]) == i] for i in range(n)]
    return anchors, [np.asarray([[float(v) for v in r[1:6]] for r in image]).reshape(-1, 5)
                     for image in per_image], [[int(r[6]) for r in image] for image in per_image]


@pytest.mark.parametrize("source", ["tiny model outputs", "random outputs"])
def test_cpp_decoding_matches_the_python_postprocess(det_selftest, tiny_exported, tmp_path,
                                                     source):
    import dataclasses
    import json

    from retinaunet_deploy.data.splits import held_out_set
    from retinaunet_deploy.model.anchors import generate_anchors
    from retinaunet_deploy.postprocess import decode_detections
    from retinaunet_deploy.runtime import Predictor

    run, _ = tiny_exported
    card = load_card(run)
    config = card.detection_config
    size = 64
    anchors = generate_anchors(card.anchors, (size, size))
    if source == "tiny model outputs":
        predictor = Predictor.from_artifact(run / "model.onnx", threads=1)
        crops = np.stack([s.image[:size, :size] for s in held_out_set(card, 6)])
        outputs = predictor.run(predictor.prepare(crops)[0])
        logits, deltas = outputs["cls_logits"], outputs["box_deltas"]
        # the tiny model is barely trained
        config = dataclasses.replace(config, score_threshold=0.001)
    else:  # many overlapping candidates, extreme deltas, some NaN
        rng = np.random.default_rng(3)
        logits = rng.normal(-1, 3, (3, len(anchors), 2)).astype(np.float32)
        deltas = rng.normal(0, 5, (3, len(anchors), 4)).astype(np.float32)
        deltas[0, :50] = np.nan
    # The top-k cut is only defined up to ties in Python (argpartition); keep it out of play.
    config = dataclasses.replace(config, pre_nms_top_k=logits.shape[1] * logits.shape[2])
    card = dataclasses.replace(card, postprocess=config)
    (tmp_path / "card.json").write_text(json.dumps(card.to_dict(), indent=2))

    cpp_anchors, cpp_boxes, cpp_classes = _cpp_detections(det_selftest, tmp_path / "card.json",
                                                          logits, deltas, size, tmp_path)
    np.testing.assert_allclose(cpp_anchors, anchors, atol=1e-5)
    expected = decode_detections(logits, deltas, anchors, (size, size), config)
    assert sum(len(d) for d in expected) >= 10
    for python, boxes, classes in zip(expected, cpp_boxes, cpp_classes):
        assert classes == python.classes.tolist()
        np.testing.assert_allclose(boxes[:, :4], python.boxes, atol=1e-3)
        np.testing.assert_allclose(boxes[:, 4], python.scores, atol=1e-6)
