"""The backend contract (`runtime.base.Backend`), checked on every registered runtime that
can run here: any height and width, batch and single image, the card read back, the
threads read back, a corrupt file refused in one line, and `close()` releasing it.

A new runtime gets this coverage from its registry entry plus an entry in `ARTIFACTS`
(how to make a file it runs from the tiny run); one without is a failing test.
"""

import shutil

import numpy as np
import pytest

from retinaunet_deploy import names
from retinaunet_deploy.card import ModelCard, load_card
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.runtime.base import Backend, Limits
from retinaunet_deploy.runtime.registry import RUNTIMES, open_backend

THREADS = 2
# Libraries whose objects a backend holds while open, and must not after close().
RUNTIME_LIBRARIES = ("onnxruntime", "openvino", "tensorflow", "keras", "ai_edge_litert",
                     "tensorrt")


def _run_file(name):
    def make(run, tmp):
        return run / name
    return make


def _tflite(run, tmp):
    """model.keras converted to an fp32 .tflite in tmp, with the run's card beside it."""
    from retinaunet_deploy.runtime.backends import load_keras_model
    from retinaunet_deploy.runtime.tflite import convert_to_tflite

    path = tmp / "model.tflite"
    path.write_bytes(convert_to_tflite(load_keras_model(run / names.KERAS)))
    shutil.copy(run / names.CARD, tmp / names.CARD)
    return path


# How to make, from the tiny run, a file each runtime runs.
ARTIFACTS = {"keras": _run_file(names.KERAS), "onnxruntime": _run_file(names.ONNX),
             "openvino": _run_file(names.ONNX), "openvino-bf16": _run_file(names.ONNX),
             "tflite": _tflite}


def _runtimes():
    """Every registered CPU runtime; those that cannot run here are skipped with the reason
    (GPU runtimes have their own tests, in tests/gpu)."""
    params = []
    for name, runtime in RUNTIMES.items():
        if runtime.device != "cpu":
            continue
        reason = runtime.unavailable()
        params.append(pytest.param(name, marks=pytest.mark.skip(reason=reason) if reason
                                   else ()))
    return params


@pytest.fixture(scope="module", params=_runtimes())
def artifact(request, tiny_exported, tmp_path_factory):
    """(runtime name, a file of the tiny run it runs)."""
    name = request.param
    assert name in ARTIFACTS, (f"runtime {name!r} has no fixture in ARTIFACTS: add how to "
                               f"make a file it runs from the tiny run")
    return name, ARTIFACTS[name](tiny_exported[0], tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module")
def opened(artifact):
    name, path = artifact
    with open_backend(path, name, threads=THREADS) as backend:
        yield backend


def _runtime_objects(backend) -> list[str]:
    return [key for key, value in vars(backend).items()
            if type(value).__module__.split(".")[0] in RUNTIME_LIBRARIES]


def test_any_height_and_width_a_batch_and_a_single_image(opened, tiny_exported):
    card = load_card(tiny_exported[0])
    anchors = card.anchors
    rng = np.random.default_rng(0)
    assert isinstance(opened, Backend) and isinstance(opened.limits, Limits)
    for h, w in ((48, 80), (64, 64)):
        batch = rng.uniform(0, 255, (3, h, w, card.input.channels)).astype(np.float32)
        outputs = opened.run(batch)
        count = anchors.num_anchors((h, w))
        assert outputs["mask"].shape == (3, h, w, len(card.class_names))
        assert outputs["cls_logits"].shape == (3, count, len(card.det_class_names))
        assert outputs["box_deltas"].shape == (3, count, 4)
        assert all(value.dtype == np.float32 for value in outputs.values())
        np.testing.assert_allclose(outputs["mask"].sum(-1), 1, atol=1e-3)
        single = opened.run(batch[1:2])
        for key, value in single.items():
            assert value.shape == (1, *outputs[key].shape[1:])
            np.testing.assert_allclose(value[0], outputs[key][1], atol=2e-3, err_msg=key)


def test_the_card_is_read_back(opened, tiny_exported):
    card = opened.card()
    expected = load_card(tiny_exported[0])
    assert isinstance(card, ModelCard)
    for key in ("input", "class_names", "det_class_names", "anchors", "builder"):
        assert getattr(card, key) == getattr(expected, key), key
        assert card.to_dict()[key] == expected.to_dict()[key], key


def test_the_threads_are_read_back_from_the_runtime(opened):
    assert opened.threads == THREADS


def test_a_corrupt_file_is_refused_in_one_line(artifact, tmp_path):
    name, path = artifact
    corrupt = tmp_path / f"corrupt{path.suffix}"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(ArtifactError) as raised:
        open_backend(corrupt, name, threads=THREADS)
    message = str(raised.value)
    assert str(corrupt) in message and "\n" not in message


def test_close_releases_the_runtime(artifact):
    name, path = artifact
    batch = np.zeros((1, 32, 32, 1), np.float32)
    with open_backend(path, name, threads=THREADS) as backend:
        assert backend.run(batch)["mask"].shape == (1, 32, 32, 3)
        assert _runtime_objects(backend), "an open backend holds its runtime's objects"
    assert backend.closed and _runtime_objects(backend) == []
    with pytest.raises(ArtifactError, match="was closed; open it again"):
        backend.run(batch)
    backend.close()  # twice is fine
