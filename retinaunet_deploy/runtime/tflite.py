"""TFLite baseline: what a Keras user would otherwise ship to a CPU edge device.

Converted from the same Keras model: float32, and full-integer int8 (weights
and activations, TFLITE_BUILTINS_INT8, float32 I/O) calibrated on the images
given. Run by TFLite's interpreter with its default XNNPACK delegate.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np


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


class TFLiteBackend:
    """A `.tflite` file behind the backend interface: run(batch) -> outputs by name.

    TFLite drops the Keras output names: its outputs are `...:i`, in the order of
    the Keras model's `output_names`, which the caller passes.
    """

    suffix = ".tflite"

    def __init__(self, path: Path, output_names: list[str], threads: int | None = None):
        import warnings

        import tensorflow as tf

        self.path = Path(path)
        with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated" on TF >= 2.20
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_path=str(self.path),
                                                   num_threads=threads)
        self._shape = None
        self.output_names = list(output_names)

    def _resize(self, shape: tuple[int, ...]) -> None:
        # The model has symbolic batch, height and width: size the tensors per input shape.
        if self._shape != shape:
            detail = self.interpreter.get_input_details()[0]
            self.interpreter.resize_tensor_input(detail["index"], list(shape))
            self.interpreter.allocate_tensors()
            self._shape = shape

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self._resize(tuple(batch.shape))
        self.interpreter.set_tensor(self.interpreter.get_input_details()[0]["index"], batch)
        self.interpreter.invoke()
        outputs = {}
        for detail in self.interpreter.get_output_details():
            index = int(detail["name"].rsplit(":", 1)[-1])
            outputs[self.output_names[index]] = self.interpreter.get_tensor(detail["index"])
        return outputs
