"""retinaunet-deploy: take a Keras RetinaUNet to the edge and prove every variant.

    from retinaunet_deploy import RetinaUNet, Predictor

Heavy libraries (TensorFlow, ONNX Runtime, TensorRT) are imported inside the
functions that need them, so importing this package and `--help` are instant;
the public names below are resolved on first use (PEP 562).
"""

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "RetinaUNet": "retinaunet_deploy.model.retinaunet",
    "Predictor": "retinaunet_deploy.runtime.predictor",
    "Prediction": "retinaunet_deploy.runtime.predictor",
    "Detections": "retinaunet_deploy.postprocess",
    "DetectionConfig": "retinaunet_deploy.postprocess",
}

__all__ = ["DetectionConfig", "Detections", "Prediction", "Predictor", "RetinaUNet", "__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'retinaunet_deploy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)
