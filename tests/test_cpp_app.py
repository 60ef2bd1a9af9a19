"""The C++ app (examples/cpp, retinaunet_infer) built with CMake against the openvino
wheel's C++ runtime and run on the CPU: the same masks and boxes as the Python Predictor
on the same file, and one-line errors for bad input.

The build (about 15 s on 2 cores) is once per session; it needs cmake and a C++ compiler
and is skipped, saying so, where either is missing. The TensorRT backend is compiled
(syntax only) against TensorRT's headers where they are found (TENSORRT_ROOT or the
system paths of NVIDIA's packages).
"""

import glob
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cpp"
CMAKE = shutil.which("cmake")
COMPILER = shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")


def _compare_module():
    spec = importlib.util.spec_from_file_location("compare_with_python",
                                                  EXAMPLE / "compare_with_python.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _compare_module()


def _openvino_cmake() -> str:
    import openvino

    return str(Path(openvino.__file__).parent / "cmake")


@pytest.fixture(scope="session")
def cpp_app(tmp_path_factory) -> Path:
    """build/.../retinaunet_infer, configured as `make cpp` configures it, warnings as errors."""
    if CMAKE is None or COMPILER is None:
        pytest.skip(f"building the C++ app needs cmake and a C++ compiler; this machine lacks "
                    f"{'cmake' if CMAKE is None else 'a C++ compiler'}")
    build = tmp_path_factory.mktemp("cpp_build")
    for command in ([CMAKE, "-S", str(EXAMPLE), "-B", str(build), f"-DOpenVINO_DIR={_openvino_cmake()}",
                     f"-DCMAKE_CXX_COMPILER={COMPILER}", "-DCMAKE_CXX_FLAGS=-Werror"],
                    [CMAKE, "--build", str(build), "--target", "retinaunet_infer", "-j", "2"]):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return build / "retinaunet_infer"


def test_the_app_runs_without_ld_library_path(cpp_app):
    """The build tree's RPATH finds the wheel's libraries: nothing to set before running."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    result = subprocess.run([str(cpp_app)], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: expected MODEL IMAGE")


@pytest.mark.parametrize("variant", ["model.onnx", "model.int8.onnx", "model.int8.e2e.onnx"])
def test_the_app_gives_the_predictors_masks_and_boxes(cpp_app, tiny_calibrated, tmp_path,
                                                      variant):
    """8 test images (the last larger than the tile, so it runs as a sliding window):
    pixel agreement >= 99.99% and >= 99% of the Predictor's boxes matched at IoU >= 0.9,
    on OpenVINO in both (fp32 with the f32 precision hint: scores within 1e-4; OpenVINO's
    bf16 default on this CPU would be off by about 1e-2). The end-to-end file's
    detections and labels come out of its graph: the app decodes nothing."""
    run, _ = tiny_calibrated
    tile = 128
    images = compare.test_images(run, 8, tile)
    report = compare.compare(cpp_app, run / variant, images, tmp_path, tile=tile,
                             runtime="openvino", threads=2)
    tiles = [row["tiles"] for row in report["rows"]]
    assert tiles[-1] > 1 and max(images[-1].shape) > tile, tiles
    assert report["python_boxes"] >= 10, report["rows"]   # the box check has boxes to check
    assert report["pixel_agreement"] >= 0.9999, report["rows"]
    assert report["matched_fraction"] >= 0.99, report["rows"]
    assert report["score_gap"] <= 1e-4, report["rows"]


# === Bad input: one line on stderr, exit code 1, no mask written ===

def _run(app, *args):
    return subprocess.run([str(app), *map(str, args)], capture_output=True, text=True,
                          check=False)


def _one_line_error(result, *fragments):
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.pgm"
    compare.write_pgm(path, np.random.default_rng(0).integers(0, 256, (40, 56), np.uint8))
    return path


def test_a_missing_file_is_one_line(cpp_app, tiny_exported, image, tmp_path):
    run, _ = tiny_exported
    mask = tmp_path / "mask.pgm"
    _one_line_error(_run(cpp_app, run / "model.onnx", tmp_path / "nope.pgm", mask),
                    "nope.pgm", "cannot open")
    _one_line_error(_run(cpp_app, tmp_path / "gone.onnx", image, mask), "gone.onnx", "cannot open")
    _one_line_error(_run(cpp_app, run / "model.onnx", image, mask, "--card", tmp_path / "c.json"),
                    "c.json", "cannot open")
    assert not mask.exists()


def test_an_image_of_the_wrong_channel_count_is_one_line(cpp_app, tiny_exported, tmp_path):
    run, _ = tiny_exported
    raw = tmp_path / "rgb.f32"
    raw.write_bytes(np.zeros((32, 48, 3), "<f4").tobytes())
    result = _run(cpp_app, run / "model.onnx", raw, tmp_path / "mask.pgm", "--shape", "32x48x3")
    _one_line_error(result, "rgb.f32", "3 channel(s), the model takes 1")
    assert not (tmp_path / "mask.pgm").exists()


def test_out_of_contract_pixels_are_one_line(cpp_app, tiny_exported, tmp_path):
    """A 16-bit PGM for a model trained on uint8 pixels, and a float image past pixel_max."""
    run, _ = tiny_exported
    wide = tmp_path / "wide.pgm"
    compare.write_pgm(wide, np.full((32, 32), 1000, np.uint16))
    _one_line_error(_run(cpp_app, run / "model.onnx", wide, tmp_path / "m.pgm"),
                    "a 16-bit image", "uint8")
    raw = tmp_path / "big.f32"
    values = np.zeros((32, 32, 1), "<f4")
    values[3, 5] = 300
    raw.write_bytes(values.tobytes())
    _one_line_error(_run(cpp_app, run / "model.onnx", raw, tmp_path / "m.pgm", "--shape",
                         "32x32x1"), "pixel value 300 at row 3, column 5")
    odd = tmp_path / "odd.pgm"   # maxval 200: stored values or rescaled? refused
    odd.write_bytes(b"P5\n32 32\n200\n" + bytes(32 * 32))
    _one_line_error(_run(cpp_app, run / "model.onnx", odd, tmp_path / "m.pgm"),
                    "PGM maxval 200", "maxval 255")
    small = tmp_path / "small.pgm"
    compare.write_pgm(small, np.zeros((4, 64), np.uint8))
    _one_line_error(_run(cpp_app, run / "model.onnx", small, tmp_path / "m.pgm"),
                    "smaller than one network stride")


@pytest.mark.parametrize("change, message", [
    (lambda card: card["class_names"].append("extra"), "classes, the model's mask"),
    (lambda card: card["anchors"]["scales"].pop(), "anchors at"),
    (lambda card: card["det_class_names"].append("extra"), "detection classes"),
    (lambda card: card["input"].update(channels=3), "input channel(s), the model takes 1"),
])
def test_a_card_that_does_not_match_the_model_is_one_line(cpp_app, tiny_exported, image,
                                                          tmp_path, change, message):
    run, _ = tiny_exported
    card = json.loads((run / "model_card.json").read_text())
    change(card)
    (tmp_path / "card.json").write_text(json.dumps(card))
    result = _run(cpp_app, run / "model.onnx", image, tmp_path / "mask.pgm", "--card",
                  tmp_path / "card.json")
    _one_line_error(result, "card.json does not match", "model.onnx", message, "--card")
    assert not (tmp_path / "mask.pgm").exists()


@pytest.mark.parametrize("normalization", [
    {"scheme": "zscore", "in_graph": False, "mean": 0.0, "std": 1.0, "scale": 1.0,
     "offset": 0.0},
    {"scheme": "zscore", "in_graph": False, "mean": 0.0, "std": 1.0, "scale": 1.0,
     "offset": 0.0, "nonzero_mask": True},
], ids=["zscore", "zscore-nonzero"])
def test_the_app_normalises_outside_the_graph_as_the_predictor(cpp_app, tiny_exported, tmp_path,
                                                              normalization):
    """A card whose normalisation is outside the graph (zscore: issue 21): the app
    applies it (normalize.hpp) exactly as `normalization.normalize` does for the Python
    Predictor, so both feed the graph the same values. The graph is the tiny model's (its
    own preprocess layer stays; both sides run the same file), with the card in its
    metadata replaced; some images have a zero background for the nonzero mask."""
    import onnx

    run, _ = tiny_exported
    card = json.loads((run / "model_card.json").read_text())
    card["normalization"] = normalization
    model = onnx.load(run / "model.onnx")
    for prop in model.metadata_props:
        if prop.key == "model_card":
            prop.value = json.dumps(card)
    onnx.save(model, tmp_path / "model.onnx")
    images = compare.test_images(run, 4, 128)
    images[1] = np.where(images[1] > np.median(images[1]), images[1], 0).astype(images[1].dtype)
    report = compare.compare(cpp_app, tmp_path / "model.onnx", images, tmp_path / "out",
                             tile=128, runtime="openvino", threads=2)
    assert report["pixel_agreement"] >= 0.9999, report["rows"]
    assert report["matched_fraction"] >= 0.99, report["rows"]
    assert report["score_gap"] <= 1e-4, report["rows"]


def test_the_app_normalises_ct_values_as_the_predictor(cpp_app, tiny_exported, tmp_path):
    """CT: raw float32 Hounsfield-like values (negative ones too), clipped and z-scored by
    the card's recorded statistics; the app's mask equals the Predictor's. An unsigned
    PGM (stored values, not Hounsfield units) is refused in one line."""
    import onnx

    from retinaunet_deploy.runtime import Predictor

    run, _ = tiny_exported
    card = json.loads((run / "model_card.json").read_text())
    card["normalization"] = {"scheme": "ct", "in_graph": False, "mean": 40.0, "std": 300.0,
                             "scale": 1.0, "offset": 0.0, "clip_low": -200.0,
                             "clip_high": 600.0}
    card["input"].update(pixel_dtype="int16", pixel_max=32767)
    model = onnx.load(run / "model.onnx")
    for prop in model.metadata_props:
        if prop.key == "model_card":
            prop.value = json.dumps(card)
    onnx.save(model, tmp_path / "model.onnx")
    image = compare.test_images(run, 2, 128)[0].astype(np.float32) * 4 - 300
    (tmp_path / "ct.f32").write_bytes(image.astype("<f4").tobytes())
    h, w = image.shape
    result = _run(cpp_app, tmp_path / "model.onnx", tmp_path / "ct.f32", tmp_path / "m.pgm",
                  "--shape", f"{h}x{w}x1", "--threads", "2")
    assert result.returncode == 0, result.stderr
    with Predictor.from_artifact(tmp_path / "model.onnx", runtime="openvino",
                                 threads=2) as predictor:
        python = predictor.predict(image.astype(np.int16))
    assert (compare.read_pgm(tmp_path / "m.pgm") == python.mask).mean() >= 0.9999
    compare.write_pgm(tmp_path / "in.pgm", np.zeros((32, 32), np.uint8))
    _one_line_error(_run(cpp_app, tmp_path / "model.onnx", tmp_path / "in.pgm",
                         tmp_path / "m2.pgm"), "in.pgm", "an unsigned 8-bit image", ".f32")


def test_model_files_it_cannot_run_are_one_line(cpp_app, image, tmp_path):
    (tmp_path / "model.plan").write_bytes(b"not an engine")
    result = _run(cpp_app, tmp_path / "model.plan", image, tmp_path / "mask.pgm")
    _one_line_error(result, "model.plan")   # no TensorRT in this build, or not an engine
    assert "no TensorRT backend" in result.stderr or "cannot deserialise" in result.stderr
    (tmp_path / "model.tflite").write_bytes(b"x")
    _one_line_error(_run(cpp_app, tmp_path / "model.tflite", image, tmp_path / "mask.pgm"),
                    "unknown model file type")
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    _one_line_error(_run(cpp_app, tmp_path / "broken.onnx", image, tmp_path / "mask.pgm"),
                    "broken.onnx", "OpenVINO cannot read it")


def test_a_command_line_it_cannot_parse_is_exit_code_2(cpp_app, image, tmp_path):
    result = _run(cpp_app, "model.onnx", image, tmp_path / "m.pgm", "--tile", "many")
    assert result.returncode == 2 and "--tile takes an integer, got many" in result.stderr


# === TensorRT: compiled against its headers where they exist ===

def _tensorrt_headers() -> tuple[str, str] | None:
    roots = [os.environ.get("TENSORRT_ROOT", ""), "/usr", "/usr/local/tensorrt"]
    trt = next((str(Path(r) / d) for r in roots if r for d in ("include",
                "include/x86_64-linux-gnu", "include/aarch64-linux-gnu")
                if (Path(r) / d / "NvInfer.h").is_file()), None)
    cuda = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", *glob.glob("/usr/local/cuda-*")]
    cuda = next((str(Path(c) / "include") for c in cuda
                 if c and (Path(c) / "include" / "cuda_runtime_api.h").is_file()), None)
    return (trt, cuda) if trt and cuda else None


def test_the_tensorrt_backend_compiles_against_tensorrt_headers():
    headers = _tensorrt_headers()
    if COMPILER is None or headers is None:
        pytest.skip("no TensorRT or CUDA headers here (set TENSORRT_ROOT to an unpacked "
                    "TensorRT, CUDA_HOME to a CUDA toolkit)")
    import openvino

    result = subprocess.run(
        [COMPILER, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
         "-DRETINAUNET_WITH_TENSORRT", "-DRETINAUNET_WITH_OPENVINO", "-isystem", headers[0],
         "-isystem", headers[1], "-isystem", str(Path(openvino.__file__).parent / "include"),
         str(EXAMPLE / "main.cpp")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-4000:]


def test_the_app_keeps_what_predict_keeps_by_default(cpp_app, tiny_exported, tmp_path):
    """By default the app writes the detections scoring over 0.5 (predict's and serve's
    --score-threshold), the same boxes as the card's 0.05 run filtered at 0.5."""
    run, _ = tiny_exported
    image = compare.test_images(run, 2, 128)[0]
    compare.write_pgm(tmp_path / "in.pgm", image)
    found = {}
    for name, extra in (("default", ()), ("card", ("--score-threshold", "0.05"))):
        result = _run(cpp_app, run / "model.onnx", tmp_path / "in.pgm", tmp_path / "m.pgm",
                      "--json", tmp_path / f"{name}.json", *extra)
        assert result.returncode == 0, result.stderr
        found[name] = json.loads((tmp_path / f"{name}.json").read_text())["detections"]
    assert found["card"], "the tiny model finds boxes over 0.05 on a test image"
    assert found["default"] == [d for d in found["card"] if d["score"] > 0.5]
    bad = _run(cpp_app, run / "model.onnx", tmp_path / "in.pgm", tmp_path / "m.pgm",
               "--score-threshold", "2")
    assert bad.returncode == 2 and "--score-threshold must be in [0, 1]" in bad.stderr
