"""Evaluate predictions against ground truth: mask Dice/IoU per class, detection AP.

Separate from running the model (Polygraphy's habit): `evaluate_predictions` is a
pure function of per-image predictions (any backend, any image sizes, whole or
tiled) and the samples they were made from. Dice and IoU count pixels over the
whole set; ground-truth boxes are the samples' instances (`folder.instance_boxes`).
"""

from __future__ import annotations

import numpy as np

from retinaunet_deploy.data.sample import instance_boxes
from retinaunet_deploy.judge.metrics import (
    average_precision,
    dice_per_class,
    iou_per_class,
    nan_mean,
)
from retinaunet_deploy.strict_json import null_figure

AP_THRESHOLDS = (0.1, 0.5)  # 0.1 is the Retina U-Net papers' figure


def sample_truths(samples) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sample, its ground-truth (boxes (M, 4), classes (M,)), one box per instance."""
    return [instance_boxes(sample.instances, sample.mask) for sample in samples]


def evaluate_predictions(predictions, samples, class_names, num_det_classes: int | None = None,
                         truths=None) -> dict:
    """Score per-image predictions on their samples.

    Args:
        predictions: per image, an object with ``mask`` (H, W) class indices and
            ``detections`` (`postprocess.Detections` or None), e.g. `Prediction`.
        samples: the `folder.Sample`s predicted, in the same order and sizes.
        class_names: K mask class names, background first.
        num_det_classes: detection classes (the card's); default K - 1.
        truths: `sample_truths(samples)`, when already computed.
    Returns:
        JSON-ready dict: the image count, per-class Dice and IoU over foreground
        classes and their means, and with detections per-class AP and mAP at
        IoU 0.1 and 0.5 (a class's AP and the mAP are None when no ground-truth object
        is there to find: ``map@0.1_reason`` says so).
    """
    num_classes = len(class_names)
    predicted = np.concatenate([p.mask.ravel() for p in predictions])
    truth = np.concatenate([s.mask.ravel() for s in samples])
    dice = dice_per_class(predicted, truth, num_classes)[1:]
    iou = iou_per_class(predicted, truth, num_classes)[1:]
    foreground = list(class_names[1:])
    report = {
        "images": len(samples),
        "dice": dict(zip(foreground, np.round(dice, 4).tolist())),
        "iou": dict(zip(foreground, np.round(iou, 4).tolist())),
        "mean_dice": round(float(dice.mean()), 4),
        "mean_iou": round(float(iou.mean()), 4),
    }
    if predictions and predictions[0].detections is not None:
        detections = [p.detections for p in predictions]
        truths = truths if truths is not None else sample_truths(samples)
        num_det = num_det_classes or max(1, num_classes - 1)
        report["objects"] = int(sum(len(c) for _, c in truths))
        for threshold in AP_THRESHOLDS:
            ap = average_precision(detections, truths, num_det, threshold)
            names = foreground if num_det == len(foreground) else [f"det_{c}" for c in
                                                                   range(num_det)]
            report[f"ap@{threshold}"] = dict(zip(names, [None if np.isnan(v) else
                                                         round(float(v), 4) for v in ap]))
            null_figure(report, f"map@{threshold}", round(nan_mean(ap), 4),
                        "no ground-truth object in these images")
    return report
