"""Evaluate model outputs against ground truth: mask Dice/IoU per class, detection AP.

Separate from running the model (Polygraphy's habit): `evaluate_outputs` is a
pure function of output arrays and ground-truth masks, so any backend's outputs
can be scored the same way.
"""

from __future__ import annotations

import numpy as np

from retinaunet_deploy.data.targets import boxes_from_mask
from retinaunet_deploy.metrics import average_precision, dice_per_class, iou_per_class, nan_mean
from retinaunet_deploy.model.anchors import AnchorConfig, generate_anchors
from retinaunet_deploy.postprocess import DetectionConfig, decode_detections

AP_THRESHOLDS = (0.1, 0.5)  # 0.1 is the Retina U-Net papers' figure


def keras_outputs(model, images: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Run a Keras RetinaUNet on (N, H, W, C) raw pixels; returns output name -> array."""
    outputs = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    return {name: np.asarray(value) for name, value in outputs.items()}


def evaluate_outputs(outputs: dict[str, np.ndarray], masks: np.ndarray, class_names,
                     anchor_config: AnchorConfig | None = None,
                     detection_config: DetectionConfig | None = None) -> dict:
    """Score model outputs on N images.

    Args:
        outputs: ``mask`` (N, H, W, K) probabilities and, with heads, ``cls_logits``
            (N, A, C) and ``box_deltas`` (N, A, 4).
        masks: (N, H, W) ground-truth class indices.
        class_names: K mask class names, background first.
        anchor_config: the model's anchors, or None without detection heads.
        detection_config: postprocess thresholds; `DetectionConfig()` when None.
    Returns:
        JSON-ready dict: per-class Dice and IoU over foreground classes, their
        means, and with heads per-class AP and mAP at IoU 0.1 and 0.5.
    """
    num_classes = len(class_names)
    predicted = outputs["mask"].argmax(-1)
    dice = dice_per_class(predicted, masks, num_classes)[1:]
    iou = iou_per_class(predicted, masks, num_classes)[1:]
    foreground = list(class_names[1:])
    report = {
        "images": len(masks),
        "dice": dict(zip(foreground, np.round(dice, 4).tolist())),
        "iou": dict(zip(foreground, np.round(iou, 4).tolist())),
        "mean_dice": round(float(dice.mean()), 4),
        "mean_iou": round(float(iou.mean()), 4),
    }
    if anchor_config is not None and "cls_logits" in outputs:
        height, width = masks.shape[1:3]
        anchors = generate_anchors(anchor_config, (height, width))
        detections = decode_detections(outputs["cls_logits"], outputs["box_deltas"], anchors,
                                       (height, width), detection_config or DetectionConfig())
        truths = [boxes_from_mask(mask, num_classes) for mask in masks]
        num_det = outputs["cls_logits"].shape[-1]
        for threshold in AP_THRESHOLDS:
            ap = average_precision(detections, truths, num_det, threshold)
            report[f"ap@{threshold}"] = dict(zip(foreground, [None if np.isnan(v) else
                                                              round(float(v), 4) for v in ap]))
            report[f"map@{threshold}"] = round(nan_mean(ap), 4)
    return report
