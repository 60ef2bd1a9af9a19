"""Static check of an ONNX file against TensorRT's ONNX import rules, without TensorRT.

Engine builds happen on the device; this makes the reasons they would fail
visible here. The rules come from onnx-tensorrt's operator support matrix and
TensorRT's explicit-quantization requirements:

* every op is one TensorRT's ONNX parser imports (`SUPPORTED_OPS`), in the
  standard domain, opset within TensorRT 10's range (9..20);
* Conv / ConvTranspose weights are initializers, or DequantizeLinear of an
  initializer (explicit quantization);
* QuantizeLinear / DequantizeLinear: zero points all 0, quantized type int8
  (TensorRT rejects uint8 Q/DQ), activations per-tensor (scalar scale),
  weights per-channel on the output-channel axis (0 for Conv, 1 for ConvTranspose);
* no QOperator ops (QLinearConv...), which TensorRT does not import.

End-to-end files (`export.e2e`) add what their post-process needs (`E2E_OPS`:
``NonMaxSuppression``, imported as TensorRT's NMS layer since 8.5, and
``ScatterND``, ``And``), allowed in a ``*.e2e.onnx`` file only, and the
limits TensorRT documents for those layers, checked statically:

* ``TopK``: K a constant, K <= 3840 (TensorRT operator docs, TopK: "k <= 3840");
* ``NonMaxSuppression``: max_output_boxes_per_class, iou_threshold and
  score_threshold constants, the IoU threshold in [0, 1] (INMSLayer: "a scalar in
  range [0.0f, 1.0f]"), and a known number of candidate boxes (its boxes input's
  second dimension after ONNX shape inference) within the layer's TopK box limit,
  5000 (INMSLayer::setTopKBoxLimit; 2000 on SM 5.3 and 6.2 devices, Jetson
  TX1/TX2/Nano, reported in ``nms_boxes`` so the file's fit there can be read off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

OPSET_RANGE = (9, 20)
# ONNX ops TensorRT 10's parser imports that a convolutional segmentation or
# detection graph uses (a subset of onnx-tensorrt's support matrix).
SUPPORTED_OPS = frozenset({
    "Abs", "Add", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil",
    "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose",
    "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Elu", "Equal", "Erf", "Exp",
    "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "Greater", "GroupNormalization", "HardSigmoid",
    "Identity", "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less", "Log",
    "LogSoftmax", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mul", "Neg", "Pad", "Pow",
    "PRelu", "QuantizeLinear", "Range", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceSum", "Relu", "Reshape", "Resize", "Round", "Shape", "Sigmoid", "Sign", "Slice",
    "Softmax", "Softplus", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh",
    "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
})
QUANTIZED_TYPES = {"INT8", "FLOAT8E4M3FN", "INT4"}
# Ops an end-to-end file's post-process adds beyond `SUPPORTED_OPS` (onnx-tensorrt imports
# them: NonMaxSuppression as INMSLayer, TensorRT >= 8.5).
E2E_OPS = frozenset({"NonMaxSuppression", "ScatterND", "And"})
TOPK_MAX_K = 3840
NMS_TOPK_BOX_LIMIT = 5000
NMS_TOPK_BOX_LIMIT_SM53_62 = 2000


@dataclass
class TrtCheck:
    """The result: every problem found (empty = the file should import)."""

    path: str
    problems: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=list)
    qdq_nodes: int = 0
    nms_boxes: int | None = None    # candidate boxes per image of its NonMaxSuppression

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "problems": self.problems,
                "op_types": self.op_types, "qdq_nodes": self.qdq_nodes,
                "nms_boxes": self.nms_boxes}


def check_tensorrt_import(path: Path) -> TrtCheck:
    """Check one ONNX file; never raises for a rule violation (see `TrtCheck.problems`)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from retinaunet_deploy.artifacts import load_onnx
    from retinaunet_deploy.names import is_end_to_end

    path = Path(path)
    model = load_onnx(path)
    graph = model.graph
    result = TrtCheck(str(path), op_types=sorted({n.op_type for n in graph.node}))
    init = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n.attribute[0].t for n in graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].t.dims is not None}
    producers = {o: n for n in graph.node for o in n.output}

    def tensor(name):
        source = init.get(name) or constants.get(name)
        return None if source is None else numpy_helper.to_array(source)

    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}.get("ai.onnx")
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        result.problems.append(f"opset {opset} is outside TensorRT 10's range "
                               f"{OPSET_RANGE[0]}..{OPSET_RANGE[1]}")
    for node in graph.node:
        where = f"{node.op_type} '{node.name}'"
        if node.domain not in ("", "ai.onnx"):
            result.problems.append(f"{where}: domain '{node.domain}' is not standard ONNX")
            continue
        allowed = SUPPORTED_OPS | E2E_OPS if is_end_to_end(path) else SUPPORTED_OPS
        if node.op_type not in allowed:
            result.problems.append(f"{where}: op not imported by TensorRT's ONNX parser")
            continue
        if node.op_type in ("TopK", "NonMaxSuppression"):
            _check_limits(model, node, tensor, result)
        if node.op_type in ("Conv", "ConvTranspose"):
            weight = node.input[1]
            dq = producers.get(weight)
            if weight not in init and not (dq is not None and dq.op_type == "DequantizeLinear"
                                           and dq.input[0] in init):
                result.problems.append(f"{where}: weights must be an initializer (or "
                                       f"DequantizeLinear of one)")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            result.qdq_nodes += 1
            zero_point = tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if zero_point is not None:
                kind = onnx.TensorProto.DataType.Name(
                    (init.get(node.input[2]) or constants[node.input[2]]).data_type)
                if kind not in QUANTIZED_TYPES:
                    result.problems.append(f"{where}: quantized type {kind.lower()}; TensorRT "
                                           f"needs int8 (symmetric, zero point 0)")
                if np.any(zero_point != 0):
                    result.problems.append(f"{where}: zero point {zero_point.reshape(-1)[:4]} "
                                           f"is not 0; TensorRT needs symmetric quantization")
            scale = tensor(node.input[1])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale is not None and scale.size > 1:
                consumer = next((n for n in graph.node if node.output[0] in n.input[1:2]
                                 and n.op_type in ("Conv", "ConvTranspose")), None)
                if consumer is None:
                    result.problems.append(f"{where}: per-channel scales on an activation; "
                                           f"TensorRT needs per-tensor activation scales")
                else:
                    expected = 0 if consumer.op_type == "Conv" else 1
                    if axis != expected:
                        result.problems.append(
                            f"{where}: weight quantization axis {axis}; {consumer.op_type} "
                            f"weights need per-channel axis {expected}")
    return result


