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
    defined_mean,
    dice_per_class,
    iou_per_class,
)
from retinaunet_deploy.label_rules import VOID_LABEL

AP_THRESHOLDS = (0.1, 0.5)  # 0.1 is the Retina U-Net papers' figure
ABSENT = ("in neither the truth nor the prediction of these images: n/a, left out of the "
          "means")


def sample_truths(samples) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sample, its ground-truth (boxes (M, 4), classes (M,)), one box per instance."""
    return [instance_boxes(sample.instances, sample.mask) for sample in samples]


def _rounded(value: float | None, array_rounding: bool = False) -> float | None:
    """4 decimals (per-class Dice and IoU as numpy rounds, the rest as Python does, as
    before), None for an undefined figure."""
    if value is None or np.isnan(value):
        return None
    return float(np.round(value, 4)) if array_rounding else round(float(value), 4)


def evaluate_predictions(predictions, samples, class_names, num_det_classes: int | None = None,
                         truths=None) -> dict:
    """Score per-image predictions on their samples.

    Args:
        predictions: per image, an object with ``mask`` (H, W) class indices and
            ``detections`` (`postprocess.Detections` or None), e.g. `Prediction`.
        samples: the `folder.Sample`s predicted, in the same order and sizes. Truth
            pixels holding `VOID_LABEL` (the loaders' void, ``--ignore-index``) are
            left out when it is not a class (K <= 255).
        class_names: K mask class names, background first.
        num_det_classes: detection classes (the card's); default K - 1.
        truths: `sample_truths(samples)`, when already computed.
    Returns:
        JSON-ready dict (no NaN): the image count, per-class Dice and IoU over
        foreground classes (null for a class absent from truth and prediction,
        listed in ``absent_classes``) and their means over the defined ones (null,
        with ``mean_dice_reason``, when none is); with detections per-class AP (null
        for a class without a truth box) and mAP at IoU 0.1 and 0.5 over the defined
        ones (null with ``map@T_reason`` when no class has a truth box).
    """
    num_classes = len(class_names)
    ignore = VOID_LABEL if num_classes <= VOID_LABEL else None
    predicted = np.concatenate([p.mask.ravel() for p in predictions])
    truth = np.concatenate([s.mask.ravel() for s in samples])
    dice = dice_per_class(predicted, truth, num_classes, ignore)[1:]
    iou = iou_per_class(predicted, truth, num_classes, ignore)[1:]
    foreground = list(class_names[1:])
    report = {
        "images": len(samples),
        "dice": {name: _rounded(v, True) for name, v in zip(foreground, dice)},
        "iou": {name: _rounded(v, True) for name, v in zip(foreground, iou)},
        "mean_dice": _rounded(defined_mean(dice)),
        "mean_iou": _rounded(defined_mean(iou)),
    }
    absent = [name for name, value in zip(foreground, dice) if np.isnan(value)]
    if absent:
        report["absent_classes"] = absent
        report["absent_reason"] = ABSENT
    if report["mean_dice"] is None:
        report["mean_dice_reason"] = report["mean_iou_reason"] = (
            "no foreground class in the truth or the prediction of these images")
    if predictions and predictions[0].detections is not None:
        detections = [p.detections for p in predictions]
        truths = truths if truths is not None else sample_truths(samples)
        num_det = num_det_classes or max(1, num_classes - 1)
        report["objects"] = int(sum(len(c) for _, c in truths))
        for threshold in AP_THRESHOLDS:
            ap = average_precision(detections, truths, num_det, threshold)
            names = foreground if num_det == len(foreground) else [f"det_{c}" for c in
                                                                   range(num_det)]
            report[f"ap@{threshold}"] = dict(zip(names, map(_rounded, ap)))
            report[f"map@{threshold}"] = _rounded(defined_mean(ap))
            if report[f"map@{threshold}"] is None:
                report[f"map@{threshold}_reason"] = "no ground-truth object in these images"
    return report
