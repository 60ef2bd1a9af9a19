"""End-to-end ONNX files: the network plus its post-process, in the graph.

`add_postprocess(proto, card)` appends to a plain file's graph (outputs `mask`,
`cls_logits`, `box_deltas`) what `postprocess.decode_detections` does in numpy,
with standard ONNX operators only (opset 17), and replaces the outputs by the
end-to-end contract (export/README.md, "End-to-end files")::

    num_detections     (N, 1)     int32    how many rows of the three below are real
    detection_boxes    (N, M, 4)  float32  y1, x1, y2, x2 input (padded) pixels, clipped
    detection_scores   (N, M)     float32  sigmoid scores, descending
    detection_classes  (N, M)     int32    detection class (`postprocess.Detections.classes`)
    labels             (N, H, W)  uint8    argmax of `mask` over classes

Rows from ``num_detections`` on are padding: boxes and scores 0, classes -1.
M is the card's ``postprocess.max_detections`` and the pre-NMS top-k its
``pre_nms_top_k``, both fixed in the graph (not scaled with the image size as
`runtime.Predictor.config_for` scales them; export/README.md says how the
Predictor treats a file that hits M).

The added subgraph, step by step (each as `model.anchors` / `model.boxes` /
`postprocess` compute it, in the same float32 arithmetic):

1. anchors for the input's H and W, read with ``Shape`` (H and W stay symbolic):
   per stride s, centres ``(arange(H / s) + 0.5) * s`` by rows then columns,
   the card's anchor shapes, y1x1y2x2, levels concatenated: the anchor order
   of `model.anchors.generate_anchors`;
2. scores: ``Sigmoid(cls_logits)``; every (anchor, class) pair with score
   > score_threshold is a candidate (others get a sentinel below it);
3. the top ``pre_nms_top_k`` candidates by score (``TopK`` with a constant K on
   the scores padded with K sentinels, so K never exceeds the axis);
4. their box deltas decoded against their anchors exactly as
   `model.boxes.decode_boxes` (``BOX_VARIANCES``, log-size clamp
   ``MAX_LOG_SIZE_DELTA``), clipped to [0, H] x [0, W]; empty boxes dropped;
5. per-class NMS: ``NonMaxSuppression`` on (N, C, K) class-masked scores with the
   card's IoU and score thresholds, at most M per class;
6. the global top M kept boxes by score (``ScatterND`` into a sentinel-filled
   (N, C * K) table, then ``TopK`` M), padded as above.
"""

from __future__ import annotations

import numpy as np

from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.model.anchors import anchor_shapes
from retinaunet_deploy.model.boxes import BOX_VARIANCES, MAX_LOG_SIZE_DELTA

OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes",
           "labels")
# metadata_props keys an end-to-end file carries beside the card.
E2E_KEY = "retinaunet_deploy.e2e"
POSTPROCESS_KEY = "e2e_postprocess"
PARENT_KEY = "e2e_parent"
PREFIX = "e2e/"


class _Graph:
    """A tiny node writer: ``g.op("Add", a, b)`` appends a node, returns its output name."""

    def __init__(self, graph):
        self.graph = graph
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{hint}_{self.count}"

    def const(self, value, dtype, hint: str = "const") -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, out: str | None = None,
           **attrs):
        import onnx

        names = [out] if out else [self.name(op_type.lower()) for _ in range(outputs)]
        self.graph.node.append(onnx.helper.make_node(op_type, list(inputs), names,
                                                     name=self.name(op_type), **attrs))
        return names[0] if outputs == 1 else names


def _centres(g: _Graph, length: str, stride: str, stride_f: str) -> tuple[str, str]:
    """(cells = length / stride (int64 scalar), centres (cells,) float32 pixels):
    ``(arange(cells) + 0.5) * stride``, as `model.anchors.generate_anchors`."""
    cells = g.op("Div", length, stride)
    index = g.op("Range", g.const(0, np.int64), cells, g.const(1, np.int64))
    centre = g.op("Add", g.op("Cast", index, to=1), g.const(0.5, np.float32))
    return cells, g.op("Mul", centre, stride_f)


