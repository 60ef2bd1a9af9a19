"""tf.data pipeline: shuffle, flips, detection targets, batch, prefetch.

Yields ``(image, targets)`` with image (H, W, C) float32 raw pixel values (the
model normalises in-graph) and targets a dict keyed by output name:

* ``mask``: (H, W) int32 class indices;
* ``cls_logits``: (A, C + 1) float32 one-hot + anchor state (`targets.match_anchors`);
* ``box_deltas``: (A, 5) float32 deltas + anchor state.
"""

from __future__ import annotations

import numpy as np

from retinaunet_deploy.data.targets import boxes_from_mask, match_anchors
from retinaunet_deploy.model.anchors import AnchorConfig, generate_anchors


def padded_boxes(masks: np.ndarray, num_classes: int):
    """Boxes of every mask, padded to the largest count.

    Returns (N, M, 4) float32 boxes and (N, M) int32 classes, -1 marking padding.
    """
    per_image = [boxes_from_mask(mask, num_classes) for mask in masks]
    most = max(1, max(len(c) for _, c in per_image))
    boxes = np.zeros((len(masks), most, 4), np.float32)
    classes = np.full((len(masks), most), -1, np.int32)
    for i, (b, c) in enumerate(per_image):
        boxes[i, :len(c)], classes[i, :len(c)] = b, c
    return boxes, classes


def make_dataset(images: np.ndarray, masks: np.ndarray, num_classes: int, batch_size: int,
                 anchor_config: AnchorConfig | None = None, num_det_classes: int | None = None,
                 shuffle: bool = True, flips: bool = True, seed: int = 0):
    """Build the training tf.data.Dataset.

    Args:
        images: (N, H, W, C) uint8/uint16. masks: (N, H, W) class indices.
        anchor_config: the model's anchors; None for a model without detection heads.
        flips: random horizontal and vertical flips (boxes follow).
    """
    import tensorflow as tf

    n, height, width = masks.shape
    boxes, classes = padded_boxes(masks, num_classes)
    dataset = tf.data.Dataset.from_tensor_slices(
        (images.astype(np.float32), masks.astype(np.int32), boxes, classes))
    if shuffle:
        dataset = dataset.shuffle(n, seed=seed, reshuffle_each_iteration=True)

    def flip(element, rng_seed):
        # Stateless draws from a per-element seed: reproducible under a parallel map.
        image, mask, box, cls = element
        draws = tf.random.stateless_uniform([2], seed=rng_seed)
        # Mirror boxes with the pixels: x1' = W - x2, x2' = W - x1 (and likewise in y).
        if draws[0] < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
            box = tf.stack([box[:, 0], width - box[:, 3], box[:, 2], width - box[:, 1]], axis=1)
        if draws[1] < 0.5:
            image, mask = image[::-1], mask[::-1]
            box = tf.stack([height - box[:, 2], box[:, 1], height - box[:, 0], box[:, 3]], axis=1)
        return image, mask, box, cls

    if flips:
        element_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, element_seeds)).map(
            flip, num_parallel_calls=tf.data.AUTOTUNE)

    if anchor_config is None:
        dataset = dataset.map(lambda image, mask, box, cls: (image, {"mask": mask}))
    else:
        anchors = generate_anchors(anchor_config, (height, width))
        a = len(anchors)

        def encode(box, cls):
            return match_anchors(box, cls, anchors, num_det_classes)

        def with_targets(image, mask, box, cls):
            cls_target, box_target = tf.numpy_function(encode, [box, cls],
                                                       [tf.float32, tf.float32])
            cls_target.set_shape((a, num_det_classes + 1))
            box_target.set_shape((a, 5))
            return image, {"mask": mask, "cls_logits": cls_target, "box_deltas": box_target}

        dataset = dataset.map(with_targets, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
