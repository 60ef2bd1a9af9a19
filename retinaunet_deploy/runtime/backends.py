"""The Keras and ONNX Runtime backends: run a RetinaUNet artifact on a batch, nothing more.

Every backend (`runtime.base.Backend`, opened through `runtime.registry`) takes
(N, H, W, C) float32 raw pixel values (the graph normalises) and returns a dict
of output name -> numpy array (`mask`, and with heads `cls_logits`, `box_deltas`). Validation, batching and postprocess live in
`Predictor`, so every backend is treated the same.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from retinaunet_deploy import remake
from retinaunet_deploy.artifacts import check_onnx_external_data
from retinaunet_deploy.card import ModelCard, embedded_card, load_card
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.runtime.base import BackendBase


def load_keras_model(path: Path):
    """Load a `.keras` file with safe_mode=True (no arbitrary code from the file)."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} not found; {remake.missing(path)}")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file; all mean the same
        raise ArtifactError(f"cannot load {path} ({type(error).__name__}: "
                            f"{str(error).splitlines()[0][:200]}); "
                            f"{remake.remedy(path, 're-train it')}") from error


def traced_call(model, jit_compile: bool = False):
    """`model(x, training=False)` as one tf.function for every batch, height and width.

    The signature's symbolic (None) axes give a single trace that serves any input
    size, instead of a retrace per new image size.
    """
    import tensorflow as tf

    signature = [tf.TensorSpec((None, None, None, model.input_shape[-1]), tf.float32)]
    return tf.function(lambda x: model(x, training=False), input_signature=signature,
                       jit_compile=jit_compile)


class KerasBackend(BackendBase):
    """The float reference: the Keras model in a compiled tf.function.

    `threads` is TensorFlow's intra-op count in this process, read back
    (`tensorflow_threads`; TensorFlow sets its pools once per process, see
    `configure_tensorflow`).
    """

    def __init__(self, path: Path, threads: int | None = None):
        configure_tensorflow(threads)
        self.path = Path(path)
        self.threads = _keras_threads(threads)
        self.model = load_keras_model(self.path)
        self._card = None
        self._call = traced_call(self.model)

    @classmethod
    def from_model(cls, model, card: ModelCard) -> KerasBackend:
        """A backend over an in-memory Keras model (validation while training)."""
        backend = cls.__new__(cls)
        backend.path, backend.model, backend._card = None, model, card
        backend.threads = tensorflow_threads() or None
        backend._call = traced_call(model)
        return backend

    def card(self) -> ModelCard | None:
        """The run's model card, beside the model."""
        from retinaunet_deploy.names import CARD

        if self._card is not None:
            return self._card
        return load_card(self.path.parent) if (self.path.parent / CARD).exists() else None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self._check_open()
        return {name: np.asarray(value) for name, value in self._call(batch).items()}

    def _release(self) -> None:
        # The traced functions hold the model's variables; dropping both frees them
        # (TensorFlow's process-wide state, its thread pools, stays).
        self.model = self._call = None


def _keras_threads(threads: int | None) -> int | None:
    """TensorFlow's intra-op thread count read back, refused if it is not the one asked for
    (a Keras row on TensorFlow's default pool would make each speed-up over it a
    comparison of thread counts)."""
    current = tensorflow_threads() or None
    if threads and current != threads:
        raise ConfigError(f"Keras runs with {current or 'default'} intra-op threads, not the "
                          f"{threads} asked for (TensorFlow sets its thread pools once per "
                          f"process); open it in a fresh process with {threads} threads "
                          f"(--threads {threads}), or call configure_tensorflow({threads}) "
                          f"before anything runs TensorFlow")
    return current


class KerasFastest(KerasBackend):
    """The Keras reference as the bench times it: a compiled tf.function, with XLA when
    that is faster here (the keras runtime's ``fastest_timing=True``).

    `run` is the plain traced function (the reference `calibrate` stores, used for
    fidelity): XLA compiles once per input shape, and whole test images come in
    many sizes. After `use_fastest()` (the bench, before timing one shape) it runs
    the faster of the two.
    """

    def __init__(self, path: Path, threads: int | None = None):
        from retinaunet_deploy.timing import interleaved_latency

        super().__init__(path, threads=threads)
        plain = self._call
        xla = traced_call(self.model, jit_compile=True)
        probe = np.zeros((1, 128, 128, self.model.input_shape[-1]), np.float32)
        figures = interleaved_latency({"tf.function": lambda: plain(probe),
                                       "tf.function + XLA": lambda: xla(probe)},
                                      rounds=5, warmup=2)
        self.mode = min(figures, key=lambda k: figures[k]["p50_ms"])
        self._fastest = xla if self.mode == "tf.function + XLA" else plain
        self.timing_note = (f"timed as {self.mode}; {self.threads} intra-op thread(s), "
                            f"asserted")

    def use_fastest(self) -> None:
        """Run the mode chosen for timing from now on."""
        self._check_open()
        self._call = self._fastest

    def _release(self) -> None:
        super()._release()
        self._fastest = None


class OnnxRuntimeBackend(BackendBase):
    """An `.onnx` file in an ONNX Runtime session (CPU here; CUDA where a GPU is)."""

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
            CPU,
            check_providers,
            check_session_providers,
            default_providers,
        )

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path} not found; {remake.missing(self.path)}")
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
                                f"{remake.remedy(self.path)}") from error
        check_session_providers(self.path, providers, self.session.get_providers())
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()
        # Read back from the session (0: ONNX Runtime's default pool); a GPU provider
        # first runs the graph on the device: no host thread count applies.
        self.threads = (self.session.get_session_options().intra_op_num_threads or None
                        if self.providers[0] == CPU else None)

    def card(self) -> ModelCard | None:
        """The model card embedded in the ONNX metadata (parsed as JSON, never evaluated)."""
        self._check_open()
        return embedded_card(self.path, self.session.get_modelmeta().custom_metadata_map
                             .get("model_card"))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self._check_open()
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, outputs))

    def _release(self) -> None:
        self.session = None  # the session's memory (arena, weights) goes with it


def configure_tensorflow(threads: int | None = None) -> None:
    """Set TensorFlow up before it starts: `threads` intra-op threads (inter-op 1), and
    GPU memory that grows on demand (so TensorRT or ONNX Runtime in the same process
    still find memory for their engines).

    TensorFlow reads these once per process, when it first runs anything. Raises
    `ConfigError` when it already runs with another intra-op thread count: a
    Keras row timed with other threads than the rest would mislead.
    """
    import tensorflow as tf

    with contextlib.suppress(RuntimeError, ValueError):  # started already: it keeps its pool
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != threads:
            raise ConfigError(
                f"TensorFlow already runs in this process with "
                f"{current or 'its default number of'} intra-op threads and cannot switch to "
                f"{threads}; set threads before anything runs TensorFlow (a fresh process, "
                f"or configure_tensorflow({threads}) first)") from None


def tensorflow_threads() -> int:
    """TensorFlow's intra-op thread count in this process (0: its default, all cores)."""
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads()
