"""Head outputs -> detections (plain numpy), used by every runtime and by evaluation.

Decoding is deliberately outside the exported graph (as in MONAI, NVIDIA's
RetinaNet examples and keras-retinanet): the ONNX/TensorRT model ends at
`cls_logits` and `box_deltas`, and this module turns them into boxes, the same
way for Keras, ONNX Runtime and TensorRT. The box arithmetic it builds on (decode,
clip, NMS) is `model.boxes`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from retinaunet_deploy.errors import InputError
from retinaunet_deploy.model.boxes import batched_nms, clip_boxes, decode_boxes

# What apps keep by default (`predict`, `serve`, the C++ app's --score-threshold): the
# card's own score_threshold (0.05) is for evaluation, where AP needs the low-score tail.
APP_SCORE_THRESHOLD = 0.5


@dataclass(frozen=True)
class DetectionConfig:
    """Thresholds of the postprocess (recorded in the model card).

    Attributes:
        score_threshold: drop (anchor, class) candidates with sigmoid score below this.
        iou_threshold: NMS suppresses same-class boxes overlapping a kept one by more.
        max_detections: keep at most this many boxes per image (highest scores).
        pre_nms_top_k: consider at most this many candidates per image before NMS.
    """

    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    max_detections: int = 100
    pre_nms_top_k: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Detections:
    """Detections of one image, sorted by descending score.

    Attributes:
        boxes: (K, 4) float32 (y1, x1, y2, x2) pixels, clipped to the image.
        scores: (K,) float32 sigmoid scores in [0, 1].
        classes: (K,) int32 detection class index in [0, num_det_classes);
            with default heads, detection class c is mask class c + 1.
        dropped: detections that passed the score threshold and NMS but were cut by
            `DetectionConfig.max_detections` (0: the cap was not hit); K + dropped is
            the count before the cap.
        candidates_dropped: (anchor, class) candidates over the score threshold left out
            before NMS by `DetectionConfig.pre_nms_top_k` (0: all were considered); when
            not 0, K + dropped is a lower bound of what an uncapped run finds.
        graph_capped: for an end-to-end file (`runtime.e2e`), the graph calls (the whole
            image, or tiles) whose output filled all its M rows: it may have found more,
            so K + dropped is then a lower bound too (0: no call hit M).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    dropped: int = 0
    candidates_dropped: int = 0
    graph_capped: int = 0

    @property
    def capped(self) -> bool:
        """Whether a cap (`max_detections` or `pre_nms_top_k`) left anything out, or an
        end-to-end graph filled its M rows (it may have)."""
        return bool(self.dropped or self.candidates_dropped or self.graph_capped)

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict:
        return {"boxes": self.boxes.tolist(), "scores": self.scores.tolist(),
                "classes": self.classes.tolist()}


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, float32."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)


def decode_detections(cls_logits: np.ndarray, box_deltas: np.ndarray, anchors: np.ndarray,
                      image_size: tuple[int, int],
                      config: DetectionConfig = DetectionConfig()) -> list[Detections]:
    """Turn head outputs into per-image detections.

    Args:
        cls_logits: (N, A, C) float logits, anchor order of `anchors.generate_anchors`.
        box_deltas: (N, A, 4) float (dy, dx, dh, dw) over `model.boxes.BOX_VARIANCES`.
        anchors: (A, 4) float32 y1x1y2x2 pixels.
        image_size: (H, W) of the model input, for clipping.
    Returns:
        One `Detections` per image; its `dropped` and `candidates_dropped` say how many
        the `max_detections` and `pre_nms_top_k` caps left out.
    """
    cls_logits = np.asarray(cls_logits)
    box_deltas = np.asarray(box_deltas)
    if cls_logits.ndim != 3 or box_deltas.ndim != 3 or box_deltas.shape[-1] != 4:
        raise InputError(f"expected cls_logits (N, A, C) and box_deltas (N, A, 4), got "
                         f"{cls_logits.shape} and {box_deltas.shape}")
    if cls_logits.shape[:2] != box_deltas.shape[:2] or cls_logits.shape[1] != len(anchors):
        raise InputError(f"cls_logits {cls_logits.shape}, box_deltas {box_deltas.shape} and "
                         f"{len(anchors)} anchors disagree on N or A; is the model card's anchor "
                         f"configuration the one this model was built with?")
    h, w = image_size
    num_classes = cls_logits.shape[-1]
    # Candidates are found on the logits (sigmoid is monotonic), with a small margin
    # so float rounding cannot drop one; the exact score test then runs on those only.
    # A 1024x1024 image has 1.5 M (anchor, class) pairs: sigmoid on all took 35 ms.
    threshold = config.score_threshold
    logit_floor = (-np.inf if threshold <= 0 else np.inf if threshold >= 1
                   else np.log(threshold / (1 - threshold)) - 1e-3)
    results = []
    for logits, deltas in zip(cls_logits, box_deltas):
        flat = logits.reshape(-1)  # (A*C,), index = anchor * C + class
        near = np.flatnonzero(flat > logit_floor)
        scores = np.zeros(flat.shape, np.float32)
        scores[near] = sigmoid(flat[near])
        candidates = near[scores[near] > threshold]
        candidates_dropped = max(0, candidates.size - config.pre_nms_top_k)
        if candidates.size > config.pre_nms_top_k:
            top = np.argpartition(-scores[candidates], config.pre_nms_top_k - 1)
            candidates = candidates[top[:config.pre_nms_top_k]]
        anchor_idx, classes = np.divmod(candidates, num_classes)
        boxes = decode_boxes(deltas[anchor_idx], anchors[anchor_idx])
        boxes = clip_boxes(boxes, (h, w))
        scores = scores[candidates]
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, classes = boxes[valid], scores[valid], classes[valid]
        kept = batched_nms(boxes, scores, classes, config.iou_threshold)
        keep = kept[:config.max_detections]
        results.append(Detections(boxes[keep].astype(np.float32), scores[keep].astype(np.float32),
                                  classes[keep].astype(np.int32), len(kept) - len(keep),
                                  int(candidates_dropped)))
    return results
