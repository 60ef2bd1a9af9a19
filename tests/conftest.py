import os
import shutil

import pytest

# Quiet TensorFlow's C++ start-up logs in test output; set before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_configure(config):
    """TensorFlow reads its thread counts once per process: every test's Keras runs with
    the 2 threads the stages are asked for (`configure_tensorflow` refuses a switch)."""
    from retinaunet_deploy.runtime.backends import configure_tensorflow

    configure_tensorflow(2)

TINY = {"preset": "tiny", "size": 64, "batch_size": 8, "train_images": 16, "val_images": 8,
        "test_images": 8, "steps_per_epoch": 20}


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """A tiny model trained for 10 epochs of 20 batches of 64x64 patches from synthetic
    images of 80-160 px (about 30 s; test Dice about 0.57, AP@0.1 about 0.4): (run_dir, card)."""
    from retinaunet_deploy.train import TrainOptions, train

    out = tmp_path_factory.mktemp("tiny_trained")
    card = train(TrainOptions(epochs=10, learning_rate=5e-3, **TINY), out, verbose=0)
    return out, card


@pytest.fixture(scope="session")
def tiny_exported(tiny_trained, tmp_path_factory):
    """The tiny run with model.onnx exported: (run_dir, parity figures)."""
    from retinaunet_deploy.export.onnx import export_onnx

    run_dir, _ = tiny_trained
    out = tmp_path_factory.mktemp("tiny_exported") / "run"
    shutil.copytree(run_dir, out)
    return out, export_onnx(out)


@pytest.fixture
def run_copy(tiny_exported, tmp_path):
    """A private copy of the exported tiny run, for tests that damage it."""
    out = tmp_path / "run"
    shutil.copytree(tiny_exported[0], out)
    return out


@pytest.fixture(scope="session")
def tiny_calibrated(tiny_exported, tmp_path_factory):
    """The tiny run with FP16 and INT8 variants: (run_dir, calibration report).

    The tiny model is barely trained (low-margin probabilities flip under any
    quantisation, and its few confident boxes sit near the 0.5 score line), so it
    is gated leniently; the real targets are measured on the trained small model.
    """
    from retinaunet_deploy.export.calibration import CalibrationOptions, calibrate

    run = tmp_path_factory.mktemp("tiny_calibrated") / "run"
    shutil.copytree(tiny_exported[0], run)
    report = calibrate(run, CalibrationOptions.from_flat(
        calibration_images=16, eval_images=16, threads=2, pixel_agreement=0.98, mean_dice=0.8,
        matched_fraction=0.7, max_ap_drop=0.1,
        # OpenVINO is judged, not tuned for: the barely trained tiny model misses there by
        # far (tests/test_fallback.py tests tuning).
        fallback_runtimes=("onnxruntime",)))
    return run, report
