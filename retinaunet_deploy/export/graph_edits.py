"""Edits of the exported ONNX graph that leave its arithmetic exactly as it was.

Every edit here is checked again by the export stage's parity measurement.
"""

from __future__ import annotations

import re

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


# tf2onnx's process-wide name counter ("Transpose__874"), a tensor's output index
# (":0"), and its symbolic dimensions ("unk__1288", also inside "(unk__1289//2)").
_COUNTER = re.compile(r"__\d+")
_OUTPUT_INDEX = re.compile(r":\d+$")
_SYMBOLIC_DIM = re.compile(r"unk__\d+")


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def canonicalise_names(proto, layer_names: bool = True) -> int:
    """Rename the graph's nodes, intermediate tensors and initializers deterministically,
    so that the same Keras model converted twice gives byte-identical ONNX.

    tf2onnx numbers the names it makes with a process-wide counter ("Transpose__874",
    "const_axes__216") and, when it merges identical constants, keeps whichever name
    it meets first in a hash-ordered set ("head_cls_conv1_5/.../ReadVariableOp:0" or
    "..._3/..."); its symbolic dimensions are numbered the same way ("unk__1288"). None
    of it changes what the graph computes, but all of it changes the file's sha256,
    which the manifest ties every FP16/INT8 variant to. Here, in the graph's own node
    order (tf2onnx's topological order of the TensorFlow graph, name-independent):

    * a node keeps its name less tf2onnx's counters ("retinaunet_1/enc1_relu1_1/Relu"
      stays; "Transpose__874" becomes "Transpose"), suffixed ``_1``, ``_2``... in node
      order where that repeats;
    * output ``k`` of node ``n`` is named ``n:k``, an initializer ``n:inI`` after the
      first node ``n`` that reads it (as its input ``I``), and the initializers are
      stored in that order;
    * value_info is kept for the tensors the graph still has (tf2onnx and onnxslim
      leave entries of removed ones), in node order, and symbolic dimensions
      ``unk__N`` are renumbered ``unk__0``, ``unk__1``... in order of appearance
      (graph inputs, outputs, value_info, then subgraphs alike).

    The graph's input and output names (the I/O contract) are kept. A subgraph
    (If/Loop body) is renamed the same way, its tensors' names prefixed with its
    node's name and attribute ("If/then_branch/Add:0"), its inputs ``PREFIX input:I``.
    Applied again, it changes nothing. With
    `layer_names` False, nodes are named by op type alone ("Relu_12"), so that two
    graphs compare equal whatever their names. Edits `proto` in place; returns how
    many tensor names changed.
    """
    graph = proto.graph
    kept = {value.name for value in graph.input} | {value.name for value in graph.output}
    renames: dict[str, str] = {}
    _assign_names(graph, "", kept, renames, set(kept), layer_names)
    _apply_names(graph, renames)
    _renumber_symbolic_dims(graph, {})
    return sum(old != new for old, new in renames.items())


def _assign_names(graph, prefix: str, kept: set[str], renames: dict[str, str],
                  tensors: set[str], layer_names: bool) -> None:
    """Name `graph`'s nodes (in place) and record its tensors' new names in `renames`
    (tensor names are unique across all scopes of a model, so one map serves all)."""
    initializers = {init.name for init in graph.initializer}
    for index, value in enumerate(graph.input):
        if value.name not in kept:
            renames[value.name] = _unique(f"{prefix}input:{index}", tensors)
    nodes: set[str] = set()
    for node in graph.node:
        base = (layer_names and _OUTPUT_INDEX.sub("", _COUNTER.sub("", node.name))
                or node.op_type)
        node.name = _unique(base, nodes)
        for index, name in enumerate(node.input):
            if name in initializers and name not in renames and name not in kept:
                renames[name] = _unique(f"{prefix}{node.name}:in{index}", tensors)
        for index, name in enumerate(node.output):
            if name and name not in kept:
                renames[name] = _unique(f"{prefix}{node.name}:{index}", tensors)
        for attribute, subgraphs in _subgraphs(node):
            for index, subgraph in enumerate(subgraphs):
                where = attribute if len(subgraphs) == 1 else f"{attribute}{index}"
                _assign_names(subgraph, f"{prefix}{node.name}/{where}/", set(), renames,
                              tensors, layer_names)
    for index, init in enumerate(graph.initializer):  # read by no node of this graph
        if init.name not in renames and init.name not in kept:
            renames[init.name] = _unique(f"{prefix}initializer:{index}", tensors)


def _subgraphs(node) -> list[tuple[str, list]]:
    """(attribute name, its graphs) of each graph-valued attribute of `node`."""
    from onnx import AttributeProto

    found = []
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            found.append((attribute.name, [attribute.g]))
        elif attribute.type == AttributeProto.GRAPHS:
            found.append((attribute.name, list(attribute.graphs)))
    return found


def _apply_names(graph, renames: dict[str, str]) -> None:
    """Rename every tensor `graph` (and its subgraphs) reads, writes, stores or
    describes; store initializers and value_info in order of their new names' making,
    dropping value_info of tensors no node makes any more."""
    def rename(name: str) -> str:
        return renames.get(name, name)

    for node in graph.node:
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
        for _, subgraphs in _subgraphs(node):
            for subgraph in subgraphs:
                _apply_names(subgraph, renames)
    for value in list(graph.input) + list(graph.output):  # the top graph's are kept
        value.name = rename(value.name)
    order = {name: index for index, name in enumerate(renames.values())}
    inits = [_copy(init) for init in graph.initializer]
    for init in inits:
        init.name = rename(init.name)
    inits.sort(key=lambda init: order.get(init.name, -1))
    infos: dict[str, object] = {}
    for info in graph.value_info:
        if info.name in renames and renames[info.name] not in infos:
            infos[renames[info.name]] = _copy(info)
            infos[renames[info.name]].name = renames[info.name]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]
    graph.value_info.extend(infos[name] for name in sorted(infos, key=order.get))


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _renumber_symbolic_dims(graph, numbers: dict[str, str]) -> None:
    """``unk__N`` -> ``unk__0``, ``unk__1``... in order of first appearance, everywhere
    alike (equal symbols stay equal)."""
    def renumber(match) -> str:
        return numbers.setdefault(match.group(0), f"unk__{len(numbers)}")

    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = _SYMBOLIC_DIM.sub(renumber, dim.dim_param)
    for node in graph.node:
        for _, subgraphs in _subgraphs(node):
            for subgraph in subgraphs:
                _renumber_symbolic_dims(subgraph, numbers)
