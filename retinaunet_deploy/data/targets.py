"""Detection targets (numpy): RetinaNet anchor matching of ground-truth boxes.

The boxes come from a sample's labels (`sample.instance_boxes`: one box per
instance, of the mask class under it).
"""

from __future__ import annotations

import numpy as np

from retinaunet_deploy.model.boxes import box_iou, encode_boxes

POSITIVE, NEGATIVE, IGNORED = 1.0, 0.0, -1.0


def match_anchors(boxes: np.ndarray, classes: np.ndarray, anchors: np.ndarray,
                  num_det_classes: int, positive_iou: float = 0.5, negative_iou: float = 0.4):
    """RetinaNet anchor assignment.

    An anchor is positive for the box it overlaps most when IoU >= positive_iou,
    negative when its best IoU < negative_iou, ignored in between; each box also
    claims its best anchor, so no box is left without a positive.

    Args:
        boxes: (M, 4) float32 y1x1y2x2; classes: (M,) int detection classes (-1 = padding).
        anchors: (A, 4) float32.
    Returns:
        cls_target: (A, C + 1) float32: one-hot class in [:C], anchor state in [C]
            (1 positive, 0 negative, -1 ignored).
        box_target: (A, 5) float32: encoded deltas in [:4] (0 unless positive), state in [4].
    Raises:
        ValueError: a class >= `num_det_classes` (a mask class the model has no
            detection class for), instead of a silently shifted one-hot.
    """
    keep = classes >= 0
    boxes, classes = boxes[keep], classes[keep]
    if len(classes) and classes.max() >= num_det_classes:
        raise ValueError(f"detection class {int(classes.max())} outside 0..{num_det_classes - 1}: "
                         f"the masks hold a class the model was not built for")
    num_anchors = len(anchors)
    state = np.full(num_anchors, NEGATIVE, np.float32)
    one_hot = np.zeros((num_anchors, num_det_classes), np.float32)
    deltas = np.zeros((num_anchors, 4), np.float32)
    if len(boxes):
        iou = box_iou(anchors, boxes)                      # (A, M)
        best_box = iou.argmax(axis=1)
        best_iou = iou[np.arange(num_anchors), best_box]
        state[best_iou >= negative_iou] = IGNORED
        state[best_iou >= positive_iou] = POSITIVE
        forced = iou.argmax(axis=0)                        # best anchor of each box
        best_box[forced] = np.arange(len(boxes))
        state[forced] = POSITIVE
        positive = state == POSITIVE
        one_hot[positive, classes[best_box[positive]]] = 1.0
        deltas[positive] = encode_boxes(boxes[best_box[positive]], anchors[positive])
    return (np.concatenate([one_hot, state[:, None]], axis=1),
            np.concatenate([deltas, state[:, None]], axis=1))
