"""Segmentation and detection metrics (numpy).

Dice and IoU are computed over a whole set of images per class (pixel counts
summed over the set, not averaged per image), so images without a class do
not produce undefined values. A class absent from both the truth and the
prediction of the whole set has no Dice or IoU (NaN: "n/a"), and a mean leaves
it out (`defined_mean`): it is never counted as a perfect 1.0, which would let
classes that never occur inflate the mean. Void truth pixels (``ignore``, the
run's ``--ignore-index``) are left out of every count. AP is the all-point
interpolated area under the precision-recall curve (PASCAL VOC 2010+ / COCO
style), per class.
"""

from __future__ import annotations

import numpy as np

from retinaunet_deploy.model.boxes import box_iou


def confusion_counts(pred: np.ndarray, truth: np.ndarray, num_classes: int,
                     ignore: int | None = None) -> np.ndarray:
    """(K, K) pixel counts, rows = truth class, columns = predicted class.

    Args:
        pred, truth: integer class indices of any (equal) shape.
        ignore: a truth value marking void pixels, left out; None: none.
    Raises:
        ValueError: a class outside 0..K-1 (other than `ignore`) in either, which
            would otherwise land in another class's cell.
    """
    pred = np.asarray(pred).astype(np.int64).ravel()
    truth = np.asarray(truth).astype(np.int64).ravel()
    if ignore is not None:
        kept = truth != ignore
        pred, truth = pred[kept], truth[kept]
    for name, values in (("truth", truth), ("prediction", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds class {int(values.max())} outside 0..{num_classes - 1}")
    return np.bincount(truth * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes)


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int,
                   ignore: int | None = None) -> np.ndarray:
    """(K,) float64 Dice 2|P∩T| / (|P| + |T|) per class over all (non-void) pixels; NaN
    (n/a) where the class is in neither; 0.0 where it is in only one."""
    counts = confusion_counts(pred, truth, num_classes, ignore)
    tp = np.diag(counts).astype(np.float64)
    denominator = counts.sum(0) + counts.sum(1)
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), np.nan)


def iou_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int,
                  ignore: int | None = None) -> np.ndarray:
    """(K,) float64 IoU |P∩T| / |P∪T| per class over all (non-void) pixels; NaN (n/a)
    where the class is in neither; 0.0 where it is in only one."""
    counts = confusion_counts(pred, truth, num_classes, ignore)
    tp = np.diag(counts).astype(np.float64)
    union = counts.sum(0) + counts.sum(1) - tp
    return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def detection_hits(detections, truths, num_classes: int, iou_threshold: float) -> list[dict]:
    """Per class, every detection's hit or miss, in descending score order.

    Matching is per image (greedy by score, each truth box taken once), so a set of
    images is any multiset of them: `ap_from_hits` weights images by how often
    they occur, which is what a bootstrap over images needs.

    Returns, per class: ``image`` (D,) int image index, ``hit`` (D,) bool, and
    ``truths`` (N,) int truth boxes per image.
    """
    per_class = []
    for cls in range(num_classes):
        scores, hits, images, totals = [], [], [], []
        for index, (det, (gt_boxes, gt_classes)) in enumerate(zip(detections, truths)):
            gt = np.asarray(gt_boxes, np.float32).reshape(-1, 4)[np.asarray(gt_classes) == cls]
            totals.append(len(gt))
            mine = det.classes == cls
            boxes, det_scores = det.boxes[mine], det.scores[mine]
            taken = np.zeros(len(gt), bool)
            overlaps = box_iou(boxes, gt) if len(gt) else np.zeros((len(boxes), 0))
            for i in np.argsort(-det_scores, kind="stable"):
                candidates = np.where(taken, -1.0, overlaps[i]) if len(gt) else np.zeros(0)
                best = int(np.argmax(candidates)) if len(gt) else -1
                hit = best >= 0 and candidates[best] >= iou_threshold
                if hit:
                    taken[best] = True
                scores.append(det_scores[i])
                hits.append(hit)
                images.append(index)
        order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
        per_class.append({"image": np.asarray(images, np.int64)[order],
                          "hit": np.asarray(hits, bool)[order],
                          "truths": np.asarray(totals, np.int64)})
    return per_class


def ap_from_hits(per_class: list[dict], weights: np.ndarray) -> np.ndarray:
    """(B, C) AP of B image multisets: `weights` (B, N) is how often each image occurs.

    All-point interpolated AP; NaN for a class with no truth box in a multiset.
    Repeating an image repeats its detections at the same score; evaluating the
    curve only after each repeated block gives the same interpolated AP, since
    precision rises through a block of hits and falls through a block of misses.
    """
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    aps = np.full((len(weights), len(per_class)), np.nan)
    for cls, hits in enumerate(per_class):
        total = weights @ hits["truths"]
        counted = total > 0
        if not counted.any():
            continue
        w = weights[:, hits["image"]]                    # (B, D)
        tp = np.cumsum(w * hits["hit"], axis=1)
        seen = np.cumsum(w, axis=1)
        precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
        recall = tp / np.maximum(total, 1)[:, None]
        b = len(weights)
        recall = np.concatenate([np.zeros((b, 1)), recall, recall[:, -1:] if recall.shape[1]
                                 else np.zeros((b, 1))], axis=1)
        precision = np.concatenate([np.ones((b, 1)), precision, np.zeros((b, 1))], axis=1)
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        ap = np.sum(np.diff(recall, axis=1) * precision[:, 1:], axis=1)
        aps[counted, cls] = ap[counted]
    return aps


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
    hits = detection_hits(detections, truths, num_classes, iou_threshold)
    return ap_from_hits(hits, np.ones(len(detections)))[0]


def defined_mean(values) -> float | None:
    """Mean of the defined (non-NaN) values; None when none is defined (n/a)."""
    values = np.asarray(values, np.float64)
    return float(values[~np.isnan(values)].mean()) if np.any(~np.isnan(values)) else None


def nan_mean(values) -> float:
    """Mean ignoring NaN; NaN when every value is NaN."""
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")
