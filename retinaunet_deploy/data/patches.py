"""Training patches cut from images of any size (numpy), and the batches `fit` reads.

As nnU-Net does: every patch has the training size; about a third of them are
centred on a random foreground pixel (so small objects are seen often enough),
the rest anywhere. An image smaller than the patch is padded with `pad_value`
(the training mean, which the in-graph normalisation maps to 0; the Predictor
pads the same way). Augmentations: flips, 90-degree rotations (square
patches), and an intensity gain and offset. Boxes are computed after the
augmentation from the patch's instance labels, so they always follow the pixels.

Batch ``k`` of the whole run is drawn from a generator seeded with ``(seed, k)``:
the same seed gives the same batches, whatever the dataset's size, and an epoch
is a fixed number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retinaunet_deploy.data.sample import Sample, instance_boxes


@dataclass(frozen=True)
class PatchOptions:
    """How patches are drawn (recorded in the model card with the training options)."""

    size: int = 128
    foreground_fraction: float = 1 / 3
    flips: bool = True
    rotations: bool = True
    intensity_jitter: float = 0.1     # gain in 1 +- this; offset +- this x pixel std


def pad_to(array: np.ndarray, height: int, width: int, value) -> np.ndarray:
    """Pad the first two axes at the bottom and right to at least (height, width)."""
    extra_h, extra_w = max(0, height - array.shape[0]), max(0, width - array.shape[1])
    if not extra_h and not extra_w:
        return array
    pad = [(0, extra_h), (0, extra_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, constant_values=value)


def cut_patch(sample: Sample, rng: np.random.Generator, options: PatchOptions,
              pad_value: float, centre_on_object: bool):
    """One augmented patch: image (S, S, C) float32, mask (S, S) uint8, instances (S, S)."""
    size = options.size
    image = pad_to(sample.image.astype(np.float32), size, size, pad_value)
    mask = pad_to(sample.mask, size, size, 0)
    instances = pad_to(sample.instances, size, size, 0)
    height, width = mask.shape
    foreground = np.flatnonzero(mask) if centre_on_object else np.zeros(0, np.int64)
    if foreground.size:
        cy, cx = np.divmod(int(foreground[rng.integers(foreground.size)]), width)
        top = int(np.clip(cy - size // 2, 0, height - size))
        left = int(np.clip(cx - size // 2, 0, width - size))
    else:
        top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    image, mask, instances = image[window], mask[window], instances[window]
    if options.flips:
        if rng.random() < 0.5:
            image, mask, instances = image[:, ::-1], mask[:, ::-1], instances[:, ::-1]
        if rng.random() < 0.5:
            image, mask, instances = image[::-1], mask[::-1], instances[::-1]
    if options.rotations:
        turns = int(rng.integers(4))
        image, mask, instances = (np.rot90(a, turns) for a in (image, mask, instances))
    return np.ascontiguousarray(image), np.ascontiguousarray(mask), np.ascontiguousarray(instances)


class PatchBatches:
    """Batches of (patches, targets) for Keras `fit`, drawn reproducibly from samples.

    Args:
        samples: the training split.
        anchors: (A, 4) anchors of the patch size, or None for a model without heads.
        num_det_classes: detection classes (for the targets).
        pixel_mean, pixel_std, pixel_max: of the training pixels (padding and jitter).
    """

    def __init__(self, samples: list[Sample], options: PatchOptions, batch_size: int,
                 anchors: np.ndarray | None, num_det_classes: int, pixel_mean: float,
                 pixel_std: float, pixel_max: float, seed: int = 0):
        self.samples, self.options, self.batch_size = samples, options, batch_size
        self.anchors, self.num_det_classes = anchors, num_det_classes
        self.pixel_mean, self.pixel_std, self.pixel_max = pixel_mean, pixel_std, pixel_max
        self.seed = seed
        # Images with objects can serve the foreground-centred patches.
        self.with_objects = [i for i, s in enumerate(samples) if s.mask.any()]

    def patches(self, index: int):
        """Batch `index` of the run as raw arrays: images (B, S, S, C) float32,
        masks (B, S, S) int32, and per patch its (boxes, classes)."""
        rng = np.random.default_rng([self.seed, index])
        images, masks, boxes = [], [], []
        jitter = self.options.intensity_jitter
        for _ in range(self.batch_size):
            on_object = bool(self.with_objects) and rng.random() < self.options.foreground_fraction
            pool = self.with_objects if on_object else range(len(self.samples))
            sample = self.samples[pool[int(rng.integers(len(pool)))]]
            image, mask, instances = cut_patch(sample, rng, self.options, self.pixel_mean,
                                               on_object)
            if jitter:
                gain = rng.uniform(1 - jitter, 1 + jitter)
                offset = rng.uniform(-jitter, jitter) * self.pixel_std
                image = np.clip((image - self.pixel_mean) * gain + self.pixel_mean + offset,
                                0, self.pixel_max)
            images.append(image)
            masks.append(mask.astype(np.int32))
            boxes.append(instance_boxes(instances, mask))
        return np.stack(images).astype(np.float32), np.stack(masks), boxes

    def batch(self, index: int):
        """Batch `index` as Keras reads it: (images, {output name: target})."""
        from retinaunet_deploy.data.targets import match_anchors

        images, masks, boxes = self.patches(index)
        targets = {"mask": masks}
        if self.anchors is not None:
            encoded = [match_anchors(b, c, self.anchors, self.num_det_classes) for b, c in boxes]
            targets["cls_logits"] = np.stack([e[0] for e in encoded])
            targets["box_deltas"] = np.stack([e[1] for e in encoded])
        return images, targets

    def dataset(self, steps: int):
        """A tf.data.Dataset of `steps` batches, in order, prefetched (one producer thread,
        so the order, and therefore the run, is reproducible)."""
        import tensorflow as tf

        first = self.batch(0)
        signature = (tf.TensorSpec((None, *first[0].shape[1:]), tf.float32),
                     {k: tf.TensorSpec((None, *v.shape[1:]), tf.as_dtype(v.dtype))
                      for k, v in first[1].items()})

        def generate():
            for index in range(steps):
                yield self.batch(index)

        return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)
