"""The C++ example's image I/O (examples/cpp/image_io.hpp), compiled and run here.

The TensorRT part (main.cpp) needs TensorRT's headers and is built where they
are; the PGM/raw-float reading and the argmax mask it relies on are checked
against numpy on every machine with a C++ compiler.
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cpp"
COMPILER = shutil.which("g++") or shutil.which("clang++")


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    if COMPILER is None:
        pytest.skip("no C++ compiler on this machine")
    binary = tmp_path_factory.mktemp("cpp") / "io_selftest"
    subprocess.run([COMPILER, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1", "-o",
                    str(binary), str(EXAMPLE / "io_selftest.cpp")], check=True)
    return binary


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