def _second_dims(model) -> dict[str, int | None]:
    """Tensor name -> its second dimension after ONNX shape inference (None: unknown)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    dims = {}
    for value in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        shape = value.type.tensor_type.shape.dim
        dims[value.name] = (shape[1].dim_value if len(shape) > 1 and
                            shape[1].HasField("dim_value") else None)
    return dims


def _check_limits(model, node, tensor, result: TrtCheck) -> None:
    """TensorRT's documented TopK and NMS layer limits (module docstring) for one node."""
    import numpy as np

    where = f"{node.op_type} '{node.name}'"
    if node.op_type == "TopK":
        k = tensor(node.input[1])
        if k is None:
            result.problems.append(f"{where}: K is computed in the graph; TensorRT's TopK "
                                   f"needs a constant K <= {TOPK_MAX_K}")
        elif int(np.max(k)) > TOPK_MAX_K:
            result.problems.append(f"{where}: K = {int(np.max(k))} exceeds TensorRT's TopK "
                                   f"limit {TOPK_MAX_K}; lower the card's pre_nms_top_k / "
                                   f"max_detections")
        return
    inputs = list(node.input) + [""] * (5 - len(node.input))
    for index, what in ((2, "max_output_boxes_per_class"), (3, "iou_threshold"),
                        (4, "score_threshold")):
        if inputs[index] and tensor(inputs[index]) is None:
            result.problems.append(f"{where}: {what} is computed in the graph; TensorRT's NMS "
                                   f"layer needs a constant")
    iou = tensor(inputs[3]) if inputs[3] else None
    if iou is not None and not 0.0 <= float(np.max(iou)) <= 1.0:
        result.problems.append(f"{where}: IoU threshold {float(np.max(iou)):g} is outside "
                               f"[0, 1], which TensorRT's NMS layer requires")
    boxes = _second_dims(model).get(node.input[0])
    result.nms_boxes = boxes
    if boxes is None:
        result.problems.append(f"{where}: the number of candidate boxes is not fixed; "
                               f"TensorRT's NMS layer considers at most {NMS_TOPK_BOX_LIMIT} "
                               f"per image: bound them with a constant TopK")
    elif boxes > NMS_TOPK_BOX_LIMIT:
        result.problems.append(f"{where}: {boxes} candidate boxes exceed TensorRT's NMS TopK "
                               f"box limit {NMS_TOPK_BOX_LIMIT}; lower the card's "
                               f"pre_nms_top_k")
