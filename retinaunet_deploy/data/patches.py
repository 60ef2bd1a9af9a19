"""Training patches cut from images of any size (numpy), and the batches `fit` reads.

As nnU-Net does: every patch has the training size; about a third of them are
centred on a random foreground pixel (so small objects are seen often enough),
the rest anywhere. An image smaller than the patch is padded at the bottom and
right by mirroring (`pad_to`), exactly as the Predictor pads every image to a
stride multiple, so training and inference see the same kind of border: one
with no edge in it (a constant strip of the training mean made the float model
draw objects along the padded border). Augmentations: flips, 90-degree
rotations (square patches), and an intensity gain and offset. Boxes are
computed after the augmentation from the patch's instance labels, so they
always follow the pixels.

Batch ``k`` of the whole run is drawn from a generator seeded with ``(seed, k)``:
the same seed gives the same batches, whatever the dataset's size, and an epoch
is a fixed number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retinaunet_deploy.data.sample import Sample, instance_boxes
from retinaunet_deploy.errors import ConfigError


@dataclass(frozen=True)
class PatchOptions:
    """How patches are drawn (recorded in the model card with the training options)."""

    size: int = 128
    foreground_fraction: float = 1 / 3
    flips: bool = True
    rotations: bool = True
    intensity_jitter: float = 0.1     # gain in 1 +- this; offset +- this x pixel std
    # Patches that reach past the bottom and/or right image edge by 1..stride-1 px,
    # mirrored there as the Predictor pads an image to a multiple of `stride`.
    border_fraction: float = 0.0
    stride: int = 16

    def __post_init__(self):
        if not 0 <= self.border_fraction <= 1:
            raise ConfigError(f"border fraction must be in [0, 1], got {self.border_fraction}")


BORDER_PADDING = "reflect"   # numpy's name; the Predictor and training both use `pad_to`


def pad_to(array: np.ndarray, height: int, width: int, axes: tuple[int, int] = (0, 1)):
    """Pad two axes of `array` at the end (bottom and right) to at least (height, width)
    by mirroring about the last row and column (numpy's "reflect": the edge pixel is
    not repeated; a pad longer than the image reflects back and forth).

    The one border padding of the toolkit: training patches of images smaller than
    the patch, and the Predictor's padding to a stride multiple (any runtime). It
    adds no edge and no flat strip, so the network sees image-like content there.

    Args:
        array: any shape, dtype kept; `axes` are the (height, width) axes, each at
            least 2 long when it needs padding.
    Returns:
        the padded array (the same object when nothing needs padding).
    """
    extra = {axes[0]: max(0, height - array.shape[axes[0]]),
             axes[1]: max(0, width - array.shape[axes[1]])}
    if not any(extra.values()):
        return array
    pad = [(0, extra.get(axis, 0)) for axis in range(array.ndim)]
    return np.pad(array, pad, mode=BORDER_PADDING)


def _mirrored_instances(instances: np.ndarray, height: int, width: int) -> np.ndarray:
    """Instance ids padded by `pad_to`: a mirrored copy connected to its original
    (an object at the image edge continues into its mirror: the network sees one
    blob) keeps its id; any other copy is a new instance (ids above the image's)."""
    from scipy import ndimage

    padded = pad_to(instances, height, width)
    h, w = instances.shape
    if padded.shape == instances.shape:
        return padded
    next_id = int(instances.max()) + 1
    in_pad = np.union1d(padded[h:].ravel(), padded[:, w:].ravel())
    for value in in_pad[in_pad > 0]:
        labels, count = ndimage.label(padded == value, structure=np.ones((3, 3)))
        original = set(np.unique(labels[:h, :w]).tolist())
        for component in range(1, count + 1):
            if component not in original:
                padded[labels == component] = next_id
                next_id += 1
    return padded


def _border_reach(rng: np.random.Generator, options: PatchOptions) -> tuple[int, int]:
    """(rows, columns) a patch reaches past the bottom and right image edges: (0, 0),
    or for a `border_fraction` of patches 1..stride-1 px past the bottom, the right or
    both (as the Predictor's padding: any width a stride multiple can leave)."""
    if not options.border_fraction or options.stride < 2:
        return 0, 0
    if rng.random() >= options.border_fraction:
        return 0, 0
    sides = int(rng.integers(1, 4))          # 1: bottom, 2: right, 3: both
    reach = rng.integers(1, options.stride, size=2)
    return int(reach[0]) if sides & 1 else 0, int(reach[1]) if sides & 2 else 0


def cut_patch(sample: Sample, rng: np.random.Generator, options: PatchOptions,
              centre_on_object: bool):
    """One augmented patch: image (S, S, C) float32, mask (S, S) uint8, instances (S, S).

    A patch inside the image, or one that reaches past its bottom/right edge
    (`PatchOptions.border_fraction`): the image is mirrored there (`pad_to`) and the
    patch ends where that padding ends, as the Predictor's input does. Flips and
    rotations then put such a border on any side.
    """
    size = options.size
    reach = _border_reach(rng, options)
    h, w = sample.mask.shape
    height, width = max(size, h + reach[0]), max(size, w + reach[1])
    image = pad_to(sample.image.astype(np.float32), height, width)
    mask = pad_to(sample.mask, height, width)
    instances = _mirrored_instances(sample.instances, height, width)
    foreground = np.flatnonzero(mask) if centre_on_object else np.zeros(0, np.int64)
    if reach[0]:     # only objects the patch can hold when it ends at the bottom
        foreground = foreground[foreground // width >= height - size]
    if reach[1]:
        foreground = foreground[foreground % width >= width - size]
    if foreground.size:
        cy, cx = np.divmod(int(foreground[rng.integers(foreground.size)]), width)
        top = int(np.clip(cy - size // 2, 0, height - size))
        left = int(np.clip(cx - size // 2, 0, width - size))
    else:
        top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
    top = height - size if reach[0] else top
    left = width - size if reach[1] else left
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
        pixel_mean, pixel_std, pixel_max: of the training pixels (intensity jitter;
            jittered values are clipped to [0, pixel_max]). Images normalised before
            the graph (`normalization`, ``zscore``/``ct``): 0, 1 and None (no clip).
    """

    def __init__(self, samples: list[Sample], options: PatchOptions, batch_size: int,
                 anchors: np.ndarray | None, num_det_classes: int, pixel_mean: float,
                 pixel_std: float, pixel_max: float | None, seed: int = 0):
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
            image, mask, instances = cut_patch(sample, rng, self.options, on_object)
            if jitter:
                gain = rng.uniform(1 - jitter, 1 + jitter)
                offset = rng.uniform(-jitter, jitter) * self.pixel_std
                image = (image - self.pixel_mean) * gain + self.pixel_mean + offset
                if self.pixel_max is not None:
                    image = np.clip(image, 0, self.pixel_max)
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
