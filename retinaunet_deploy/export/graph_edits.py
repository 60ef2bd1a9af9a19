"""Edits of the exported ONNX graph that leave its arithmetic exactly as it was.

Every edit here is checked again by the export stage's parity measurement.
"""

from __future__ import annotations

from onnx import helper

# Ops that only read a tensor's shape: they may still consume a crop's input.
SHAPE_ONLY_OPS = ("Shape",)


def _attribute(node, name, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _crop_free(node) -> bool:
    """A ConvTranspose whose full output already is stride x input: kernel == stride,
    no pads, output padding, dilation or explicit output shape."""
    kernel, strides = _attribute(node, "kernel_shape"), _attribute(node, "strides")
    auto_pad = _attribute(node, "auto_pad", b"NOTSET")
    return (kernel is not None and list(kernel) == list(strides or [1] * len(kernel))
            and not any(_attribute(node, "pads", []))
            and not any(_attribute(node, "output_padding", []))
            and all(d == 1 for d in _attribute(node, "dilations", []))
            and _attribute(node, "output_shape") is None
            and auto_pad in (b"NOTSET", "NOTSET", b"VALID", "VALID"))


def drop_identity_transpose_crops(proto) -> int:
    """Remove the Slice -> Pad that tf2onnx puts after a crop-free ConvTranspose.

    tf2onnx writes a Keras ``Conv2DTranspose(padding="same")`` with dynamic height
    and width as ConvTranspose -> Slice -> Pad, cropping and padding its output to
    the 'same' size that Shape ops compute at run time. The full output is
    (in - 1) * stride + kernel, so with kernel == stride (the U-Net's 2x2 stride-2
    up-convolutions) the crop and the pad are both empty. Runtimes still run them:
    OpenVINO in reference kernels, 1.4 ms of 41 ms for the seed model at 128x128,
    in float between the int8 up-convolution and its concat. Returns how many
    pairs were removed.
    """
    graph = proto.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {value.name for value in graph.output}
    renames: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "ConvTranspose" or not _crop_free(node):
            continue
        result = node.output[0]
        crops = [c for c in consumers.get(result, []) if c.op_type not in SHAPE_ONLY_OPS]
        if len(crops) != 1 or crops[0].op_type != "Slice" or crops[0].input[0] != result:
            continue
        last = crops[0]
        pads = consumers.get(last.output[0], [])
        if (len(pads) == 1 and pads[0].op_type == "Pad" and pads[0].input[0] == last.output[0]
                and last.output[0] not in graph_outputs):
            last = pads[0]
        if last.output[0] in graph_outputs:
            continue
        renames[last.output[0]] = result
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renames:
                node.input[index] = renames[name]
    drop_dead_nodes(graph)
    return len(renames)


def drop_dead_nodes(graph) -> None:
    """Remove nodes whose outputs nothing reads (repeatedly), then unread initializers."""
    outputs = {value.name for value in graph.output}
    while True:
        read = outputs | {name for node in graph.node for name in node.input}
        dead = [node for node in graph.node if not any(out in read for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = outputs | {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in read]:
        graph.initializer.remove(init)
