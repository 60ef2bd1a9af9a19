"""Segmentation and detection metrics (numpy).

Dice and IoU are computed over a whole set of images per class (pixel counts
summed over the set, not averaged per image), so images without a class do
not produce undefined values. AP is the all-point interpolated area under the
precision-recall curve (PASCAL VOC 2010+ / COCO style), per class.
"""

from __future__ import annotations

import numpy as np

from retinaunet_deploy.model.anchors import box_iou


def confusion_counts(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) pixel counts, rows = truth class, columns = predicted class."""
    pred = np.asarray(pred).astype(np.int64).ravel()
    truth = np.asarray(truth).astype(np.int64).ravel()
    return np.bincount(truth * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes)


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) Dice 2|P∩T| / (|P| + |T|) per class over all pixels; 1.0 where both are empty."""
    counts = confusion_counts(pred, truth, num_classes)
    tp = np.diag(counts).astype(np.float64)
    denominator = counts.sum(0) + counts.sum(1)
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)


def iou_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) IoU |P∩T| / |P∪T| per class over all pixels; 1.0 where both are empty."""
    counts = confusion_counts(pred, truth, num_classes)
    tp = np.diag(counts).astype(np.float64)
    union = counts.sum(0) + counts.sum(1) - tp
    return np.where(union > 0, tp / np.maximum(union, 1), 1.0)


def average_precision(detections, truths, num_classes: int, iou_threshold: float) -> np.ndarray:
    """Per-class AP over a set of images.

    Args:
        detections: per image, a `postprocess.Detections` (boxes, scores, classes).
        truths: per image, (boxes (M, 4), classes (M,)) ground truth.
        num_classes: detection classes C.
        iou_threshold: a detection matches an unmatched same-class truth box at IoU >= this.
    Returns:
        (C,) float64 AP in [0, 1]; NaN for a class with no ground-truth box.
    """
    aps = np.full(num_classes, np.nan)
    for cls in range(num_classes):
        scores, hits, total = [], [], 0
        for det, (gt_boxes, gt_classes) in zip(detections, truths):
            gt = np.asarray(gt_boxes, np.float32).reshape(-1, 4)[np.asarray(gt_classes) == cls]
            total += len(gt)
            mine = det.classes == cls
            boxes, det_scores = det.boxes[mine], det.scores[mine]
            order = np.argsort(-det_scores, kind="stable")
            taken = np.zeros(len(gt), bool)
            overlaps = box_iou(boxes, gt) if len(gt) else np.zeros((len(boxes), 0))
            for i in order:
                scores.append(det_scores[i])
                candidates = np.where(taken, -1.0, overlaps[i]) if len(gt) else np.zeros(0)
                best = int(np.argmax(candidates)) if len(gt) else -1
                hit = best >= 0 and candidates[best] >= iou_threshold
                if hit:
                    taken[best] = True
                hits.append(hit)
        if total == 0:
            continue
        order = np.argsort(-np.asarray(scores), kind="stable")
        hits_sorted = np.asarray(hits, bool)[order]
        tp = np.cumsum(hits_sorted)
        precision = tp / np.arange(1, len(tp) + 1)
        recall = tp / total
        # All-point interpolation: precision made monotone from the right.
        recall = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
        precision = np.concatenate([[1.0], precision, [0.0]])
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        aps[cls] = float(np.sum(np.diff(recall) * precision[1:]))
    return aps


def nan_mean(values) -> float:
    """Mean ignoring NaN; NaN when every value is NaN."""
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")
