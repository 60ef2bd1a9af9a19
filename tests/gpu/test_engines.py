"""TensorRT engines from the tiny model: build, agree with Keras, refuse a mismatched target.

Skipped without TensorRT and a CUDA device (see conftest.py). Same lenient gates
as the tiny model's calibration: it is barely trained, so low-margin pixels flip
under any reduced precision.
"""

import json
import shutil

import numpy as np
import pytest

from retinaunet_deploy.data.splits import held_out_set
from retinaunet_deploy.errors import ArtifactError


@pytest.fixture(scope="module")
def engine_run(tiny_calibrated, tmp_path_factory):
    from retinaunet_deploy.export.tensorrt import EngineOptions, build_engine

    run = tmp_path_factory.mktemp("engines") / "run"
    shutil.copytree(tiny_calibrated[0], run)
    for precision in ("fp16", "int8"):
        build_engine(run, EngineOptions(precision=precision, opt_batch=4, max_batch=8,
                                        workspace_mib=512))
    return run


def _masks(predictor, images):
    """Masks of whole images of any size, through the Predictor (padding, tiling)."""
    return np.concatenate([p.mask.ravel() for p in predictor.predict(images)])


def _images(card, count):
    return [sample.image for sample in held_out_set(card, count)]


@pytest.mark.parametrize("precision,min_agreement", [("fp16", 0.995), ("int8", 0.98)])
def test_engine_mask_agrees_with_keras(engine_run, precision, min_agreement):
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.runtime import Predictor

    images = _images(load_card(engine_run), 16)
    reference = _masks(Predictor.from_artifact(engine_run / "model.keras"), images)
    engine = Predictor.from_artifact(engine_run / f"model.{precision}.plan")
    masks = _masks(engine, images)
    assert masks.shape == reference.shape
    assert float(np.mean(masks == reference)) >= min_agreement
    # The Predictor feeds the batch the engine was tuned for.
    assert engine.batch_size == engine.backend.opt_batch
    # The backend's own chunking: 19 images = 8 + 8 + 3 (profile max 8), each chunk one
    # engine call, the same outputs as one image at a time.
    crop = np.stack([image[:64, :64] for image in images] * 2)[:19].astype(np.float32)
    whole = engine.backend.run(crop)
    single = [engine.backend.run(crop[i:i + 1]) for i in range(len(crop))]
    for name, value in whole.items():
        assert value.shape[0] == 19
        assert np.allclose(value, np.concatenate([s[name] for s in single]), atol=1e-3)
    # Beyond the profile's max size the Predictor tiles.
    big = np.pad(images[0], [(0, 1200 - images[0].shape[0]), (0, 1200 - images[0].shape[1]),
                             (0, 0)], mode="wrap")
    assert engine.tile == 1024 and not engine.fits_whole(1200, 1200)  # the profile's max
    assert engine.predict(big).mask.shape == (1200, 1200)


def test_manifest_records_engine_target_and_parent(engine_run):
    manifest = json.loads((engine_run / "manifest.json").read_text())
    entry = manifest["artifacts"]["model.int8.plan"]
    assert entry["parent"]["file"] == "model.int8.onnx"
    assert set(entry["target"]) == {"tensorrt", "gpu", "compute_capability"}


def test_engine_for_another_gpu_is_refused(engine_run, tmp_path):
    from retinaunet_deploy.runtime import Predictor

    run = tmp_path / "run"
    shutil.copytree(engine_run, run)
    path = run / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artifacts"]["model.fp16.plan"]["target"].update(gpu="Some Other GPU",
                                                               compute_capability="1.0")
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="cannot run here: built for Some Other GPU"):
        Predictor.from_artifact(run / "model.fp16.plan")


def test_onnxruntime_cuda_provider_matches_cpu(tiny_calibrated):
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.runtime import Predictor
    from retinaunet_deploy.runtime.providers import CPU, cuda_provider

    run, _ = tiny_calibrated
    images = _images(load_card(run), 8)
    cpu = Predictor.from_artifact(run / "model.onnx", providers=[CPU])
    gpu = Predictor.from_artifact(run / "model.onnx", providers=[cuda_provider(), CPU])
    assert "CUDAExecutionProvider" in gpu.backend.providers
    assert float(np.mean(_masks(cpu, images) == _masks(gpu, images))) >= 0.999
