"""One Predictor API over Keras and ONNX Runtime (and TensorRT where a GPU is)."""

from retinaunet_deploy.runtime.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
