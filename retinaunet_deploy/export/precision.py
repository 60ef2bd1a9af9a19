"""FP16 variant: ``model.onnx`` -> ``model.fp16.onnx``.

Weights and compute become float16; the graph's inputs and outputs stay
float32 (casts at the edges), so apps feed and read the same tensors. Nodes on
the block list stay float32:

* the input normalisation (`preprocess` Rescaling): raw 16-bit pixels reach
  65535, beyond float16's largest finite value (65504);
* ops named in `FP16Options.op_block_list` (Softmax by default: the mask's
  probabilities are what the agreement is measured on; it costs nothing).

This is the file a strongly typed TensorRT network builds an FP16 engine from.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

DEFAULT_OP_BLOCK_LIST = ("Softmax",)


@dataclass
class FP16Options:
    op_block_list: tuple[str, ...] = DEFAULT_OP_BLOCK_LIST

    def to_dict(self) -> dict:
        return asdict(self)


NORMALISATION_OPS = ("Mul", "Add", "Sub", "Div")


def preprocess_node_names(proto) -> list[str]:
    """Nodes of the in-graph normalisation (the Keras `preprocess` Rescaling).

    Found by structure, not by name (a renamed or re-exported graph keeps it): the
    elementwise arithmetic reached from the graph input before anything else.
    For this model that is `image * scale + offset`, a Mul and an Add.
    """
    initializers = {init.name for init in proto.graph.initializer}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    frontier = [value.name for value in proto.graph.input if value.name not in initializers]
    found: list[str] = []
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.op_type in NORMALISATION_OPS and node.name not in found:
                found.append(node.name)
                frontier.extend(node.output)
    return found


def to_fp16(proto, options: FP16Options | None = None):
    """Convert an fp32 ModelProto to fp16 with fp32 I/O; returns (proto, blocked node names)."""
    from onnxconverter_common import float16

    options = options or FP16Options()
    blocked_nodes = preprocess_node_names(proto)
    with warnings.catch_warnings():
        # It warns once per tiny weight it rounds to fp16's smallest normal; the
        # agreement measured afterwards is what tells whether that matters.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            proto, keep_io_types=True, op_block_list=list(options.op_block_list),
            node_block_list=blocked_nodes)
    # The converter leaves float32 value_info on tensors it re-types around blocked
    # nodes (ONNX Runtime then refuses the file); value_info is optional, so re-infer it.
    import onnx

    del converted.graph.value_info[:]
    converted = onnx.shape_inference.infer_shapes(converted)
    blocked = blocked_nodes + [n.name for n in proto.graph.node
                               if n.op_type in options.op_block_list]
    return converted, blocked


def unshare_conv_biases(proto) -> int:
    """Give every Conv/ConvTranspose its own bias initializer; returns how many were copied.

    RetinaNet's subnets are shared across levels, so after slimming one bias
    tensor feeds several Conv nodes. ONNX Runtime's QOperator quantiser turns a
    bias into int32 at (input scale x weight scale) of the *first* node that uses
    it and reuses that for the others, whose inputs have other scales: measured on
    the trained small model, the stride-4 and stride-8 class logits then
    saturated at -10.5 and -5.2 and every detection was lost.
    """
    from onnx import numpy_helper

    initializers = {init.name: init for init in proto.graph.initializer}
    users: dict[str, int] = {}
    copied = 0
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 3:
            continue
        bias = node.input[2]
        users[bias] = users.get(bias, 0) + 1
        if users[bias] > 1 and bias in initializers:
            copy = numpy_helper.from_array(numpy_helper.to_array(initializers[bias]),
                                           f"{bias}__{node.name}")
            proto.graph.initializer.append(copy)
            node.input[2] = copy.name
            copied += 1
    return copied
