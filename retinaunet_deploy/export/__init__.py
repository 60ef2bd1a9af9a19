"""Export stages: ONNX (fp32), precision variants, TensorRT engines, Triton repositories."""