def _anchors(g: _Graph, card: ModelCard, height: str, width: str) -> str:
    """(A, 4) float32 anchors of the input's (H, W) (int64 scalars), in head order."""
    config = card.anchors
    levels = []
    for stride in config.strides:
        s_int = g.const(stride, np.int64, "stride")
        s_float = g.const(stride, np.float32, "stride_f")
        half = anchor_shapes(config, stride)[None, None, :, :] / 2    # as generate_anchors
        k = half.shape[2]

        rows, cy = _centres(g, height, s_int, s_float)
        cols, cx = _centres(g, width, s_int, s_float)
        cy = g.op("Reshape", cy, g.const([-1, 1, 1], np.int64))        # (Hs, 1, 1)
        cx = g.op("Reshape", cx, g.const([1, -1, 1], np.int64))        # (1, Ws, 1)
        grid = g.op("Concat", g.op("Unsqueeze", rows, g.const([0], np.int64)),
                    g.op("Unsqueeze", cols, g.const([0], np.int64)),
                    g.const([k], np.int64), axis=0)                   # [Hs, Ws, K]
        half_h = g.const(half[0, 0, :, 0], np.float32, "half_h")      # (K,)
        half_w = g.const(half[0, 0, :, 1], np.float32, "half_w")
        corners = [g.op("Sub", cy, half_h), g.op("Sub", cx, half_w),
                   g.op("Add", cy, half_h), g.op("Add", cx, half_w)]
        corners = [g.op("Unsqueeze", g.op("Expand", c, grid), g.const([-1], np.int64))
                   for c in corners]                                  # (Hs, Ws, K, 1)
        levels.append(g.op("Reshape", g.op("Concat", *corners, axis=-1),
                           g.const([-1, 4], np.int64)))
    return levels[0] if len(levels) == 1 else g.op("Concat", *levels, axis=0)


def _decode(g: _Graph, deltas: str, anchors: str, height_f: str, width_f: str) -> list[str]:
    """`model.boxes.decode_boxes` then `clip_boxes` on (N, K, 4) deltas and anchors;
    returns [y1, x1, y2, x2], each (N, K, 1) float32."""
    d = g.op("Split", g.op("Mul", deltas, g.const(BOX_VARIANCES, np.float32, "variances")),
             g.const([1, 1, 1, 1], np.int64), outputs=4, axis=-1)
    a_y1, a_x1, a_y2, a_x2 = g.op("Split", anchors, g.const([1, 1, 1, 1], np.int64),
                                  outputs=4, axis=-1)
    half, two = g.const(0.5, np.float32), g.const(2.0, np.float32)
    ah, aw = g.op("Sub", a_y2, a_y1), g.op("Sub", a_x2, a_x1)
    ay, ax = g.op("Add", a_y1, g.op("Mul", half, ah)), g.op("Add", a_x1, g.op("Mul", half, aw))
    cy, cx = g.op("Add", ay, g.op("Mul", d[0], ah)), g.op("Add", ax, g.op("Mul", d[1], aw))
    clamp = g.const(MAX_LOG_SIZE_DELTA, np.float32, "max_log_size")
    h = g.op("Mul", ah, g.op("Exp", g.op("Min", d[2], clamp)))
    w = g.op("Mul", aw, g.op("Exp", g.op("Min", d[3], clamp)))
    h2, w2 = g.op("Div", h, two), g.op("Div", w, two)
    zero = g.const(0.0, np.float32)
    edges = [(g.op("Sub", cy, h2), height_f), (g.op("Sub", cx, w2), width_f),
             (g.op("Add", cy, h2), height_f), (g.op("Add", cx, w2), width_f)]
    return [g.op("Min", g.op("Max", value, zero), limit) for value, limit in edges]


