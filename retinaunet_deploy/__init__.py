"""retinaunet-deploy: take a Keras RetinaUNet to the edge and prove every variant.

Heavy libraries (TensorFlow, ONNX Runtime, TensorRT) are imported inside the
functions that need them, so importing this package and `--help` are instant.
"""

__version__ = "0.1.0"
