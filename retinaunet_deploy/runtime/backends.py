"""Backends: run a RetinaUNet artifact on a preprocessed batch, nothing more.

Every backend takes (N, H, W, C) float32 raw pixel values (the graph
normalises) and returns a dict of output name -> numpy array (`mask`, and with
heads `cls_logits`, `box_deltas`). Validation, batching and postprocess live in
`Predictor`, so every backend is treated the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import check_onnx_external_data
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.runtime.tensorrt import TensorRTBackend  # imports TensorRT lazily


def load_keras_model(path: Path):
    """Load a `.keras` file with safe_mode=True (no arbitrary code from the file)."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} not found")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file; all mean the same
        raise ArtifactError(f"cannot load {path} ({type(error).__name__}: "
                            f"{str(error).splitlines()[0][:200]}); re-run "
                            f"'retinaunet-deploy train' to rewrite it") from error


def traced_call(model, jit_compile: bool = False):
    """`model(x, training=False)` as one tf.function for every batch, height and width.

    The signature's symbolic (None) axes give a single trace that serves any input
    size, instead of a retrace per new image size.
    """
    import tensorflow as tf

    signature = [tf.TensorSpec((None, None, None, model.input_shape[-1]), tf.float32)]
    return tf.function(lambda x: model(x, training=False), input_signature=signature,
                       jit_compile=jit_compile)


class KerasBackend:
    """The float reference: the Keras model in a compiled tf.function."""

    suffix = ".keras"

    def __init__(self, path: Path, threads: int | None = None):

        if threads:
            _set_tf_threads(threads)
        self.path = Path(path)
        self.model = load_keras_model(self.path)
        self._card = None
        self._call = traced_call(self.model)

    @classmethod
    def from_model(cls, model, card: dict) -> KerasBackend:
        """A backend over an in-memory Keras model (validation while training)."""
        backend = cls.__new__(cls)
        backend.path, backend.model, backend._card = None, model, card
        backend._call = traced_call(model)
        return backend

    def card(self) -> dict | None:
        """The run's model card, beside the model."""
        from retinaunet_deploy.card import load_card
        from retinaunet_deploy.names import CARD

        if self._card is not None:
            return self._card
        return load_card(self.path.parent) if (self.path.parent / CARD).exists() else None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.asarray(value) for name, value in self._call(batch).items()}


class OnnxRuntimeBackend:
    """An `.onnx` file in an ONNX Runtime session (CPU here; CUDA where a GPU is)."""

    suffix = ".onnx"

    def __init__(self, path: Path, threads: int | None = None,
                 providers: list | None = None, optimize: bool = True):
        """
        Args:
            providers: provider names, or (name, options) pairs such as
                `providers.tensorrt_provider(fp16=True, cache_dir=...)`; None: every
                provider that can load here (CUDA when a GPU is present, then CPU).
        """
        import onnxruntime as ort

        from retinaunet_deploy.runtime.providers import (
            check_providers,
            check_session_providers,
            default_providers,
        )

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path} not found")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        check_onnx_external_data(self.path)  # before ONNX Runtime reads anything it names
        providers = check_providers(providers) if providers else default_providers()
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:  # ORT raises its own pybind types for bad files
            raise ArtifactError(f"cannot load {self.path} ({str(error).splitlines()[0][:200]}); "
                                f"re-run 'retinaunet-deploy export' to rewrite it") from error
        check_session_providers(self.path, providers, self.session.get_providers())
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def card(self) -> dict | None:
        """The model card embedded in the ONNX metadata (parsed as JSON, never evaluated)."""
        text = self.session.get_modelmeta().custom_metadata_map.get("model_card")
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ArtifactError(f"{self.path} has a corrupt model_card in its metadata; "
                                f"re-export it") from error

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, outputs))


BACKENDS = {backend.suffix: backend
            for backend in (KerasBackend, OnnxRuntimeBackend, TensorRTBackend)}


def _set_tf_threads(threads: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process: keep its setting
        pass