def add_postprocess(proto, card: ModelCard):
    """Append the post-process subgraph (module docstring) to a plain file's graph, in place.

    Args:
        proto: an `onnx.ModelProto` with input `card.input.name` (N, H, W, C) and outputs
            `mask` (N, H, W, K), `cls_logits` (N, A, C), `box_deltas` (N, A, 4), float32.
        card: its model card (anchors, postprocess, number of detection classes).
    Returns:
        the same proto, its outputs replaced by `OUTPUTS`.
    Raises:
        ArtifactError: a graph without those outputs or a card without detection heads.
    """
    import onnx

    graph = proto.graph
    have = {o.name for o in graph.output}
    if not {"mask", "cls_logits", "box_deltas"} <= have or card.anchors is None:
        raise ArtifactError(f"an end-to-end file needs a model with detection heads (outputs "
                            f"mask, cls_logits, box_deltas), this one has {sorted(have)}")
    config = card.detection_config
    classes = int(card.num_det_classes)
    top_k, top_m = int(config.pre_nms_top_k), int(config.max_detections)
    threshold = float(config.score_threshold)
    sentinel = min(-1.0, threshold - 1.0)   # below every candidate's score
    g = _Graph(graph)
    i64 = np.int64

    shape = g.op("Shape", card.input.name)
    batch, height, width = (g.op("Gather", shape, g.const(axis, i64), axis=0)
                            for axis in (0, 1, 2))
    height_f, width_f = g.op("Cast", height, to=1), g.op("Cast", width, to=1)
    batch_1 = g.op("Unsqueeze", batch, g.const([0], i64))
    anchors = _anchors(g, card, height, width)

    # 2-3. candidates: score > threshold, the top K of the (anchor, class) pairs.
    scores = g.op("Reshape", g.op("Sigmoid", "cls_logits"), g.const([0, -1], i64))  # (N, A*C)
    sentinel_c = g.const(sentinel, np.float32, "sentinel")
    threshold_c = g.const(threshold, np.float32, "score_threshold")
    scores = g.op("Where", g.op("Greater", scores, threshold_c), scores, sentinel_c)
    padding = g.op("Expand", g.const([[sentinel]], np.float32, "sentinel_row"),
                   g.op("Concat", batch_1, g.const([top_k], i64), axis=0))
    values, flat_index = g.op("TopK", g.op("Concat", scores, padding, axis=1),
                              g.const([top_k], i64, "pre_nms_top_k"), outputs=2, axis=1,
                              largest=1, sorted=1)                     # (N, K)
    last = g.op("Sub", g.op("Gather", g.op("Shape", scores), g.const(1, i64), axis=0),
                g.const(1, i64))
    flat_index = g.op("Min", flat_index, last)   # padding rows point at a real pair
    c_const = g.const(classes, i64, "classes")
    anchor_index = g.op("Div", flat_index, c_const)
    class_index = g.op("Sub", flat_index, g.op("Mul", anchor_index, c_const))

    # 4. decode the candidates' boxes against their anchors, clip, drop empty ones.
    by_box = g.op("Concat", batch_1, g.const([top_k, 4], i64), axis=0)
    index_4 = g.op("Expand", g.op("Unsqueeze", anchor_index, g.const([-1], i64)), by_box)
    deltas = g.op("GatherElements", "box_deltas", index_4, axis=1)   # (N, K, 4)
    cand_anchors = g.op("Gather", anchors, anchor_index, axis=0)     # (N, K, 4)
    y1, x1, y2, x2 = _decode(g, deltas, cand_anchors, height_f, width_f)
    boxes = g.op("Concat", y1, x1, y2, x2, axis=-1)                 # (N, K, 4)
    nonempty = g.op("And", g.op("Greater", y2, y1), g.op("Greater", x2, x1))
    valid = g.op("And", g.op("Squeeze", nonempty, g.const([-1], i64)),
                 g.op("Greater", values, threshold_c))                # (N, K)
    values = g.op("Where", valid, values, sentinel_c)

    # 5. per-class NMS on class-masked scores (N, C, K).
    class_range = g.const(np.arange(classes).reshape(1, classes, 1), i64, "class_range")
    own_class = g.op("Equal", g.op("Unsqueeze", class_index, g.const([1], i64)), class_range)
    per_class = g.op("Where", own_class, g.op("Unsqueeze", values, g.const([1], i64)),
                     sentinel_c)
    selected = g.op("NonMaxSuppression", boxes, per_class,
                    g.const([top_m], i64, "max_output_boxes_per_class"),
                    g.const([config.iou_threshold], np.float32, "iou_threshold"),
                    g.const([threshold], np.float32, "nms_score_threshold"),
                    center_point_box=0)                               # (S, 3) [n, c, k]

    # 6. the global top M of the kept boxes, padded.
    table_shape = g.op("Concat", batch_1, g.const([classes, top_k], i64), axis=0)
    table = g.op("ScatterND", g.op("Expand", sentinel_c, table_shape), selected,
                 g.op("GatherND", per_class, selected))
    table = g.op("Reshape", table, g.const([0, -1], i64))            # (N, C*K)
    if classes * top_k < top_m:
        table = g.op("Concat", table, g.op("Expand", g.const([[sentinel]], np.float32), g.op(
            "Concat", batch_1, g.const([top_m - classes * top_k], i64), axis=0)), axis=1)
    kept_scores, kept_index = g.op("TopK", table, g.const([top_m], i64, "max_detections"),
                                   outputs=2, axis=1, largest=1, sorted=1)   # (N, M)
    kept_index = g.op("Min", kept_index, g.const(classes * top_k - 1, i64))
    k_const = g.const(top_k, i64, "top_k")
    kept_class = g.op("Div", kept_index, k_const)
    kept_box = g.op("Sub", kept_index, g.op("Mul", kept_class, k_const))
    by_det = g.op("Concat", batch_1, g.const([top_m, 4], i64), axis=0)
    kept_boxes = g.op("GatherElements", boxes, g.op(
        "Expand", g.op("Unsqueeze", kept_box, g.const([-1], i64)), by_det), axis=1)
    real = g.op("Greater", kept_scores, threshold_c)                  # (N, M)
    g.op("Where", g.op("Unsqueeze", real, g.const([-1], i64)), kept_boxes,
         g.const(0.0, np.float32), out="detection_boxes")
    g.op("Where", real, kept_scores, g.const(0.0, np.float32), out="detection_scores")
    g.op("Where", real, g.op("Cast", kept_class, to=onnx.TensorProto.INT32),
         g.const(-1, np.int32), out="detection_classes")
    g.op("ReduceSum", g.op("Cast", real, to=onnx.TensorProto.INT32), g.const([1], i64),
         keepdims=1, out="num_detections")
    g.op("Cast", g.op("ArgMax", "mask", axis=-1, keepdims=0), to=onnx.TensorProto.UINT8,
         out="labels")

    T = onnx.TensorProto
    del graph.output[:]
    graph.output.extend([
        onnx.helper.make_tensor_value_info("num_detections", T.INT32, ["batch", 1]),
        onnx.helper.make_tensor_value_info("detection_boxes", T.FLOAT, ["batch", top_m, 4]),
        onnx.helper.make_tensor_value_info("detection_scores", T.FLOAT, ["batch", top_m]),
        onnx.helper.make_tensor_value_info("detection_classes", T.INT32, ["batch", top_m]),
        onnx.helper.make_tensor_value_info("labels", T.UINT8, ["batch", "height", "width"]),
    ])
    return proto


