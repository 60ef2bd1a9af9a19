"""LiteRT (TFLite): what runs on ARM boards and phones, and the baseline a Keras user knows.

Converted from the same Keras model (`tf.lite.TFLiteConverter`): float32, or
full-integer int8 (weights and activations, TFLITE_BUILTINS_INT8, float32 I/O)
calibrated on the images given. Run by LiteRT's interpreter (`ai-edge-litert`,
which replaces the deprecated `tf.lite.Interpreter`) with its default XNNPACK
delegate, through the model's serving signature, so outputs come back by their
Keras names and the input is resized to any batch, height and width.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from retinaunet_deploy.card import ModelCard, load_card
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.runtime.base import BackendBase


def convert_to_tflite(model, calibration_images: np.ndarray | None = None) -> bytes:
    """Keras model -> TFLite flatbuffer; int8 when `calibration_images` are given."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration_images is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None].astype(np.float32)]
                                                    for image in calibration_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # The converter exports a SavedModel first and prints its whole signature
    # (hundreds of lines) on stdout; a CLI user should not see that.
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


class TFLiteBackend(BackendBase):
    """A `.tflite` file behind the backend interface: run(batch) -> outputs by name."""

    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        from retinaunet_deploy import remake

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path} not found; {remake.missing(self.path)}")
        # LiteRT's interpreter has no read-back of its thread count: `threads` is what it
        # was opened with (num_threads; None: LiteRT's default).
        self.threads = threads
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            signatures = self.interpreter.get_signature_list()
            (self.signature,) = signatures  # a Keras conversion has one: serving_default
            self.runner = self.interpreter.get_signature_runner(self.signature)
        except (ValueError, RuntimeError) as error:
            raise ArtifactError(f"cannot load {self.path} ({str(error).splitlines()[0][:200]}); "
                                f"{remake.remedy(self.path)}") from error
        (self.input_name,) = signatures[self.signature]["inputs"]
        self.output_names = list(signatures[self.signature]["outputs"])

    def card(self) -> ModelCard | None:
        """The run's model card, beside the file."""
        from retinaunet_deploy.names import CARD

        return load_card(self.path.parent) if (self.path.parent / CARD).exists() else None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self._check_open()
        # The runner resizes the input (and reallocates) whenever the shape changes.
        outputs = self.runner(**{self.input_name: np.ascontiguousarray(batch, np.float32)})
        return {name: np.array(value) for name, value in outputs.items()}

    def _release(self) -> None:
        self.runner = self.interpreter = None  # its tensors and XNNPACK's weights go too