def postprocess_record(card: ModelCard) -> dict:
    """What the graph fixed (`E2E_KEY`'s companion ``e2e_postprocess`` metadata): the
    card's thresholds, M (``max_detections``) and the pre-NMS top-k, and the outputs."""
    config = card.detection_config
    return {"score_threshold": float(config.score_threshold),
            "iou_threshold": float(config.iou_threshold),
            "max_detections": int(config.max_detections),
            "pre_nms_top_k": int(config.pre_nms_top_k),
            "outputs": list(OUTPUTS), "boxes": "y1x1y2x2 input pixels, clipped",
            "padding": {"boxes": 0.0, "scores": 0.0, "classes": -1}}


def end_to_end_model(plain_path, card: ModelCard, parent_name: str, parent_sha256: str):
    """The end-to-end `onnx.ModelProto` of a plain file: its graph with `add_postprocess`,
    its metadata kept (the card, the calibration range of an INT8 file) plus
    ``retinaunet_deploy.e2e = 1``, ``e2e_postprocess`` (`postprocess_record`, JSON) and
    ``e2e_parent`` ({"file", "sha256"} of the plain file, JSON); checked by `onnx.checker`.
    """
    import onnx

    from retinaunet_deploy.artifacts import load_onnx
    from retinaunet_deploy.strict_json import dumps_json

    proto = load_onnx(plain_path)
    add_postprocess(proto, card)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({E2E_KEY: "1",
                  POSTPROCESS_KEY: dumps_json(postprocess_record(card), sort_keys=True),
                  PARENT_KEY: dumps_json({"file": parent_name, "sha256": parent_sha256},
                                         sort_keys=True)})
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    return proto
